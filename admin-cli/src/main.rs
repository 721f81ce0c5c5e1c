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
    /// Cluster membership (admin): add or remove nodes.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Tenants (admin).
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
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
    Create { tenant: String },
    /// Every token's id, tenant and creation time (never the token itself).
    List,
    /// Revoke a token by the id `strata token list` shows.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Add the node serving at ADDRESS (started with this cluster's secret): it joins as a
    /// learner and becomes a voter once it has caught up.
    Join { address: String },
    /// Remove a node by its Raft id (see `strata status`). The last voter cannot be removed.
    Remove { raft_id: u64 },
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant and print its token (shown once).
    Create { name: String },
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
        client::storage(client::connect(&self.endpoint).await?, &token)
    }

    async fn admin(&self) -> anyhow::Result<client::Admin> {
        let token = self.admin_token()?;
        client::admin(client::connect(&self.endpoint).await?, &token)
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
            let mut storage = cli.storage().await?;
            let mut token = String::new();
            let (mut objects, mut folders) = (Vec::new(), Vec::new());
            loop {
                let page = storage
                    .list(pb::ListRequest {
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
                    })
                    .await
                    .map_err(|s| status_error("list", s))?
                    .into_inner();
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
            let info = cli
                .storage()
                .await?
                .stat(pb::StatRequest {
                    bucket,
                    key,
                    version: version.unwrap_or(0),
                })
                .await
                .map_err(|s| status_error("stat", s))?
                .into_inner();
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
                println!("  tier          hot");
            }
        }
        Cmd::Rm { path } => {
            let (bucket, key) = split_path(path)?;
            let r = cli
                .storage()
                .await?
                .delete(pb::DeleteRequest { bucket, key })
                .await
                .map_err(|s| status_error("rm", s))?
                .into_inner();
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
            let info = cli
                .storage()
                .await?
                .undelete(pb::UndeleteRequest { bucket, key })
                .await
                .map_err(|s| status_error("undelete", s))?
                .into_inner();
            if cli.json {
                println!("{}", info_json(&info));
            } else {
                println!("restored {path} (version {})", info.version);
            }
        }
        Cmd::Versions { path } => {
            let (bucket, key) = split_path(path)?;
            let r = cli
                .storage()
                .await?
                .list_versions(pb::ListVersionsRequest { bucket, key })
                .await
                .map_err(|s| status_error("versions", s))?
                .into_inner();
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
                println!(
                    "{}",
                    json!({ "node_id": s.node_id, "version": s.version, "uptime_seconds": s.uptime_seconds,
                    "grpc_address": s.grpc_address, "data_dir": s.data_dir, "disk_total_bytes": s.disk_total_bytes,
                    "disk_free_bytes": s.disk_free_bytes, "chunk_count": s.chunk_count, "chunk_bytes": s.chunk_bytes,
                    "open_sessions": s.open_sessions, "object_count": s.object_count, "tenant_count": s.tenant_count,
                    "raft": { "id": s.raft_id, "role": s.raft_role, "term": s.term, "leader_id": s.leader_id,
                        "last_log_index": s.last_log_index, "applied_index": s.applied_index },
                    "nodes": s.nodes.iter().map(|n| json!({ "raft_id": n.raft_id, "address": n.address, "role": n.role,
                        "voter": n.voter, "matched_index": n.matched_index, "lag": n.lag })).collect::<Vec<_>>() })
                );
            } else {
                let used = s.disk_total_bytes.saturating_sub(s.disk_free_bytes);
                println!("node        {} (strata {})", s.node_id, s.version);
                println!("address     {}", s.grpc_address);
                println!(
                    "uptime      {}",
                    humantime::format_duration(Duration::from_secs(s.uptime_seconds))
                );
                println!("data dir    {}", s.data_dir);
                println!(
                    "disk        {} used of {} ({} free)",
                    human(used),
                    human(s.disk_total_bytes),
                    human(s.disk_free_bytes)
                );
                println!("chunks      {} ({})", s.chunk_count, human(s.chunk_bytes));
                println!(
                    "objects     {} in {} tenant(s); {} upload(s) open",
                    s.object_count, s.tenant_count, s.open_sessions
                );
                println!(
                    "raft        id {} {}, term {}, log {} applied {}",
                    s.raft_id, s.raft_role, s.term, s.last_log_index, s.applied_index
                );
                println!();
                println!(
                    "{:<20}  {:<28}  {:<8}  {:>10}  {:>6}",
                    "RAFT ID", "ADDRESS", "ROLE", "MATCHED", "LAG"
                );
                for n in &s.nodes {
                    println!(
                        "{:<20}  {:<28}  {:<8}  {:>10}  {:>6}",
                        n.raft_id, n.address, n.role, n.matched_index, n.lag
                    );
                }
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
                TokenCmd::Create { tenant } => {
                    let r = admin
                        .create_token(pb::CreateTokenRequest {
                            tenant: tenant.clone(),
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
                        println!("{}", json!(r.tokens.iter().map(|t| json!({ "id": t.id, "tenant": t.tenant, "admin": t.admin, "created_at_ms": t.created_at_ms })).collect::<Vec<_>>()));
                    } else {
                        println!("{:<18}  {:<24}  CREATED", "ID", "FOR");
                        for t in &r.tokens {
                            let who = if t.admin {
                                "(admin)".to_owned()
                            } else {
                                t.tenant.clone()
                            };
                            println!("{:<18}  {:<24}  {}", t.id, who, time(t.created_at_ms));
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
                NodeCmd::Join { address } => {
                    let r = admin
                        .add_node(pb::AddNodeRequest {
                            address: address.clone(),
                        })
                        .await
                        .map_err(|s| status_error("node join", s))?
                        .into_inner();
                    if cli.json {
                        println!("{}", json!({ "raft_id": r.raft_id, "address": address }));
                    } else {
                        println!("node {} at {address} joined as a voter", r.raft_id);
                    }
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
        "version_count": i.version_count, "deleted_at_ms": i.deleted_at_ms })
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
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
