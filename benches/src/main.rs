//! `strata-bench`: load against a running node, with the raw limits of the same machine
//! measured in the same run so results can be read as ratios.
//!
//! ```text
//! strata-bench --data-dir ./data --files 1 --size 1GiB --concurrency 1
//! ```
//! 1. raw durable write: SIZE bytes written to a file in the node's data dir, then fdatasync
//!    (what `dd bs=4M conv=fdatasync` does), and raw sequential read of it (page cache dropped
//!    first with --drop-caches);
//! 2. upload of N files of SIZE with C at a time (client-side hashing timed separately), then
//!    the same upload again (dedup: nothing should be sent);
//! 3. download of every file, checked against its BLAKE3;
//!
//! The node's resident memory is sampled throughout (its pid is in `<data-dir>/node.json`).
//!
//! Other modes: `--metadata N` (commits/s), `--failover DIRS` (leader loss), `--peer-get`
//! (QUIC GetChunk against iperf3 TCP), `--replication` (R=3 on 3 nodes against R=1 on one,
//! then the rebalance rate when a 4th node joins; starts its own nodes) and `--scrub` (scrub
//! speed against one-core BLAKE3, upload speed with the scrub running against paused).

mod cluster;
mod scrub;
mod tier;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use strata_admin::client;

/// The CA that verifies https:// endpoints (set once from the arguments).
static CA_FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A channel to a node: plaintext for http://, TLS verified with the CA file for https://.
pub(crate) async fn connect(endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
    let ca = CA_FILE.get().filter(|_| endpoint.starts_with("https://"));
    client::connect_ca(endpoint, ca.map(PathBuf::as_path)).await
}
use strata_admin::transfer::{self, FilePlan, NoProgress};
use strata_proto::v1 as pb;

#[derive(Parser)]
#[command(
    name = "strata-bench",
    about = "Load generator for Strata, with same-run raw baselines"
)]
struct Args {
    /// The node's data directory (node.json, tokens, and where the raw disk test writes).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// gRPC endpoint (default: from <data-dir>/node.json).
    #[arg(long)]
    endpoint: Option<String>,
    /// CA certificate for https:// endpoints (default: <data-dir>/tls/ca.crt).
    #[arg(long, env = "STRATA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Tenant token (default: <data-dir>/tenant.token).
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Number of files.
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// Size of each file (e.g. 1GiB, 64MiB, 1000).
    #[arg(long, default_value = "1GiB")]
    size: String,
    /// Files uploaded or downloaded at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Where to create the source files (default: a temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Drop the page cache (root) before the raw read and the download, so both read the disk.
    #[arg(long)]
    drop_caches: bool,
    /// Skip the dedup re-upload.
    #[arg(long)]
    no_dedup: bool,
    /// Rounds of (raw baseline, upload, dedup, download); ratios are reported per round and as
    /// the median, since the disk's speed varies from minute to minute.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Metadata mode: instead of the transfer benchmark, commit this many CompleteUploads of
    /// 1-byte files (sessions and chunks are prepared first, untimed) with --concurrency
    /// clients spread over --endpoints, and report commits/s and latency.
    #[arg(long)]
    metadata: Option<usize>,
    /// Failover mode: comma-separated data dirs of a running local cluster (e.g. from
    /// `strata-node dev --nodes 3`). Kills the Raft leader with SIGKILL and measures the time
    /// until a write through another node succeeds.
    #[arg(long)]
    failover: Option<String>,
    /// With --failover: freeze the leader with SIGSTOP instead of killing it (its connections
    /// stay open and nothing answers, like a stalled VM); it gets SIGCONT after the measurement.
    #[arg(long, requires = "failover")]
    freeze: bool,
    /// Peer transport mode: GetChunk throughput over QUIC from the --data-dir node (with its
    /// own certificate), --size bytes in total over --concurrency streams, against raw
    /// loopback TCP measured with iperf3 in the same run.
    #[arg(long)]
    peer_get: bool,
    /// Replication mode: starts a 1-node (R=1) and a 3-node (R=3, W=2) cluster under
    /// --work-dir, uploads --size bytes to each, then adds a 4th node and times the rebalance.
    #[arg(long)]
    replication: bool,
    /// Scrub mode: starts a node under --work-dir holding --size bytes; compares a scrub pass
    /// at full speed with raw one-core BLAKE3, and --rounds uploads of --size with the scrub
    /// paused against running at its default rate.
    #[arg(long)]
    scrub: bool,
    /// Tiering mode: starts moto's S3 server (pip install 'moto[server]') and nodes under
    /// --work-dir, and compares moving a --size file to GLACIER with a plain PutObject loop of
    /// the same bytes; also counts backend requests per GiB with and without packing.
    #[arg(long)]
    tier: bool,
    /// Small files (16 KiB each) for the tiering mode's packing figures.
    #[arg(long, default_value_t = 2000)]
    small_files: usize,
    /// Comma-separated gRPC endpoints for metadata mode (default: the --data-dir node's).
    #[arg(long)]
    endpoints: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().with_context(|| format!("bad size {s:?}"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => anyhow::bail!("unknown size unit {other:?}"),
    };
    Ok(n * mult)
}

pub(crate) fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Writes `size` pseudo-random bytes (incompressible, different per seed) to `path`.
pub(crate) fn make_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path)?);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

pub(crate) fn drop_caches() -> anyhow::Result<()> {
    nix_sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("--drop-caches needs root")
}

fn nix_sync() {
    let _ = std::process::Command::new("sync").status();
}

/// Raw durable write and sequential read of `size` bytes in `dir`.
pub(crate) fn raw_disk(dir: &Path, size: u64, drop: bool) -> anyhow::Result<(f64, f64)> {
    let path = dir.join(".strata-bench-raw");
    let buf = vec![0xA5u8; 4 << 20];
    let start = Instant::now();
    {
        let mut f = std::fs::File::create(&path)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.sync_data()?;
    }
    let write = mbps(size, start.elapsed());
    if drop {
        drop_caches()?;
    }
    let start = Instant::now();
    let mut f = std::fs::File::open(&path)?;
    let mut rbuf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut rbuf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let read = mbps(total, start.elapsed());
    std::fs::remove_file(&path)?;
    Ok((write, read))
}

/// Samples a process's resident memory until stopped; returns the peak in bytes.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>, peak: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kb) = s
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            {
                peak.fetch_max(kb * 1024, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

struct Round {
    raw_write: f64,
    raw_read: f64,
    phases: Vec<Phase>,
}

impl Round {
    fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
    fn rate(&self, name: &str) -> Option<f64> {
        self.phase(name).map(|p| mbps(p.bytes, p.wall))
    }
    fn wall(&self, name: &str) -> Option<f64> {
        self.phase(name).map(|p| p.wall.as_secs_f64())
    }
}

struct Phase {
    name: &'static str,
    bytes: u64,
    wall: Duration,
    latencies: Vec<f64>,
    sent: u64,
    /// CPU seconds the node process used during the phase (user + system).
    node_cpu_s: f64,
}

/// CPU seconds (user + system) used so far by process `pid`, from /proc/<pid>/stat (0 when
/// the pid is unknown).
fn process_cpu_s(pid: u32) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses: utime is the
    // 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (n(11) + n(12)) / ticks
}

impl Phase {
    fn json(&self) -> serde_json::Value {
        let mut l = self.latencies.clone();
        l.sort_by(f64::total_cmp);
        serde_json::json!({ "phase": self.name, "bytes": self.bytes, "seconds": self.wall.as_secs_f64(), "mb_per_s": mbps(self.bytes, self.wall),
            "p50_s": percentile(&l, 0.5), "p99_s": percentile(&l, 0.99), "sent_bytes": self.sent,
            "node_cpu_s_per_gib": self.node_cpu_s / (self.bytes.max(1) as f64 / (1u64 << 30) as f64) })
    }
}

async fn upload_all(
    storage: &client::Storage,
    files: &[(PathBuf, FilePlan)],
    prefix: &str,
    concurrency: usize,
) -> anyhow::Result<(Duration, Vec<f64>, u64)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, (path, plan)) in files.iter().enumerate() {
        let (mut s, sem, path, plan, key) = (
            storage.clone(),
            sem.clone(),
            path.clone(),
            plan.clone(),
            format!("{prefix}/{i}"),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await?;
            let t = Instant::now();
            let r = transfer::upload_planned(
                &mut s,
                &path,
                "bench",
                &key,
                "application/octet-stream",
                &plan,
                Arc::new(NoProgress),
            )
            .await?;
            Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64(), r.sent_bytes))
        }));
    }
    let mut lat = Vec::new();
    let mut sent = 0;
    for t in tasks {
        let (l, s) = t.await??;
        lat.push(l);
        sent += s;
    }
    Ok((start.elapsed(), lat, sent))
}

async fn download_all(
    storage: &client::Storage,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<(Duration, Vec<f64>, u64)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (mut s, sem, prefix) = (storage.clone(), sem.clone(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await?;
            let t = Instant::now();
            let req = pb::GetRequest {
                bucket: "bench".into(),
                key: format!("{prefix}/{i}"),
                ..Default::default()
            };
            let r = transfer::download(&mut s, req, &mut std::io::sink(), &NoProgress).await?;
            Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64(), r.bytes))
        }));
    }
    let mut lat = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        let (l, b) = t.await??;
        lat.push(l);
        bytes += b;
    }
    Ok((start.elapsed(), lat, bytes))
}

/// Leader failover: SIGKILL (or SIGSTOP) the leader, then time until a write through another
/// node commits.
async fn failover_bench(dirs: &str, token: &str, freeze: bool, json: bool) -> anyhow::Result<()> {
    let mut nodes = Vec::new();
    for d in dirs.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(Path::new(d).join("node.json"))?)?;
        let admin_token = std::fs::read_to_string(
            Path::new(dirs.split(',').next().unwrap_or(d)).join("admin.token"),
        )?
        .trim()
        .to_owned();
        nodes.push((
            info["grpc"].as_str().unwrap_or_default().to_owned(),
            info["pid"].as_u64().unwrap_or(0),
            admin_token,
        ));
    }
    anyhow::ensure!(
        nodes.len() >= 3,
        "--failover needs the data dirs of at least three nodes"
    );
    // The leader, as each node reports its own role (members know each other by their
    // internal https:// addresses, which differ from a dev node's plaintext API address).
    let mut leader = None;
    for (i, (addr, _, admin_token)) in nodes.iter().enumerate() {
        let status = client::admin(connect(addr).await?, admin_token)?
            .status(pb::StatusRequest {})
            .await?
            .into_inner();
        if status.raft_role == "leader" {
            leader = Some(i);
        }
    }
    let leader = leader.context("no node reports being the leader")?;
    let leader_addr = nodes[leader].0.clone();
    let survivor = nodes[(leader + 1) % nodes.len()].0.clone();
    let mut s = client::storage(connect(&survivor).await?, token)?;
    let signal = if freeze { "-STOP" } else { "-KILL" };
    let pid = nodes[leader].1.to_string();
    std::process::Command::new("kill")
        .args([signal, &pid])
        .status()?;
    let killed = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r = async {
            let up = s
                .create_upload(pb::CreateUploadRequest {
                    bucket: "failover".into(),
                    key: format!("k{attempts}"),
                    size: 0,
                    ..Default::default()
                })
                .await?
                .into_inner();
            s.complete_upload(pb::CompleteUploadRequest {
                session_id: up.session_id,
                file_hash: bytes::Bytes::copy_from_slice(blake3::hash(b"").as_bytes()),
            })
            .await
        }
        .await;
        if r.is_ok() {
            break;
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "no write succeeded within 60s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = killed.elapsed();
    if freeze {
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()?;
    }
    let how = if freeze { "froze" } else { "killed" };
    if json {
        println!(
            "{}",
            serde_json::json!({ "leader": leader_addr, "signal": signal, "wrote_through": survivor, "failover_s": took.as_secs_f64(), "attempts": attempts })
        );
    } else {
        println!(
            "strata-bench failover: {how} leader {leader_addr} (SIG{}); first successful write through {survivor} after {:.0} ms ({attempts} attempts)",
            &signal[1..],
            took.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// CompleteUpload throughput: each commit is one durable Raft entry (quorum-flushed).
async fn metadata_bench(
    endpoints: &[String],
    token: &str,
    n: usize,
    concurrency: usize,
    json: bool,
) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for e in endpoints {
        clients.push(client::storage(connect(e).await?, token)?);
    }
    let run = format!(
        "{:x}",
        std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64
    );
    // Prepare: one open session per file, its single byte already durable.
    let prep_start = Instant::now();
    let sessions = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (mut s, sessions, next, run) = (
            clients[w % clients.len()].clone(),
            sessions.clone(),
            next.clone(),
            run.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let byte = [(i % 251) as u8];
                let id = bytes::Bytes::copy_from_slice(blake3::hash(&byte).as_bytes());
                let up = s
                    .create_upload(pb::CreateUploadRequest {
                        bucket: "metabench".into(),
                        key: format!("{run}/{i}"),
                        size: 1,
                        manifest: vec![pb::ChunkRef {
                            id: id.clone(),
                            len: 1,
                        }],
                        content_type: String::new(),
                    })
                    .await?
                    .into_inner();
                if up.existing.is_empty() {
                    let msg = pb::PutChunkRequest {
                        session_id: up.session_id.clone(),
                        offset: 0,
                        id,
                        data: bytes::Bytes::copy_from_slice(&byte),
                    };
                    let mut acks = s
                        .put_chunks(futures::stream::iter(vec![msg]))
                        .await?
                        .into_inner();
                    while let Some(a) = futures::StreamExt::next(&mut acks).await {
                        a?;
                    }
                }
                sessions
                    .lock()
                    .await
                    .push((up.session_id, blake3::hash(&byte)));
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let prep = prep_start.elapsed();
    // Timed: the CompleteUploads.
    let sessions = Arc::new(std::mem::take(&mut *sessions.lock().await));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (mut s, sessions, next) = (
            clients[w % clients.len()].clone(),
            sessions.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((sid, hash)) = sessions.get(i) else {
                    return Ok::<_, anyhow::Error>(lat);
                };
                let t = Instant::now();
                s.complete_upload(pb::CompleteUploadRequest {
                    session_id: sid.clone(),
                    file_hash: bytes::Bytes::copy_from_slice(hash.as_bytes()),
                })
                .await?;
                lat.push(t.elapsed().as_secs_f64());
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let wall = start.elapsed();
    lat.sort_by(f64::total_cmp);
    let rate = n as f64 / wall.as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({ "commits": n, "concurrency": concurrency, "endpoints": endpoints, "seconds": wall.as_secs_f64(),
            "commits_per_s": rate, "p50_s": percentile(&lat, 0.5), "p99_s": percentile(&lat, 0.99),
            "prepare_uploads_per_s": n as f64 / prep.as_secs_f64() })
        );
    } else {
        println!(
            "strata-bench metadata: {n} CompleteUpload commits of 1-byte files, {concurrency} clients over {} endpoint(s)",
            endpoints.len()
        );
        println!(
            "  commits/s        {rate:8.0}   (each acknowledged only once durable on a quorum; concurrent commits share Raft entries)"
        );
        println!(
            "  latency          p50 {:.2} ms  p99 {:.2} ms",
            percentile(&lat, 0.5) * 1e3,
            percentile(&lat, 0.99) * 1e3
        );
        println!(
            "  prepare          {:8.0} uploads/s (CreateUpload + PutChunks, untimed above)",
            n as f64 / prep.as_secs_f64()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = parse_size(&args.size)?;
    if args.tier {
        let work = match &args.work_dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        return tier::tier(work.path(), size, args.small_files, args.json).await;
    }
    if args.scrub {
        let work = match &args.work_dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        return scrub::scrub(work.path(), size, args.rounds, args.json).await;
    }
    if args.replication {
        let work = match &args.work_dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        return cluster::replication(work.path(), size, args.json).await;
    }
    let _ = CA_FILE.set(
        args.ca_file
            .clone()
            .unwrap_or_else(|| args.data_dir.join("tls").join("ca.crt")),
    );
    let node: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(args.data_dir.join("node.json"))
            .context("no node.json in --data-dir: is a node running there?")?,
    )?;
    let endpoint = args.endpoint.clone().unwrap_or_else(|| {
        node["grpc"]
            .as_str()
            .unwrap_or("http://127.0.0.1:7400")
            .to_owned()
    });
    let token = match &args.token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(args.data_dir.join("tenant.token"))
            .context("no --token and no tenant.token")?
            .trim()
            .to_owned(),
    };
    let pid = node["pid"].as_u64().unwrap_or(0) as u32;
    if args.peer_get {
        return cluster::peer_get(&args.data_dir, &endpoint, size, args.concurrency, args.json)
            .await;
    }
    if let Some(dirs) = &args.failover {
        return failover_bench(dirs, &token, args.freeze, args.json).await;
    }
    if let Some(n) = args.metadata {
        let endpoints: Vec<String> = match &args.endpoints {
            Some(list) => list
                .split(',')
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect(),
            None => vec![endpoint.clone()],
        };
        // N sessions are open at once while preparing: past the default plan's 1,000 open
        // uploads, raise the `default` plan of this (scratch) cluster with its admin token.
        if n >= strata_cluster::plans::DEFAULT_MAX_OPEN_UPLOADS as usize {
            let admin_token = std::fs::read_to_string(args.data_dir.join("admin.token"))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "--metadata {n} needs the default plan raised past 1,000 open uploads, with {}: {e}",
                        args.data_dir.join("admin.token").display()
                    )
                })?;
            let max = u32::try_from(n + 1000).unwrap_or(u32::MAX);
            client::admin(connect(&endpoints[0]).await?, &admin_token)?
                .set_plan(pb::Plan {
                    name: "default".into(),
                    max_open_uploads: Some(max),
                    ..Default::default()
                })
                .await
                .map_err(|s| client::status_error("raise the default plan", s))?;
            if !args.json {
                println!("default plan: max_open_uploads raised to {max} for this run");
            }
        }
        return metadata_bench(&endpoints, &token, n, args.concurrency.max(1), args.json).await;
    }

    let raw_hash = {
        let buf = vec![7u8; 64 << 20];
        let t = Instant::now();
        std::hint::black_box(blake3::hash(&buf));
        mbps(buf.len() as u64, t.elapsed())
    };

    let work = match &args.work_dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    // Fresh content for every round, so later rounds do not deduplicate against earlier ones.
    let mut round_plans = Vec::new();
    let mut hash_time = Duration::ZERO;
    for round in 0..args.rounds.max(1) {
        let mut plans = Vec::new();
        for i in 0..args.files {
            let path = work.path().join(format!("r{round}-f{i}"));
            make_file(
                &path,
                size,
                ((round * args.files + i) as u64) << 32 ^ std::process::id() as u64,
            )?;
            let t = Instant::now();
            plans.push((
                path.clone(),
                transfer::plan(&path, transfer::DEFAULT_CHUNK, &NoProgress)?,
            ));
            hash_time += t.elapsed();
        }
        round_plans.push(plans);
    }
    let client_hash = mbps(size * (args.files * round_plans.len()) as u64, hash_time);

    let storage = client::storage(connect(&endpoint).await?, &token)?;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = (pid != 0).then(|| watch_rss(pid, stop.clone(), peak.clone()));

    let total = size * args.files as u64;
    let mut rounds = Vec::new();
    for (round, plans) in round_plans.iter().enumerate() {
        let (raw_write, raw_read) = raw_disk(&args.data_dir, size.max(64 << 20), args.drop_caches)?;
        let mut phases = Vec::new();
        let prefix = format!("r{round}");
        let cpu0 = process_cpu_s(pid);
        let (wall, latencies, sent) =
            upload_all(&storage, plans, &prefix, args.concurrency).await?;
        phases.push(Phase {
            name: "upload",
            bytes: total,
            wall,
            latencies,
            sent,
            node_cpu_s: process_cpu_s(pid) - cpu0,
        });
        if !args.no_dedup {
            let cpu0 = process_cpu_s(pid);
            let (wall, latencies, sent) = upload_all(
                &storage,
                plans,
                &format!("{prefix}-dedup"),
                args.concurrency,
            )
            .await?;
            phases.push(Phase {
                name: "dedup re-upload",
                bytes: total,
                wall,
                latencies,
                sent,
                node_cpu_s: process_cpu_s(pid) - cpu0,
            });
        }
        if args.drop_caches {
            drop_caches()?;
        }
        let cpu0 = process_cpu_s(pid);
        let (wall, latencies, bytes) =
            download_all(&storage, &prefix, args.files, args.concurrency).await?;
        phases.push(Phase {
            name: "download",
            bytes,
            wall,
            latencies,
            sent: 0,
            node_cpu_s: process_cpu_s(pid) - cpu0,
        });
        rounds.push(Round {
            raw_write,
            raw_read,
            phases,
        });
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    let peak_rss = peak.load(Ordering::Relaxed);
    let median = |f: &dyn Fn(&Round) -> Option<f64>| {
        let mut v: Vec<f64> = rounds.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let up_ratio = median(&|r| Some(r.rate("upload")? / r.raw_write));
    let down_ratio = median(&|r| Some(r.rate("download")? / r.raw_read));
    let dedup_ratio = median(&|r| Some(r.wall("dedup re-upload")? / r.wall("upload")?));

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "files": args.files, "size": size, "concurrency": args.concurrency, "drop_caches": args.drop_caches,
                "blake3_one_core_mb_per_s": raw_hash, "client_hash_mb_per_s": client_hash,
                "rounds": rounds.iter().map(|r| serde_json::json!({ "raw_write_mb_per_s": r.raw_write, "raw_read_mb_per_s": r.raw_read,
                    "phases": r.phases.iter().map(Phase::json).collect::<Vec<_>>() })).collect::<Vec<_>>(),
                "median_upload_over_raw_write": up_ratio, "median_download_over_raw_read": down_ratio,
                "median_dedup_time_over_upload_time": dedup_ratio, "node_peak_rss_bytes": peak_rss,
            })
        );
    } else {
        println!(
            "strata-bench: {} file(s) of {} bytes, concurrency {}, {} round(s)",
            args.files,
            size,
            args.concurrency,
            rounds.len()
        );
        println!("  BLAKE3, one core      {raw_hash:8.1} MB/s");
        println!(
            "  client hashing        {client_hash:8.1} MB/s   (chunk ids + whole-file hash, two threads; not in upload time)"
        );
        for (i, r) in rounds.iter().enumerate() {
            println!("  round {}", i + 1);
            println!(
                "    raw durable write   {:8.1} MB/s   (write + fdatasync in the node's data dir)",
                r.raw_write
            );
            println!(
                "    raw sequential read {:8.1} MB/s{}",
                r.raw_read,
                if args.drop_caches {
                    "   (page cache dropped)"
                } else {
                    "   (page cache not dropped)"
                }
            );
            for p in &r.phases {
                let mut l = p.latencies.clone();
                l.sort_by(f64::total_cmp);
                println!(
                    "    {:<19} {:8.1} MB/s   p50 {:.3}s  p99 {:.3}s  sent {} bytes",
                    p.name,
                    mbps(p.bytes, p.wall),
                    percentile(&l, 0.5),
                    percentile(&l, 0.99),
                    p.sent
                );
            }
        }
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        println!("  median upload / raw write      {}", show(up_ratio));
        println!("  median download / raw read     {}", show(down_ratio));
        println!("  median dedup time / upload     {}", show(dedup_ratio));
        println!(
            "  node peak RSS                  {:.1} MiB",
            peak_rss as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
