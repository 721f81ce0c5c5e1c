//! The block layer: everything about chunk bytes on this node and between nodes. One
//! [`BlockManager`] owns the chunk store (whose lock guard alone changes chunk files), the
//! replication queue, the hot-chunk cache, the peer client and the member address book.
//!
//! - `write`: a new chunk is stored here and sent to its other homes at once; the caller gets
//!   its answer when W homes hold it durably; the rest continues in the background and from
//!   the persistent replication queue.
//! - `read`: a chunk's bytes, verified, from this node, the cache, its homes, or any member;
//!   a corrupt local copy is repaired from a good one.
//! - `rebalance`: the queue retries and the pass that moves chunks after a layout change.
//! - `gc`: deleting copies nothing needs (under the chunk's lock, after the grace period).
//! - `serve`: answering other nodes' requests (the peer transport's handler).
//! - `verify`: the scrub (re-hashing local files) and the anti-entropy check (every chunk this
//!   node is a home of is here), run by the Verifier actor.
//!
//! No lock is held across a network call, a Raft proposal or a sleep: the chunk lock lives on
//! blocking threads inside the chunk store, around local file changes only. Each operation
//! takes what it needs (the layout from the metadata replica, addresses from the book); the
//! block layer proposes nothing through Raft.

mod gc;
mod members;
mod queue;
mod read;
mod rebalance;
mod serve;
pub mod verify;
mod write;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use strata_cluster::layout::NodeId;
use strata_cluster::{ChunkId, StateMachine, StoreError};

use crate::budget::{BudgetError, MemoryBudget};
use crate::chunk_store::{ChunkStore, ChunkStoreError};
use crate::peer::PeerClient;

pub use members::MemberBook;
pub use rebalance::Progress;
pub use serve::PeerService;

/// Tunables of the block layer (from the node's configuration).
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// Bytes of chunks fetched from peers kept in memory for repeated reads (0: none).
    pub read_cache_bytes: u64,
    /// Rebalancing copies at most this many bytes per second from this node.
    pub rebalance_rate_bytes: u64,
    /// A chunk file younger than this is never collected: it may be a chunk whose reference
    /// is still on its way through Raft.
    pub gc_grace: Duration,
    /// The scrub re-hashes at most this many bytes per second (changeable at run time).
    pub scrub_rate_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Store(#[from] ChunkStoreError),
    #[error(
        "chunk {0} has no good copy on any node that answered (every copy is missing or corrupt)"
    )]
    Lost(ChunkId),
    #[error("no node could serve chunk {id}: {why}")]
    Unreachable { id: ChunkId, why: String },
    #[error(
        "chunk {id} is durable on {copies} of its homes, and the write quorum is {need}: {why}"
    )]
    Quorum {
        id: ChunkId,
        copies: usize,
        need: usize,
        why: String,
    },
    #[error("the peer transport is not up yet (the node is still joining its cluster)")]
    NotReady,
    #[error(transparent)]
    Metadata(#[from] StoreError),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("replication queue: {0}")]
    Queue(String),
}

pub type BlockResult<T> = Result<T, BlockError>;

pub struct BlockManager {
    me: NodeId,
    store: ChunkStore,
    sm: Arc<StateMachine>,
    members: Arc<MemberBook>,
    peers: OnceLock<Arc<PeerClient>>,
    queue: queue::Queue,
    cache: read::Cache,
    budget: Arc<MemoryBudget>,
    config: BlockConfig,
    progress: rebalance::Tracker,
    verify: verify::VerifyState,
    /// Bytes per second a rebalance pass copies (`strata worker set rebalance-rate`).
    rebalance_rate: std::sync::atomic::AtomicU64,
}

impl BlockManager {
    pub fn new(
        me: NodeId,
        store: ChunkStore,
        sm: Arc<StateMachine>,
        members: Arc<MemberBook>,
        budget: Arc<MemoryBudget>,
        config: BlockConfig,
    ) -> anyhow::Result<BlockManager> {
        Ok(BlockManager {
            me,
            queue: queue::Queue::open(sm.db())?,
            verify: verify::VerifyState::open(sm.db(), config.scrub_rate_bytes)?,
            rebalance_rate: config.rebalance_rate_bytes.max(1).into(),
            cache: read::Cache::new(config.read_cache_bytes),
            store,
            sm,
            members,
            peers: OnceLock::new(),
            budget,
            config,
            progress: rebalance::Tracker::default(),
        })
    }

    /// Set once this node has its certificate and QUIC endpoint.
    pub fn set_peers(&self, peers: Arc<PeerClient>) {
        let _ = self.peers.set(peers);
    }

    fn peers(&self) -> BlockResult<&Arc<PeerClient>> {
        self.peers.get().ok_or(BlockError::NotReady)
    }

    /// Whether the peer transport is up.
    pub fn transport_up(&self) -> bool {
        self.peers.get().is_some()
    }

    /// Closes the QUIC endpoint (shutdown).
    pub fn close_transport(&self) {
        if let Some(p) = self.peers.get() {
            p.endpoint().close(0u32.into(), b"shutdown");
        }
    }

    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    pub fn members(&self) -> &Arc<MemberBook> {
        &self.members
    }

    /// Bytes per second a rebalance pass copies (a change applies from the next pass).
    pub fn rebalance_rate(&self) -> u64 {
        self.rebalance_rate
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_rebalance_rate(&self, bytes_per_sec: u64) {
        self.rebalance_rate
            .store(bytes_per_sec.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Chunks in the replication queue.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The layouts (current, previous, staged) in this node's metadata replica.
    pub fn layout(&self) -> BlockResult<strata_cluster::LayoutState> {
        Ok(self.sm.layout()?)
    }

    /// The current layout version in this node's metadata replica.
    pub fn layout_version(&self) -> BlockResult<u64> {
        Ok(self.sm.layout()?.current.version)
    }
}

/// Runs `f` over `items` with at most `n` at once, collecting the outputs in any order.
async fn for_each_limited<T, F, Fut, O>(items: Vec<T>, n: usize, f: F) -> Vec<O>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = O>,
{
    use futures::StreamExt;
    futures::stream::iter(items)
        .map(f)
        .buffer_unordered(n.max(1))
        .collect()
        .await
}
