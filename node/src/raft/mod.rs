//! This node's part in the Raft group that replicates metadata: starting Raft on the sled log
//! store and state machine, bootstrapping or joining a cluster, writes that reach the leader
//! from any node (forwarded, not redirected), and linearizable read barriers.

mod error;
pub mod network;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers};
use strata_cluster::raft::{CommandResult, LogStore, NodeId, Raft, SmStore};
use strata_cluster::{Command, Response, StateMachine};
use strata_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::disk::DiskSpace;
pub use error::{ClusterError, ClusterResult, WireError};
use network::{NetworkFactory, Peers};

/// How long a metadata write or read barrier may wait for a leader and a quorum.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest silence from the leader before a follower stands for election.
const ELECTION_TIMEOUT_MAX_MS: u64 = 1000;

/// Raft timing: heartbeats every 100 ms, elections after 500 to 1000 ms of silence (failover
/// measured at 1.4 to 1.9 s on this machine kind).
fn raft_config(snapshot_logs: u64) -> anyhow::Result<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "strata".into(),
        heartbeat_interval: 100,
        election_timeout_min: ELECTION_TIMEOUT_MAX_MS / 2,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        install_snapshot_timeout: 2000,
        // With entries of at most MAX_ENTRY_BYTES (one oversize command alone, at most
        // MAX_COMMAND_BYTES), an AppendEntries stays far below the internal message limit.
        max_payload_entries: 16,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_logs),
        max_in_snapshot_log_to_keep: (snapshot_logs / 5).min(1000),
        purge_batch_size: 256,
        ..Default::default()
    };
    Ok(c.validate()?)
}

pub struct Cluster {
    pub raft: Raft,
    pub id: NodeId,
    pub addr: String,
    pub peers: Peers,
    sm: Arc<StateMachine>,
    batcher: mpsc::Sender<Proposal>,
    leaderless: Leaderless,
    /// Free space of the metadata's filesystem, and the floor below which writes are refused
    /// (sled must never meet a full disk: it cannot recover from a failed write).
    disk: Arc<DiskSpace>,
    floor: u64,
}

/// Commands proposed at once from concurrent requests share one Raft entry, at most this many.
const MAX_BATCH: usize = 256;
/// Encoded bytes of commands sharing one entry (a command larger than this goes alone).
const MAX_ENTRY_BYTES: usize = 2 << 20;
/// Largest single command (a manifest of 65,536 chunks is about 2.4 MB).
pub const MAX_COMMAND_BYTES: usize = 8 << 20;
/// Batches being committed at once (more requests queue and form the next batches).
const BATCHES_IN_FLIGHT: usize = 4;
/// Proposals waiting for the batcher; more wait for room (each caller holds its command).
const PROPOSAL_QUEUE: usize = 4096;

/// A command waiting for the batcher, with its encoded size, and where its result goes.
struct Proposal {
    cmd: Command,
    bytes: usize,
    reply: oneshot::Sender<ClusterResult<(CommandResult, u64)>>,
}

/// The part of the cluster handle that writes: cheap to clone into batch tasks.
#[derive(Clone)]
struct Writer {
    raft: Raft,
    id: NodeId,
    peers: Peers,
    leaderless: Leaderless,
}

/// Groups concurrent proposals into `Command::Batch` entries: one Raft entry, one log flush
/// and one replication round for the whole group, at most MAX_BATCH commands and
/// MAX_ENTRY_BYTES encoded bytes.
async fn batcher(writer: Writer, mut rx: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    let mut held: Option<Proposal> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match held.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut group = vec![first];
        while group.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) if bytes + p.bytes > MAX_ENTRY_BYTES => {
                    held = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.bytes;
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if group.len() == 1 {
                if let Some(p) = group.pop() {
                    let _ = p.reply.send(writer.write(p.cmd).await);
                }
                return;
            }
            let n = group.len();
            let batch = Command::Batch(group.iter().map(|p| p.cmd.clone()).collect());
            match writer.write(batch).await {
                Ok((Ok(Response::Batch(results)), index)) if results.len() == n => {
                    for (p, r) in group.into_iter().zip(results) {
                        let _ = p.reply.send(Ok((r, index)));
                    }
                }
                Ok((other, _)) => {
                    for p in group {
                        let _ = p.reply.send(Err(ClusterError::Internal(format!(
                            "unexpected batch result: {other:?}"
                        ))));
                    }
                }
                Err(e) => {
                    let wire = WireError::from(&e);
                    for p in group {
                        let _ = p.reply.send(Err(wire.clone().into()));
                    }
                }
            }
        });
    }
}

/// Reads this node's Raft id from `<data>/raft-id`, choosing a random one at first start.
/// Blocking.
pub fn raft_id(dir: &Path) -> anyhow::Result<NodeId> {
    let path = dir.join("raft-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return s
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", path.display()));
    }
    let id = rand::random::<u64>() >> 1 | 1;
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

impl Cluster {
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        dir: &Path,
        snapshot_logs: u64,
        db: &strata_cluster::state_machine::MetaDb,
        sm: Arc<StateMachine>,
        addr: String,
        tls: Arc<crate::tls::NodeTls>,
        disk: Arc<DiskSpace>,
        floor: u64,
    ) -> anyhow::Result<Cluster> {
        let id = raft_id(dir)?;
        let peers = Peers::new(tls);
        let log = LogStore::new(db).map_err(|e| anyhow::anyhow!("raft log store: {e}"))?;
        let sm_store =
            SmStore::new(sm.clone()).map_err(|e| anyhow::anyhow!("raft state machine: {e}"))?;
        let raft = Raft::new(
            id,
            Arc::new(raft_config(snapshot_logs)?),
            NetworkFactory {
                peers: peers.clone(),
            },
            log,
            sm_store,
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start raft: {e}"))?;
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE);
        let leaderless = Leaderless::follow(raft.clone());
        let writer = Writer {
            raft: raft.clone(),
            id,
            peers: peers.clone(),
            leaderless: leaderless.clone(),
        };
        tokio::spawn(batcher(writer, rx));
        Ok(Cluster {
            raft,
            id,
            addr,
            peers,
            sm,
            batcher: tx,
            leaderless,
            disk,
            floor,
        })
    }

    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Makes this node a cluster of one (it becomes leader at once).
    pub async fn init_single(&self) -> anyhow::Result<()> {
        let members = BTreeMap::from([(self.id, BasicNode::new(&self.addr))]);
        match self.raft.initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => anyhow::bail!("cannot initialize the cluster: {e}"),
        }
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| anyhow::anyhow!("no leader after initializing: {e}"))?;
        Ok(())
    }

    /// Asks the cluster at `via` to add this node (as a learner, then a voter), retrying until
    /// `deadline`. The call is mutual TLS: the member checks that the certificate this node
    /// got at enrollment names the Raft id it asks to add.
    pub async fn join(&self, via: &str, deadline: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + deadline;
        loop {
            let result = async {
                let mut client = self.peers.client(via)?;
                client
                    .join(pb::JoinRequest {
                        raft_id: self.id,
                        address: self.addr.clone(),
                    })
                    .await
            }
            .await;
            match result {
                Ok(_) => return Ok(()),
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                    ) =>
                {
                    anyhow::bail!("{via} refused to add this node: {}", s.message())
                }
                Err(s) if Instant::now() >= until => {
                    anyhow::bail!("could not join the cluster through {via}: {}", s.message())
                }
                Err(s) => {
                    tracing::info!(via, error = %s.message(), "join not done yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Adds a node on the leader: as a learner (waiting until it has caught up), then as a
    /// voter through joint consensus.
    pub async fn add_node(&self, id: NodeId, addr: &str) -> ClusterResult<()> {
        let unavailable = |e: String| ClusterError::NoQuorum(format!("cannot add node {id}: {e}"));
        let members = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if members.voter_ids().any(|v| v == id) {
            return Ok(());
        }
        tokio::time::timeout(
            Duration::from_secs(120),
            self.raft.add_learner(id, BasicNode::new(addr), true),
        )
        .await
        .map_err(|_| unavailable("the new node did not catch up in time".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
        tokio::time::timeout(
            QUORUM_TIMEOUT * 4,
            self.raft
                .change_membership(ChangeMembers::AddVoterIds([id].into()), false),
        )
        .await
        .map_err(|_| unavailable("membership change timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
        Ok(())
    }

    /// Removes a node (on the leader) through joint consensus. The last voter stays.
    pub async fn remove_node(&self, id: NodeId) -> ClusterResult<()> {
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let is_voter = membership.voter_ids().any(|v| v == id);
        let is_node = membership.get_node(&id).is_some();
        if !is_node {
            return Err(ClusterError::NotMember(id));
        }
        if is_voter && membership.voter_ids().count() == 1 {
            return Err(ClusterError::LastVoter(id));
        }
        // Revoke first: from this commit on, every member refuses the node's handshakes, so it
        // can neither rejoin nor fetch chunks while (and after) it leaves the membership.
        let (revoked, _) = self
            .write(Command::RevokeNode {
                node: id,
                now_ms: crate::clock::now_ms(),
            })
            .await?;
        revoked?;
        let change = if is_voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        tokio::time::timeout(
            QUORUM_TIMEOUT * 4,
            self.raft.change_membership(change, false),
        )
        .await
        .map_err(|_| ClusterError::NoQuorum("membership change timed out".into()))?
        .map_err(|e| ClusterError::NoQuorum(format!("cannot remove node {id}: {e}")))?;
        Ok(())
    }

    /// Runs a membership change on the leader, forwarding it there from a follower.
    pub async fn on_leader<T, L, F>(&self, local: L, remote: F) -> ClusterResult<T>
    where
        L: std::future::Future<Output = ClusterResult<T>>,
        F: AsyncFnOnce(network::PeerClient) -> Result<T, tonic::Status>,
    {
        if self.is_leader() {
            return local.await;
        }
        let Some((leader, addr)) = self.leader() else {
            return Err(ClusterError::NoQuorum("no leader is known".into()));
        };
        if leader == self.id {
            return local.await;
        }
        let client = self
            .peers
            .client(&addr)
            .map_err(|s| ClusterError::NoQuorum(s.message().to_owned()))?;
        remote(client).await.map_err(|s| {
            ClusterError::Leader(WireError {
                code: s.code() as i32,
                message: s.message().to_owned(),
            })
        })
    }

    /// Every member (voters and learners) with its gRPC address, as this node knows them.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// The member that signs certificates (it holds the CA key), with its address.
    pub fn signer(&self) -> Option<(NodeId, String)> {
        let id = self.sm.ca_signer().ok().flatten()?;
        self.members().get(&id).map(|a| (id, a.clone()))
    }

    /// The voting members.
    pub fn voters(&self) -> Vec<NodeId> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().voter_ids().collect()
    }

    /// The leader's address, if one is known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let node = m
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, node))
    }

    /// Whether this node leads and has heard from a quorum recently.
    fn leader_without_quorum(&self) -> bool {
        leader_without_quorum(&self.raft)
    }

    /// Commits `cmd` through Raft from any node (on a follower it is forwarded to the
    /// leader), batched with concurrent proposals. Returns its result and log index.
    pub async fn write(&self, cmd: Command) -> ClusterResult<(CommandResult, u64)> {
        let bytes = codec::encode("command", &cmd)?.len();
        if bytes > MAX_COMMAND_BYTES {
            return Err(ClusterError::TooLarge {
                bytes,
                limit: MAX_COMMAND_BYTES,
            });
        }
        let free = self.disk.free();
        if free < self.floor && !frees_space(&cmd) {
            return Err(ClusterError::DiskFull {
                free,
                floor: self.floor,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.batcher
            .send(Proposal { cmd, bytes, reply })
            .await
            .map_err(|_| ClusterError::ShuttingDown)?;
        rx.await.map_err(|_| ClusterError::ShuttingDown)?
    }

    /// Commits a metadata command through Raft (from any node) and waits until this node has
    /// applied it, so what this node reads next includes it. Durable once it returns: the
    /// leader acknowledges only entries flushed on a quorum's logs. A refusal by the state
    /// machine is `Rejected`.
    pub async fn propose(&self, cmd: Command) -> ClusterResult<Response> {
        let (result, index) = self.write(cmd).await?;
        self.wait_applied(index).await?;
        Ok(result?)
    }

    /// Waits until this node has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64) -> ClusterResult<()> {
        self.raft
            .wait(Some(QUORUM_TIMEOUT))
            .applied_index_at_least(Some(index), "local apply")
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Behind(e.to_string()))
    }

    /// A linearizable read barrier: after it, local reads see every write committed before
    /// the call. On a follower, the leader confirms its leadership and names its commit point.
    pub async fn linearize(&self) -> ClusterResult<()> {
        let until = Instant::now() + QUORUM_TIMEOUT;
        loop {
            if self.leaderless.too_long() {
                return Err(ClusterError::NoQuorum(
                    "this node has known no leader for over two election timeouts: a consistent read is not possible now".into(),
                ));
            }
            let forward = match self.read_index_here(until).await? {
                Ok(_) => return Ok(()),
                Err(forward) => forward,
            };
            let left = until.saturating_duration_since(Instant::now());
            let leader = forward.leader_id.filter(|l| *l != self.id);
            if let (Some(leader), Some(node)) = (leader, forward.leader_node) {
                let asked = async {
                    let mut client = self.peers.client(&node.addr)?;
                    let mut req = tonic::Request::new(pb::ReadIndexRequest {});
                    req.set_timeout(left);
                    client.read_index(req).await
                };
                let asked = tokio::select! {
                    asked = asked => asked.ok(),
                    () = leader_moved_from(&self.raft, leader) => {
                        metrics::counter!(crate::metrics::FORWARDS_LEFT, "kind" => "read").increment(1);
                        None // ask the new one
                    }
                };
                if let Some(r) = asked {
                    return self.wait_applied(r.into_inner().index).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The read index when this node leads (openraft's `ensure_linearizable`: its leadership
    /// confirmed by a quorum answering one round of heartbeats), or where to forward. openraft
    /// gives that round one heartbeat interval (100 ms), which a loaded machine misses now and
    /// then (a 3-node leader with one peer stopped then fails a read in 0.2 s), so a round
    /// short of a quorum is retried until `until`, unless the leader has heard from no quorum
    /// for two election timeouts: then it is cut off, and the caller hears so at once.
    pub async fn read_index_here(
        &self,
        until: Instant,
    ) -> ClusterResult<Result<u64, ForwardToLeader<NodeId, BasicNode>>> {
        let no_quorum = || ClusterError::NoQuorum("a consistent read is not possible now".into());
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.leader_without_quorum() {
                return Err(no_quorum());
            }
            match tokio::time::timeout(left, self.raft.ensure_linearizable()).await {
                Err(_) => return Err(no_quorum()),
                Ok(Ok(log_id)) => return Ok(Ok(log_id.map_or(0, |l| l.index))),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Ok(Err(f));
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                    metrics::counter!(crate::metrics::READ_INDEX_RETRIES).increment(1);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(e)) => {
                    return Err(ClusterError::NoQuorum(format!(
                        "consistent read failed: {e}"
                    )));
                }
            }
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state.is_leader()
    }
}

/// Commands that give space back: allowed even when the metadata disk is nearly full, so an
/// operator can always delete and abort their way out.
fn frees_space(cmd: &Command) -> bool {
    match cmd {
        Command::AbortSession { .. }
        | Command::TrashObject { .. }
        | Command::PurgeObject { .. }
        | Command::ChunkCollected { .. } => true,
        Command::Batch(cmds) => cmds.iter().all(frees_space),
        _ => false,
    }
}

impl Writer {
    /// Whether this node leads and has not heard from a quorum recently.
    fn leader_without_quorum(&self) -> bool {
        leader_without_quorum(&self.raft)
    }

    /// Commits `cmd` (one Raft entry), forwarding it to the leader from a follower. A definite
    /// answer from the leader (including its refusal) is returned as it is. A leader that could
    /// not be reached is retried until QUORUM_TIMEOUT; one that may have received the command
    /// and then stopped answering (or stopped leading) is retried only for a command that is
    /// safe to apply twice (`Command::repeat_safe`): the next leader may commit the first copy.
    async fn write(&self, cmd: Command) -> ClusterResult<(CommandResult, u64)> {
        let until = Instant::now() + QUORUM_TIMEOUT;
        // Once a forwarded copy may have reached a leader, a failure cannot say "not committed".
        let mut maybe_sent = false;
        let no_quorum = |maybe_sent: bool| {
            ClusterError::NoQuorum(if maybe_sent {
                "no leader, or too few nodes reachable: the leader stopped answering after the write was sent, so it may or may not be committed".into()
            } else {
                "no leader, or too few nodes reachable: the write was not committed".into()
            })
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.leader_without_quorum() || self.leaderless.too_long() {
                return Err(no_quorum(maybe_sent));
            }
            // A leader that loses its quorum (cut off) or its leadership while the entry waits
            // answers then, not at the deadline: appended here, it may be committed later.
            let written = tokio::select! {
                r = tokio::time::timeout(left, self.raft.client_write(cmd.clone())) => r,
                () = cut_off(&self.raft) => return Err(no_quorum(true)),
            };
            match written {
                Err(_) => return Err(no_quorum(true)), // appended here, maybe committed later
                Ok(Ok(resp)) => return Ok((resp.data, resp.log_id.index)),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    if let (Some(leader), Some(node)) =
                        (f.leader_id.filter(|l| *l != self.id), f.leader_node)
                    {
                        let forwarded = tokio::select! {
                            r = self.forward(&node.addr, &cmd, left) => r,
                            () = leader_moved_from(&self.raft, leader) => {
                                metrics::counter!(crate::metrics::FORWARDS_LEFT, "kind" => "write").increment(1);
                                Err(Undelivered::Maybe(format!(
                                    "node {leader} stopped leading while the write was forwarded to it"
                                )))
                            }
                        };
                        match forwarded {
                            Ok(Ok(r)) => return Ok(r),
                            Ok(Err(refused)) => return Err(refused.into()),
                            Err(Undelivered::No(e)) => {
                                tracing::debug!(error = %e, "the leader could not be reached; retrying");
                            }
                            Err(Undelivered::Maybe(e)) if cmd.repeat_safe() => {
                                maybe_sent = true;
                                tracing::debug!(error = %e, "forwarding to the leader failed; retrying");
                            }
                            Err(Undelivered::Maybe(e)) => {
                                tracing::debug!(error = %e, "forwarding to the leader failed");
                                return Err(no_quorum(true));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => {
                    return Err(ClusterError::NoQuorum(format!(
                        "metadata write failed: {e}"
                    )));
                }
            }
        }
    }

    /// Sends `cmd` to the leader. The outer error is a transport failure: `No` when the command
    /// did not leave this node (no connection), `Maybe` when the leader may have received it.
    /// The inner one is the leader's answer (its code and message, returned as they are).
    async fn forward(
        &self,
        leader: &str,
        cmd: &Command,
        left: Duration,
    ) -> Result<Result<(CommandResult, u64), WireError>, Undelivered> {
        let mut client = self
            .peers
            .client(leader)
            .map_err(|s| Undelivered::No(s.to_string()))?;
        let data = codec::encode("command", cmd).map_err(|e| Undelivered::No(e.to_string()))?;
        let mut req = tonic::Request::new(pb::RaftPayload { data: data.into() });
        req.set_timeout(left);
        let reply = client.propose(req).await.map_err(|s| {
            if never_connected(&s) {
                Undelivered::No(s.message().to_owned())
            } else {
                Undelivered::Maybe(s.message().to_owned())
            }
        })?;
        codec::decode("forwarded write result", &reply.into_inner().data)
            .map_err(|e| Undelivered::Maybe(e.to_string()))
    }
}

/// Why a forwarded write got no answer from the leader.
enum Undelivered {
    /// It never left this node.
    No(String),
    /// The leader may have received (and committed) it.
    Maybe(String),
}

/// Whether a failed call never reached the peer: tonic's channel could not connect.
fn never_connected(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether `raft` leads but has heard from no quorum for two election timeouts: it is cut off,
/// and a write or read barrier through it cannot succeed now.
fn leader_without_quorum(raft: &Raft) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow(); // read in place: the metrics hold the membership and progress maps
    m.state.is_leader()
        && m.millis_since_quorum_ack
            .is_none_or(|ms| ms > 2 * ELECTION_TIMEOUT_MAX_MS)
}

/// Since when this node has known no leader (None while it knows one), kept up to date by a
/// task that follows Raft's metrics. A node cut off from the majority (or one whose cluster
/// lost its quorum) then answers at once instead of holding every request for the whole
/// QUORUM_TIMEOUT.
#[derive(Clone)]
struct Leaderless(Arc<std::sync::Mutex<Option<Instant>>>);

impl Leaderless {
    fn follow(raft: Raft) -> Leaderless {
        let since = Leaderless(Arc::new(std::sync::Mutex::new(None)));
        let state = since.clone();
        tokio::spawn(async move {
            let mut rx = raft.metrics();
            loop {
                let none = rx.borrow_and_update().current_leader.is_none();
                {
                    let mut at = state.0.lock().unwrap_or_else(|p| p.into_inner());
                    match (none, *at) {
                        (true, None) => *at = Some(Instant::now()),
                        (false, Some(_)) => *at = None,
                        _ => {}
                    }
                }
                if rx.changed().await.is_err() {
                    return; // Raft stopped
                }
            }
        });
        since
    }

    /// Whether this node has known no leader for longer than electing one normally takes
    /// (two election timeouts).
    fn too_long(&self) -> bool {
        let since = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        since.is_some_and(|t| t.elapsed() > Duration::from_millis(2 * ELECTION_TIMEOUT_MAX_MS))
    }
}

/// Resolves once this node, leading, has heard from no quorum for two election timeouts, or
/// stops leading after it led; never on a node that does not lead. (Polled: openraft
/// publishes metrics on changes, and a leader's silence is not one.)
async fn cut_off(raft: &Raft) {
    let mut led = false;
    loop {
        if raft.metrics().borrow().state.is_leader() {
            led = true;
            if leader_without_quorum(raft) {
                return;
            }
        } else if led {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resolves once this node no longer follows `from`: it knows another leader, or it has
/// started an election (no word from `from` for an election timeout). Metrics are published
/// a moment after Raft's own state changes, so a change counts once they have named `from`
/// (or an election timeout has passed without them doing so).
async fn leader_moved_from(raft: &Raft, from: NodeId) {
    let mut rx = raft.metrics();
    let mut followed = false;
    let grace = tokio::time::sleep(Duration::from_millis(ELECTION_TIMEOUT_MAX_MS));
    tokio::pin!(grace);
    let mut graced = false;
    loop {
        if rx.borrow_and_update().current_leader == Some(from) {
            followed = true;
        } else if followed || graced {
            return;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // Raft stopped: no change will come; the caller's deadline ends the wait.
                    return std::future::pending().await;
                }
            }
            () = &mut grace, if !graced => graced = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::never_connected;
    use strata_proto::v1::cluster_client::ClusterClient;

    /// A write that could not connect is known not to have been delivered; one whose peer
    /// took the connection and then closed it without an answer is not.
    #[tokio::test]
    async fn a_refused_connection_is_told_apart_from_a_lost_answer() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let call = |port: u16| async move {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("endpoint")
                    .connect_lazy();
            ClusterClient::new(channel)
                .propose(strata_proto::v1::RaftPayload::default())
                .await
                .expect_err("no server")
        };
        let refused = call(port).await;
        assert!(never_connected(&refused), "{refused:?}");

        // A peer that accepts, reads the request and hangs up.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(300), conn.read(&mut buf))
                    .await;
        });
        let lost = call(port).await;
        server.await.expect("server");
        assert!(!never_connected(&lost), "{lost:?}");
    }
}
