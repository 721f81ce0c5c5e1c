//! Chunks on the cluster's disks: replication of new chunks to their homes, reads from peers,
//! and the rebalance pass that moves chunks after a layout change.
//!
//! Homes come from [`strata_cluster::placement`] over the current layout. The rules:
//! - A new chunk is written where it arrived, then sent to its other homes; the upload's ack
//!   waits until W of its homes hold it durably (the copy where it arrived counts if that
//!   node is a home). The chunk id goes
//!   into a persistent queue first; it leaves the queue once every home holds the chunk, so a
//!   restart or a down home only delays the remaining copies.
//! - A node that is not one of a chunk's homes releases its copy only after every home has
//!   confirmed holding it: no chunk ever has fewer than R copies because of placement.
//! - Reads try the local store, the hot-chunk cache, the current homes, the homes under the
//!   previous layout (a rebalance may not have finished), then every other member; every copy
//!   fetched is verified, and a corrupt one is counted and skipped.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use strata_cluster::layout::{Layout, NodeId};
use strata_cluster::{ChunkId, LayoutState};

use crate::chunk_store::ChunkStoreError;
use crate::context::{Context, now_ms};
use crate::error::{NodeError, NodeResult};
use crate::metrics as m;
use crate::peer::{PeerClient, PeerError};

/// Node-local sled trees (not replicated).
const QUEUE_TREE: &str = "placement_queue";
const STATE_TREE: &str = "placement_state";
const SCANNED_KEY: &[u8] = b"scanned_layout_version";

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

pub struct Placement {
    queue: sled::Tree,
    state: sled::Tree,
    /// Chunks whose replication a task is doing right now (the queue pass skips them).
    busy: Mutex<HashSet<ChunkId>>,
    peers: OnceLock<Arc<PeerClient>>,
    cache: Option<quick_cache::sync::Cache<ChunkId, Bytes, ChunkWeight>>,
    progress: Mutex<Progress>,
    /// Requests to make the queue durable, served by one flushing thread (see `flusher`).
    flushes: Mutex<std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<(), String>>>>,
}

/// Makes queue entries durable for every waiter at once: one sled flush serves all requests
/// that arrived meanwhile. A dedicated thread, because concurrent sled flushes on sled's own
/// thread pool (`flush_async`) can starve the pool of the threads that do the writing.
fn flusher(
    db: sled::Db,
    rx: std::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<Result<(), String>>>,
) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let r = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }
}

#[derive(Clone)]
struct ChunkWeight;

impl quick_cache::Weighter<ChunkId, Bytes> for ChunkWeight {
    fn weight(&self, _: &ChunkId, v: &Bytes) -> u64 {
        v.len() as u64 + 64
    }
}

impl Placement {
    pub fn open(db: &sled::Db, cache_bytes: u64) -> anyhow::Result<Placement> {
        let cache = (cache_bytes > 0).then(|| {
            quick_cache::sync::Cache::with_weighter(
                (cache_bytes / (1 << 20)).max(16) as usize,
                cache_bytes,
                ChunkWeight,
            )
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("placement-flush".into())
            .spawn(move || flusher(flush_db, rx))?;
        Ok(Placement {
            flushes: Mutex::new(tx),
            queue: db.open_tree(QUEUE_TREE)?,
            state: db.open_tree(STATE_TREE)?,
            busy: Mutex::new(HashSet::new()),
            peers: OnceLock::new(),
            cache,
            progress: Mutex::new(Progress::default()),
        })
    }

    /// Set once this node has its certificate and QUIC endpoint.
    pub fn set_peers(&self, peers: Arc<PeerClient>) {
        let _ = self.peers.set(peers);
    }

    pub fn peers(&self) -> NodeResult<&Arc<PeerClient>> {
        self.peers.get().ok_or_else(|| {
            NodeError::Unavailable(
                "the peer transport is not up yet (the node is still joining its cluster)".into(),
            )
        })
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn progress(&self) -> Progress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn set_progress(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(&mut p);
            metrics::gauge!(m::REBALANCE_TO_MOVE_CHUNKS)
                .set(p.to_move_chunks.saturating_sub(p.done_chunks) as f64);
            metrics::gauge!(m::REBALANCE_TO_MOVE_BYTES)
                .set(p.to_move_bytes.saturating_sub(p.done_bytes) as f64);
        }
    }

    pub fn scanned_version(&self) -> u64 {
        self.state
            .get(SCANNED_KEY)
            .ok()
            .flatten()
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
    }

    fn set_scanned_version(&self, v: u64) -> NodeResult<()> {
        self.state
            .insert(SCANNED_KEY, &v.to_be_bytes())
            .map_err(|e| NodeError::Internal(format!("placement state: {e}")))?;
        Ok(())
    }

    /// Waits until the queue (and everything else in the metadata database) is on disk.
    async fn flush_queue(&self) -> NodeResult<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .flushes
            .lock()
            .map(|f| f.send(tx).is_ok())
            .unwrap_or(false);
        let failed = |e: String| NodeError::Internal(format!("replication queue flush: {e}"));
        if !sent {
            return Err(failed("the flushing thread stopped".into()));
        }
        rx.await
            .map_err(|_| failed("the flushing thread stopped".into()))?
            .map_err(failed)
    }

    fn enqueue(&self, id: &ChunkId) -> NodeResult<()> {
        self.queue
            .insert(id.as_bytes(), &now_ms().to_be_bytes())
            .map_err(|e| NodeError::Internal(format!("replication queue: {e}")))?;
        metrics::gauge!(m::REPLICATION_QUEUE).set(self.queue.len() as f64);
        Ok(())
    }

    fn dequeue(&self, id: &ChunkId) {
        let _ = self.queue.remove(id.as_bytes());
        metrics::gauge!(m::REPLICATION_QUEUE).set(self.queue.len() as f64);
    }

    fn queued(&self, limit: usize) -> Vec<ChunkId> {
        self.queue
            .iter()
            .keys()
            .filter_map(|k| k.ok().and_then(|k| ChunkId::from_slice(k.as_ref())))
            .take(limit)
            .collect()
    }

    fn claim(&self, id: ChunkId) -> bool {
        self.busy.lock().map(|mut b| b.insert(id)).unwrap_or(false)
    }

    fn release_claim(&self, id: &ChunkId) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(id);
        }
    }
}

/// The UDP addresses of members' QUIC endpoints, from the Raft membership.
pub async fn member_addrs(ctx: &Context) -> BTreeMap<NodeId, SocketAddr> {
    let mut out = BTreeMap::new();
    for (id, url) in ctx.cluster.members() {
        if let Some(a) = crate::peer::quic_addr(&url).await {
            out.insert(id, a);
        }
    }
    out
}

fn layout(ctx: &Context) -> NodeResult<LayoutState> {
    Ok(ctx.sm.layout()?)
}

/// After a new chunk is durable here: sends it to its other homes and returns once W homes
/// hold it durably. The remaining copies continue in the background (and from the queue).
pub async fn replicate_new(ctx: &Arc<Context>, id: ChunkId, data: Bytes) -> NodeResult<()> {
    let current = layout(ctx)?.current;
    let me = ctx.cluster.id;
    let homes = current.homes(&id);
    let remote: Vec<NodeId> = homes.iter().copied().filter(|n| *n != me).collect();
    if remote.is_empty() {
        return Ok(()); // this node is the only home (or no layout yet): the write is done
    }
    let need = current.effective_write_quorum().max(1);
    let p = &ctx.placement;
    p.enqueue(&id)?;
    let addrs = member_addrs(ctx).await;
    let peers = p.peers()?.clone();
    p.claim(id);
    let mut sends: FuturesUnordered<_> = remote
        .iter()
        .map(|node| {
            let (peers, data, addr) = (peers.clone(), data.clone(), addrs.get(node).copied());
            let node = *node;
            async move {
                let Some(addr) = addr else {
                    return (node, Err(format!("node {node} is not a member")));
                };
                let n = data.len() as u64;
                let r = peers
                    .put_chunk(addr, id, data)
                    .await
                    .map_err(|e| e.to_string());
                if r.is_ok() {
                    metrics::counter!(m::REPLICA_SENT_BYTES).increment(n);
                }
                (node, r.map(|_| ()))
            }
        })
        .collect();
    // Copies at homes: the one written here counts if this node is a home. A copy on a node
    // that is not a home does not: once acknowledged, a chunk must be readable from its homes.
    let mut copies = usize::from(homes.contains(&me));
    let mut remote_ok = 0;
    let mut errors = Vec::new();
    while copies < need {
        match sends.next().await {
            Some((_, Ok(()))) => {
                copies += 1;
                remote_ok += 1;
            }
            Some((node, Err(e))) => {
                tracing::warn!(chunk = %id, node, error = %e, "replica not written");
                errors.push(e);
            }
            None => break,
        }
    }
    if copies < need {
        p.release_claim(&id);
        return Err(NodeError::Unavailable(format!(
            "chunk {id} is durable on {copies} of its homes, and the write quorum is {need}: {}",
            errors.join("; ")
        )));
    }
    if remote_ok == remote.len() {
        finish(ctx, id, &homes).await;
        p.release_claim(&id);
        return Ok(());
    }
    // Acknowledged with copies still on their way: the queue entry must survive a crash.
    p.flush_queue().await?;
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let mut all = errors.is_empty();
        while let Some((node, r)) = sends.next().await {
            if let Err(e) = r {
                tracing::warn!(chunk = %id, node, error = %e, "replica not written; queued for retry");
                all = false;
            }
        }
        if all {
            finish(&ctx, id, &homes).await;
        }
        ctx.placement.release_claim(&id);
    });
    Ok(())
}

/// Every home holds the chunk: forget it in the queue, and release the local copy if this
/// node is not a home.
async fn finish(ctx: &Arc<Context>, id: ChunkId, homes: &[NodeId]) {
    ctx.placement.dequeue(&id);
    if !homes.contains(&ctx.cluster.id) {
        release_local(ctx, id).await;
    }
}

async fn release_local(ctx: &Arc<Context>, id: ChunkId) {
    let _lock = ctx.lock_chunk(&id).await;
    let c = ctx.clone();
    if let Ok(Ok(())) = tokio::task::spawn_blocking(move || c.store.delete(&id)).await {
        metrics::counter!(m::REBALANCE_RELEASED_CHUNKS).increment(1);
    }
}

/// A chunk's bytes, verified, from wherever a copy is.
pub async fn read_chunk(ctx: &Arc<Context>, id: ChunkId) -> NodeResult<Bytes> {
    let c = ctx.clone();
    let local = tokio::task::spawn_blocking(move || c.store.get(&id))
        .await
        .map_err(|e| NodeError::Internal(format!("read task: {e}")))?;
    let local_corrupt = match local {
        Ok(data) => return Ok(data),
        Err(ChunkStoreError::Missing(_)) => false,
        Err(ChunkStoreError::Corrupt(_)) => true,
        Err(e) => return Err(e.into()),
    };
    let p = &ctx.placement;
    if let Some(hit) = p.cache.as_ref().and_then(|c| c.get(&id)) {
        metrics::counter!(m::READ_CACHE_HITS).increment(1);
        return Ok(hit);
    }
    let state = layout(ctx)?;
    let me = ctx.cluster.id;
    let addrs = member_addrs(ctx).await;
    let mut order: Vec<NodeId> = state.current.homes(&id);
    if let Some(prev) = &state.previous {
        order.extend(prev.homes(&id));
    }
    order.extend(addrs.keys().copied());
    let mut seen = HashSet::new();
    order.retain(|n| *n != me && seen.insert(*n));
    let peers = p.peers()?;
    let mut errors = Vec::new();
    for node in order {
        let Some(addr) = addrs.get(&node) else {
            continue;
        };
        match peers.get_chunk(*addr, id).await {
            Ok(data) => {
                metrics::counter!(m::PEER_READ_BYTES).increment(data.len() as u64);
                if local_corrupt && state.current.homes(&id).contains(&me) {
                    repair_local(ctx, id, data.clone()).await;
                } else if let Some(cache) = &p.cache {
                    cache.insert(id, data.clone());
                }
                return Ok(data);
            }
            Err(e) => {
                if e.is_corruption() {
                    metrics::counter!(m::PEER_CORRUPT).increment(1);
                    tracing::warn!(chunk = %id, node, error = %e, "corrupt copy on a peer; trying another home");
                }
                errors.push(e);
            }
        }
    }
    if errors.iter().all(|e| {
        matches!(
            e,
            PeerError::Remote {
                code: crate::peer::ErrorCode::NotFound,
                ..
            }
        )
    }) {
        return Err(NodeError::missing_chunk(&id));
    }
    Err(NodeError::Unavailable(format!(
        "no node could serve chunk {id}: {}",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

/// Puts a good copy back where a corrupt one was quarantined (this node is a home).
async fn repair_local(ctx: &Arc<Context>, id: ChunkId, data: Bytes) {
    let _lock = ctx.lock_chunk(&id).await;
    let c = ctx.clone();
    match tokio::task::spawn_blocking(move || c.store.put(&id, &data)).await {
        Ok(Ok(_)) => tracing::info!(chunk = %id, "repaired the local copy from a peer"),
        Ok(Err(e)) => tracing::warn!(chunk = %id, error = %e, "could not repair the local copy"),
        Err(_) => {}
    }
}

/// One pass over the replication queue: pushes each queued chunk to the homes that lack it.
/// Returns how many entries remain.
pub async fn drain_queue(ctx: &Arc<Context>, limit: usize) -> NodeResult<usize> {
    let p = &ctx.placement;
    let mut ids: Vec<ChunkId> = p
        .queued(limit)
        .into_iter()
        .filter(|id| p.claim(*id))
        .collect();
    // A chunk released to the cold tier since it was queued needs no more hot copies.
    let mut keep = Vec::with_capacity(ids.len());
    for id in ids.drain(..) {
        if !ctx.sm.cold_chunk(&id)?.is_some_and(|c| c.released) {
            keep.push(id);
        } else {
            p.dequeue(&id);
            p.release_claim(&id);
        }
    }
    let ids = keep;
    if ids.is_empty() {
        return Ok(p.queue_len());
    }
    let current = layout(ctx)?.current;
    let result = push_to_homes(ctx, &current, &ids, false, None).await;
    for id in &ids {
        p.release_claim(id);
    }
    result?;
    Ok(p.queue_len())
}

/// What one push round achieved.
#[derive(Default)]
struct Pushed {
    /// Chunks still missing a copy somewhere.
    pending: u64,
    copied_bytes: u64,
}

/// Makes every home of `ids` hold them: asks each remote home which it lacks (one HasChunks
/// per home), sends those, then releases copies this node should not keep and forgets the
/// queue entries of complete chunks. Chunks missing here are forgotten (another node's queue
/// or pass takes care of them). When `rebalancing`, only one holder sends each chunk.
async fn push_to_homes(
    ctx: &Arc<Context>,
    layout: &Layout,
    ids: &[ChunkId],
    rebalancing: bool,
    rate: Option<&mut RateLimit>,
) -> NodeResult<Pushed> {
    let me = ctx.cluster.id;
    let peers = ctx.placement.peers()?.clone();
    let addrs = member_addrs(ctx).await;
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
        let Some(addr) = addrs.get(home) else {
            down.insert(*home);
            continue;
        };
        for part in list.chunks(crate::peer::MAX_HAS_CHUNKS) {
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
            // One sender per chunk: the first home (in preference order) that holds it, or,
            // when no home holds it, every node that does.
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
    let rate = tokio::sync::Mutex::new(rate);
    let (peers, addrs, rate) = (&peers, &addrs, &rate);
    let mut copies = futures::stream::iter(jobs)
        .map(|(id, homes, lacking)| async move {
            let outcome = copy_to(ctx, peers, addrs, id, &lacking, rate).await;
            (id, homes, outcome)
        })
        .buffer_unordered(COPY_PARALLEL);
    while let Some((id, homes, outcome)) = copies.next().await {
        match outcome {
            Copy::Done(n) => {
                out.copied_bytes += n;
                ctx.placement.dequeue(&id);
                if !homes.contains(&me) {
                    release_local(ctx, id).await;
                }
            }
            Copy::Gone => ctx.placement.dequeue(&id),
            Copy::Pending => out.pending += 1,
        }
    }
    Ok(out)
}

/// Chunks copied at once by a queue or rebalance pass.
const COPY_PARALLEL: usize = 4;

enum Copy {
    /// Every home that lacked the chunk has it now (this many bytes sent).
    Done(u64),
    /// This node no longer holds the chunk.
    Gone,
    /// A copy failed; retried later.
    Pending,
}

/// Sends one local chunk to the homes that lack it.
async fn copy_to(
    ctx: &Arc<Context>,
    peers: &PeerClient,
    addrs: &BTreeMap<NodeId, SocketAddr>,
    id: ChunkId,
    lacking: &[NodeId],
    rate: &tokio::sync::Mutex<Option<&mut RateLimit>>,
) -> Copy {
    if lacking.is_empty() {
        return Copy::Done(0);
    }
    let c = ctx.clone();
    let data = match tokio::task::spawn_blocking(move || c.store.get(&id)).await {
        Ok(Ok(d)) => d,
        Ok(Err(ChunkStoreError::Missing(_))) => return Copy::Gone,
        _ => return Copy::Pending,
    };
    let mut sent = 0;
    let mut ok = true;
    for home in lacking {
        let Some(addr) = addrs.get(home) else {
            ok = false;
            continue;
        };
        match peers.put_chunk(*addr, id, data.clone()).await {
            Ok(_) => {
                let n = data.len() as u64;
                metrics::counter!(m::REPLICA_SENT_BYTES).increment(n);
                sent += n;
                if let Some(r) = rate.lock().await.as_deref_mut() {
                    r.spend(n).await;
                }
            }
            Err(e) => {
                tracing::debug!(chunk = %id, node = home, error = %e, "copy failed; will retry");
                ok = false;
            }
        }
    }
    if ok { Copy::Done(sent) } else { Copy::Pending }
}

/// Paces rebalancing copies to `bytes_per_sec` on average.
pub struct RateLimit {
    bytes_per_sec: u64,
    started: Instant,
    spent: u64,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec: bytes_per_sec.max(1),
            started: Instant::now(),
            spent: 0,
        }
    }

    pub async fn spend(&mut self, n: u64) {
        self.spent += n;
        let due = Duration::from_secs_f64(self.spent as f64 / self.bytes_per_sec as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Chunks per round of a rebalance pass (one HasChunks per home per round).
const PASS_ROUND: usize = 1024;

/// One rebalance pass over every chunk this node holds, towards the current layout: copies
/// each referenced chunk to the homes that lack it, then releases copies this node should not
/// keep. Returns the chunks still pending (a home down); the pass is complete at 0, and then
/// the layout version is recorded as done.
pub async fn rebalance_pass(ctx: &Arc<Context>) -> NodeResult<u64> {
    let state = layout(ctx)?;
    let current = state.current;
    let version = current.version;
    let c = ctx.clone();
    let all = tokio::task::spawn_blocking(move || c.store.ids())
        .await
        .map_err(|e| NodeError::Internal(format!("listing chunks: {e}")))?;
    // Only referenced chunks move: an unreferenced file is an upload in progress (its
    // session's queue entry covers it) or garbage the collector will remove.
    let mut ids = Vec::with_capacity(all.len());
    for id in all {
        if ctx.sm.chunk_needs_hot(&id)? {
            ids.push(id);
        }
    }
    let p = &ctx.placement;
    let started = Instant::now();
    p.set_progress(|pr| {
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
    // Plan: the chunks this pass may have to copy (this node holds them and they have other
    // homes) or release (this node is not a home), with their sizes.
    let me = ctx.cluster.id;
    let plan: Vec<(bool, u64)> = ids
        .iter()
        .map(|id| {
            let homes = current.homes(id);
            let size = std::fs::metadata(ctx.store.path_of(id))
                .map(|m| m.len())
                .unwrap_or(0);
            (!homes.contains(&me) || homes.len() > 1, size)
        })
        .collect();
    p.set_progress(|pr| {
        pr.to_move_chunks = plan.iter().filter(|(mv, _)| *mv).count() as u64;
        pr.to_move_bytes = plan.iter().filter(|(mv, _)| *mv).map(|(_, s)| s).sum();
    });
    let mut rate = RateLimit::new(ctx.config.rebalance_rate_bytes);
    let mut pending = 0;
    for (round, plan) in ids.chunks(PASS_ROUND).zip(plan.chunks(PASS_ROUND)) {
        let pushed = push_to_homes(ctx, &current, round, true, Some(&mut rate)).await?;
        pending += pushed.pending;
        metrics::counter!(m::REBALANCE_MOVED_BYTES).increment(pushed.copied_bytes);
        let (chunks, bytes) = plan
            .iter()
            .filter(|(mv, _)| *mv)
            .fold((0, 0), |(c, b), (_, s)| (c + 1, b + s));
        p.set_progress(|pr| {
            pr.done_chunks += chunks;
            pr.done_bytes += bytes;
            pr.copied_bytes += pushed.copied_bytes;
            let since = pr.since.unwrap_or(started);
            pr.rate = pr.copied_bytes as f64 / since.elapsed().as_secs_f64().max(0.001);
        });
        if layout(ctx)?.current.version != version {
            pending += 1; // a newer layout: stop here, the next pass starts over
            break;
        }
    }
    p.set_progress(|pr| {
        pr.running = false;
        pr.pending = pending;
    });
    if pending == 0 {
        p.set_scanned_version(version)?;
    }
    Ok(pending)
}
