//! Verification of this node's chunks, run by the Verifier actor:
//!
//! - the **scrub** re-hashes every local chunk file, in id order, at `scrub_rate` bytes/s; its
//!   cursor is saved in a node-local tree, so a restarted node resumes where it stopped. A file
//!   that does not hash to its id is quarantined (never served) and a good copy is fetched
//!   from another node;
//! - the **check** (anti-entropy) walks the replicated metadata's referenced chunks and makes
//!   sure every one this node is a home of has a file here, fetching what is missing. Every home
//!   checks itself, so two nodes in sync exchange nothing at all; a chunk missing on a node is
//!   found by that node's own check.
//!
//! A chunk no node has a good copy of is recorded as unrecoverable (`strata repair status`);
//! the record goes once a good copy is back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_cluster::ChunkId;
use strata_cluster::layout::NodeId;

use super::{BlockError, BlockManager, BlockResult};
use crate::chunk_store::Verified;
use crate::clock::now_ms;
use crate::codec::{decode, encode};
use crate::metrics as m;
use crate::rate_limit::RateLimit;

const STATE_TREE: &str = "verifier_state";
const LOST_TREE: &str = "verifier_lost";
const SCRUB_KEY: &[u8] = b"scrub";
const CHECK_KEY: &[u8] = b"check";
/// Referenced chunks read from the metadata per step of a check.
const CHECK_PAGE: usize = 4096;
/// Pauses shorter than this are not slept (they add up into a later one).
const MIN_PAUSE: Duration = Duration::from_millis(5);
/// The scrub saves its cursor at least this often.
const SAVE_EVERY: Duration = Duration::from_secs(2);

/// Verification settings that can change while the node runs (`strata worker set`).
#[derive(Debug)]
pub struct VerifyControl {
    scrub_rate: AtomicU64,
    paused: AtomicBool,
    start_requested: AtomicBool,
    wake: tokio::sync::Notify,
}

impl VerifyControl {
    pub fn new(scrub_rate: u64) -> VerifyControl {
        VerifyControl {
            scrub_rate: AtomicU64::new(scrub_rate.max(1)),
            paused: AtomicBool::new(false),
            start_requested: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn scrub_rate(&self) -> u64 {
        self.scrub_rate.load(Ordering::Relaxed)
    }

    pub fn set_scrub_rate(&self, bytes_per_sec: u64) {
        self.scrub_rate
            .store(bytes_per_sec.max(1), Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// Asks for a scrub pass now (it also resumes a paused scrub).
    pub fn start(&self) {
        self.start_requested.store(true, Ordering::Relaxed);
        self.resume();
    }

    /// Takes a pending start request.
    pub fn take_start(&self) -> bool {
        self.start_requested.swap(false, Ordering::Relaxed)
    }

    /// Returns once the scrub is not paused.
    async fn wait_unpaused(&self) {
        while self.paused() {
            let woken = self.wake.notified();
            if !self.paused() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
        }
    }
}

/// The scrub's progress, saved in the node-local tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrubRecord {
    /// When the running pass started (0: no pass is running).
    pub pass_started_ms: i64,
    /// The last chunk the running pass verified.
    pub cursor: Option<ChunkId>,
    pub pass_chunks: u64,
    pub pass_bytes: u64,
    pub pass_corrupt: u64,
    pub pass_repaired: u64,
    /// When the last complete pass ended (0: never).
    pub last_done_ms: i64,
    /// Bytes per second of the last complete pass.
    pub last_pass_rate: f64,
    /// Over every pass on this node.
    pub total_bytes: u64,
    pub total_corrupt: u64,
    pub total_repaired: u64,
}

impl ScrubRecord {
    /// The running pass's share done, estimated from the cursor (ids are uniform).
    pub fn progress(&self) -> f64 {
        match (&self.cursor, self.pass_started_ms) {
            (_, 0) => 0.0,
            (None, _) => 0.0,
            (Some(c), _) => {
                let b = c.as_bytes();
                f64::from(u16::from_be_bytes([b[0], b[1]])) / 65536.0
            }
        }
    }
}

/// The last check's result, saved in the node-local tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckRecord {
    pub last_done_ms: i64,
    /// Referenced chunks this node is a home of.
    pub homed: u64,
    /// Of those, found without a file here.
    pub missing: u64,
    pub restored: u64,
    /// No good copy anywhere.
    pub lost: u64,
    /// Not restored now (no node with a copy answered); retried by the next check.
    pub waiting: u64,
    pub duration_ms: u64,
}

/// What runs right now and the last error, for `strata worker list`.
#[derive(Debug, Clone, Default)]
pub struct VerifyActivity {
    pub scrub_running: bool,
    pub check_running: bool,
    /// Measured rate of the running scrub pass.
    pub scrub_rate_now: f64,
    pub scrub_error: Option<String>,
    pub check_error: Option<String>,
}

/// An unrecoverable chunk: referenced, but no node that answered has a good copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LostChunk {
    pub first_seen_ms: i64,
    /// Quarantined copies on this node are kept in `chunks/.quarantine/` for inspection.
    pub quarantined_here: bool,
}

pub(super) struct VerifyState {
    state: sled::Tree,
    lost: sled::Tree,
    pub(super) control: VerifyControl,
    activity: Mutex<VerifyActivity>,
}

fn tree_err(e: impl std::fmt::Display) -> BlockError {
    BlockError::Queue(format!("verifier state: {e}"))
}

impl VerifyState {
    pub fn open(db: &sled::Db, scrub_rate: u64) -> anyhow::Result<VerifyState> {
        let lost = db.open_tree(LOST_TREE)?;
        metrics::gauge!(m::UNRECOVERABLE_CHUNKS).set(lost.len() as f64);
        Ok(VerifyState {
            state: db.open_tree(STATE_TREE)?,
            lost,
            control: VerifyControl::new(scrub_rate),
            activity: Mutex::new(VerifyActivity::default()),
        })
    }

    fn load<T: serde::de::DeserializeOwned + Default>(&self, key: &[u8]) -> T {
        self.state
            .get(key)
            .ok()
            .flatten()
            .and_then(|v| decode("verifier record", &v).ok())
            .unwrap_or_default()
    }

    fn save<T: Serialize>(&self, key: &[u8], v: &T) -> BlockResult<()> {
        let bytes = encode("verifier record", v).map_err(tree_err)?;
        self.state.insert(key, bytes).map_err(tree_err)?;
        Ok(())
    }

    fn activity(&self, f: impl FnOnce(&mut VerifyActivity)) {
        if let Ok(mut a) = self.activity.lock() {
            f(&mut a);
        }
    }

    fn mark_lost(&self, id: &ChunkId, quarantined_here: bool) {
        if self.lost.contains_key(id.as_bytes()).unwrap_or(false) {
            return;
        }
        let rec = LostChunk {
            first_seen_ms: now_ms(),
            quarantined_here,
        };
        if let Ok(bytes) = encode("lost chunk", &rec) {
            let _ = self.lost.insert(id.as_bytes(), bytes);
        }
        metrics::gauge!(m::UNRECOVERABLE_CHUNKS).set(self.lost.len() as f64);
    }

    fn clear_lost(&self, id: &ChunkId) {
        // The common case, checked without a write to the tree.
        if self.lost.is_empty() || !self.lost.contains_key(id.as_bytes()).unwrap_or(false) {
            return;
        }
        if let Ok(Some(_)) = self.lost.remove(id.as_bytes()) {
            metrics::gauge!(m::UNRECOVERABLE_CHUNKS).set(self.lost.len() as f64);
        }
    }
}

/// The outcome of putting back one chunk this node should hold.
enum Repair {
    Repaired,
    /// This node need not hold the chunk (unreferenced, released to cold, or not a home).
    NotNeeded,
}

impl BlockManager {
    pub fn verify_control(&self) -> &VerifyControl {
        &self.verify.control
    }

    pub fn scrub_record(&self) -> ScrubRecord {
        self.verify.load(SCRUB_KEY)
    }

    pub fn check_record(&self) -> CheckRecord {
        self.verify.load(CHECK_KEY)
    }

    pub fn verify_activity(&self) -> VerifyActivity {
        self.verify
            .activity
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Chunks recorded as unrecoverable, oldest first is not guaranteed (id order).
    pub fn lost_chunks(&self, limit: usize) -> Vec<(ChunkId, LostChunk)> {
        self.verify
            .lost
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, v)| {
                Some((
                    ChunkId::from_slice(&k)?,
                    decode::<LostChunk>("lost chunk", &v).ok()?,
                ))
            })
            .take(limit)
            .collect()
    }

    /// Records a chunk with no good hot copy as unrecoverable, unless a cold copy of it exists
    /// (reads fall back to that one).
    pub(super) fn note_lost(&self, id: &ChunkId, quarantined_here: bool) {
        if matches!(self.sm.cold_chunk(id), Ok(None)) {
            self.verify.mark_lost(id, quarantined_here);
        }
    }

    pub fn lost_count(&self) -> usize {
        self.verify.lost.len()
    }

    /// Whether each of `nodes` answers a (chunk-less) request now. For the leader's liveness
    /// watch: a node that stops answering for `down_after` is marked down.
    pub async fn probe(&self, nodes: Vec<NodeId>) -> Vec<(NodeId, bool)> {
        let Ok(peers) = self.peers() else {
            return nodes.into_iter().map(|n| (n, false)).collect();
        };
        let book = self.members.all();
        let asks = nodes.into_iter().map(|n| {
            let addr = book.get(&n).copied();
            async move {
                let ok = match addr {
                    Some(a) => peers.has_chunks(a, Vec::new()).await.is_ok(),
                    None => false,
                };
                (n, ok)
            }
        });
        futures::future::join_all(asks).await
    }

    /// Puts back a good copy of a chunk this node should hold but whose file is gone (found
    /// missing, or quarantined as corrupt).
    async fn repair_local(&self, id: ChunkId, quarantined: bool) -> BlockResult<Repair> {
        let sm = self.sm.clone();
        let needed = tokio::task::spawn_blocking(move || sm.chunk_needs_hot(&id))
            .await
            .map_err(|e| tree_err(format!("metadata lookup: {e}")))??;
        if !needed {
            self.verify.clear_lost(&id);
            return Ok(Repair::NotNeeded);
        }
        let home = self.sm.layout()?.current.homes(&id).contains(&self.me);
        if !home && !self.queue.contains(&id) {
            return Ok(Repair::NotNeeded);
        }
        let data = match self.fetch_remote(id).await {
            Ok(d) => d,
            Err(e @ BlockError::Lost(_)) => {
                tracing::error!(chunk = %id, "no good copy of a referenced chunk on any node that answered");
                self.note_lost(&id, quarantined);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.store.put(id, data).await?;
        self.verify.clear_lost(&id);
        metrics::counter!(m::REPAIRS, "source" => "peer").increment(1);
        tracing::info!(chunk = %id, "put back a good copy of the chunk from a peer");
        Ok(Repair::Repaired)
    }

    /// One scrub pass, resumed from the saved cursor if a pass was interrupted. Honours the
    /// control's rate and pause at every chunk.
    pub async fn scrub_pass(&self) -> BlockResult<ScrubRecord> {
        let ctl = &self.verify.control;
        let mut rec: ScrubRecord = self.verify.load(SCRUB_KEY);
        if rec.pass_started_ms == 0 {
            rec.pass_started_ms = now_ms();
            rec.cursor = None;
            rec.pass_chunks = 0;
            rec.pass_bytes = 0;
            rec.pass_corrupt = 0;
            rec.pass_repaired = 0;
            self.verify.save(SCRUB_KEY, &rec)?;
        }
        self.verify.activity(|a| {
            a.scrub_running = true;
            a.scrub_error = None;
        });
        let result = self.scrub_from(&mut rec, ctl).await;
        self.verify.activity(|a| {
            a.scrub_running = false;
            a.scrub_rate_now = 0.0;
            if let Err(e) = &result {
                a.scrub_error = Some(e.to_string());
            }
        });
        result?;
        let took = (now_ms() - rec.pass_started_ms).max(1) as f64 / 1000.0;
        rec.last_pass_rate = rec.pass_bytes as f64 / took;
        rec.last_done_ms = now_ms();
        rec.pass_started_ms = 0;
        rec.cursor = None;
        self.verify.save(SCRUB_KEY, &rec)?;
        metrics::counter!(m::SCRUB_PASSES).increment(1);
        tracing::info!(
            chunks = rec.pass_chunks,
            bytes = rec.pass_bytes,
            corrupt = rec.pass_corrupt,
            repaired = rec.pass_repaired,
            "scrub pass complete"
        );
        Ok(rec)
    }

    async fn scrub_from(&self, rec: &mut ScrubRecord, ctl: &VerifyControl) -> BlockResult<()> {
        let first = rec.cursor.map_or(0, |c| c.as_bytes()[0]);
        let mut rate = ctl.scrub_rate();
        let mut pace = RateLimit::new(rate);
        let started = Instant::now();
        let bytes_at_start = rec.pass_bytes;
        let mut saved = Instant::now();
        for prefix in first..=255u8 {
            let ids = self.store.ids_with_prefix(prefix).await?;
            for id in ids {
                if rec.cursor.is_some_and(|c| id <= c) {
                    continue;
                }
                if ctl.paused() {
                    self.verify.save(SCRUB_KEY, rec)?;
                    ctl.wait_unpaused().await;
                    pace = RateLimit::new(rate);
                }
                if ctl.scrub_rate() != rate {
                    rate = ctl.scrub_rate();
                    pace = RateLimit::new(rate);
                }
                let len = match self.store.verify(id).await? {
                    Verified::Good { len } => {
                        self.verify.clear_lost(&id);
                        len
                    }
                    Verified::Missing => 0, // collected meanwhile
                    Verified::Corrupt { len } => {
                        rec.pass_corrupt += 1;
                        rec.total_corrupt += 1;
                        metrics::counter!(m::SCRUB_CORRUPTIONS).increment(1);
                        match self.repair_local(id, true).await {
                            Ok(Repair::Repaired) => {
                                rec.pass_repaired += 1;
                                rec.total_repaired += 1;
                            }
                            Ok(Repair::NotNeeded) => {}
                            Err(e) => {
                                // The check fetches it later (or it stays recorded as lost).
                                tracing::warn!(chunk = %id, error = %e, "corrupt chunk not repaired yet");
                            }
                        }
                        len
                    }
                };
                rec.cursor = Some(id);
                rec.pass_chunks += 1;
                rec.pass_bytes += len;
                rec.total_bytes += len;
                metrics::counter!(m::SCRUB_CHUNKS).increment(1);
                metrics::counter!(m::SCRUB_BYTES).increment(len);
                let done = rec.pass_bytes - bytes_at_start;
                self.verify.activity(|a| {
                    a.scrub_rate_now = done as f64 / started.elapsed().as_secs_f64().max(0.001)
                });
                if saved.elapsed() >= SAVE_EVERY {
                    self.verify.save(SCRUB_KEY, rec)?;
                    saved = Instant::now();
                }
                // Short pauses are left to add up (the limiter counts every byte): a timer
                // rounds each sleep up to a millisecond, which would cap the fastest rates.
                let pause = pace.spend(len);
                if pause >= MIN_PAUSE {
                    tokio::time::sleep(pause).await;
                }
            }
        }
        Ok(())
    }

    /// One anti-entropy check: every referenced chunk this node is a home of under the current
    /// layout must have a file here; a missing one is fetched from a good copy, at most
    /// `rate` bytes per second.
    pub async fn check_pass(&self, rate: u64) -> BlockResult<CheckRecord> {
        self.verify.activity(|a| {
            a.check_running = true;
            a.check_error = None;
        });
        let result = self.check_all(rate).await;
        self.verify.activity(|a| {
            a.check_running = false;
            if let Err(e) = &result {
                a.check_error = Some(e.to_string());
            }
        });
        let rec = result?;
        self.verify.save(CHECK_KEY, &rec)?;
        metrics::counter!(m::CHECK_PASSES).increment(1);
        metrics::gauge!(m::CHUNKS_UNDER_REPLICATED).set((rec.missing - rec.restored) as f64);
        if rec.missing > 0 {
            tracing::info!(
                missing = rec.missing,
                restored = rec.restored,
                lost = rec.lost,
                waiting = rec.waiting,
                "anti-entropy check found chunks missing here"
            );
        }
        Ok(rec)
    }

    async fn check_all(&self, rate: u64) -> BlockResult<CheckRecord> {
        let started = Instant::now();
        let mut rec = CheckRecord::default();
        let mut pace = RateLimit::new(rate);
        let mut after: Option<ChunkId> = None;
        loop {
            let layout = self.sm.layout()?.current;
            let (sm, me, from) = (self.sm.clone(), self.me, after);
            let (page, mine) = tokio::task::spawn_blocking(move || {
                let page = sm.referenced_chunks(from.as_ref(), CHECK_PAGE)?;
                let mut mine = Vec::new();
                for id in &page {
                    if layout.homes(id).contains(&me) && sm.chunk_needs_hot(id)? {
                        mine.push(*id);
                    }
                }
                Ok::<_, strata_cluster::StoreError>((page, mine))
            })
            .await
            .map_err(|e| tree_err(format!("metadata walk: {e}")))??;
            let Some(last) = page.last() else { break };
            after = Some(*last);
            rec.homed += mine.len() as u64;
            let has = self.store.has(mine.clone()).await?;
            for (id, held) in mine.into_iter().zip(has) {
                if held {
                    continue;
                }
                rec.missing += 1;
                match self.repair_local(id, false).await {
                    Ok(Repair::Repaired) => {
                        rec.restored += 1;
                        let len = self.store.sizes(vec![id]).await?;
                        let pause = pace.spend(len.first().copied().flatten().unwrap_or(0));
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    Ok(Repair::NotNeeded) => rec.missing -= 1,
                    Err(BlockError::Lost(_)) => rec.lost += 1,
                    Err(e) => {
                        tracing::debug!(chunk = %id, error = %e, "missing chunk not restored yet");
                        rec.waiting += 1;
                    }
                }
            }
            if page.len() < CHECK_PAGE {
                break;
            }
        }
        rec.last_done_ms = now_ms();
        rec.duration_ms = started.elapsed().as_millis() as u64;
        Ok(rec)
    }
}
