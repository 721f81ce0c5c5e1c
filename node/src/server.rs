//! Starting and stopping a node: open the stores, build the node's parts (the one place that
//! does), start the actors, bind gRPC and metrics, create first-run credentials, serve until
//! shutdown, then drain.

use crate::workers::Board;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ractor::{Actor, ActorRef};

use strata_cluster::state_machine::open_db;
use strata_cluster::{Command, LayoutChange, StateMachine, TokenHash};
use strata_proto::v1::admin_server::AdminServer;
use strata_proto::v1::cluster_server::ClusterServer;
use strata_proto::v1::storage_server::StorageServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::actors::supervisor::{ActorDeps, NodeSupervisor, SupervisorMsg};
use crate::blocks::{BlockConfig, BlockManager, MemberBook, PeerService};
use crate::budget::MemoryBudget;
use crate::chunk_store::ChunkStore;
use crate::clock::now_ms;
use crate::config::Config;
use crate::disk::DiskSpace;
use crate::peer::tls;
use crate::raft::Cluster;
use crate::reads::Reads;
use crate::service::admin::{AdminDeps, AdminService, create_tenant};
use crate::service::cluster::ClusterService;
use crate::service::ingress::{IngressLayer, StreamGate};
use crate::service::layout::NodeReport;
use crate::service::storage::{StorageDeps, StorageService};
use crate::tiering::Tiering;
use crate::{auth, metrics};

/// The parts of a running node. Only this module builds it; nothing below it imports it: each
/// part gets the handles it needs.
pub struct Node {
    pub config: Arc<Config>,
    pub sm: Arc<StateMachine>,
    pub db: sled::Db,
    pub cluster: Arc<Cluster>,
    pub disk: Arc<DiskSpace>,
    pub budget: Arc<MemoryBudget>,
    pub blocks: Arc<BlockManager>,
    pub tiering: Arc<Tiering>,
    pub reads: Arc<Reads>,
    /// What the janitor and tiering actors report (`strata worker list`).
    pub board: Arc<Board>,
    pub started: Instant,
}

impl Node {
    /// Opens the stores and builds every part, with Raft started at `advertise`.
    async fn open(config: Config, advertise: String, secret: String) -> anyhow::Result<Node> {
        let config = Arc::new(config);
        let dir = config.data_dir.clone();
        let (db, sm, disk) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create data directory {}", dir.display()))?;
            let meta = dir.join("meta");
            let db = open_db(&meta)
                .with_context(|| format!("cannot open metadata in {}", meta.display()))?;
            let sm = Arc::new(StateMachine::with_db(db.clone())?);
            Ok((db, sm, DiskSpace::new(dir)))
        })
        .await??;
        let dir = &config.data_dir;
        let reserve = config.reserve_for(disk.total());
        let store = ChunkStore::open(dir, config.min_free_bytes)
            .await
            .with_context(|| format!("cannot open chunk store in {}", dir.display()))?;
        let cluster = Arc::new(
            Cluster::start(
                dir,
                config.raft_snapshot_logs,
                &db,
                sm.clone(),
                advertise,
                secret,
                disk.clone(),
                reserve / 4,
            )
            .await?,
        );
        let members = Arc::new(MemberBook::default());
        members.follow(cluster.raft.clone());
        let budget = Arc::new(MemoryBudget::new(
            config.max_inflight_bytes,
            config.largest_message(),
        ));
        let blocks = Arc::new(BlockManager::new(
            cluster.id,
            store,
            sm.clone(),
            members,
            budget.clone(),
            BlockConfig {
                read_cache_bytes: config.read_cache_bytes,
                rebalance_rate_bytes: config.rebalance_rate_bytes,
                gc_grace: config.gc_grace,
                scrub_rate_bytes: config.verify.scrub_rate,
            },
        )?);
        let backends = strata_cold::open_backends(&config.tier_backends()).await?;
        let tiering = Arc::new(Tiering::new(
            backends,
            sm.clone(),
            cluster.clone(),
            blocks.clone(),
            config.tier.clone(),
            config.verify.cold_requests_per_day,
        ));
        let reads = Arc::new(Reads::new(sm.clone(), blocks.clone(), tiering.clone()));
        Ok(Node {
            config,
            sm,
            db,
            cluster,
            disk,
            budget,
            blocks,
            tiering,
            reads,
            board: Arc::new(Board::default()),
            started: Instant::now(),
        })
    }

    /// What the actors get.
    pub fn actor_deps(&self) -> ActorDeps {
        ActorDeps {
            config: self.config.clone(),
            sm: self.sm.clone(),
            cluster: self.cluster.clone(),
            blocks: self.blocks.clone(),
            tiering: self.tiering.clone(),
            reads: self.reads.clone(),
            board: self.board.clone(),
        }
    }

    fn report(&self) -> Arc<NodeReport> {
        Arc::new(NodeReport {
            name: self.config.node_id.clone(),
            disk: self.disk.clone(),
            blocks: self.blocks.clone(),
            board: self.board.clone(),
            verify: self.config.verify.clone(),
            tiering: self.tiering.clone(),
        })
    }
}

/// How long a stopping node waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 flow control of the gRPC server (see `run`): a stream may hold this much unread.
const STREAM_WINDOW: u32 = 2 << 20;
/// Streams one connection may carry at once.
const STREAMS_PER_CONNECTION: u32 = 64;
/// The connection window covers every stream's window (plus room for small calls), so streams
/// waiting for memory never block the ones being read.
const CONNECTION_WINDOW: u32 = (STREAMS_PER_CONNECTION + 1) * STREAM_WINDOW;
/// Largest message of the internal service (Raft snapshots, forwarded commands).
const INTERNAL_MESSAGE_LIMIT: usize = 256 << 20;

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
    let dir = config.data_dir.clone();
    let secret_file = dir.join("cluster.secret");
    let secret = if !config.cluster_secret.is_empty() {
        config.cluster_secret.clone()
    } else {
        let f = secret_file.clone();
        tokio::task::spawn_blocking(move || std::fs::read_to_string(f))
            .await?
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let join = config.join.clone();
    let node = Node::open(config, advertise, secret.clone()).await?;
    node.disk.follow(Duration::from_secs(1));
    let (supervisor, supervisor_handle) = Actor::spawn(
        Some("node-supervisor".into()),
        NodeSupervisor,
        node.actor_deps(),
    )
    .await
    .context("cannot start the node supervisor")?;

    let limit = node.config.largest_message() as usize;
    let streams = StreamGate::new(node.config.max_streams, node.config.max_streams_per_tenant);
    let storage = StorageServer::new(StorageService::new(StorageDeps {
        sm: node.sm.clone(),
        cluster: node.cluster.clone(),
        reads: node.reads.clone(),
        tiering: node.tiering.clone(),
        sup: supervisor.clone(),
        config: node.config.clone(),
        budget: node.budget.clone(),
        streams,
    }))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let report = node.report();
    let admin = AdminServer::new(AdminService::new(AdminDeps {
        sm: node.sm.clone(),
        cluster: node.cluster.clone(),
        tiering: node.tiering.clone(),
        report: report.clone(),
        sup: supervisor.clone(),
        grpc_address: format!("http://{grpc_addr}"),
        data_dir: dir.display().to_string(),
        started: node.started,
    }))
    .max_decoding_message_size(limit);
    let internal = ClusterServer::new(ClusterService::new(node.cluster.clone(), report))
        .max_decoding_message_size(INTERNAL_MESSAGE_LIMIT)
        .max_encoding_message_size(INTERNAL_MESSAGE_LIMIT);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StorageServer<StorageService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(strata_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // HTTP/2 windows: a stream's window is what a client can send before the node reads (the
    // ingress layer reads a chunk only once it has memory for it), so it is kept small; the
    // connection window covers all of a connection's streams (see CONNECTION_WINDOW).
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .tcp_nodelay(true)
        .layer(IngressLayer::new(
            node.budget.clone(),
            limit,
            INTERNAL_MESSAGE_LIMIT,
        ))
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
        crate::http::Probe {
            node_id: node.config.node_id.clone(),
            raft: node.cluster.raft.clone(),
            disk: node.disk.clone(),
            blocks: node.blocks.clone(),
            budget: node.budget.clone(),
            started: node.started,
        },
    ));
    tokio::spawn(metrics::follow_raft(node.cluster.raft.clone()));

    let member = bootstrap(&node, mode, init, &join, &secret_file).await?;
    let mut first = FirstRun {
        admin_token: None,
        tenant_token: None,
    };
    // The node that creates a cluster (dev, --init) also creates its first credentials; after
    // a read barrier, so a restarted node whose replica lags never makes a second set.
    if member && join.is_empty() && (mode == Mode::Dev || init) {
        match node.cluster.linearize().await {
            Ok(()) => first = first_run(&node, mode).await?,
            Err(e) => {
                tracing::warn!(error = %e, "first-run credentials not checked: no quorum yet")
            }
        }
    }
    let creator = member && join.is_empty() && (mode == Mode::Dev || init);
    let transport = if member {
        Some(tokio::spawn(start_transport(
            node.sm.clone(),
            node.cluster.clone(),
            node.blocks.clone(),
            node.config.data_dir.clone(),
            node.config.node_id.clone(),
            grpc_addr,
        )))
    } else {
        None
    };
    if creator {
        let dev_single = mode == Mode::Dev && dev_nodes <= 1;
        if let Err(e) = initial_layout(&node, dev_single).await {
            tracing::warn!(error = %e, "could not put this node in the layout");
        }
    }
    write_node_file(&dir, grpc_addr, metrics_addr, &node.config.node_id).await?;
    banner(&node.config, mode, grpc_addr, metrics_addr, &first);
    let _peers = if mode == Mode::Dev && dev_nodes > 1 {
        let peers = DevPeers::start(&node, dev_nodes).await?;
        dev_layout(&node).await?;
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
    node.blocks.close_transport();
    if let Some(t) = transport {
        t.abort();
    }
    stop_actors(supervisor, supervisor_handle).await;
    let _ = node.cluster.raft.shutdown().await;
    node.sm.flush().await?;
    let _ = tokio::fs::remove_file(dir.join("node.json")).await;
    result.context("gRPC server failed")
}

/// Brings an uninitialized node into a cluster: joins through `join`, or (dev mode, --init)
/// starts a new one-node cluster with a fresh secret. Returns whether the node is now a
/// member of a cluster.
async fn bootstrap(
    node: &Node,
    mode: Mode,
    init: bool,
    join: &str,
    secret_file: &Path,
) -> anyhow::Result<bool> {
    let cluster = &node.cluster;
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
async fn start_transport(
    sm: Arc<StateMachine>,
    cluster: Arc<Cluster>,
    blocks: Arc<BlockManager>,
    data_dir: std::path::PathBuf,
    node_name: String,
    grpc_addr: SocketAddr,
) {
    let mut attempt = 0u32;
    loop {
        match try_start_transport(&sm, &cluster, &blocks, &data_dir, &node_name, grpc_addr).await {
            Ok(()) => return,
            Err(e) => {
                attempt += 1;
                if attempt % 10 == 1 {
                    tracing::warn!(error = %e, "peer transport not up yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn try_start_transport(
    sm: &StateMachine,
    cluster: &Cluster,
    blocks: &Arc<BlockManager>,
    data_dir: &Path,
    node_name: &str,
    grpc_addr: SocketAddr,
) -> anyhow::Result<()> {
    let ca = match sm.cluster_ca()? {
        Some(ca) => ca,
        None => {
            cluster.linearize().await?;
            if sm.cluster_ca()?.is_none() {
                let ca = tls::new_ca()?;
                cluster
                    .propose(Command::SetClusterCa {
                        cert_pem: ca.cert_pem,
                        key_pem: ca.key_pem,
                    })
                    .await?;
                tracing::info!("created the cluster CA for the peer transport");
            }
            sm.cluster_ca()?
                .ok_or_else(|| anyhow::anyhow!("the cluster CA is not in the metadata"))?
        }
    };
    let dir = data_dir.to_owned();
    let name = format!("{node_name} (raft id {})", cluster.id);
    let identity = tokio::task::spawn_blocking(move || -> anyhow::Result<tls::Identity> {
        if let Some(i) = tls::Identity::load(&dir, &ca.cert_pem) {
            return Ok(i);
        }
        let i = tls::Identity::create(&dir, &ca, &name)?;
        tracing::info!(dir = %dir.join("tls").display(), "signed this node's certificate with the cluster CA");
        Ok(i)
    })
    .await??;
    let mut endpoint = quinn::Endpoint::server(identity.server_config()?, grpc_addr)
        .with_context(|| format!("cannot listen for QUIC on udp/{grpc_addr}"))?;
    endpoint.set_default_client_config(identity.client_config()?);
    tokio::spawn(crate::peer::server::serve(
        endpoint.clone(),
        Arc::new(PeerService(blocks.clone())),
    ));
    blocks.set_peers(Arc::new(crate::peer::PeerClient::new(endpoint)));
    tracing::info!(addr = %grpc_addr, "peer transport (QUIC, mutual TLS) listening on udp/{grpc_addr}");
    Ok(())
}

/// This node's capacity weight: the configured one, or its data disk's size.
fn own_capacity(config: &Config, disk: &DiskSpace) -> u64 {
    if config.capacity > 0 {
        return config.capacity;
    }
    match disk.total() {
        0 => 1 << 40,
        t => t,
    }
}

/// The node that creates a cluster puts itself in the layout (version 1), so a new cluster
/// stores chunks at once. A single-node `dev` cluster keeps one copy of each chunk.
async fn initial_layout(node: &Node, dev_single: bool) -> anyhow::Result<()> {
    let state = node.sm.layout()?;
    if state.current.version > 0 || state.staged.is_some() {
        return Ok(());
    }
    let (r, w) = if dev_single {
        (1, 1)
    } else {
        (node.config.replication, node.config.write_quorum)
    };
    let cmd = Command::Batch(vec![
        Command::StageLayout(LayoutChange::Assign {
            node: node.cluster.id,
            zone: node.config.zone.clone(),
            capacity: own_capacity(&node.config, &node.disk),
        }),
        Command::StageLayout(LayoutChange::Replication {
            replication: r,
            write_quorum: w,
        }),
        Command::ApplyLayout { version: 1 },
    ]);
    batch_ok(node.cluster.propose(cmd).await?)?;
    tracing::info!(
        replication = r,
        write_quorum = w,
        "created layout version 1 with this node"
    );
    Ok(())
}

/// Every member of a new `dev --nodes N` cluster goes into the layout, in one version.
async fn dev_layout(node: &Node) -> anyhow::Result<()> {
    let state = node.sm.layout()?;
    let voters = node.cluster.voters();
    if voters.iter().all(|v| state.current.nodes.contains_key(v)) {
        return Ok(());
    }
    let mut cmds: Vec<Command> = voters
        .iter()
        .filter(|v| !state.current.nodes.contains_key(v))
        .map(|v| {
            Command::StageLayout(LayoutChange::Assign {
                node: *v,
                zone: node.config.zone.clone(),
                capacity: own_capacity(&node.config, &node.disk),
            })
        })
        .collect();
    cmds.push(Command::ApplyLayout {
        version: state.current.version + 1,
    });
    batch_ok(node.cluster.propose(Command::Batch(cmds)).await?)?;
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
    async fn start(node: &Node, n: usize) -> anyhow::Result<DevPeers> {
        let base = node
            .config
            .data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let exe = std::env::current_exe()?;
        let local_cold = node
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
                node.config.listen.ip(),
                node.config.listen.port().saturating_add(k as u16 - 1),
            );
            let metrics = std::net::SocketAddr::new(
                node.config.metrics_listen.ip(),
                node.config
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
                    &node.cluster.addr,
                ])
                .env("STRATA_CLUSTER_SECRET", node.cluster.peers.secret())
                .env("STRATA_LOG", &node.config.log)
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
            let voters = node.cluster.voters().len();
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

/// A single-node cluster on `config.data_dir`, initialized and leading, without gRPC or a peer
/// transport: for tests and tools that drive the actors directly.
pub async fn open_single_node(config: Config) -> anyhow::Result<Node> {
    let node = Node::open(config, "http://127.0.0.1:1".into(), auth::new_token()).await?;
    node.cluster.init_single().await?;
    Ok(node)
}

/// Stops the supervisor and its children, waiting at most a few seconds.
async fn stop_actors(supervisor: ActorRef<SupervisorMsg>, handle: tokio::task::JoinHandle<()>) {
    supervisor.stop(Some("shutdown".into()));
    if tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .is_err()
    {
        tracing::warn!("actors did not stop within 10 s");
    }
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

async fn first_run(node: &Node, mode: Mode) -> anyhow::Result<FirstRun> {
    let mut first = FirstRun {
        admin_token: None,
        tenant_token: None,
    };
    let dir = &node.config.data_dir;
    if !node.sm.has_admin_token()? {
        let token = auth::new_token();
        node.cluster
            .propose(Command::CreateAdminToken {
                token: TokenHash::of(&token),
                now_ms: now_ms(),
            })
            .await?;
        write_secret(&dir.join("admin.token"), &token)?;
        first.admin_token = Some(token);
    }
    if mode == Mode::Dev && node.sm.counts()?.tenants == 0 {
        let (_, token) = create_tenant(&node.cluster, "default").await?;
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
async fn write_node_file(
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
    tokio::fs::write(&tmp, body).await?;
    tokio::fs::rename(tmp, dir.join("node.json")).await?;
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
