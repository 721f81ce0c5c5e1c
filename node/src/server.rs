//! Starting and stopping a node: open the stores, start the actors, bind gRPC and metrics,
//! create first-run credentials, serve until shutdown, then drain.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use ractor::Actor;
use std::time::Duration;

use strata_cluster::state_machine::open_db;
use strata_cluster::{Command, LayoutChange, StateMachine, TokenHash};
use strata_proto::v1::admin_server::AdminServer;
use strata_proto::v1::cluster_server::ClusterServer;
use strata_proto::v1::storage_server::StorageServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::actors::supervisor::NodeSupervisor;
use crate::chunk_store::ChunkStore;
use crate::config::Config;
use crate::context::{Context, now_ms};
use crate::peer::tls;
use crate::raft::Cluster;
use crate::raft::service::ClusterService;
use crate::service::admin::{AdminService, create_tenant};
use crate::service::storage::StorageService;
use crate::{auth, metrics};

/// How long a stopping node waits for in-flight requests.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How the node was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Production: bind exactly the configured addresses.
    Run,
    /// `strata-node dev`: take the first free port at or after the configured ones, and create
    /// a "default" tenant on first start.
    Dev,
}

/// Tokens made at a node's first start, shown once.
pub struct FirstRun {
    pub admin_token: Option<String>,
    pub tenant_token: Option<String>,
}

pub async fn run(
    config: Config,
    mode: Mode,
    init: bool,
    dev_nodes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let store = ChunkStore::open(&dir)
        .with_context(|| format!("cannot open chunk store in {}", dir.display()))?;
    let db = open_db(&dir.join("meta"))
        .with_context(|| format!("cannot open metadata in {}", dir.join("meta").display()))?;
    let sm = Arc::new(StateMachine::with_db(db.clone())?);

    let grpc = bind(config.listen, mode).await?;
    let grpc_addr = grpc.local_addr()?;
    let metrics_listener = bind(config.metrics_listen, mode).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    let metrics_handle = metrics::install()?;

    let advertise = if config.advertise.is_empty() {
        format!("http://{grpc_addr}")
    } else {
        config.advertise.clone()
    };
    if config.advertise.is_empty() && grpc_addr.ip().is_unspecified() {
        tracing::warn!(
            "listening on {grpc_addr} without `advertise`: other nodes will be told {advertise}, which they cannot reach"
        );
    }
    let secret_file = dir.join("cluster.secret");
    let secret = if !config.cluster_secret.is_empty() {
        config.cluster_secret.clone()
    } else {
        std::fs::read_to_string(&secret_file)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let cluster = Cluster::start(
        &dir,
        config.raft_snapshot_logs,
        &db,
        sm.clone(),
        advertise,
        secret.clone(),
    )
    .await?;
    let join = config.join.clone();
    let backends = crate::cold::open_backends(&config).await?;
    let ctx = Arc::new(Context::new(config, store, sm, cluster, backends)?);
    let (supervisor, supervisor_handle) =
        Actor::spawn(Some("node-supervisor".into()), NodeSupervisor, ctx.clone())
            .await
            .context("cannot start the node supervisor")?;

    let max_msg = ctx.config.max_chunk_bytes as usize + 1024 * 1024;
    let storage = StorageServer::new(StorageService::new(ctx.clone(), supervisor.clone()))
        .max_decoding_message_size(max_msg.max(64 * 1024 * 1024))
        .max_encoding_message_size(max_msg);
    let admin = AdminServer::new(AdminService::new(
        ctx.clone(),
        supervisor.clone(),
        format!("http://{grpc_addr}"),
    ));
    let internal = ClusterServer::new(ClusterService::new(ctx.clone()))
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StorageServer<StorageService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(strata_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // Large HTTP/2 windows: the default 64 KiB window throttles multi-MiB chunk streams.
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(16 * 1024 * 1024)
        .initial_connection_window_size(64 * 1024 * 1024)
        .tcp_nodelay(true)
        .add_service(storage)
        .add_service(admin)
        .add_service(internal)
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    // Serve at once: a joining node must be reachable while the leader replicates to it.
    let server = tokio::spawn(server);
    tokio::spawn(crate::http::serve(
        metrics_listener,
        metrics_handle,
        ctx.clone(),
    ));
    tokio::spawn(metrics::follow_raft(ctx.cluster.raft.clone()));

    let member = bootstrap(&ctx, mode, init, &join, &secret_file).await?;
    let mut first = FirstRun {
        admin_token: None,
        tenant_token: None,
    };
    // The node that creates a cluster (dev, --init) also creates its first credentials; after
    // a read barrier, so a restarted node whose replica lags never makes a second set.
    if member && join.is_empty() && (mode == Mode::Dev || init) {
        match ctx.linearize().await {
            Ok(()) => first = first_run(&ctx, mode).await?,
            Err(e) => {
                tracing::warn!(error = %e, "first-run credentials not checked: no quorum yet")
            }
        }
    }
    let creator = member && join.is_empty() && (mode == Mode::Dev || init);
    let transport = if member {
        Some(tokio::spawn(start_transport(ctx.clone(), grpc_addr)))
    } else {
        None
    };
    if creator {
        let dev_single = mode == Mode::Dev && dev_nodes <= 1;
        if let Err(e) = initial_layout(&ctx, dev_single).await {
            tracing::warn!(error = %e, "could not put this node in the layout");
        }
    }
    write_node_file(&dir, grpc_addr, metrics_addr, &ctx.config.node_id)?;
    banner(&ctx.config, mode, grpc_addr, metrics_addr, &first);
    let _peers = if mode == Mode::Dev && dev_nodes > 1 {
        let peers = DevPeers::start(&ctx, dev_nodes).await?;
        dev_layout(&ctx).await?;
        peers
    } else {
        DevPeers(Vec::new())
    };

    // After the signal, in-flight requests get DRAIN_TIMEOUT to finish (a client holding a
    // stream open must not keep the node from stopping).
    let drain_deadline = async move {
        let _ = stop_rx.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let result = tokio::select! {
        r = server => {
            tracing::info!("requests drained");
            r.map_err(|e| anyhow::anyhow!("server task: {e}"))?
        }
        _ = drain_deadline => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "requests still running after the drain timeout; stopping anyway");
            Ok(())
        }
    };
    tracing::info!("shutting down: stopping actors and raft, flushing metadata");
    if let Ok(peers) = ctx.placement.peers() {
        peers.endpoint().close(0u32.into(), b"shutdown");
    }
    if let Some(t) = transport {
        t.abort();
    }
    supervisor.stop(Some("shutdown".into()));
    let _ = supervisor_handle.await;
    let _ = ctx.cluster.raft.shutdown().await;
    ctx.sm.flush().await?;
    let _ = std::fs::remove_file(dir.join("node.json"));
    result.context("gRPC server failed")
}

/// Brings an uninitialized node into a cluster: joins through `join`, or (dev mode, --init)
/// starts a new one-node cluster with a fresh secret. Returns whether the node is now a
/// member of a cluster.
async fn bootstrap(
    ctx: &Context,
    mode: Mode,
    init: bool,
    join: &str,
    secret_file: &Path,
) -> anyhow::Result<bool> {
    let cluster = &ctx.cluster;
    if cluster.is_initialized().await {
        if cluster.peers.secret().is_empty() {
            anyhow::bail!(
                "this node belongs to a cluster but has no cluster secret: restore {} or set cluster_secret",
                secret_file.display()
            );
        }
        return Ok(true);
    }
    if !join.is_empty() {
        let secret = cluster.peers.secret();
        if secret.is_empty() {
            anyhow::bail!(
                "joining {join} needs the cluster secret: set cluster_secret (STRATA_CLUSTER_SECRET) to the content of the first node's cluster.secret"
            );
        }
        write_secret(secret_file, &secret)?;
        tracing::info!(via = join, "joining the cluster");
        cluster.join(join, Duration::from_secs(120)).await?;
        return Ok(true);
    }
    if mode == Mode::Dev || init {
        if cluster.peers.secret().is_empty() {
            let secret = auth::new_token().replacen("stk_", "sks_", 1);
            write_secret(secret_file, &secret)?;
            cluster.peers.set_secret(secret);
        }
        cluster.init_single().await?;
        tracing::info!(raft_id = cluster.id, "initialized a new cluster");
        return Ok(true);
    }
    println!(
        "This node is not part of a cluster yet. Start it with --init to create one, or with --join <url> and the cluster secret to join one."
    );
    Ok(false)
}

/// Brings up the peer transport: the cluster CA (created by the first member that finds none),
/// this node's certificate, and the QUIC endpoint on UDP at the gRPC port. Retries until it
/// works (a restarted node may have to wait for a quorum to read the CA).
async fn start_transport(ctx: Arc<Context>, grpc_addr: SocketAddr) {
    let mut attempt = 0u32;
    loop {
        match try_start_transport(&ctx, grpc_addr).await {
            Ok(()) => return,
            Err(e) => {
                attempt += 1;
                let level_warn = attempt % 10 == 1;
                if level_warn {
                    tracing::warn!(error = %e, "peer transport not up yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn try_start_transport(ctx: &Arc<Context>, grpc_addr: SocketAddr) -> anyhow::Result<()> {
    let ca = match ctx.sm.cluster_ca()? {
        Some(ca) => ca,
        None => {
            ctx.linearize().await?;
            if ctx.sm.cluster_ca()?.is_none() {
                let ca = tls::new_ca()?;
                ctx.propose(Command::SetClusterCa {
                    cert_pem: ca.cert_pem,
                    key_pem: ca.key_pem,
                })
                .await?;
                tracing::info!("created the cluster CA for the peer transport");
            }
            ctx.sm
                .cluster_ca()?
                .ok_or_else(|| anyhow::anyhow!("the cluster CA is not in the metadata"))?
        }
    };
    let dir = &ctx.config.data_dir;
    let identity = match tls::Identity::load(dir, &ca.cert_pem) {
        Some(i) => i,
        None => {
            let name = format!("{} (raft id {})", ctx.config.node_id, ctx.cluster.id);
            let i = tls::Identity::create(dir, &ca, &name)?;
            tracing::info!(dir = %dir.join("tls").display(), "signed this node's certificate with the cluster CA");
            i
        }
    };
    let mut endpoint = quinn::Endpoint::server(identity.server_config()?, grpc_addr)
        .with_context(|| format!("cannot listen for QUIC on udp/{grpc_addr}"))?;
    endpoint.set_default_client_config(identity.client_config()?);
    tokio::spawn(crate::peer::server::serve(endpoint.clone(), ctx.clone()));
    ctx.placement
        .set_peers(Arc::new(crate::peer::PeerClient::new(endpoint)));
    tracing::info!(addr = %grpc_addr, "peer transport (QUIC, mutual TLS) listening on udp/{grpc_addr}");
    Ok(())
}

/// This node's capacity weight: the configured one, or its data disk's size.
pub fn own_capacity(config: &Config) -> u64 {
    if config.capacity > 0 {
        return config.capacity;
    }
    fs4::total_space(&config.data_dir).unwrap_or(1 << 40).max(1)
}

/// The node that creates a cluster puts itself in the layout (version 1), so a new cluster
/// stores chunks at once. A single-node `dev` cluster keeps one copy of each chunk.
async fn initial_layout(ctx: &Context, dev_single: bool) -> anyhow::Result<()> {
    let state = ctx.sm.layout()?;
    if state.current.version > 0 || state.staged.is_some() {
        return Ok(());
    }
    let (r, w) = if dev_single {
        (1, 1)
    } else {
        (ctx.config.replication, ctx.config.write_quorum)
    };
    let cmd = Command::Batch(vec![
        Command::StageLayout(LayoutChange::Assign {
            node: ctx.cluster.id,
            zone: ctx.config.zone.clone(),
            capacity: own_capacity(&ctx.config),
        }),
        Command::StageLayout(LayoutChange::Replication {
            replication: r,
            write_quorum: w,
        }),
        Command::ApplyLayout { version: 1 },
    ]);
    batch_ok(ctx.propose(cmd).await?)?;
    tracing::info!(
        replication = r,
        write_quorum = w,
        "created layout version 1 with this node"
    );
    Ok(())
}

/// Every member of a new `dev --nodes N` cluster goes into the layout, in one version.
async fn dev_layout(ctx: &Context) -> anyhow::Result<()> {
    let state = ctx.sm.layout()?;
    let voters = ctx.cluster.voters();
    if voters.iter().all(|v| state.current.nodes.contains_key(v)) {
        return Ok(());
    }
    let mut cmds: Vec<Command> = voters
        .iter()
        .filter(|v| !state.current.nodes.contains_key(v))
        .map(|v| {
            Command::StageLayout(LayoutChange::Assign {
                node: *v,
                zone: ctx.config.zone.clone(),
                capacity: own_capacity(&ctx.config),
            })
        })
        .collect();
    cmds.push(Command::ApplyLayout {
        version: state.current.version + 1,
    });
    batch_ok(ctx.propose(Command::Batch(cmds)).await?)?;
    Ok(())
}

fn batch_ok(r: strata_cluster::Response) -> anyhow::Result<()> {
    if let strata_cluster::Response::Batch(results) = r {
        for x in results {
            x.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(())
}

/// The other nodes of `strata-node dev --nodes N`: child processes of this one, stopped with it.
struct DevPeers(Vec<std::process::Child>);

impl DevPeers {
    async fn start(ctx: &Context, n: usize) -> anyhow::Result<DevPeers> {
        let base = ctx
            .config
            .data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let exe = std::env::current_exe()?;
        let local_cold = ctx
            .config
            .tier_backends()
            .into_iter()
            .next()
            .map(|b| b.path)
            .unwrap_or_default();
        let mut children = Vec::new();
        for k in 2..=n {
            let dir = base.join(format!("node-{k}"));
            std::fs::create_dir_all(&dir)?;
            let log = std::fs::File::create(dir.join("node.log"))?;
            let listen = std::net::SocketAddr::new(
                ctx.config.listen.ip(),
                ctx.config.listen.port().saturating_add(k as u16 - 1),
            );
            let metrics = std::net::SocketAddr::new(
                ctx.config.metrics_listen.ip(),
                ctx.config
                    .metrics_listen
                    .port()
                    .saturating_add(k as u16 - 1),
            );
            let child = std::process::Command::new(&exe)
                .arg("dev")
                .arg("--data-dir")
                .arg(&dir)
                .args([
                    "--listen",
                    &listen.to_string(),
                    "--metrics-listen",
                    &metrics.to_string(),
                ])
                .args([
                    "--node-id",
                    &format!("node-{k}"),
                    "--join",
                    &ctx.cluster.addr,
                ])
                .env("STRATA_CLUSTER_SECRET", ctx.cluster.peers.secret())
                .env("STRATA_LOG", &ctx.config.log)
                // One local cold directory for the whole dev cluster (the leader may move).
                .env("STRATA_COLD_DIR", &local_cold)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start node {k}"))?;
            children.push(child);
        }
        let mut peers = DevPeers(children);
        // Wait until every node has joined as a voter.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let voters = ctx.cluster.voters().len();
            if voters >= n {
                break;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the cluster has {voters} of {n} voters after 120s; see {}/node-*/node.log",
                    base.display()
                );
            }
            for (i, c) in peers.0.iter_mut().enumerate() {
                if let Ok(Some(status)) = c.try_wait() {
                    anyhow::bail!(
                        "node {} exited ({status}); see {}/node-{}/node.log",
                        i + 2,
                        base.display(),
                        i + 2
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for k in 2..=n {
            let file = base.join(format!("node-{k}")).join("node.json");
            while !file.exists() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        println!();
        println!(
            "A {n}-node cluster is running (Raft leader: node-1 at first). Every node serves every call:"
        );
        for k in 1..=n {
            let info = std::fs::read_to_string(base.join(format!("node-{k}")).join("node.json"))
                .unwrap_or_default();
            println!("  node-{k}: {}", info.trim());
        }
        Ok(peers)
    }
}

impl Drop for DevPeers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A single-node context on `config.data_dir`, initialized and leading, without gRPC: for
/// tests and tools that drive the actors directly.
pub async fn open_single_node(config: Config) -> anyhow::Result<Arc<Context>> {
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir)?;
    let store = ChunkStore::open(&dir)?;
    let db = open_db(&dir.join("meta"))?;
    let sm = Arc::new(StateMachine::with_db(db.clone())?);
    let secret = auth::new_token();
    let cluster = Cluster::start(
        &dir,
        config.raft_snapshot_logs,
        &db,
        sm.clone(),
        "http://127.0.0.1:1".into(),
        secret,
    )
    .await?;
    cluster.init_single().await?;
    let backends = crate::cold::open_backends(&config).await?;
    Ok(Arc::new(Context::new(
        config, store, sm, cluster, backends,
    )?))
}

async fn bind(addr: SocketAddr, mode: Mode) -> anyhow::Result<TcpListener> {
    let tries = if mode == Mode::Dev && addr.port() != 0 {
        100
    } else {
        1
    };
    let mut last = None;
    for i in 0..tries {
        let a = SocketAddr::new(addr.ip(), addr.port().saturating_add(i));
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "cannot listen on {addr}{}: {}",
        if tries > 1 {
            " or the 99 ports after it"
        } else {
            ""
        },
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

async fn first_run(ctx: &Context, mode: Mode) -> anyhow::Result<FirstRun> {
    let mut first = FirstRun {
        admin_token: None,
        tenant_token: None,
    };
    let dir = &ctx.config.data_dir;
    if !ctx.sm.has_admin_token()? {
        let token = auth::new_token();
        ctx.propose(Command::CreateAdminToken {
            token: TokenHash::of(&token),
            now_ms: now_ms(),
        })
        .await?;
        write_secret(&dir.join("admin.token"), &token)?;
        first.admin_token = Some(token);
    }
    if mode == Mode::Dev && ctx.sm.counts()?.tenants == 0 {
        let (_, token) = create_tenant(ctx, "default").await?;
        write_secret(&dir.join("tenant.token"), &token)?;
        first.tenant_token = Some(token);
    }
    Ok(first)
}

/// Writes a token to a file only its owner can read (mode 0600).
fn write_secret(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(())
}

/// `node.json` in the data dir says where a running node listens (scripts and tests read it).
fn write_node_file(
    dir: &Path,
    grpc: SocketAddr,
    metrics: SocketAddr,
    node_id: &str,
) -> anyhow::Result<()> {
    let body = format!(
        "{{\"node_id\":\"{node_id}\",\"grpc\":\"http://{grpc}\",\"metrics\":\"http://{metrics}/metrics\",\"pid\":{}}}\n",
        std::process::id()
    );
    let tmp = dir.join("node.json.tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(tmp, dir.join("node.json"))?;
    Ok(())
}

fn banner(config: &Config, mode: Mode, grpc: SocketAddr, metrics: SocketAddr, first: &FirstRun) {
    let dir = config.data_dir.display();
    println!(
        "Strata node {} is running ({}).",
        config.node_id,
        if mode == Mode::Dev { "dev" } else { "run" }
    );
    println!("  gRPC endpoint : http://{grpc}");
    println!("  metrics       : http://{metrics}/metrics");
    println!("  data dir      : {dir}");
    match &first.admin_token {
        Some(t) => println!("  admin token   : {t}  (shown once; saved in {dir}/admin.token)"),
        None => println!("  admin token   : in {dir}/admin.token (created at first start)"),
    }
    if mode == Mode::Dev {
        match &first.tenant_token {
            Some(t) => println!(
                "  tenant token  : {t}  (tenant \"default\"; shown once; saved in {dir}/tenant.token)"
            ),
            None => println!("  tenant token  : in {dir}/tenant.token (created at first start)"),
        }
        println!();
        println!("Try it:");
        println!("  export STRATA_ENDPOINT=http://{grpc} STRATA_TOKEN=$(cat {dir}/tenant.token)");
        println!("  strata put ./some-file mybucket/some-file && strata ls mybucket");
    }
}
