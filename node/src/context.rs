//! What every part of a running node shares: configuration, the chunk store, the metadata
//! state machine, this node's Raft handle, and the per-chunk locks that order chunk writes
//! against garbage collection.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use strata_cluster::{ChunkId, Command, Response, StateMachine};
use tokio::sync::{Mutex, MutexGuard, Semaphore};

use crate::chunk_store::ChunkStore;
use crate::config::Config;
use crate::error::{NodeError, NodeResult};
use crate::placement::Placement;
use crate::raft::Cluster;

pub struct Context {
    pub config: Config,
    pub store: ChunkStore,
    pub sm: Arc<StateMachine>,
    pub cluster: Cluster,
    pub placement: Placement,
    pub tiering: crate::tiering::Tiering,
    pub started: Instant,
    /// Chunk bytes being verified and written, bounded by config.max_inflight_bytes.
    pub inflight: Semaphore,
    chunk_locks: Vec<Mutex<()>>,
}

impl Context {
    pub fn new(
        config: Config,
        store: ChunkStore,
        sm: Arc<StateMachine>,
        cluster: Cluster,
        backends: crate::cold::Backends,
    ) -> anyhow::Result<Context> {
        let permits =
            (config.max_inflight_bytes / 1024).min(Semaphore::MAX_PERMITS as u64) as usize;
        let placement = Placement::open(sm.db(), config.read_cache_bytes)?;
        Ok(Context {
            placement,
            tiering: crate::tiering::Tiering::new(backends),
            config,
            store,
            sm,
            cluster,
            started: Instant::now(),
            inflight: Semaphore::new(permits),
            chunk_locks: (0..256).map(|_| Mutex::new(())).collect(),
        })
    }

    /// Commits a metadata command through Raft (from any node) and waits until this node has
    /// applied it, so what this node reads next includes it. Durable once it returns: the
    /// leader acknowledges only entries flushed on a quorum's logs.
    pub async fn propose(&self, cmd: Command) -> NodeResult<Response> {
        let (result, index) = self.cluster.write(cmd).await?;
        self.cluster.wait_applied(index).await?;
        Ok(result?)
    }

    /// A linearizable read barrier (see `Cluster::linearize`).
    pub async fn linearize(&self) -> NodeResult<()> {
        self.cluster.linearize().await
    }

    /// Held while a chunk's file and its references change together: a chunk write plus its
    /// AddChunk, or the collector's check-and-delete.
    pub async fn lock_chunk(&self, id: &ChunkId) -> MutexGuard<'_, ()> {
        self.chunk_locks[id.as_bytes()[0] as usize].lock().await
    }

    /// A chunk's bytes, verified, from this node or a peer (see `placement::read_chunk`), or
    /// from its cold copy once its hot copies are released (or while they are coming back).
    pub async fn read_chunk(self: &Arc<Self>, id: ChunkId) -> NodeResult<Bytes> {
        let cold = self.sm.cold_chunk(&id)?;
        if let Some(c) = &cold
            && c.released
        {
            return crate::tiering::read_cold(self, id, &c.loc).await;
        }
        match crate::placement::read_chunk(self, id).await {
            Err(e) => match cold {
                Some(c) => crate::tiering::read_cold(self, id, &c.loc)
                    .await
                    .map_err(|cold_err| {
                        NodeError::Unavailable(format!("{e}; its cold copy: {cold_err}"))
                    }),
                None => Err(e),
            },
            ok => ok,
        }
    }
}

/// Milliseconds since the Unix epoch: the time commands carry.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
