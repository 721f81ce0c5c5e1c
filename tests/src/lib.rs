//! Test harness: starts real `strata-node` processes on loopback with their own data
//! directories, waits (with a deadline) until they serve, and hands out real gRPC clients.
//! Binaries are taken from the cargo target directory; they must be built first
//! (`cargo build --bins`, which tests/run.sh does). A missing binary fails the test loudly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_admin::client::{self, Admin, Storage};
use strata_admin::transfer::{self, NoProgress};
use strata_proto::v1 as pb;

pub mod b2_proxy;
pub mod moto;

/// Path of a workspace binary next to the test executable (target/<profile>/<name>).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` first (tests/run.sh does)",
        path.display()
    );
    path
}

/// A strata-node process in dev mode with its own temporary data directory.
pub struct Node {
    pub root: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub endpoint: String,
    pub metrics: String,
    pub tenant_token: String,
    pub admin_token: String,
    env: Vec<(String, String)>,
    /// `dev` (creates or joins a cluster; plaintext API on loopback) or `run` (TLS only).
    mode: &'static str,
    /// The gRPC port, kept across restarts so the other members can still reach the node.
    port: u16,
    child: Option<Child>,
}

/// Runs a node that tries to join through `via` and must fail; returns its stderr.
pub fn join_fails(via: &Node, token: &str, ca_hash: &str) -> String {
    use std::io::Read as _;
    let root = tempfile::tempdir().expect("tmp");
    let mut child = std::process::Command::new(bin("strata-node"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(root.path().join("data"))
        .env("STRATA_JOIN", tls_url(&via.endpoint))
        .env("STRATA_JOIN_TOKEN", token)
        .env("STRATA_CA_HASH", ca_hash)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a join that should fail still runs after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert!(!status.success(), "the join succeeded: {err}");
    err
}

/// A join token and the CA hash that goes with it.
pub struct JoinToken {
    pub token: String,
    pub ca_hash: String,
}

/// The https:// form of a node URL (members and joining nodes always speak TLS).
pub fn tls_url(endpoint: &str) -> String {
    endpoint.replacen("http://", "https://", 1)
}

/// The address of a node's gRPC port (and of its QUIC endpoint, on UDP).
pub fn node_addr(node: &Node) -> std::net::SocketAddr {
    node.endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .parse()
        .expect("endpoint address")
}

/// A free loopback port (bound and released; the node binds it again right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Node {
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// Starts a node with extra STRATA_* environment settings.
    pub fn start_with(env: &[(&str, &str)]) -> Node {
        let root = tempfile::Builder::new()
            .prefix("strata-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = root.path().join("data");
        Node::start_in(root, data_dir, env)
    }

    /// Starts a node in `run` mode (TLS only; `STRATA_INIT=true` or a join in `env`) on
    /// the gRPC port `port` (0: any free one).
    pub fn start_run(port: u16, env: &[(&str, &str)]) -> Node {
        let root = tempfile::Builder::new()
            .prefix("strata-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = root.path().join("data");
        Node::start_mode(root, data_dir, env, "run", port)
    }

    /// Starts a node whose data directory is `data_dir` (e.g. a mount point made by the test).
    pub fn start_in(root: tempfile::TempDir, data_dir: PathBuf, env: &[(&str, &str)]) -> Node {
        Node::start_mode(root, data_dir, env, "dev", 0)
    }

    fn start_mode(
        root: tempfile::TempDir,
        data_dir: PathBuf,
        env: &[(&str, &str)],
        mode: &'static str,
        port: u16,
    ) -> Node {
        let mut node = Node {
            root,
            data_dir,
            endpoint: String::new(),
            metrics: String::new(),
            tenant_token: String::new(),
            admin_token: String::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mode,
            port: if port == 0 { free_port() } else { port },
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let node_file = self.data_dir.join("node.json");
        let _ = std::fs::remove_file(&node_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("node.log"))
            .expect("node log");
        let mut cmd = Command::new(bin("strata-node"));
        cmd.arg(self.mode)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .env("STRATA_LOG", "info,strata_node=debug")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn strata-node");
        let deadline = Instant::now() + Duration::from_secs(30);
        let info = loop {
            if let Ok(text) = std::fs::read_to_string(&node_file) {
                break serde_json::from_str::<serde_json::Value>(&text).expect("node.json is JSON");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "strata-node exited with {status} before serving; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "strata-node did not start within 30s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.endpoint = info["grpc"].as_str().expect("grpc").to_owned();
        self.metrics = info["metrics"].as_str().expect("metrics").to_owned();
        if self.tenant_token.is_empty() {
            self.tenant_token = read_token(&self.data_dir.join("tenant.token"));
            self.admin_token = read_token(&self.data_dir.join("admin.token"));
        }
        self.child = Some(child);
    }

    /// A new join token for one node (`strata node token create --json`).
    pub fn join_token(&self) -> JoinToken {
        let out = self.cli(&["--json", "node", "token", "create"]);
        assert!(
            out.status.success(),
            "node token create: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token JSON");
        JoinToken {
            token: v["token"].as_str().expect("token").to_owned(),
            ca_hash: v["ca_hash"].as_str().expect("ca_hash").to_owned(),
        }
    }

    /// The address of this node's gRPC port (and of its QUIC endpoint, on UDP).
    pub fn addr(&self) -> std::net::SocketAddr {
        node_addr(self)
    }

    /// The cluster CA certificate file of this node.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.crt")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("node.log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sets (or replaces) one environment variable for the node's next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts the node again on the same data directory (it may get new ports).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub async fn storage(&self) -> Storage {
        self.storage_as(&self.tenant_token).await
    }

    pub async fn storage_as(&self, token: &str) -> Storage {
        client::storage(self.channel().await, token).expect("client")
    }

    pub async fn admin(&self) -> Admin {
        client::admin(self.channel().await, &self.admin_token).expect("client")
    }

    /// A channel to this node's API (TLS with the cluster CA on an https:// endpoint).
    pub async fn channel(&self) -> tonic::transport::Channel {
        let ca = self
            .endpoint
            .starts_with("https://")
            .then(|| self.ca_file());
        client::connect_ca(&self.endpoint, ca.as_deref())
            .await
            .expect("connect")
    }

    /// Creates another tenant and returns its token.
    pub async fn new_tenant(&self, name: &str) -> String {
        self.admin()
            .await
            .create_tenant(pb::CreateTenantRequest { name: name.into() })
            .await
            .expect("create tenant")
            .into_inner()
            .token
    }

    pub async fn status(&self) -> pb::StatusResponse {
        self.admin()
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// Runs the `strata` CLI against this node with the tenant and admin tokens set.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin("strata"));
        if self.endpoint.starts_with("https://") {
            cmd.env("STRATA_CA_FILE", self.ca_file());
        }
        cmd.args(args)
            .env("STRATA_ENDPOINT", &self.endpoint)
            .env("STRATA_TOKEN", &self.tenant_token)
            .env("STRATA_ADMIN_TOKEN", &self.admin_token)
            .env_remove("STRATA_TOKEN_FILE")
            .output()
            .expect("run strata")
    }
}

/// A cluster of real nodes on loopback: the first initializes it, the others join.
pub struct TestCluster {
    pub nodes: Vec<Node>,
}

impl TestCluster {
    pub fn start(n: usize, env: &[(&str, &str)]) -> TestCluster {
        let first = Node::start_with(env);
        let mut nodes = vec![first];
        for _ in 1..n {
            let node = TestCluster::joiner(&nodes[0], env);
            nodes.push(node);
        }
        let cluster = TestCluster { nodes };
        // Every node holds chunks: R = min(3, n) copies, uploads wait for min(2, n).
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Runtime::new()
                    .expect("runtime")
                    .block_on(cluster.place_all(n.min(3) as u32, n.min(2) as u32))
            });
        });
        cluster
    }

    /// Starts a node that joins through `via` with a new join token, carrying `via`'s tokens.
    pub fn joiner(via: &Node, env: &[(&str, &str)]) -> Node {
        let join = via.join_token();
        let mut all: Vec<(&str, &str)> = env.to_vec();
        let url = tls_url(&via.endpoint);
        all.push(("STRATA_JOIN", url.as_str()));
        all.push(("STRATA_JOIN_TOKEN", join.token.as_str()));
        all.push(("STRATA_CA_HASH", join.ca_hash.as_str()));
        let mut node = Node::start_with(&all);
        node.tenant_token = via.tenant_token.clone();
        node.admin_token = via.admin_token.clone();
        node
    }

    /// Puts every node in the layout (zone "zone-<i>", equal capacity) with `r` copies per
    /// chunk and uploads waiting for `w`, and applies it.
    pub async fn place_all(&self, r: u32, w: u32) {
        let mut admin = self.nodes[0].admin().await;
        for (i, n) in self.nodes.iter().enumerate() {
            stage(
                &mut admin,
                pb::stage_layout_request::Change::Assign(pb::AssignNode {
                    node: n.endpoint.clone(),
                    zone: format!("zone-{i}"),
                    capacity: 1 << 40,
                }),
            )
            .await;
        }
        apply_replication(&mut admin, r, w).await;
    }

    /// Index of the node that currently leads (as a live node reports it).
    pub async fn leader(&mut self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for i in 0..self.nodes.len() {
                if !self.nodes[i].is_running() {
                    continue;
                }
                if let Ok(mut admin) = client::connect(&self.nodes[i].endpoint)
                    .await
                    .and_then(|c| client::admin(c, &self.nodes[i].admin_token))
                    && let Ok(s) = admin.status(pb::StatusRequest {}).await
                    && s.get_ref().raft_role == "leader"
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within 20s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_token(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `bytes` to a new file under `dir`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write file");
    p
}

/// Uploads bytes through a temporary file with the standard client.
pub async fn put(
    storage: &mut Storage,
    dir: &Path,
    bucket: &str,
    key: &str,
    bytes: &[u8],
) -> transfer::UploadReport {
    put_chunked(storage, dir, bucket, key, bytes, transfer::DEFAULT_CHUNK).await
}

/// Uploads `bytes` with the CLI's transfer code and a given chunk size.
pub async fn put_chunked(
    storage: &mut Storage,
    dir: &Path,
    bucket: &str,
    key: &str,
    bytes: &[u8],
    chunk_size: u32,
) -> transfer::UploadReport {
    let name = format!("upload-{}", rand::random::<u64>());
    let path = write_file(dir, &name, bytes);
    let r = transfer::upload(
        storage,
        &path,
        bucket,
        key,
        "application/octet-stream",
        chunk_size,
        std::sync::Arc::new(NoProgress),
    )
    .await
    .expect("upload");
    let _ = std::fs::remove_file(path);
    r
}

/// Downloads an object (or a range) into memory.
pub async fn get(
    storage: &mut Storage,
    bucket: &str,
    key: &str,
    version: u64,
    offset: u64,
    length: u64,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let req = pb::GetRequest {
        bucket: bucket.into(),
        key: key.into(),
        version,
        offset,
        length,
    };
    transfer::download(storage, req, &mut out, &NoProgress).await?;
    Ok(out)
}

/// The gRPC status code of a failed call, or a panic if it succeeded.
pub fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

/// Polls `check` every 50 ms until it is true, failing after `secs` seconds.
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A chunk for raw PutChunks calls: (offset, declared id, bytes).
pub type RawChunk = (u64, [u8; 32], Vec<u8>);

/// Splits bytes into chunks of `size` with their real ids.
pub fn chunks_of(bytes: &[u8], size: usize) -> Vec<RawChunk> {
    bytes
        .chunks(size)
        .enumerate()
        .map(|(i, c)| ((i * size) as u64, *blake3::hash(c).as_bytes(), c.to_vec()))
        .collect()
}

pub fn manifest_of(chunks: &[RawChunk]) -> Vec<pb::ChunkRef> {
    chunks
        .iter()
        .map(|(_, id, d)| pb::ChunkRef {
            id: id.to_vec().into(),
            len: d.len() as u32,
        })
        .collect()
}

/// Sends chunks on one PutChunks stream and collects the acks (or the stream's error).
pub async fn put_raw(
    storage: &mut Storage,
    session: &str,
    chunks: Vec<RawChunk>,
) -> Result<Vec<pb::PutChunkAck>, tonic::Status> {
    use futures::StreamExt;
    let msgs: Vec<pb::PutChunkRequest> = chunks
        .into_iter()
        .map(|(offset, id, data)| pb::PutChunkRequest {
            session_id: session.into(),
            offset,
            id: id.to_vec().into(),
            data: data.into(),
        })
        .collect();
    let mut acks = storage
        .put_chunks(futures::stream::iter(msgs))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(a) = acks.next().await {
        out.push(a?);
    }
    Ok(out)
}

pub async fn create(
    storage: &mut Storage,
    bucket: &str,
    key: &str,
    size: u64,
    manifest: Vec<pb::ChunkRef>,
) -> Result<pb::CreateUploadResponse, tonic::Status> {
    storage
        .create_upload(pb::CreateUploadRequest {
            bucket: bucket.into(),
            key: key.into(),
            size,
            manifest,
            content_type: "application/octet-stream".into(),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn complete(
    storage: &mut Storage,
    session: &str,
    bytes: &[u8],
) -> Result<pb::ObjectInfo, tonic::Status> {
    storage
        .complete_upload(pb::CompleteUploadRequest {
            session_id: session.into(),
            file_hash: blake3::hash(bytes).as_bytes().to_vec().into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// A minimal HTTP/1.0 GET over loopback; returns (status code, body), or (0, the error) when
/// nothing answers.
pub async fn http_get(url: &str) -> (u16, String) {
    http_request("GET", url, "").await
}

/// POSTs a JSON body (HTTP/1.0, loopback).
pub async fn http_post(url: &str, body: &str) -> (u16, String) {
    http_request("POST", url, body).await
}

async fn http_request(method: &str, url: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut conn = match tokio::net::TcpStream::connect(host).await {
        Ok(c) => c,
        Err(e) => return (0, format!("connect {host}: {e}")),
    };
    let mut buf = String::new();
    let exchanged = async {
        let head = format!(
            "{method} /{path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body.as_bytes()).await?;
        conn.read_to_string(&mut buf).await
    }
    .await;
    if let Err(e) = exchanged {
        return (0, format!("{method} {url}: {e}"));
    }
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The metrics endpoint's base URL (without /metrics).
pub fn http_base(node: &Node) -> String {
    node.metrics.trim_end_matches("/metrics").to_owned()
}

/// Stat of the current version of bucket/key.
pub async fn stat(
    storage: &mut Storage,
    bucket: &str,
    key: &str,
) -> Result<pb::ObjectInfo, tonic::Status> {
    storage
        .stat(pb::StatRequest {
            bucket: bucket.into(),
            key: key.into(),
            version: 0,
        })
        .await
        .map(|r| r.into_inner())
}

/// Stages R copies with write quorum W (with whatever else is staged) and applies it; returns
/// the applied layout version.
async fn apply_replication(admin: &mut Admin, r: u32, w: u32) -> u64 {
    let staged = stage(
        admin,
        pb::stage_layout_request::Change::Replication(pb::Replication {
            replication: r,
            write_quorum: w,
        }),
    )
    .await;
    let version = staged.staged.expect("a staged layout").version;
    admin
        .apply_layout(pb::ApplyLayoutRequest { version })
        .await
        .unwrap_or_else(|e| panic!("apply layout {version} (R={r} W={w}): {e:?}"));
    version
}

async fn stage(admin: &mut Admin, change: pb::stage_layout_request::Change) -> pb::LayoutResponse {
    admin
        .stage_layout(pb::StageLayoutRequest {
            change: Some(change),
        })
        .await
        .expect("stage layout")
        .into_inner()
}

/// Chunk ids (hex) whose files a node's data directory holds (quarantine and temp files
/// excluded).
pub fn chunk_ids(data_dir: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(subs) = std::fs::read_dir(data_dir.join("chunks")) else {
        return out;
    };
    for sub in subs.flatten() {
        if sub.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for f in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.insert(name);
            }
        }
    }
    out
}

/// The current layout as the placement function sees it (from the Admin API).
/// (A consistent read: while the cluster elects a leader, e.g. right after a paused node comes
/// back with a higher term, it answers UNAVAILABLE; retried for up to 15 s.)
pub async fn current_layout(node: &Node) -> strata_cluster::Layout {
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        match node.admin().await.get_layout(pb::GetLayoutRequest {}).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("get layout: {s:?}"),
        }
    };
    let c = r.current.expect("current layout");
    strata_cluster::Layout {
        version: c.version,
        replication: c.replication as u8,
        write_quorum: c.write_quorum as u8,
        nodes: c
            .nodes
            .iter()
            .map(|n| {
                (
                    n.raft_id,
                    strata_cluster::layout::NodeRole {
                        zone: n.zone.clone(),
                        capacity: n.capacity,
                        state: match n.state.as_str() {
                            "active" => strata_cluster::NodeState::Active,
                            "down" => strata_cluster::NodeState::Down,
                            _ => strata_cluster::NodeState::Draining,
                        },
                    },
                )
            })
            .collect(),
    }
}

/// A labelled series' value (0 if absent), e.g. `strata_repairs_total{source="peer"}`.
pub fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A node's /metrics text.
pub async fn metrics_of(node: &Node) -> String {
    http_get(&node.metrics).await.1
}

/// A metric's value in a node's /metrics text (the sum over its label sets; 0 if absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Helpers for the block-layer tests (tests/tests/block_layer*.rs): process control (SIGSTOP /
// SIGCONT), memory of a process, uploads that report failures instead of panicking, layout
// changes, deadlines.

/// Sends `signal` (a name `kill` understands: STOP, CONT, ...) to a process with the `kill`
/// command. A missing `kill` or a failed delivery fails the test loudly.
pub fn send_signal(pid: u32, signal: &str) {
    let out = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `kill -{signal} {pid}` (is procps installed?): {e}")
        });
    assert!(
        out.status.success(),
        "`kill -{signal} {pid}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The state letter of a process in /proc/<pid>/stat (R, S, D, T stopped, Z, ...), or None if
/// it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the comm may contain spaces and parentheses; the state follows the
    // last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A field of /proc/<pid>/status in KiB (e.g. "VmRSS", "VmHWM"), or None if unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A SIGSTOPped node: sends SIGCONT when dropped (also when the test panics), unless it was
/// resumed already.
pub struct Paused {
    pid: u32,
    resumed: bool,
}

impl Paused {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGCONT now and wait (at most 10 s) until the process is no longer stopped.
    pub fn resume(mut self) {
        self.resumed = true;
        resume_pid(self.pid);
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !self.resumed {
            // Best effort during unwinding: never panic in drop.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.pid.to_string())
                .output();
        }
    }
}

fn resume_pid(pid: u32) {
    send_signal(pid, "CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_state(pid) == Some('T') {
        assert!(
            Instant::now() < deadline,
            "process {pid} is still stopped 10s after SIGCONT"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Node {
    /// The process id of the running node (panics if it is not running).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .unwrap_or_else(|| panic!("node {} is not running: no pid", self.endpoint))
    }

    /// SIGSTOP: the process stops dead (sockets stay open, nothing answers). Returns once the
    /// kernel reports it stopped (at most 10 s). The returned guard sends SIGCONT when dropped,
    /// so a panicking test never leaves a stopped node behind.
    #[must_use = "dropping the guard resumes the node at once"]
    pub fn pause(&self) -> Paused {
        let pid = self.pid();
        send_signal(pid, "STOP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc_state(pid) != Some('T') {
            assert!(
                Instant::now() < deadline,
                "node {} (pid {pid}) not stopped 10s after SIGSTOP: state {:?}",
                self.endpoint,
                proc_state(pid)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Paused {
            pid,
            resumed: false,
        }
    }

    /// SIGCONT (for a node paused without keeping the guard); waits until it runs again.
    pub fn resume(&self) {
        resume_pid(self.pid());
    }

    /// The node's resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid();
        proc_status_kib(pid, "VmRSS").unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
    }

    /// The node's peak resident memory so far (VmHWM) in KiB.
    pub fn hwm_kib(&self) -> u64 {
        let pid = self.pid();
        proc_status_kib(pid, "VmHWM").unwrap_or_else(|| panic!("no VmHWM for pid {pid}"))
    }

    /// This node's Raft id (Admin Status).
    pub async fn raft_id(&self) -> u64 {
        self.status().await.raft_id
    }

    /// The last `max` lines of the node's log that contain any of `needles` (e.g. "WARN",
    /// "ERROR"), without color codes, for failure messages.
    pub fn log_lines(&self, needles: &[&str], max: usize) -> Vec<String> {
        let log = self.log();
        let hits: Vec<&str> = log
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .collect();
        hits[hits.len().saturating_sub(max)..]
            .iter()
            .map(|l| strip_ansi(l))
            .collect()
    }
}

impl TestCluster {
    /// The Raft id of each node, by index (each node's own Admin Status).
    pub async fn raft_ids(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for n in &self.nodes {
            out.push(n.raft_id().await);
        }
        out
    }

    /// Stages R/W through node `via` and applies the staged version; then waits (at most 30 s)
    /// until every running node reports that layout version. Returns the version. Does nothing
    /// but return the current version when R and W are already what is asked.
    pub async fn set_replication(&mut self, via: usize, r: u32, w: u32) -> u64 {
        let current = current_layout(&self.nodes[via]).await;
        let version = if u32::from(current.replication) == r && u32::from(current.write_quorum) == w
        {
            current.version
        } else {
            let mut admin = self.nodes[via].admin().await;
            apply_replication(&mut admin, r, w).await
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                continue;
            }
            loop {
                let seen = tokio::time::timeout(Duration::from_secs(5), self.nodes[i].status())
                    .await
                    .map(|s| s.layout_version)
                    .unwrap_or(0);
                if seen >= version {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {i} still reports layout version {seen} 30s after layout {version} was applied"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        version
    }
}

/// Runs `fut` with a deadline; on timeout the test fails with `what` and the deadline.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?} (hung?)"),
    }
}

/// Like `put_chunked` (the CLI's transfer code through a temporary file) but returns the
/// error instead of panicking.
pub async fn try_put_chunked(
    storage: &mut Storage,
    dir: &Path,
    bucket: &str,
    key: &str,
    bytes: &[u8],
    chunk_size: u32,
) -> anyhow::Result<transfer::UploadReport> {
    let name = format!("upload-{}", rand::random::<u64>());
    let path = write_file(dir, &name, bytes);
    let r = transfer::upload(
        storage,
        &path,
        bucket,
        key,
        "application/octet-stream",
        chunk_size,
        std::sync::Arc::new(NoProgress),
    )
    .await;
    let _ = std::fs::remove_file(path);
    r
}

/// One whole upload with raw calls (CreateUpload with the manifest, PutChunks of the chunks
/// the node does not already have, CompleteUpload), returning the first failing call's
/// status. A PutChunks stream that ends OK without every ack is reported as DATA_LOSS with a
/// message starting "client check:".
pub async fn try_upload(
    storage: &mut Storage,
    bucket: &str,
    key: &str,
    bytes: &[u8],
    chunk_size: usize,
) -> Result<pb::ObjectInfo, tonic::Status> {
    let chunks = chunks_of(bytes, chunk_size);
    let up = create(
        storage,
        bucket,
        key,
        bytes.len() as u64,
        manifest_of(&chunks),
    )
    .await?;
    let existing: std::collections::HashSet<u32> = up.existing.iter().copied().collect();
    let todo: Vec<RawChunk> = chunks
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !existing.contains(&(*i as u32)))
        .map(|(_, c)| c)
        .collect();
    if !todo.is_empty() {
        let want = todo.len();
        let acks = put_raw(storage, &up.session_id, todo).await?;
        if acks.len() != want {
            return Err(tonic::Status::data_loss(format!(
                "client check: PutChunks ended OK with {} of {want} acks",
                acks.len()
            )));
        }
    }
    complete(storage, &up.session_id, bytes).await
}

/// The chunk ids of `bytes` cut into chunks of `size` (what the transfer code and `chunks_of`
/// send).
pub fn chunk_ids_of(bytes: &[u8], size: usize) -> Vec<strata_cluster::ChunkId> {
    bytes
        .chunks(size)
        .map(strata_cluster::ChunkId::of)
        .collect()
}

/// A log line without terminal color codes (ESC [ ... m).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// TLS identities for tests: a node's own (what a member presents), or one made here.
pub mod identities {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use strata_node::peer::PeerClient;
    use strata_node::tls::pki::{self, Ca};
    use strata_node::tls::{Identity, NodeTls};
    use strata_proto::v1::cluster_client::ClusterClient;

    /// The identity saved in a node's data directory.
    pub fn of_node(data_dir: &Path) -> Identity {
        Identity::load(data_dir)
            .expect("read identity")
            .expect("the node has a certificate")
    }

    /// A certificate for node `node` signed by the CA whose files are in `data_dir/tls`
    /// (the signer's), living `lifetime` from now.
    pub fn signed_by_node_ca(data_dir: &Path, node: u64, lifetime: Duration) -> Identity {
        let read = |f: &str| std::fs::read_to_string(data_dir.join("tls").join(f)).expect(f);
        let ca = Ca::load(&read("ca.crt"), &read("ca.key")).expect("CA");
        sign(&ca, node, lifetime)
    }

    /// A certificate for `node` from a CA made here (another cluster's).
    pub fn foreign(node: u64) -> Identity {
        sign(
            &Ca::generate().expect("CA"),
            node,
            Duration::from_secs(3600),
        )
    }

    fn sign(ca: &Ca, node: u64, lifetime: Duration) -> Identity {
        let (key, csr) = pki::new_key_and_csr().expect("csr");
        let cert = ca.sign(&csr, node, &[], lifetime).expect("sign");
        Identity::from_pem(&ca.cert_pem, &cert, &key).expect("identity")
    }

    pub fn tls(id: Identity) -> Arc<NodeTls> {
        NodeTls::new(id, None, Arc::new(|_| false)).expect("tls")
    }

    /// A QUIC peer client presenting `id`.
    pub fn quic(id: Identity) -> PeerClient {
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        endpoint.set_default_client_config(
            strata_node::peer::tls::client_config(&tls(id)).expect("quic config"),
        );
        PeerClient::new(endpoint)
    }

    /// A client of a node's internal `Cluster` service presenting `id`, trusting `ca_pem`
    /// for the server (the node's CA) so only the client side is under test.
    pub async fn internal(
        endpoint: &str,
        id: &Identity,
        ca_pem: &str,
    ) -> Result<ClusterClient<tonic::transport::Channel>, tonic::transport::Error> {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .identity(id.tonic_identity())
            .domain_name(pki::PEER_NAME);
        let channel = tonic::transport::Endpoint::from_shared(crate::tls_url(endpoint))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(ClusterClient::new(channel))
    }
}
