//! Moving chunks to where the layout wants them: the replication queue's retries, and the
//! rebalance pass after a layout change (copy to the homes that lack a chunk, then release
//! copies this node should not keep, only once every home has confirmed holding the chunk).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use strata_cluster::ChunkId;
use strata_cluster::layout::{Layout, NodeId};

use super::{BlockManager, BlockResult};
use crate::chunk_store::ChunkStoreError;
use crate::metrics as m;
use crate::peer::MAX_HAS_CHUNKS;
use crate::rate_limit::RateLimit;

/// Chunks copied at once by a queue or rebalance pass.
const COPY_PARALLEL: usize = 4;
/// Chunks per round of a rebalance pass (one HasChunks per home per round).
const PASS_ROUND: usize = 1024;

/// Rebalance progress, for `strata status` and the metrics.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Layout version the pass works towards (0: no pass has run).
    pub layout_version: u64,
    pub running: bool,
    /// Chunks (and their bytes) found needing a copy or a release when the pass started.
    pub to_move_chunks: u64,
    pub to_move_bytes: u64,
    /// Of those, the ones this pass has handled.
    pub done_chunks: u64,
    pub done_bytes: u64,
    /// Bytes copied to other nodes towards this layout version (over all its passes).
    pub copied_bytes: u64,
    /// Bytes per second copied since the first pass towards this layout version.
    pub rate: f64,
    /// When the first pass towards this layout version started.
    pub since: Option<Instant>,
    /// Chunks still waiting on something (a home down, another node's copy) at the end of
    /// the last pass; a new pass runs until this is 0.
    pub pending: u64,
}

#[derive(Default)]
pub(super) struct Tracker(Mutex<Progress>);

impl Tracker {
    fn get(&self) -> Progress {
        self.0.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.0.lock() {
            f(&mut p);
            metrics::gauge!(m::REBALANCE_TO_MOVE_CHUNKS)
                .set(p.to_move_chunks.saturating_sub(p.done_chunks) as f64);
            metrics::gauge!(m::REBALANCE_TO_MOVE_BYTES)
                .set(p.to_move_bytes.saturating_sub(p.done_bytes) as f64);
        }
    }
}

/// What one push round achieved.
#[derive(Default)]
struct Pushed {
    /// Chunks still missing a copy somewhere.
    pending: u64,
    copied_bytes: u64,
}

enum Copy {
    /// Every home that lacked the chunk has it now (this many bytes sent).
    Done(u64),
    /// This node no longer holds the chunk.
    Gone,
    /// A copy failed; retried later.
    Pending,
}

/// The pacing of one pass, shared by its concurrent copies: each takes the lock only to
/// compute its pause, and sleeps without it.
struct Pace(Option<Mutex<RateLimit>>);

impl Pace {
    async fn spend(&self, n: u64) {
        let pause = self
            .0
            .as_ref()
            .and_then(|r| r.lock().ok().map(|mut r| r.spend(n)));
        if let Some(p) = pause.filter(|p| !p.is_zero()) {
            tokio::time::sleep(p).await;
        }
    }
}

impl BlockManager {
    pub fn progress(&self) -> Progress {
        self.progress.get()
    }

    /// The last layout version whose rebalance pass finished here.
    pub fn scanned_version(&self) -> u64 {
        self.queue.scanned_version()
    }

    /// One pass over the replication queue: pushes each queued chunk to the homes that lack
    /// it. Returns how many entries remain.
    pub async fn drain_queue(self: &Arc<Self>, limit: usize) -> BlockResult<usize> {
        let mut ids = Vec::new();
        for id in self.queue.queued(limit) {
            if !self.queue.claim(id) {
                continue;
            }
            // A chunk released to the cold tier since it was queued needs no more hot copies.
            if self.sm.cold_chunk(&id)?.is_some_and(|c| c.released) {
                self.queue.dequeue(&id);
                self.queue.release_claim(&id);
            } else {
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Ok(self.queue.len());
        }
        let current = self.sm.layout()?.current;
        let result = self.push_to_homes(&current, &ids, false, &Pace(None)).await;
        for id in &ids {
            self.queue.release_claim(id);
        }
        result?;
        Ok(self.queue.len())
    }

    /// One rebalance pass over every chunk this node holds, towards the current layout: copies
    /// each referenced chunk to the homes that lack it, then releases copies this node should
    /// not keep. Returns the chunks still pending (a home down); the pass is complete at 0,
    /// and then the layout version is recorded as done.
    pub async fn rebalance_pass(self: &Arc<Self>) -> BlockResult<u64> {
        let current = self.sm.layout()?.current;
        let version = current.version;
        let all = self.store.ids().await?;
        // Only referenced chunks move: an unreferenced file is an upload in progress (its
        // queue entry covers it) or garbage the collector will remove.
        let mut ids = Vec::with_capacity(all.len());
        for id in all {
            if self.sm.chunk_needs_hot(&id)? {
                ids.push(id);
            }
        }
        let started = Instant::now();
        self.progress.update(|pr| {
            // Passes towards the same layout add up (copied bytes, rate since the first pass).
            let (copied, since) = if pr.layout_version == version {
                (pr.copied_bytes, pr.since.unwrap_or(started))
            } else {
                (0, started)
            };
            *pr = Progress {
                layout_version: version,
                running: true,
                copied_bytes: copied,
                since: Some(since),
                ..Default::default()
            }
        });
        // Plan: the chunks this pass may have to copy (this node holds them and they have
        // other homes) or release (this node is not a home), with their sizes.
        let sizes = self.store.sizes(ids.clone()).await?;
        let plan: Vec<(bool, u64)> = ids
            .iter()
            .zip(sizes)
            .map(|(id, size)| {
                let homes = current.homes(id);
                (
                    !homes.contains(&self.me) || homes.len() > 1,
                    size.unwrap_or(0),
                )
            })
            .collect();
        self.progress.update(|pr| {
            pr.to_move_chunks = plan.iter().filter(|(mv, _)| *mv).count() as u64;
            pr.to_move_bytes = plan.iter().filter(|(mv, _)| *mv).map(|(_, s)| s).sum();
        });
        let pace = Pace(Some(Mutex::new(RateLimit::new(self.rebalance_rate()))));
        let mut pending = 0;
        for (round, plan) in ids.chunks(PASS_ROUND).zip(plan.chunks(PASS_ROUND)) {
            let pushed = self.push_to_homes(&current, round, true, &pace).await?;
            pending += pushed.pending;
            metrics::counter!(m::REBALANCE_MOVED_BYTES).increment(pushed.copied_bytes);
            let (chunks, bytes) = plan
                .iter()
                .filter(|(mv, _)| *mv)
                .fold((0, 0), |(c, b), (_, s)| (c + 1, b + s));
            self.progress.update(|pr| {
                pr.done_chunks += chunks;
                pr.done_bytes += bytes;
                pr.copied_bytes += pushed.copied_bytes;
                let since = pr.since.unwrap_or(started);
                pr.rate = pr.copied_bytes as f64 / since.elapsed().as_secs_f64().max(0.001);
            });
            if self.sm.layout()?.current.version != version {
                pending += 1; // a newer layout: stop here, the next pass starts over
                break;
            }
        }
        self.progress.update(|pr| {
            pr.running = false;
            pr.pending = pending;
        });
        if pending == 0 {
            self.queue.set_scanned_version(version)?;
        }
        Ok(pending)
    }

    /// Makes every home of `ids` hold them: asks each remote home which it lacks (one
    /// HasChunks per home), sends those, then releases copies this node should not keep and
    /// forgets the queue entries of complete chunks. Chunks missing here are forgotten
    /// (another node's queue or pass takes care of them). When `rebalancing`, only one holder
    /// sends each chunk.
    async fn push_to_homes(
        self: &Arc<Self>,
        layout: &Layout,
        ids: &[ChunkId],
        rebalancing: bool,
        pace: &Pace,
    ) -> BlockResult<Pushed> {
        let me = self.me;
        let peers = self.peers()?.clone();
        let book = self.members.all();
        let mut by_home: BTreeMap<NodeId, Vec<ChunkId>> = BTreeMap::new();
        for id in ids {
            for h in layout.homes(id) {
                if h != me {
                    by_home.entry(h).or_default().push(*id);
                }
            }
        }
        // (chunk, home) pairs that still need a copy.
        let mut missing: BTreeMap<ChunkId, Vec<NodeId>> = BTreeMap::new();
        let mut down: HashSet<NodeId> = HashSet::new();
        for (home, list) in &by_home {
            let Some(addr) = book.get(home) else {
                down.insert(*home);
                continue;
            };
            for part in list.chunks(MAX_HAS_CHUNKS) {
                match peers.has_chunks(*addr, part.to_vec()).await {
                    Ok(has) => {
                        for (id, h) in part.iter().zip(has) {
                            if !h {
                                missing.entry(*id).or_default().push(*home);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(node = home, error = %e, "home unreachable; will retry");
                        down.insert(*home);
                        break;
                    }
                }
            }
        }
        let mut out = Pushed::default();
        // Decide per chunk who sends what; then copy up to COPY_PARALLEL chunks at once.
        let mut jobs = Vec::new();
        for id in ids {
            let homes = layout.homes(id);
            if homes.iter().any(|h| down.contains(h)) {
                out.pending += 1;
                continue;
            }
            let lacking = missing.remove(id).unwrap_or_default();
            if rebalancing && !lacking.is_empty() {
                // One sender per chunk: the first home (in preference order) that holds it,
                // or, when no home holds it, every node that does.
                let first_holder = homes.iter().find(|h| **h == me || !lacking.contains(h));
                match first_holder {
                    Some(h) if *h == me => {}
                    Some(_) if homes.contains(&me) => continue, // another home sends it
                    Some(_) => {
                        out.pending += 1; // a home will send it; release after that
                        continue;
                    }
                    None => {}
                }
            }
            jobs.push((*id, homes, lacking));
        }
        let book = &book;
        let mut copies = futures::stream::iter(jobs)
            .map(|(id, homes, lacking)| async move {
                let outcome = self.copy_to(book, id, &lacking, pace).await;
                (id, homes, outcome)
            })
            .buffer_unordered(COPY_PARALLEL);
        while let Some((id, homes, outcome)) = copies.next().await {
            match outcome {
                Copy::Done(n) => {
                    out.copied_bytes += n;
                    self.replicated(id, homes.contains(&me)).await;
                }
                Copy::Gone => self.queue.dequeue(&id),
                Copy::Pending => out.pending += 1,
            }
        }
        Ok(out)
    }

    /// Sends one local chunk to the homes that lack it.
    async fn copy_to(
        &self,
        book: &BTreeMap<NodeId, std::net::SocketAddr>,
        id: ChunkId,
        lacking: &[NodeId],
        pace: &Pace,
    ) -> Copy {
        if lacking.is_empty() {
            return Copy::Done(0);
        }
        let Ok(peers) = self.peers() else {
            return Copy::Pending;
        };
        let data = match self.store.get(id).await {
            Ok(d) => d,
            Err(ChunkStoreError::Missing(_)) => return Copy::Gone,
            Err(_) => return Copy::Pending,
        };
        let mut sent = 0;
        let mut ok = true;
        for home in lacking {
            let Some(addr) = book.get(home) else {
                ok = false;
                continue;
            };
            match peers.put_chunk(*addr, id, data.clone()).await {
                Ok(_) => {
                    let n = data.len() as u64;
                    metrics::counter!(m::REPLICA_SENT_BYTES).increment(n);
                    sent += n;
                    pace.spend(n).await;
                }
                Err(e) => {
                    tracing::debug!(chunk = %id, node = home, error = %e, "copy failed; will retry");
                    ok = false;
                }
            }
        }
        if ok { Copy::Done(sent) } else { Copy::Pending }
    }
}
