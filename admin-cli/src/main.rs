//! `strata`: the Strata command line. Object commands (put, get, ls, stat, rm, undelete,
//! versions) use a tenant token; operator commands (status, tenant) use the admin token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use strata_admin::client::{self, status_error};
use strata_admin::ops::{self, human};
use strata_admin::transfer::{self, DEFAULT_CHUNK, Progress};
use strata_proto::v1 as pb;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata storage cluster: objects for people, topology for operators"
)]
struct Cli {
    /// Node gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "STRATA_ENDPOINT",
        default_value = "http://127.0.0.1:7400"
    )]
    endpoint: String,
    /// The cluster CA certificate (PEM) to verify an https:// endpoint with (a node keeps it
    /// in <data dir>/tls/ca.crt); without it, the system's trusted roots.
    #[arg(long, global = true, env = "STRATA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Tenant token for object commands.
    #[arg(long, global = true, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the tenant token (e.g. ./data/tenant.token of a dev node).
    #[arg(long, global = true, env = "STRATA_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Admin token for operator commands.
    #[arg(
        long,
        global = true,
        env = "STRATA_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// File holding the admin token (e.g. ./data/admin.token).
    #[arg(long, global = true, env = "STRATA_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upload a file. Running the same put again after an interruption resumes it.
    Put {
        file: PathBuf,
        /// Destination as BUCKET/KEY.
        dest: String,
        /// Chunk size in bytes (a power of two lets the node check the file hash cheaply).
        #[arg(long, default_value_t = DEFAULT_CHUNK)]
        chunk_size: u32,
        #[arg(long, default_value = "application/octet-stream")]
        content_type: String,
    },
    /// Download an object (whole, or --offset/--length), checked against its BLAKE3.
    Get {
        /// Source as BUCKET/KEY.
        src: String,
        /// Output file ("-" for standard output); default: the key's last segment.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// An older version (see `strata versions`).
        #[arg(long)]
        version: Option<u64>,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to read from --offset (0: to the end).
        #[arg(long, default_value_t = 0)]
        length: u64,
    },
    /// List keys and folders: BUCKET or BUCKET/PREFIX.
    Ls {
        path: String,
        /// List every key under the prefix, without rolling folders up.
        #[arg(short, long)]
        recursive: bool,
        /// List the trash instead.
        #[arg(long)]
        trash: bool,
        /// Read this node's replica without a consistency check (faster; works without a
        /// quorum; may miss the latest writes).
        #[arg(long)]
        stale: bool,
    },
    /// Show an object's metadata.
    Stat {
        path: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Start bringing a cold object back to hot storage (reads work once it is hot again).
    Restore {
        path: String,
        /// Retrieval tier: expedited, standard or bulk (Glacier prices and speeds).
        #[arg(long, default_value = "standard")]
        tier: String,
        #[arg(long)]
        version: Option<u64>,
        /// Days the backend keeps its restored copy (default: the backend's restore_days).
        #[arg(long)]
        days: Option<u32>,
        /// Wait (with a spinner) until the object is hot again.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "48h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Cold tiering (admin): policies, status, and running a pass now.
    Tier {
        #[command(subcommand)]
        cmd: TierCmd,
    },
    /// Background workers of every node (admin): janitor, placement, tiering, scrub, check.
    Worker {
        #[command(subcommand)]
        cmd: WorkerCmd,
    },
    /// The scrub (admin): re-hashes every chunk file; status per node, start, pause, resume.
    Scrub {
        #[command(subcommand)]
        cmd: ScrubCmd,
    },
    /// Repair state (admin): chunks below their replication, being repaired, unrecoverable.
    Repair {
        #[command(subcommand)]
        cmd: RepairCmd,
    },
    /// Move an object to the trash (it is purged after the retention period).
    Rm { path: String },
    /// Bring an object back from the trash.
    Undelete { path: String },
    /// List an object's versions, newest first.
    Versions { path: String },
    /// Node status (admin).
    Status,
    /// Buckets of your tenant (tenant token).
    Bucket {
        #[command(subcommand)]
        cmd: BucketCmd,
    },
    /// Tenant tokens (admin): create, list, revoke.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Cluster membership (admin): add, drain or remove nodes.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Cluster layout (admin): which nodes hold chunks, their zones and capacities, and how
    /// many copies each chunk gets. Changes are staged, reviewed with `show`, then applied.
    Layout {
        #[command(subcommand)]
        cmd: LayoutCmd,
    },
    /// Tenants (admin): create, put on a plan, show usage.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// Tenant plans (admin): quotas and rates tenants are held to.
    Plan {
        #[command(subcommand)]
        cmd: PlanCmd,
    },
    /// Print shell completions (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum BucketCmd {
    /// Create a bucket (uploads also create missing buckets).
    Create { name: String },
    /// List your buckets.
    List,
    /// Delete an empty bucket.
    Delete { name: String },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// A new token for an existing tenant (shown once).
    Create {
        tenant: String,
        /// read (get, stat, list, versions) or read-write.
        #[arg(long, default_value = "read-write")]
        scope: String,
        /// Limit the token to this bucket.
        #[arg(long)]
        bucket: Option<String>,
        /// The token is refused this long after it is made (e.g. 30d); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// Every token's id, tenant and creation time (never the token itself).
    List,
    /// Revoke a token by the id `strata token list` shows.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum NodeTokenCmd {
    /// A join token (shown once) and the cluster CA's hash: start a new node with
    /// `strata-node run --join <member URL> --join-token <token> --ca-hash <hash>`.
    Create {
        /// How long the token stays valid (at most 7 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// How many nodes it admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Join tokens for new nodes.
    Token {
        #[command(subcommand)]
        cmd: NodeTokenCmd,
    },
    /// Remove a node by its Raft id (see `strata status`). The last voter cannot be removed,
    /// nor a node still in the layout (drain it first).
    Remove { raft_id: u64 },
    /// Drain a node (raft id, address or name): stages and applies a layout where it holds
    /// nothing; its chunks move to their other homes. With --wait, shows progress until it is
    /// empty.
    Drain {
        node: String,
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (with --wait).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum LayoutCmd {
    /// The current layout, the staged one (if any) and members not in the layout.
    Show,
    /// Stage: add a node (raft id, address or name) to the layout, or change its zone and
    /// capacity.
    Assign {
        node: String,
        /// Failure zone (rack, room, site): copies go to distinct zones first.
        #[arg(long)]
        zone: String,
        /// Capacity weight, e.g. 2TB or 500GiB (default: the node's data disk size).
        #[arg(long, value_parser = ops::parse_size)]
        capacity: Option<u64>,
    },
    /// Stage: take a node out of the layout (its chunks move to their new homes first).
    Remove { node: String },
    /// Stage: copies per chunk (1..5) and copies an upload waits for (default: a majority).
    Replication {
        copies: u32,
        #[arg(long)]
        write_quorum: Option<u32>,
    },
    /// Apply the staged layout; VERSION is the staged version `show` prints.
    Apply { version: u64 },
    /// Drop the staged changes.
    Revert,
}

#[derive(Subcommand)]
enum TierCmd {
    /// Policies: which object versions move to which cold backend.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Bytes per tier, moves pending, restores in flight, and the last pass.
    Status,
    /// Run a tiering pass now (on the Raft leader) and print what it did.
    Run,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Create or replace a policy: versions not read for --idle and at least --min-size
    /// bytes move to --backend. Bucket policies are tried before cluster-wide ones.
    Set {
        name: String,
        /// A cold backend from the nodes' configuration ("local" is built in).
        #[arg(long)]
        backend: String,
        /// STANDARD, GLACIER_IR, GLACIER or DEEP_ARCHIVE (default: the backend's class).
        #[arg(long)]
        class: Option<String>,
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        idle: Duration,
        #[arg(long, default_value = "0", value_parser = ops::parse_size_or_zero)]
        min_size: u64,
        /// Only this bucket: TENANT/BUCKET (default: every bucket).
        #[arg(long)]
        bucket: Option<String>,
    },
    Get {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum WorkerCmd {
    /// Each worker on each node: state, progress, rate, last pass, next pass, last error.
    List,
    /// Change a rate while the nodes run: scrub-rate or rebalance-rate, e.g. `200MB/s`.
    Set {
        tunable: String,
        #[arg(value_parser = strata_admin::workers::parse_rate)]
        value: u64,
        /// Only this node (raft id, address or name; default: every node).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum ScrubCmd {
    /// Per node: progress of the running pass, rate, bytes verified, corruptions found and
    /// repaired, the last and next pass.
    Status,
    /// Start a pass now (resumes a paused scrub).
    Start {
        #[arg(long)]
        node: Option<String>,
    },
    /// Pause the scrub (a running pass stops where it is and resumes from there).
    Pause {
        #[arg(long)]
        node: Option<String>,
    },
    Resume {
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum RepairCmd {
    /// Chunks below their replication, being repaired and unrecoverable, with the objects
    /// that use each unrecoverable chunk.
    Status,
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant and print its token (shown once).
    Create { name: String },
    /// Put a tenant on a plan (the plan must exist; "default" always does).
    SetPlan { tenant: String, plan: String },
    /// A tenant's plan and its usage against each limit.
    Show { tenant: String },
}

#[derive(Subcommand)]
enum PlanCmd {
    /// Create or replace a plan. A limit left out is unlimited, except --max-open-uploads
    /// (default 1000): replacing a plan sets every limit anew.
    Set {
        name: String,
        /// Largest object, e.g. 100MB.
        #[arg(long, value_parser = ops::parse_size)]
        max_object_size: Option<u64>,
        /// Bytes of every version kept (live or trashed) plus open uploads, e.g. 10GB.
        #[arg(long, value_parser = ops::parse_size_or_zero)]
        max_bytes: Option<u64>,
        /// Keys, live or trashed, e.g. 100k.
        #[arg(long, value_parser = strata_admin::plans::parse_count)]
        max_objects: Option<u64>,
        /// Upload sessions open at once.
        #[arg(long)]
        max_open_uploads: Option<u32>,
        /// Requests per second, per node, e.g. 50/s.
        #[arg(long, value_parser = strata_admin::plans::parse_requests)]
        requests: Option<u32>,
        /// Chunk bytes per second up and down, per node, e.g. 20MB/s.
        #[arg(long, value_parser = strata_admin::workers::parse_rate)]
        bandwidth: Option<u64>,
    },
    /// Every plan, its limits and how many tenants are on it.
    List,
    /// Delete a plan no tenant is on ("default" goes back to the built-in default).
    Delete { name: String },
}

fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => fail(json, &anyhow::anyhow!("cannot start runtime: {e}")),
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        fail(json, &e);
    }
}

fn fail(json: bool, e: &anyhow::Error) -> ! {
    if json {
        println!("{}", json!({ "error": format!("{e:#}") }));
    } else {
        eprintln!("error: {e:#}");
    }
    std::process::exit(1);
}

fn split_path(path: &str) -> anyhow::Result<(String, String)> {
    match path.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b.to_owned(), k.to_owned())),
        _ => bail!("{path:?} is not BUCKET/KEY"),
    }
}

fn read_token(
    value: &Option<String>,
    file: &Option<PathBuf>,
    what: &str,
    hint: &str,
) -> anyhow::Result<String> {
    if let Some(t) = value {
        return Ok(t.trim().to_owned());
    }
    if let Some(f) = file {
        return Ok(std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {what} from {}", f.display()))?
            .trim()
            .to_owned());
    }
    bail!("no {what}: {hint}")
}

impl Cli {
    fn tenant_token(&self) -> anyhow::Result<String> {
        read_token(
            &self.token,
            &self.token_file,
            "tenant token",
            "pass --token or set STRATA_TOKEN (a dev node saves it in ./data/tenant.token)",
        )
    }

    fn admin_token(&self) -> anyhow::Result<String> {
        read_token(
            &self.admin_token,
            &self.admin_token_file,
            "admin token",
            "pass --admin-token or set STRATA_ADMIN_TOKEN (a node saves it in <data dir>/admin.token)",
        )
    }

    async fn storage(&self) -> anyhow::Result<client::Storage> {
        let token = self.tenant_token()?;
        client::storage(
            client::connect_ca(&self.endpoint, self.ca_file.as_deref()).await?,
            &token,
        )
    }

    async fn admin(&self) -> anyhow::Result<client::Admin> {
        let token = self.admin_token()?;
        client::admin(
            client::connect_ca(&self.endpoint, self.ca_file.as_deref()).await?,
            &token,
        )
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Cmd::Put {
            file,
            dest,
            chunk_size,
            content_type,
        } => {
            let (bucket, key) = split_path(dest)?;
            let mut storage = cli.storage().await?;
            let bar = Bar::new(cli.json);
            let started = std::time::Instant::now();
            let report = transfer::upload(
                &mut storage,
                file,
                &bucket,
                &key,
                content_type,
                *chunk_size,
                bar.clone(),
            )
            .await?;
            bar.finish();
            let secs = started.elapsed().as_secs_f64();
            if cli.json {
                println!(
                    "{}",
                    json!({ "object": info_json(&report.info), "session_id": report.session_id, "resumed": report.resumed,
                    "skipped_bytes": report.skipped_bytes, "sent_bytes": report.sent_bytes, "seconds": secs })
                );
            } else {
                println!(
                    "uploaded {} to {bucket}/{key} (version {}, {}; sent {}, already stored {}{}) in {:.1}s",
                    file.display(),
                    report.info.version,
                    human(report.info.size),
                    human(report.sent_bytes),
                    human(report.skipped_bytes),
                    if report.resumed { ", resumed" } else { "" },
                    secs
                );
            }
        }
        Cmd::Get {
            src,
            output,
            version,
            offset,
            length,
        } => {
            let (bucket, key) = split_path(src)?;
            let mut storage = cli.storage().await?;
            let req = pb::GetRequest {
                bucket: bucket.clone(),
                key: key.clone(),
                version: version.unwrap_or(0),
                offset: *offset,
                length: *length,
            };
            let out_path = output
                .clone()
                .unwrap_or_else(|| PathBuf::from(key.rsplit('/').next().unwrap_or(&key)));
            let bar = Bar::new(cli.json || out_path.as_os_str() == "-");
            let report = if out_path.as_os_str() == "-" {
                let mut stdout = std::io::stdout();
                transfer::download(&mut storage, req, &mut stdout, bar.as_ref()).await?
            } else {
                download_to_file(&mut storage, req, &out_path, bar.as_ref()).await?
            };
            bar.finish();
            if cli.json {
                println!(
                    "{}",
                    json!({ "object": info_json(&report.info), "bytes": report.bytes, "verified": report.verified, "output": out_path })
                );
            } else if out_path.as_os_str() != "-" {
                eprintln!(
                    "downloaded {bucket}/{key} to {} ({}{})",
                    out_path.display(),
                    human(report.bytes),
                    if report.verified {
                        ", BLAKE3 verified"
                    } else {
                        ""
                    }
                );
            }
        }
        Cmd::Ls {
            path,
            recursive,
            trash,
            stale,
        } => {
            let (bucket, prefix) = match path.split_once('/') {
                Some((b, p)) => (b.to_owned(), p.to_owned()),
                None => (path.clone(), String::new()),
            };
            let storage = cli.storage().await?;
            let mut token = String::new();
            let (mut objects, mut folders) = (Vec::new(), Vec::new());
            loop {
                let page = strata_admin::unary!(
                    storage,
                    list,
                    pb::ListRequest {
                        bucket: bucket.clone(),
                        prefix: prefix.clone(),
                        delimiter: if *recursive {
                            String::new()
                        } else {
                            "/".into()
                        },
                        page_size: 1000,
                        page_token: token.clone(),
                        trash: *trash,
                        stale: *stale,
                    },
                    "list"
                )?;
                objects.extend(page.objects);
                folders.extend(page.folders);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            if cli.json {
                println!(
                    "{}",
                    json!({ "folders": folders, "objects": objects.iter().map(info_json).collect::<Vec<_>>() })
                );
            } else {
                for f in &folders {
                    println!("{:>10}  {:19}  {f}", "DIR", "");
                }
                for o in &objects {
                    println!(
                        "{:>10}  {:19}  {}",
                        human(o.size),
                        time(o.created_at_ms),
                        o.key
                    );
                }
            }
        }
        Cmd::Stat { path, version } => {
            let (bucket, key) = split_path(path)?;
            let info = {
                let storage = cli.storage().await?;
                strata_admin::unary!(
                    storage,
                    stat,
                    pb::StatRequest {
                        bucket,
                        key,
                        version: version.unwrap_or(0),
                    },
                    "stat"
                )?
            };
            if cli.json {
                println!("{}", info_json(&info));
            } else {
                println!("{}/{}", info.bucket, info.key);
                println!("  size          {} ({} bytes)", human(info.size), info.size);
                println!(
                    "  version       {} (of {})",
                    info.version, info.version_count
                );
                println!("  blake3        {}", hex::encode(&info.file_hash));
                println!("  content type  {}", info.content_type);
                println!("  created       {}", time(info.created_at_ms));
                println!("  chunks        {}", info.chunk_count);
                println!(
                    "  tier          {}",
                    strata_admin::tier::tier_line(info.tier.as_ref(), time)
                );
            }
        }
        Cmd::Rm { path } => {
            let (bucket, key) = split_path(path)?;
            let r = {
                let storage = cli.storage().await?;
                strata_admin::unary!(storage, delete, pb::DeleteRequest { bucket, key }, "rm")?
            };
            if cli.json {
                println!(
                    "{}",
                    json!({ "trashed": path, "purge_at_ms": r.purge_at_ms })
                );
            } else {
                println!(
                    "moved {path} to the trash; it will be purged at {} (undo with `strata undelete {path}`)",
                    time(r.purge_at_ms)
                );
            }
        }
        Cmd::Undelete { path } => {
            let (bucket, key) = split_path(path)?;
            let info = {
                let storage = cli.storage().await?;
                strata_admin::unary!(
                    storage,
                    undelete,
                    pb::UndeleteRequest { bucket, key },
                    "undelete"
                )?
            };
            if cli.json {
                println!("{}", info_json(&info));
            } else {
                println!("restored {path} (version {})", info.version);
            }
        }
        Cmd::Versions { path } => {
            let (bucket, key) = split_path(path)?;
            let r = {
                let storage = cli.storage().await?;
                strata_admin::unary!(
                    storage,
                    list_versions,
                    pb::ListVersionsRequest { bucket, key },
                    "versions"
                )?
            };
            if cli.json {
                println!(
                    "{}",
                    json!(r.versions.iter().map(info_json).collect::<Vec<_>>())
                );
            } else {
                for v in &r.versions {
                    println!(
                        "{:>8}  {:>10}  {:19}  {}",
                        v.version,
                        human(v.size),
                        time(v.created_at_ms),
                        &hex::encode(&v.file_hash)[..16]
                    );
                }
            }
        }
        Cmd::Status => {
            let s = cli
                .admin()
                .await?
                .status(pb::StatusRequest {})
                .await
                .map_err(|s| status_error("status", s))?
                .into_inner();
            if cli.json {
                println!("{}", ops::status_json(&s));
            } else {
                ops::print_status(&s);
            }
        }
        Cmd::Bucket { cmd } => {
            let mut storage = cli.storage().await?;
            match cmd {
                BucketCmd::Create { name } => {
                    let b = storage
                        .create_bucket(pb::BucketRequest {
                            bucket: name.clone(),
                        })
                        .await
                        .map_err(|s| status_error("bucket create", s))?
                        .into_inner();
                    if cli.json {
                        println!(
                            "{}",
                            json!({ "bucket": b.bucket, "created_at_ms": b.created_at_ms })
                        );
                    } else {
                        println!("created bucket {}", b.bucket);
                    }
                }
                BucketCmd::List => {
                    let r = storage
                        .list_buckets(pb::ListBucketsRequest {})
                        .await
                        .map_err(|s| status_error("bucket list", s))?
                        .into_inner();
                    if cli.json {
                        println!("{}", json!(r.buckets.iter().map(|b| json!({ "bucket": b.bucket, "created_at_ms": b.created_at_ms })).collect::<Vec<_>>()));
                    } else {
                        println!("{:<40}  CREATED", "BUCKET");
                        for b in &r.buckets {
                            println!("{:<40}  {}", b.bucket, time(b.created_at_ms));
                        }
                    }
                }
                BucketCmd::Delete { name } => {
                    storage
                        .delete_bucket(pb::BucketRequest {
                            bucket: name.clone(),
                        })
                        .await
                        .map_err(|s| status_error("bucket delete", s))?;
                    if cli.json {
                        println!("{}", json!({ "deleted": name }));
                    } else {
                        println!("deleted bucket {name}");
                    }
                }
            }
        }
        Cmd::Token { cmd } => {
            let mut admin = cli.admin().await?;
            match cmd {
                TokenCmd::Create {
                    tenant,
                    scope,
                    bucket,
                    expires,
                } => {
                    let r = admin
                        .create_token(pb::CreateTokenRequest {
                            tenant: tenant.clone(),
                            scope: scope.clone(),
                            bucket: bucket.clone().unwrap_or_default(),
                            expires_seconds: expires.map_or(0, |d| d.as_secs().max(1)),
                        })
                        .await
                        .map_err(|s| status_error("token create", s))?
                        .into_inner();
                    if cli.json {
                        println!(
                            "{}",
                            json!({ "tenant": r.name, "tenant_id": r.tenant_id, "token": r.token })
                        );
                    } else {
                        println!(
                            "new token for tenant {}: {}  (shown once: store it now)",
                            r.name, r.token
                        );
                    }
                }
                TokenCmd::List => {
                    let r = admin
                        .list_tokens(pb::ListTokensRequest {})
                        .await
                        .map_err(|s| status_error("token list", s))?
                        .into_inner();
                    if cli.json {
                        println!("{}", json!(r.tokens.iter().map(|t| json!({ "id": t.id, "tenant": t.tenant, "admin": t.admin, "created_at_ms": t.created_at_ms, "scope": t.scope, "bucket": t.bucket, "expires_ms": t.expires_ms })).collect::<Vec<_>>()));
                    } else {
                        println!(
                            "{:<18}  {:<24}  {:<10}  {:<20}  {:<19}  EXPIRES",
                            "ID", "FOR", "SCOPE", "BUCKET", "CREATED"
                        );
                        for t in &r.tokens {
                            let who = if t.admin {
                                "(admin)".to_owned()
                            } else {
                                t.tenant.clone()
                            };
                            let bucket = if t.bucket.is_empty() {
                                "(all)"
                            } else {
                                &t.bucket
                            };
                            let expires = if t.expires_ms == 0 {
                                "never".to_owned()
                            } else {
                                time(t.expires_ms)
                            };
                            println!(
                                "{:<18}  {:<24}  {:<10}  {:<20}  {:<19}  {expires}",
                                t.id,
                                who,
                                t.scope,
                                bucket,
                                time(t.created_at_ms)
                            );
                        }
                    }
                }
                TokenCmd::Revoke { id } => {
                    admin
                        .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                        .await
                        .map_err(|s| status_error("token revoke", s))?;
                    if cli.json {
                        println!("{}", json!({ "revoked": id }));
                    } else {
                        println!("revoked token {id}");
                    }
                }
            }
        }
        Cmd::Node { cmd } => {
            let mut admin = cli.admin().await?;
            match cmd {
                NodeCmd::Token {
                    cmd: NodeTokenCmd::Create { ttl, uses },
                } => {
                    let r = admin
                        .create_join_token(pb::CreateJoinTokenRequest {
                            ttl_seconds: ttl.as_secs().max(1),
                            uses: *uses,
                        })
                        .await
                        .map_err(|s| status_error("node token create", s))?
                        .into_inner();
                    if cli.json {
                        println!(
                            "{}",
                            json!({
                                "token": r.token,
                                "ca_hash": r.ca_hash,
                                "expires_ms": r.expires_ms,
                                "ca_pem": r.ca_pem,
                            })
                        );
                    } else {
                        println!(
                            "join token : {}  (shown once; admits {uses} node(s) for {})",
                            r.token,
                            humantime::format_duration(*ttl)
                        );
                        println!("CA hash    : {}", r.ca_hash);
                        println!();
                        println!(
                            "Start the new node with (the token is better passed as STRATA_JOIN_TOKEN than on the command line):"
                        );
                        println!(
                            "  strata-node run --join {} --join-token {} --ca-hash {}",
                            cli.endpoint.replacen("http://", "https://", 1),
                            r.token,
                            r.ca_hash
                        );
                    }
                }
                NodeCmd::Drain {
                    node,
                    wait,
                    timeout,
                } => {
                    drain(&mut admin, node, *wait, *timeout, cli.json).await?;
                }
                NodeCmd::Remove { raft_id } => {
                    admin
                        .remove_node(pb::RemoveNodeRequest { raft_id: *raft_id })
                        .await
                        .map_err(|s| status_error("node remove", s))?;
                    if cli.json {
                        println!("{}", json!({ "removed": raft_id }));
                    } else {
                        println!("node {raft_id} removed from the cluster");
                    }
                }
            }
        }
        Cmd::Restore {
            path,
            tier,
            version,
            days,
            wait,
            timeout,
        } => restore(&cli, path, tier, *version, *days, *wait, *timeout).await?,
        Cmd::Tier { cmd } => tier_cmd(&cli, cmd).await?,
        Cmd::Worker { cmd } => worker_cmd(&cli, cmd).await?,
        Cmd::Scrub { cmd } => scrub_cmd(&cli, cmd).await?,
        Cmd::Repair {
            cmd: RepairCmd::Status,
        } => {
            use strata_admin::workers as w;
            let r = cli
                .admin()
                .await?
                .repair_status(pb::RepairStatusRequest {})
                .await
                .map_err(|s| status_error("repair status", s))?
                .into_inner();
            if cli.json {
                println!("{}", w::repair_json(&r));
            } else {
                w::print_repair(&r);
            }
        }
        Cmd::Layout { cmd } => {
            let mut admin = cli.admin().await?;
            use pb::stage_layout_request::Change;
            let stage = |change| pb::StageLayoutRequest {
                change: Some(change),
            };
            let r = match cmd {
                LayoutCmd::Show => admin.get_layout(pb::GetLayoutRequest {}).await,
                LayoutCmd::Assign {
                    node,
                    zone,
                    capacity,
                } => {
                    admin
                        .stage_layout(stage(Change::Assign(pb::AssignNode {
                            node: node.clone(),
                            zone: zone.clone(),
                            capacity: capacity.unwrap_or(0),
                        })))
                        .await
                }
                LayoutCmd::Remove { node } => {
                    admin
                        .stage_layout(stage(Change::Remove(node.clone())))
                        .await
                }
                LayoutCmd::Replication {
                    copies,
                    write_quorum,
                } => {
                    admin
                        .stage_layout(stage(Change::Replication(pb::Replication {
                            replication: *copies,
                            write_quorum: write_quorum.unwrap_or(copies / 2 + 1),
                        })))
                        .await
                }
                LayoutCmd::Apply { version } => {
                    admin
                        .apply_layout(pb::ApplyLayoutRequest { version: *version })
                        .await
                }
                LayoutCmd::Revert => admin.revert_layout(pb::RevertLayoutRequest {}).await,
            }
            .map_err(|s| status_error("layout", s))?
            .into_inner();
            if cli.json {
                println!("{}", ops::layout_response_json(&r));
            } else {
                if let LayoutCmd::Apply { version } = cmd {
                    println!(
                        "applied layout v{version}: chunks now move to their new homes (progress: `strata status`)"
                    );
                    println!();
                }
                ops::print_layout(&r);
            }
        }
        Cmd::Tenant {
            cmd: TenantCmd::SetPlan { tenant, plan },
        } => {
            let t = cli
                .admin()
                .await?
                .set_tenant_plan(pb::SetTenantPlanRequest {
                    tenant: tenant.clone(),
                    plan: plan.clone(),
                })
                .await
                .map_err(|s| status_error("tenant set-plan", s))?
                .into_inner();
            if cli.json {
                println!("{}", strata_admin::plans::tenant_json(&t));
            } else {
                strata_admin::plans::print_tenant(&t);
            }
        }
        Cmd::Tenant {
            cmd: TenantCmd::Show { tenant },
        } => {
            let t = cli
                .admin()
                .await?
                .get_tenant(pb::GetTenantRequest {
                    tenant: tenant.clone(),
                })
                .await
                .map_err(|s| status_error("tenant show", s))?
                .into_inner();
            if cli.json {
                println!("{}", strata_admin::plans::tenant_json(&t));
            } else {
                strata_admin::plans::print_tenant(&t);
            }
        }
        Cmd::Plan { cmd } => plan_cmd(&cli, cmd).await?,
        Cmd::Tenant {
            cmd: TenantCmd::Create { name },
        } => {
            let r = cli
                .admin()
                .await?
                .create_tenant(pb::CreateTenantRequest { name: name.clone() })
                .await
                .map_err(|s| status_error("tenant create", s))?
                .into_inner();
            if cli.json {
                println!(
                    "{}",
                    json!({ "tenant_id": r.tenant_id, "name": r.name, "token": r.token })
                );
            } else {
                println!("created tenant {} (id {})", r.name, r.tenant_id);
                println!("token: {}  (shown once: store it now)", r.token);
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "strata",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(())
}

/// Downloads into a temporary file beside the target and renames it into place only once the
/// whole download is verified, so a failed download never leaves a partial file behind.
async fn download_to_file(
    storage: &mut client::Storage,
    req: pb::GetRequest,
    path: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<transfer::DownloadReport> {
    // A device, pipe or socket (e.g. /dev/null) is written in place: there is nothing to
    // rename over, and replacing it would be wrong.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        return transfer::download(storage, req, &mut out, progress).await;
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.strata-partial",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download")
    ));
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1024 * 1024, file);
    let result = transfer::download(storage, req, &mut out, progress).await;
    let finish = |r: transfer::DownloadReport| -> anyhow::Result<transfer::DownloadReport> {
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move the download to {}", path.display()))?;
        Ok(r)
    };
    match result.and_then(finish) {
        Ok(r) => Ok(r),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn info_json(i: &pb::ObjectInfo) -> serde_json::Value {
    json!({ "bucket": i.bucket, "key": i.key, "version": i.version, "size": i.size, "blake3": hex::encode(&i.file_hash),
        "content_type": i.content_type, "created_at_ms": i.created_at_ms, "chunk_count": i.chunk_count,
        "version_count": i.version_count, "deleted_at_ms": i.deleted_at_ms,
        "tier": strata_admin::tier::tier_json(i.tier.as_ref()) })
}

/// `strata node drain`: stage and apply a layout with the node draining, then optionally
/// follow its chunk count down to zero.
async fn drain(
    admin: &mut client::Admin,
    node: &str,
    wait: bool,
    timeout: Duration,
    json_out: bool,
) -> anyhow::Result<()> {
    let err = |s| status_error("node drain", s);
    let layout = admin
        .get_layout(pb::GetLayoutRequest {})
        .await
        .map_err(err)?
        .into_inner();
    if layout.staged.is_some() {
        bail!(
            "node drain: other layout changes are staged: apply or revert them first (`strata layout show`)"
        );
    }
    let staged = admin
        .stage_layout(pb::StageLayoutRequest {
            change: Some(pb::stage_layout_request::Change::Drain(node.to_owned())),
        })
        .await
        .map_err(err)?
        .into_inner();
    let version = staged.staged.as_ref().map_or(0, |s| s.version);
    let applied = admin
        .apply_layout(pb::ApplyLayoutRequest { version })
        .await
        .map_err(err)?
        .into_inner();
    let raft_id = applied
        .current
        .iter()
        .flat_map(|l| &l.nodes)
        .find(|n| {
            n.state == "draining"
                && (n.raft_id.to_string() == node
                    || n.name == node
                    || n.address.trim_start_matches("http://")
                        == node.trim_start_matches("http://"))
        })
        .map(|n| n.raft_id);
    if !json_out {
        println!(
            "node {node} is draining (layout v{version}); its chunks move to their other homes"
        );
    }
    if !wait {
        if json_out {
            println!("{}", json!({ "draining": node, "layout_version": version }));
        }
        return Ok(());
    }
    let Some(raft_id) = raft_id else {
        bail!("node drain: {node} is not draining in layout v{version}");
    };
    let bar = if json_out {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} chunks moved, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("draining {node}"));
    let deadline = std::time::Instant::now() + timeout;
    let mut start: Option<u64> = None;
    loop {
        let s = admin
            .status(pb::StatusRequest {})
            .await
            .map_err(err)?
            .into_inner();
        if let Some(n) = s.nodes.iter().find(|n| n.raft_id == raft_id && n.reachable) {
            let first = *start.get_or_insert(n.chunk_count.max(1));
            bar.set_length(first);
            bar.set_position(first.saturating_sub(n.chunk_count));
            let done = n.chunk_count == 0
                && n.rebalance
                    .as_ref()
                    .is_some_and(|r| r.finished_version >= version);
            if done {
                bar.finish_and_clear();
                if json_out {
                    println!(
                        "{}",
                        json!({ "drained": node, "raft_id": raft_id, "layout_version": version })
                    );
                } else {
                    println!(
                        "node {node} holds no chunks; remove it with `strata layout remove {raft_id}`, `strata layout apply {}` and `strata node remove {raft_id}`",
                        version + 1
                    );
                }
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            bar.finish_and_clear();
            bail!(
                "node drain: {node} still holds chunks after {}",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

/// A progress bar on stderr (hidden when --json or stderr is not a terminal).
struct Bar(ProgressBar);

impl Bar {
    fn new(hidden: bool) -> Arc<Bar> {
        let pb = if hidden {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>11} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Arc::new(Bar(pb))
    }

    fn finish(&self) {
        self.0.finish_and_clear();
        let _ = std::io::stderr().flush();
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.reset_eta();
    }
    fn advance(&self, done: u64) {
        self.0.set_position(done);
    }
    fn phase(&self, name: &str) {
        self.0.set_message(name.to_owned());
    }
}

/// `strata restore`: start the restore, then optionally follow it until the object is hot.
async fn restore(
    cli: &Cli,
    path: &str,
    tier: &str,
    version: Option<u64>,
    days: Option<u32>,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (bucket, key) = split_path(path)?;
    let mut storage = cli.storage().await?;
    let info = storage
        .restore(pb::RestoreRequest {
            bucket: bucket.clone(),
            key: key.clone(),
            version: version.unwrap_or(0),
            tier: tier.to_owned(),
            days: days.unwrap_or(0),
        })
        .await
        .map_err(|s| status_error("restore", s))?
        .into_inner();
    if !wait {
        if cli.json {
            println!("{}", info_json(&info));
        } else {
            println!(
                "{bucket}/{key}: {}",
                strata_admin::tier::tier_line(info.tier.as_ref(), time)
            );
            println!(
                "read it once `strata stat {bucket}/{key}` shows it hot (or rerun with --wait)"
            );
        }
        return Ok(());
    }
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let info = loop {
        let info = storage
            .stat(pb::StatRequest {
                bucket: bucket.clone(),
                key: key.clone(),
                version: info.version,
            })
            .await
            .map_err(|s| status_error("stat", s))?
            .into_inner();
        let line = strata_admin::tier::tier_line(info.tier.as_ref(), time);
        if strata_admin::tier::state_name(info.tier.as_ref()) == "hot" {
            bar.finish_and_clear();
            break info;
        }
        if started.elapsed() > timeout {
            bar.finish_and_clear();
            bail!(
                "{bucket}/{key} is still {line} after {}",
                humantime::format_duration(timeout)
            );
        }
        bar.set_message(format!("{bucket}/{key}: {line}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if cli.json {
        println!("{}", info_json(&info));
    } else {
        println!("{bucket}/{key} is hot again; it can be read");
    }
    Ok(())
}

/// Sends one worker control to one node or all and prints each node's answer; fails when
/// any node refused.
async fn control_workers(
    cli: &Cli,
    node: &Option<String>,
    request: pb::ControlWorkersRequest,
) -> anyhow::Result<()> {
    use strata_admin::workers as w;
    let what = request.action.clone();
    let r = cli
        .admin()
        .await?
        .control_workers(pb::AdminControlWorkersRequest {
            node: node.clone().unwrap_or_default(),
            request: Some(request),
        })
        .await
        .map_err(|s| status_error(&what, s))?
        .into_inner();
    if cli.json {
        println!("{}", w::control_json(&r));
    } else {
        w::print_control(&r);
    }
    let failed = r.nodes.iter().filter(|n| !n.ok).count();
    if failed > 0 {
        bail!(
            "{what}: {failed} of {} node(s) refused or did not answer",
            r.nodes.len()
        );
    }
    Ok(())
}

async fn list_workers(cli: &Cli, only: Option<&str>) -> anyhow::Result<()> {
    use strata_admin::workers as w;
    let r = cli
        .admin()
        .await?
        .list_workers(pb::ListWorkersRequest {})
        .await
        .map_err(|s| status_error("worker list", s))?
        .into_inner();
    if cli.json {
        println!("{}", w::workers_json(&r, only));
    } else {
        w::print_workers(&r, only);
    }
    Ok(())
}

async fn worker_cmd(cli: &Cli, cmd: &WorkerCmd) -> anyhow::Result<()> {
    match cmd {
        WorkerCmd::List => list_workers(cli, None).await,
        WorkerCmd::Set {
            tunable,
            value,
            node,
        } => {
            let req = pb::ControlWorkersRequest {
                action: "set".into(),
                tunable: tunable.clone(),
                value: value.to_string(),
            };
            control_workers(cli, node, req).await
        }
    }
}

async fn scrub_cmd(cli: &Cli, cmd: &ScrubCmd) -> anyhow::Result<()> {
    let (action, node) = match cmd {
        ScrubCmd::Status => return list_workers(cli, Some("scrub")).await,
        ScrubCmd::Start { node } => ("scrub-start", node),
        ScrubCmd::Pause { node } => ("scrub-pause", node),
        ScrubCmd::Resume { node } => ("scrub-resume", node),
    };
    let req = pb::ControlWorkersRequest {
        action: action.into(),
        ..Default::default()
    };
    control_workers(cli, node, req).await
}

async fn plan_cmd(cli: &Cli, cmd: &PlanCmd) -> anyhow::Result<()> {
    use strata_admin::plans as p;
    let mut admin = cli.admin().await?;
    match cmd {
        PlanCmd::Set {
            name,
            max_object_size,
            max_bytes,
            max_objects,
            max_open_uploads,
            requests,
            bandwidth,
        } => {
            let plan = admin
                .set_plan(pb::Plan {
                    name: name.clone(),
                    max_object_bytes: *max_object_size,
                    max_bytes: *max_bytes,
                    max_objects: *max_objects,
                    max_open_uploads: *max_open_uploads,
                    requests_per_sec: *requests,
                    bandwidth_bytes_per_sec: *bandwidth,
                    tenants: 0,
                })
                .await
                .map_err(|s| status_error("plan set", s))?
                .into_inner();
            if cli.json {
                println!("{}", p::plan_json(&plan));
            } else {
                println!("{}", p::plan_line(&plan));
            }
        }
        PlanCmd::List => {
            let r = admin
                .list_plans(pb::ListPlansRequest {})
                .await
                .map_err(|s| status_error("plan list", s))?
                .into_inner();
            if cli.json {
                let all: Vec<_> = r.plans.iter().map(p::plan_json).collect();
                println!("{}", json!(all));
            } else {
                for plan in &r.plans {
                    println!("{}", p::plan_line(plan));
                }
            }
        }
        PlanCmd::Delete { name } => {
            admin
                .delete_plan(pb::PlanName { name: name.clone() })
                .await
                .map_err(|s| status_error("plan delete", s))?;
            if cli.json {
                println!("{}", json!({ "deleted": name }));
            } else {
                println!("deleted plan {name}");
            }
        }
    }
    Ok(())
}

async fn tier_cmd(cli: &Cli, cmd: &TierCmd) -> anyhow::Result<()> {
    use strata_admin::tier as t;
    let mut admin = cli.admin().await?;
    match cmd {
        TierCmd::Policy { cmd } => match cmd {
            PolicyCmd::Set {
                name,
                backend,
                class,
                idle,
                min_size,
                bucket,
            } => {
                let (tenant, bucket) = match bucket {
                    Some(b) => match b.split_once('/') {
                        Some((t, b)) if !t.is_empty() && !b.is_empty() => {
                            (t.to_owned(), b.to_owned())
                        }
                        _ => bail!("--bucket {b:?} is not TENANT/BUCKET"),
                    },
                    None => (String::new(), String::new()),
                };
                let p = admin
                    .set_tier_policy(pb::TierPolicy {
                        name: name.clone(),
                        tenant,
                        bucket,
                        backend: backend.clone(),
                        storage_class: class.clone().unwrap_or_default(),
                        min_idle_seconds: idle.as_secs(),
                        min_size: *min_size,
                        created_at_ms: 0,
                    })
                    .await
                    .map_err(|s| status_error("tier policy set", s))?
                    .into_inner();
                if cli.json {
                    println!("{}", t::policy_json(&p));
                } else {
                    println!("{}", t::policy_line(&p));
                }
            }
            PolicyCmd::Get { name } => {
                let p = admin
                    .get_tier_policy(pb::TierPolicyName { name: name.clone() })
                    .await
                    .map_err(|s| status_error("tier policy get", s))?
                    .into_inner();
                if cli.json {
                    println!("{}", t::policy_json(&p));
                } else {
                    println!("{}", t::policy_line(&p));
                }
            }
            PolicyCmd::List => {
                let r = admin
                    .list_tier_policies(pb::ListTierPoliciesRequest {})
                    .await
                    .map_err(|s| status_error("tier policy list", s))?
                    .into_inner();
                if cli.json {
                    let all: Vec<_> = r.policies.iter().map(t::policy_json).collect();
                    println!("{}", json!(all));
                } else if r.policies.is_empty() {
                    println!("no tier policies: nothing moves to cold storage");
                } else {
                    for p in &r.policies {
                        println!("{}", t::policy_line(p));
                    }
                }
            }
            PolicyCmd::Delete { name } => {
                admin
                    .delete_tier_policy(pb::TierPolicyName { name: name.clone() })
                    .await
                    .map_err(|s| status_error("tier policy delete", s))?;
                if cli.json {
                    println!("{}", json!({ "deleted": name }));
                } else {
                    println!("deleted tier policy {name}");
                }
            }
        },
        TierCmd::Status => {
            let s = admin
                .tier_status(pb::TierStatusRequest {})
                .await
                .map_err(|s| status_error("tier status", s))?
                .into_inner();
            if cli.json {
                println!("{}", t::status_json(&s));
            } else {
                t::print_status(&s, time);
            }
        }
        TierCmd::Run => {
            let mut r = admin.run_tiering(pb::RunTieringRequest {}).await;
            // Only the leader runs passes: follow the hint to it once.
            if let Err(s) = &r
                && s.code() == tonic::Code::FailedPrecondition
                && let Some(leader) = s.message().split("ask the leader at ").nth(1)
                && leader.starts_with("http")
            {
                let token = cli.admin_token()?;
                // The leader's API on the same terms as the node asked (plaintext or TLS).
                let hostport = leader
                    .trim()
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                let scheme = cli.endpoint.split("://").next().unwrap_or("http");
                let url = format!("{scheme}://{hostport}");
                let mut leader_admin = client::admin(
                    client::connect_ca(&url, cli.ca_file.as_deref()).await?,
                    &token,
                )?;
                r = leader_admin.run_tiering(pb::RunTieringRequest {}).await;
            }
            let p = r.map_err(|s| status_error("tier run", s))?.into_inner();
            if cli.json {
                println!("{}", t::pass_json(&p));
            } else {
                t::print_pass(&p);
            }
        }
    }
    Ok(())
}
