//! What every part of a running node shares: configuration, the chunk store, the metadata
//! state machine, this node's Raft handle, and the per-chunk locks that order chunk writes
//! against garbage collection.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use strata_cluster::{ChunkId, Command, Response, StateMachine};
use strata_proto::v1 as pb;
use tokio::sync::{Mutex, MutexGuard, Semaphore};

use crate::chunk_store::{ChunkStore, ChunkStoreError};
use crate::config::Config;
use crate::error::{NodeError, NodeResult};
use crate::raft::Cluster;

pub struct Context {
    pub config: Config,
    pub store: ChunkStore,
    pub sm: Arc<StateMachine>,
    pub cluster: Cluster,
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
    ) -> Context {
        let permits =
            (config.max_inflight_bytes / 1024).min(Semaphore::MAX_PERMITS as u64) as usize;
        Context {
            config,
            store,
            sm,
            cluster,
            started: Instant::now(),
            inflight: Semaphore::new(permits),
            chunk_locks: (0..256).map(|_| Mutex::new(())).collect(),
        }
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

    /// A chunk's bytes, verified: from the local store, or else fetched from the other members
    /// (verified again here) and kept locally.
    pub async fn read_chunk(self: &Arc<Self>, id: ChunkId) -> NodeResult<Bytes> {
        let ctx = self.clone();
        let local = tokio::task::spawn_blocking(move || ctx.store.get(&id))
            .await
            .map_err(|e| NodeError::Internal(format!("read task: {e}")))?;
        match local {
            Ok(data) => return Ok(data),
            Err(ChunkStoreError::Missing(_)) | Err(ChunkStoreError::Corrupt(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let members: Vec<String> = {
            let m = self.cluster.raft.metrics().borrow().clone();
            m.membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.cluster.id)
                .map(|(_, n)| n.addr.clone())
                .collect()
        };
        for addr in members {
            match self.fetch_from(&addr, &id).await {
                Ok(data) => {
                    let (ctx, d) = (self.clone(), data.clone());
                    let _lock = self.lock_chunk(&id).await;
                    if self.sm.chunk_refs(&id)? > 0 {
                        let _ = tokio::task::spawn_blocking(move || ctx.store.put(&id, &d)).await;
                    }
                    return Ok(data);
                }
                Err(e) => {
                    tracing::debug!(peer = %addr, chunk = %id, error = %e, "peer could not serve chunk")
                }
            }
        }
        Err(NodeError::missing_chunk(&id))
    }

    async fn fetch_from(&self, addr: &str, id: &ChunkId) -> Result<Bytes, String> {
        let mut client = self.cluster.peers.client(addr).map_err(|s| s.to_string())?;
        let mut req = tonic::Request::new(pb::FetchChunkRequest {
            id: Bytes::copy_from_slice(id.as_bytes()),
        });
        req.set_timeout(std::time::Duration::from_secs(30));
        let mut stream = client
            .fetch_chunk(req)
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        let mut buf = Vec::new();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|s| s.message().to_owned())?;
            if buf.len() + piece.data.len() > crate::config::MAX_CHUNK_LIMIT as usize {
                return Err("peer sent more than a chunk".into());
            }
            buf.extend_from_slice(&piece.data);
        }
        if ChunkId::of(&buf) != *id {
            metrics::counter!(crate::metrics::CHUNK_CORRUPT).increment(1);
            return Err(format!("peer {addr} sent bytes that do not hash to {id}"));
        }
        Ok(Bytes::from(buf))
    }
}

/// Milliseconds since the Unix epoch: the time commands carry.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
