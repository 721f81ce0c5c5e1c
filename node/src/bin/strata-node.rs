//! `strata-node`: parse flags and configuration, then run the node.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use strata_node::config::{Config, Overrides};
use strata_node::server::{self, Mode};

#[derive(Parser)]
#[command(name = "strata-node", version, about = "Strata storage node")]
struct Cli {
    /// TOML configuration file (every key has a default; see `strata-node config`).
    #[arg(long, short, global = true, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (chunks and metadata).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Prometheus metrics listen address.
    #[arg(long, global = true)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// This node's name.
    #[arg(long, global = true)]
    node_id: Option<String>,
    /// The URL other nodes use to reach this one (default: https://<listen>).
    #[arg(long, global = true)]
    advertise: Option<String>,
    /// Join the cluster that the node at this URL belongs to (with --join-token and --ca-hash).
    #[arg(long, global = true)]
    join: Option<String>,
    /// Join token from `strata node token create` on a member.
    #[arg(long, global = true)]
    join_token: Option<String>,
    /// The cluster CA's hash printed with the join token (sha256:...): the member at --join is
    /// checked against it before the token is sent.
    #[arg(long, global = true)]
    ca_hash: Option<String>,
    /// Create a new cluster with this node as its first member (run mode; dev always does).
    #[arg(long, global = true, env = "STRATA_INIT")]
    init: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node with the configured addresses (the default).
    Run,
    /// Run a single-node Strata on embedded defaults: data in ./data, gRPC on 127.0.0.1:7400 or
    /// the first free port after it, a "default" tenant whose token is printed once.
    Dev {
        /// Start this many nodes on loopback (separate data dirs under the data dir, ports after
        /// the first node's) and form one cluster.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// Print the default configuration as TOML.
    Config,
    /// A cluster CA made ahead of time, for deployment tools that start every node at once.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Writes a new CA to DIR/ca.crt and DIR/ca.key (mode 0600); an existing one is kept.
    /// Start the node that creates the cluster with `tls.ca_key = "DIR/ca.key"`.
    Create { dir: PathBuf },
    /// Prints the hash of a CA certificate (for --ca-hash).
    Hash { cert: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Cmd::Run);
    if let Cmd::Config = command {
        print!("{}", Config::default_toml());
        return Ok(());
    }
    if let Cmd::Ca { cmd } = &command {
        return ca_command(cmd);
    }
    let dev_nodes = match command {
        Cmd::Dev { nodes } => nodes,
        _ => 1,
    };
    let mut overrides = Overrides {
        node_id: cli.node_id,
        data_dir: cli.data_dir,
        listen: cli.listen,
        metrics_listen: cli.metrics_listen,
        advertise: cli.advertise,
        join: cli.join,
        join_token: cli.join_token,
        ca_hash: cli.ca_hash,
    };
    if dev_nodes > 1 {
        // A local multi-node cluster keeps each node's data in <data dir>/node-<n>.
        let base = overrides
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./data"));
        overrides.data_dir = Some(base.join("node-1"));
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mode = match command {
        Cmd::Dev { .. } => Mode::Dev,
        _ => Mode::Run,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(server::run(
        config,
        mode,
        cli.init,
        dev_nodes,
        shutdown_signal(),
    ))
}

fn ca_command(cmd: &CaCmd) -> anyhow::Result<()> {
    use strata_node::tls::pki;
    match cmd {
        CaCmd::Create { dir } => {
            let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
            if key.exists() && cert.exists() {
                let pem = std::fs::read_to_string(&cert)?;
                println!(
                    "{} exists; kept ({})",
                    cert.display(),
                    pki::ca_hash_pem(&pem)?
                );
                return Ok(());
            }
            std::fs::create_dir_all(dir)?;
            let ca = pki::Ca::generate()?;
            strata_node::tls::write_atomically(&key, ca.key_pem().as_bytes(), 0o600)?;
            strata_node::tls::write_atomically(&cert, ca.cert_pem.as_bytes(), 0o644)?;
            println!(
                "wrote {} and {} ({})",
                cert.display(),
                key.display(),
                pki::ca_hash_pem(&ca.cert_pem)?
            );
        }
        CaCmd::Hash { cert } => {
            let pem = std::fs::read_to_string(cert)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
            println!("{}", pki::ca_hash_pem(&pem)?);
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
