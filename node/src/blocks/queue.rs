//! Node-local state of the block layer, in sled trees that are not replicated: the replication
//! queue (chunks written here that have not reached every home yet) and the last layout
//! version whose rebalance pass finished here.

use std::collections::HashSet;
use std::sync::Mutex;

use strata_cluster::ChunkId;

use super::{BlockError, BlockResult};
use crate::clock::now_ms;
use crate::metrics as m;

const QUEUE_TREE: &str = "placement_queue";
const STATE_TREE: &str = "placement_state";
const SCANNED_KEY: &[u8] = b"scanned_layout_version";

type FlushReply = tokio::sync::oneshot::Sender<Result<(), String>>;

pub(super) struct Queue {
    queue: sled::Tree,
    state: sled::Tree,
    /// Chunks whose replication a task is doing right now (the queue pass skips them).
    busy: Mutex<HashSet<ChunkId>>,
    /// Requests to make the queue durable, served by one flushing thread (see `flusher`).
    flushes: Mutex<std::sync::mpsc::Sender<FlushReply>>,
}

/// Makes queue entries durable for every waiter at once: one sled flush serves all requests
/// that arrived meanwhile. A dedicated thread, because concurrent sled flushes on sled's own
/// thread pool (`flush_async`) can starve the pool of the threads that do the writing.
fn flusher(db: sled::Db, rx: std::sync::mpsc::Receiver<FlushReply>) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let r = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }
}

fn queue_err(e: impl std::fmt::Display) -> BlockError {
    BlockError::Queue(e.to_string())
}

impl Queue {
    pub fn open(db: &sled::Db) -> anyhow::Result<Queue> {
        let (tx, rx) = std::sync::mpsc::channel();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("queue-flush".into())
            .spawn(move || flusher(flush_db, rx))?;
        Ok(Queue {
            flushes: Mutex::new(tx),
            queue: db.open_tree(QUEUE_TREE)?,
            state: db.open_tree(STATE_TREE)?,
            busy: Mutex::new(HashSet::new()),
        })
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn scanned_version(&self) -> u64 {
        self.state
            .get(SCANNED_KEY)
            .ok()
            .flatten()
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
    }

    pub fn set_scanned_version(&self, v: u64) -> BlockResult<()> {
        self.state
            .insert(SCANNED_KEY, &v.to_be_bytes())
            .map_err(queue_err)?;
        Ok(())
    }

    /// Waits until the queue (and everything else in the metadata database) is on disk.
    pub async fn flush(&self) -> BlockResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .flushes
            .lock()
            .map(|f| f.send(tx).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(queue_err("the flushing thread stopped"));
        }
        rx.await
            .map_err(|_| queue_err("the flushing thread stopped"))?
            .map_err(queue_err)
    }

    pub fn enqueue(&self, id: &ChunkId) -> BlockResult<()> {
        self.queue
            .insert(id.as_bytes(), &now_ms().to_be_bytes())
            .map_err(queue_err)?;
        metrics::gauge!(m::REPLICATION_QUEUE).set(self.queue.len() as f64);
        Ok(())
    }

    pub fn dequeue(&self, id: &ChunkId) {
        let _ = self.queue.remove(id.as_bytes());
        metrics::gauge!(m::REPLICATION_QUEUE).set(self.queue.len() as f64);
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.queue.contains_key(id.as_bytes()).unwrap_or(false)
    }

    pub fn queued(&self, limit: usize) -> Vec<ChunkId> {
        self.queue
            .iter()
            .keys()
            .filter_map(|k| k.ok().and_then(|k| ChunkId::from_slice(k.as_ref())))
            .take(limit)
            .collect()
    }

    /// Marks a chunk as being replicated by a task; false if another task has it.
    pub fn claim(&self, id: ChunkId) -> bool {
        self.busy.lock().map(|mut b| b.insert(id)).unwrap_or(false)
    }

    pub fn release_claim(&self, id: &ChunkId) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(id);
        }
    }
}
