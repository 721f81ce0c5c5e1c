//! Starting and stopping a node: open the stores, build the node's parts (the one place that
//! does), start the actors, bind gRPC and metrics, create first-run credentials, serve until
//! shutdown, then drain.

use crate::workers::Board;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use ractor::{Actor, ActorRef};

use strata_cluster::state_machine::open_db;
use strata_cluster::{Command, LayoutChange, StateMachine, TokenHash};
use strata_proto::v1::admin_server::AdminServer;
use strata_proto::v1::cluster_server::ClusterServer;
use strata_proto::v1::storage_server::StorageServer;
use tokio::net::TcpListener;

use crate::actors::supervisor::{ActorDeps, NodeSupervisor, SupervisorMsg};
use crate::blocks::{BlockConfig, BlockManager, MemberBook, PeerService};
use crate::budget::MemoryBudget;
use crate::chunk_store::ChunkStore;
use crate::clock::now_ms;
use crate::config::Config;
use crate::disk::DiskSpace;
use crate::peer::tls as peer_tls;
use crate::raft::Cluster;
use crate::reads::Reads;
use crate::service::admin::{AdminDeps, AdminService, create_tenant};
use crate::service::cluster::ClusterService;
use crate::service::identity::{self, Signer};
use crate::service::ingress::{IngressLayer, StreamGate};
use crate::service::layout::NodeReport;
use crate::service::limits::TenantLimits;
use crate::service::storage::{StorageDeps, StorageService};
use crate::tiering::Tiering;
use crate::tls::listener::incoming;
use crate::tls::pki::{self, Ca};
use crate::tls::{Identity, NodeTls};
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
    /// Opens the stores and builds every part, with Raft started at `advertise` and TLS with
    /// `identity`.
    async fn open(config: Config, advertise: String, identity: Identity) -> anyhow::Result<Node> {
        let config = Arc::new(config);
        let dir = config.data_dir.clone();
        let api_cert = config.tls.clone();
        let (db, sm, disk, client_api) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create data directory {}", dir.display()))?;
                let meta = dir.join("meta");
                let db = open_db(&meta)
                    .with_context(|| format!("cannot open metadata in {}", meta.display()))?;
                let sm = Arc::new(StateMachine::with_db(db.clone())?);
                let client_api = if api_cert.cert.as_os_str().is_empty() {
                    None
                } else {
                    let read = |p: &Path| {
                        std::fs::read_to_string(p)
                            .with_context(|| format!("cannot read {}", p.display()))
                    };
                    Some((read(&api_cert.cert)?, read(&api_cert.key)?))
                };
                Ok((db, sm, DiskSpace::new(dir), client_api))
            })
            .await??;
        let revoked = {
            let sm = sm.clone();
            Arc::new(move |node: u64| sm.is_revoked(node).unwrap_or(true)) as crate::tls::Revoked
        };
        let tls = NodeTls::new(identity, client_api, revoked)?;
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
                tls,
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
        format!("https://{grpc_addr}")
    } else {
        config.advertise.clone()
    };
    if config.advertise.is_empty() && grpc_addr.ip().is_unspecified() {
        tracing::warn!(
            "listening on {grpc_addr} without `advertise`: other nodes will be told {advertise}, which they cannot reach"
        );
    }
    let dir = config.data_dir.clone();
    let names = identity::node_names(&advertise, grpc_addr, &config.tls.names);
    let creates = config.join.is_empty() && (mode == Mode::Dev || init);
    let id = obtain_identity(&config, &names, creates).await?;
    let ca_pem = id.ca_pem.clone();
    let join = config.join.clone();
    let plaintext =
        config.insecure_plaintext || (mode == Mode::Dev && grpc_addr.ip().is_loopback());
    if mode == Mode::Dev && !plaintext {
        tracing::warn!(
            "dev mode on a non-loopback address: the API accepts TLS only (set insecure_plaintext to allow plaintext)"
        );
    }
    let node = Node::open(config, advertise, id).await?;
    let signer = {
        let (dir, backup, lifetime) = (
            dir.clone(),
            node.config.tls.ca_key.clone(),
            node.config.tls.cert_lifetime,
        );
        Arc::new(
            tokio::task::spawn_blocking(move || Signer::load(&dir, &backup, &ca_pem, lifetime))
                .await??,
        )
    };
    let tls = node.cluster.peers.tls().clone();
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
        limits: Arc::new(TenantLimits::new(
            node.sm.clone(),
            &node.config.metrics_tenants,
        )),
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
        grpc_address: format!("{}://{grpc_addr}", if plaintext { "http" } else { "https" }),
        data_dir: dir.display().to_string(),
        started: node.started,
    }))
    .max_decoding_message_size(limit);
    let internal = ClusterServer::new(ClusterService::new(
        node.cluster.clone(),
        report,
        signer.clone(),
    ))
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
        .serve_with_incoming_shutdown(
            incoming(grpc, tls.grpc_server_config()?, plaintext),
            async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            },
        );
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
    tokio::spawn(crate::service::limits::publish_usage(
        node.sm.clone(),
        node.config.metrics_tenants.clone(),
        Duration::from_secs(10),
    ));

    bootstrap(&node, mode, init, &join).await?;
    let mut first = FirstRun {
        admin_token: None,
        tenant_token: None,
    };
    // The node that creates a cluster (dev, --init) also creates its first credentials; after
    // a read barrier, so a restarted node whose replica lags never makes a second set.
    if creates {
        match node.cluster.linearize().await {
            Ok(()) => first = first_run(&node, mode).await?,
            Err(e) => {
                tracing::warn!(error = %e, "first-run credentials not checked: no quorum yet")
            }
        }
    }
    if signer.holds_key() {
        let register = register_signer(node.sm.clone(), node.cluster.clone(), tls.clone());
        if creates && node.sm.cluster_ca()?.is_none() {
            // A new cluster: record its CA before anyone can ask for a join token.
            register.await;
        } else {
            tokio::spawn(register);
        }
    }
    let transport = start_transport(&tls, &node.blocks, grpc_addr)?;
    let renewals = tokio::spawn(identity::renew_loop(
        tls.clone(),
        node.cluster.clone(),
        node.sm.clone(),
        signer.clone(),
        dir.clone(),
        names,
    ));
    if creates {
        let dev_single = mode == Mode::Dev && dev_nodes <= 1;
        if let Err(e) = initial_layout(&node, dev_single).await {
            tracing::warn!(error = %e, "could not put this node in the layout");
        }
    }
    let endpoint = format!("{}://{grpc_addr}", if plaintext { "http" } else { "https" });
    let ca_hash = crate::tls::pki::ca_hash(&tls.identity().ca);
    write_node_file(
        &dir,
        &endpoint,
        metrics_addr,
        &node.config.node_id,
        &ca_hash,
    )
    .await?;
    banner(
        &node.config,
        mode,
        &endpoint,
        metrics_addr,
        &first,
        &ca_hash,
    );
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
    transport.abort();
    renewals.abort();
    stop_actors(supervisor, supervisor_handle).await;
    let _ = node.cluster.raft.shutdown().await;
    node.sm.flush().await?;
    let _ = tokio::fs::remove_file(dir.join("node.json")).await;
    result.context("gRPC server failed")
}

/// This node's certificate: the one saved in its data directory; else, on the node that
/// creates a cluster, one signed by a new cluster CA (whose key stays in `tls/ca.key`); else
/// one from enrollment through `join` with the join token, the CA pinned by `ca_hash`. An
/// expired certificate is replaced the same way (the signer signs its own again).
async fn obtain_identity(
    config: &Config,
    names: &[String],
    creates: bool,
) -> anyhow::Result<Identity> {
    let dir = config.data_dir.clone();
    let lifetime = config.tls.cert_lifetime;
    let external = config.tls.ca_key.clone();
    let names_owned = names.to_vec();
    let local = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Option<Identity>)> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let raft_id = crate::raft::raft_id(&dir)?;
        let saved = Identity::load(&dir)?;
        if let Some(i) = &saved
            && i.node() != Some(raft_id)
        {
            anyhow::bail!(
                "the certificate in {} is not this node's (raft id {raft_id}): it was copied from another node or made by an older version; move that directory away and join again with a join token",
                dir.join("tls").display()
            );
        }
        let fresh = |i: &Identity| i.facts.not_after > SystemTime::now() + Duration::from_secs(5);
        if let Some(i) = saved.filter(fresh) {
            return Ok((raft_id, Some(i)));
        }
        let key_path = identity::ca_key_path(&dir);
        let ca = if key_path.exists() {
            let cert = std::fs::read_to_string(dir.join("tls").join("ca.crt"))?;
            Some(Ca::load(&cert, &std::fs::read_to_string(&key_path)?)?)
        } else if creates && !dir.join("tls").join("ca.crt").exists() {
            let ca = if external.as_os_str().is_empty() {
                let ca = Ca::generate()?;
                tracing::info!(key = %key_path.display(), "created the cluster CA; back up its key (it signs every node certificate)");
                ca
            } else {
                // A CA made beforehand (`strata-node ca create`): its certificate is next to
                // the key.
                let cert_path = external.with_file_name("ca.crt");
                let read = |p: &Path| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))
                };
                let ca = Ca::load(&read(&cert_path)?, &read(&external)?)?;
                tracing::info!(key = %external.display(), "the cluster CA is the one given in tls.ca_key");
                ca
            };
            std::fs::create_dir_all(dir.join("tls"))?;
            crate::tls::write_atomically(&key_path, ca.key_pem().as_bytes(), 0o600)?;
            Some(ca)
        } else {
            None
        };
        let Some(ca) = ca else {
            return Ok((raft_id, None));
        };
        let (key, csr) = pki::new_key_and_csr()?;
        let cert = ca.sign(&csr, raft_id, &names_owned, lifetime)?;
        let id = Identity::from_pem(&ca.cert_pem, &cert, &key)?;
        id.save(&dir)?;
        Ok((raft_id, Some(id)))
    })
    .await??;
    let (raft_id, id) = local;
    if let Some(id) = id {
        return Ok(id);
    }
    let expired = config.data_dir.join("tls").join("node.key").exists();
    if config.join.is_empty() || config.join_token.is_empty() || config.ca_hash.is_empty() {
        if expired {
            anyhow::bail!(
                "this node's certificate has expired (it was down longer than tls.cert_lifetime allows): start it with --join <member URL> --join-token <token> --ca-hash <hash> (from `strata node token create` on a member) to get a new one"
            );
        }
        anyhow::bail!(
            "this node is not part of a cluster: start it with --init to create one, or with --join <member URL> --join-token <token> --ca-hash <hash> (from `strata node token create` on a member) to join one"
        );
    }
    tracing::info!(via = %config.join, "enrolling: asking the cluster for a certificate");
    let id = identity::enroll(
        identity::Enrollment {
            join: &config.join,
            token: &config.join_token,
            ca_hash: &config.ca_hash,
            raft_id,
            names: names.to_vec(),
        },
        Duration::from_secs(120),
    )
    .await?;
    let dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || id.save(&dir).map(|()| id)).await?
}

/// Brings an uninitialized node into a cluster: joins through `join` (with the certificate it
/// enrolled for), or (dev mode, --init) starts a new one-node cluster.
async fn bootstrap(node: &Node, mode: Mode, init: bool, join: &str) -> anyhow::Result<()> {
    let cluster = &node.cluster;
    if cluster.is_initialized().await {
        return Ok(());
    }
    if !join.is_empty() {
        tracing::info!(via = join, "joining the cluster");
        return cluster.join(join, Duration::from_secs(120)).await;
    }
    if mode == Mode::Dev || init {
        cluster.init_single().await?;
        tracing::info!(raft_id = cluster.id, "initialized a new cluster");
        return Ok(());
    }
    anyhow::bail!(
        "this node is not part of a cluster: start it with --init to create one, or with --join <member URL> --join-token <token> --ca-hash <hash> to join one"
    )
}

/// On the node holding the CA key: records the CA certificate (first start of a cluster) and
/// this node as the signer (also after a takeover from a key backup). Retries until a quorum
/// takes it.
async fn register_signer(sm: Arc<StateMachine>, cluster: Arc<Cluster>, tls: Arc<NodeTls>) {
    let ca_pem = tls.identity().ca_pem.clone();
    for attempt in 0u32.. {
        let done = async {
            cluster.linearize().await?;
            if sm.cluster_ca()?.is_none() {
                cluster
                    .propose(Command::SetClusterCa {
                        cert_pem: ca_pem.clone(),
                    })
                    .await?;
            }
            if sm.ca_signer()? != Some(cluster.id) {
                cluster
                    .propose(Command::SetSigner { node: cluster.id })
                    .await?;
                tracing::info!(
                    raft_id = cluster.id,
                    "this node signs the cluster's certificates"
                );
            }
            anyhow::Ok(())
        }
        .await;
        match done {
            Ok(()) => return,
            Err(e) => {
                if attempt % 10 == 0 {
                    tracing::warn!(error = %e, "cannot record the certificate signer yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Brings up the peer transport: the QUIC endpoint on UDP at the gRPC port, with mutual TLS
/// from the node's certificate.
fn start_transport(
    tls: &Arc<NodeTls>,
    blocks: &Arc<BlockManager>,
    grpc_addr: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut endpoint = quinn::Endpoint::server(peer_tls::server_config(tls)?, grpc_addr)
        .with_context(|| format!("cannot listen for QUIC on udp/{grpc_addr}"))?;
    endpoint.set_default_client_config(peer_tls::client_config(tls)?);
    let serving = tokio::spawn(crate::peer::server::serve(
        endpoint.clone(),
        Arc::new(PeerService(blocks.clone())),
        tls.clone(),
    ));
    blocks.set_peers(Arc::new(crate::peer::PeerClient::new(endpoint)));
    tracing::info!(addr = %grpc_addr, "peer transport (QUIC, mutual TLS) listening on udp/{grpc_addr}");
    Ok(serving)
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

/// A join token for `uses` nodes, valid ten minutes, with the CA hash.
async fn dev_join_token(node: &Node, uses: u32) -> anyhow::Result<(String, String)> {
    let ca_hash = crate::tls::pki::ca_hash(&node.cluster.peers.tls().identity().ca);
    let token = format!("sjt_{}", hex::encode(rand::random::<[u8; 24]>()));
    let now = now_ms();
    node.cluster
        .propose(Command::CreateJoinToken {
            token: TokenHash::of(&token),
            expires_ms: now + 600_000,
            uses,
            now_ms: now,
        })
        .await?;
    Ok((token, ca_hash))
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
        // One join token admits every other node; it travels to them in their environment.
        let (token, ca_hash) = dev_join_token(node, (n - 1) as u32).await?;
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
                .env("STRATA_JOIN_TOKEN", &token)
                .env("STRATA_CA_HASH", &ca_hash)
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
    let ca = Ca::generate()?;
    let (key, csr) = pki::new_key_and_csr()?;
    let cert = ca.sign(&csr, 1, &[], config.tls.cert_lifetime)?;
    let id = Identity::from_pem(&ca.cert_pem, &cert, &key)?;
    let node = Node::open(config, "https://127.0.0.1:1".into(), id).await?;
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

/// The join token configured on the node that creates a cluster admits this many nodes, for
/// this long.
const BOOTSTRAP_TOKEN_USES: u32 = 100;
const BOOTSTRAP_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

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
        // A join token given to the node that creates the cluster admits the nodes a
        // deployment tool starts with it (compose, Kubernetes): registered once, here.
        if !node.config.join_token.is_empty() {
            let now = now_ms();
            node.cluster
                .propose(Command::CreateJoinToken {
                    token: TokenHash::of(&node.config.join_token),
                    expires_ms: now + BOOTSTRAP_TOKEN_TTL.as_millis() as i64,
                    uses: BOOTSTRAP_TOKEN_USES,
                    now_ms: now,
                })
                .await?;
            tracing::info!(
                uses = BOOTSTRAP_TOKEN_USES,
                ttl = ?BOOTSTRAP_TOKEN_TTL,
                "registered the configured join token"
            );
        }
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

/// `node.json` in the data dir says where a running node listens and which CA signs its
/// certificate (scripts and tests read it).
async fn write_node_file(
    dir: &Path,
    grpc: &str,
    metrics: SocketAddr,
    node_id: &str,
    ca_hash: &str,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "node_id": node_id,
        "grpc": grpc,
        "metrics": format!("http://{metrics}/metrics"),
        "ca_file": dir.join("tls").join("ca.crt"),
        "ca_hash": ca_hash,
        "pid": std::process::id(),
    });
    let body = format!("{body}\n");
    let tmp = dir.join("node.json.tmp");
    tokio::fs::write(&tmp, body).await?;
    tokio::fs::rename(tmp, dir.join("node.json")).await?;
    Ok(())
}

fn banner(
    config: &Config,
    mode: Mode,
    grpc: &str,
    metrics: SocketAddr,
    first: &FirstRun,
    ca_hash: &str,
) {
    let dir = config.data_dir.display();
    println!(
        "Strata node {} is running ({}).",
        config.node_id,
        if mode == Mode::Dev { "dev" } else { "run" }
    );
    println!("  gRPC endpoint : {grpc}");
    println!("  metrics       : http://{metrics}/metrics");
    println!("  data dir      : {dir}");
    println!("  cluster CA    : {dir}/tls/ca.crt ({ca_hash})");
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
        println!("  export STRATA_ENDPOINT={grpc} STRATA_TOKEN=$(cat {dir}/tenant.token)");
        if grpc.starts_with("https") {
            println!("  export STRATA_CA_FILE={dir}/tls/ca.crt");
        }
        println!("  strata put ./some-file mybucket/some-file && strata ls mybucket");
    }
}
