//! What every part of a running node shares: configuration, the chunk store, the metadata
//! state machine and the per-chunk locks that order chunk writes against garbage collection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use strata_cluster::{ChunkId, Command, Response, StateMachine};
use tokio::sync::{Mutex, MutexGuard, Semaphore};

use crate::chunk_store::ChunkStore;
use crate::config::Config;
use crate::error::{NodeError, NodeResult};

pub struct Context {
    pub config: Config,
    pub store: ChunkStore,
    pub sm: Arc<StateMachine>,
    pub started: Instant,
    /// Chunk bytes being verified and written, bounded by config.max_inflight_bytes.
    pub inflight: Semaphore,
    chunk_locks: Vec<Mutex<()>>,
    /// Group commit: commands applied so far, commands known durable, one flusher at a time.
    applied: AtomicU64,
    flushed: AtomicU64,
    flush_lock: Mutex<()>,
}

impl Context {
    pub fn new(config: Config, store: ChunkStore, sm: StateMachine) -> Context {
        let permits =
            (config.max_inflight_bytes / 1024).min(Semaphore::MAX_PERMITS as u64) as usize;
        Context {
            config,
            store,
            sm: Arc::new(sm),
            started: Instant::now(),
            inflight: Semaphore::new(permits),
            chunk_locks: (0..256).map(|_| Mutex::new(())).collect(),
            applied: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flush_lock: Mutex::new(()),
        }
    }

    /// Applies a metadata command (off the async workers) and, for commands a client waits on,
    /// makes it durable before returning. The Raft issue replaces this with a replicated write.
    pub async fn propose(&self, cmd: Command) -> NodeResult<Response> {
        let sm = self.sm.clone();
        let flush = cmd.needs_flush();
        let resp = tokio::task::spawn_blocking(move || sm.apply(&cmd))
            .await
            .map_err(|e| NodeError::Internal(format!("apply task: {e}")))??;
        let seq = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
        if flush {
            self.durable(seq).await?;
        }
        Ok(resp)
    }

    /// Waits until command number `seq` is on disk. Concurrent callers share one sled flush:
    /// whoever flushes covers every command applied before the flush began.
    async fn durable(&self, seq: u64) -> NodeResult<()> {
        if self.flushed.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let _one_flusher = self.flush_lock.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let upto = self.applied.load(Ordering::SeqCst);
        self.sm.flush().await?;
        self.flushed.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    /// Held while a chunk's file and its references change together: a chunk write plus its
    /// AddChunk, or the collector's check-and-delete.
    pub async fn lock_chunk(&self, id: &ChunkId) -> MutexGuard<'_, ()> {
        self.chunk_locks[id.as_bytes()[0] as usize].lock().await
    }
}

/// Milliseconds since the Unix epoch: the time commands carry.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
