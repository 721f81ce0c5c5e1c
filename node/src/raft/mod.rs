//! This node's part in the Raft group that replicates metadata: starting Raft on the sled log
//! store and state machine, bootstrapping or joining a cluster, writes that reach the leader
//! from any node (forwarded, not redirected), and linearizable read barriers.

pub mod network;
pub mod service;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use strata_cluster::raft::{CommandResult, LogStore, NodeId, Raft, SmStore};
use strata_cluster::{Command, Response, StateMachine};
use strata_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::error::{NodeError, NodeResult};
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
        max_payload_entries: 512,
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
    batcher: mpsc::UnboundedSender<Proposal>,
}

/// Commands proposed at once from concurrent requests share one Raft entry, at most this many.
const MAX_BATCH: usize = 256;
/// Batches being committed at once (more requests queue and form the next batches).
const BATCHES_IN_FLIGHT: usize = 4;

/// A command waiting for the batcher, and where its result goes.
struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<NodeResult<(CommandResult, u64)>>,
}

/// The part of the cluster handle that writes: cheap to clone into batch tasks.
#[derive(Clone)]
struct Writer {
    raft: Raft,
    id: NodeId,
    peers: Peers,
}

/// Groups concurrent proposals into `Command::Batch` entries: one Raft entry, one log flush
/// and one replication round for the whole group.
async fn batcher(writer: Writer, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut group = vec![first];
        while group.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => group.push(p),
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
                        let _ = p.reply.send(Err(NodeError::Internal(format!(
                            "unexpected batch result: {other:?}"
                        ))));
                    }
                }
                Err(e) => {
                    let status = tonic::Status::from(e);
                    for p in group {
                        let _ = p.reply.send(Err(NodeError::from_status(status.clone())));
                    }
                }
            }
        });
    }
}

/// Reads this node's Raft id from `<data>/raft-id`, choosing a random one at first start.
fn raft_id(dir: &Path) -> anyhow::Result<NodeId> {
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
    pub async fn start(
        dir: &Path,
        snapshot_logs: u64,
        db: &strata_cluster::state_machine::MetaDb,
        sm: Arc<StateMachine>,
        addr: String,
        secret: String,
    ) -> anyhow::Result<Cluster> {
        let id = raft_id(dir)?;
        let peers = Peers::new(secret);
        let log = LogStore::new(db).map_err(|e| anyhow::anyhow!("raft log store: {e}"))?;
        let sm_store = SmStore::new(sm).map_err(|e| anyhow::anyhow!("raft state machine: {e}"))?;
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
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            raft: raft.clone(),
            id,
            peers: peers.clone(),
        };
        tokio::spawn(batcher(writer, rx));
        Ok(Cluster {
            raft,
            id,
            addr,
            peers,
            batcher: tx,
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
    /// `deadline`.
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
                Err(s) if s.code() == tonic::Code::Unauthenticated => {
                    anyhow::bail!(
                        "{via} refused to add this node: {} (check the cluster secret)",
                        s.message()
                    )
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
    pub async fn add_node(&self, id: NodeId, addr: &str) -> NodeResult<()> {
        let unavailable = |e: String| NodeError::Unavailable(format!("cannot add node {id}: {e}"));
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
    pub async fn remove_node(&self, id: NodeId) -> NodeResult<()> {
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
            return Err(NodeError::NotFound(format!(
                "node {id} is not a member of this cluster"
            )));
        }
        if is_voter && membership.voter_ids().count() == 1 {
            return Err(NodeError::FailedPrecondition(format!(
                "node {id} is the cluster's last voter: removing it would leave no one to hold the metadata"
            )));
        }
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
        .map_err(|_| NodeError::Unavailable("membership change timed out (no quorum?)".into()))?
        .map_err(|e| NodeError::Unavailable(format!("cannot remove node {id}: {e}")))?;
        Ok(())
    }

    /// Runs a membership change on the leader, forwarding it there from a follower.
    pub async fn on_leader<T, L, F>(&self, local: L, remote: F) -> NodeResult<T>
    where
        L: std::future::Future<Output = NodeResult<T>>,
        F: AsyncFnOnce(network::PeerClient) -> Result<T, tonic::Status>,
    {
        if self.is_leader() {
            return local.await;
        }
        let Some((leader, addr)) = self.leader() else {
            return Err(NodeError::Unavailable(
                "no leader is known: the cluster has no quorum; retry".into(),
            ));
        };
        if leader == self.id {
            return local.await;
        }
        let client = self
            .peers
            .client(&addr)
            .map_err(|s| NodeError::Unavailable(s.message().to_owned()))?;
        remote(client).await.map_err(NodeError::from_status)
    }

    /// Every member (voters and learners) with its gRPC address, as this node knows them.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
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
        let m = self.raft.metrics().borrow().clone();
        m.state.is_leader()
            && m.millis_since_quorum_ack
                .is_none_or(|ms| ms > 2 * ELECTION_TIMEOUT_MAX_MS)
    }

    /// Commits `cmd` through Raft from any node (on a follower it is forwarded to the
    /// leader), batched with concurrent proposals. Returns its result and log index.
    pub async fn write(&self, cmd: Command) -> NodeResult<(CommandResult, u64)> {
        let (reply, rx) = oneshot::channel();
        self.batcher
            .send(Proposal { cmd, reply })
            .map_err(|_| NodeError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| NodeError::Unavailable("the node is shutting down".into()))?
    }

    /// Waits until this node has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64) -> NodeResult<()> {
        self.raft
            .wait(Some(QUORUM_TIMEOUT))
            .applied_index_at_least(Some(index), "local apply")
            .await
            .map(|_| ())
            .map_err(|e| NodeError::Unavailable(format!("this node is behind the cluster: {e}")))
    }

    /// A linearizable read barrier: after it, local reads see every write committed before
    /// the call. On a follower, the leader confirms its leadership and names its commit point.
    pub async fn linearize(&self) -> NodeResult<()> {
        let no_quorum = || {
            NodeError::Unavailable(
                "the metadata cluster has no quorum: a consistent read is not possible now; retry"
                    .into(),
            )
        };
        let until = Instant::now() + QUORUM_TIMEOUT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.leader_without_quorum() {
                return Err(no_quorum());
            }
            match tokio::time::timeout(left, self.raft.ensure_linearizable()).await {
                Err(_) => return Err(no_quorum()),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    if let Some(node) = f.leader_node.filter(|_| f.leader_id != Some(self.id)) {
                        let asked = async {
                            let mut client = self.peers.client(&node.addr)?;
                            let mut req = tonic::Request::new(pb::ReadIndexRequest {});
                            req.set_timeout(left);
                            client.read_index(req).await
                        }
                        .await;
                        if let Ok(r) = asked {
                            return self.wait_applied(r.into_inner().index).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                    return Err(no_quorum());
                }
                Ok(Err(e)) => {
                    return Err(NodeError::Unavailable(format!(
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

impl Writer {
    /// Whether this node leads and has not heard from a quorum recently.
    fn leader_without_quorum(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state.is_leader()
            && m.millis_since_quorum_ack
                .is_none_or(|ms| ms > 2 * ELECTION_TIMEOUT_MAX_MS)
    }

    /// Commits `cmd` (one Raft entry), forwarding it to the leader from a follower.
    async fn write(&self, cmd: Command) -> NodeResult<(CommandResult, u64)> {
        let until = Instant::now() + QUORUM_TIMEOUT;
        let no_quorum = || {
            NodeError::Unavailable("the metadata cluster has no quorum (no leader, or too few nodes reachable): the write was not committed; retry".into())
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(no_quorum());
            }
            if self.leader_without_quorum() {
                return Err(no_quorum());
            }
            match tokio::time::timeout(left, self.raft.client_write(cmd.clone())).await {
                Err(_) => return Err(no_quorum()),
                Ok(Ok(resp)) => return Ok((resp.data, resp.log_id.index)),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    match f.leader_node {
                        Some(node) if f.leader_id != Some(self.id) => {
                            match self.forward(&node.addr, &cmd, left).await {
                                Ok(r) => return Ok(r),
                                Err(e) => {
                                    tracing::debug!(error = %e, "forwarding to the leader failed; retrying")
                                }
                            }
                        }
                        _ => {}
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => {
                    return Err(NodeError::Unavailable(format!(
                        "metadata write failed: {e}"
                    )));
                }
            }
        }
    }

    async fn forward(
        &self,
        leader: &str,
        cmd: &Command,
        left: Duration,
    ) -> Result<(CommandResult, u64), String> {
        let mut client = self.peers.client(leader).map_err(|s| s.to_string())?;
        let mut req = tonic::Request::new(pb::RaftPayload {
            data: network::encode(cmd).into(),
        });
        req.set_timeout(left);
        let reply = client
            .propose(req)
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        let result: Result<(CommandResult, u64), String> = network::decode(&reply.data)?;
        result
    }
}
