//! Tiering: moves object versions that a policy selects to a cold backend, brings restored
//! versions back to hot storage, deletes archives nothing needs, and reads online cold chunks.
//! The leader does the moves (one proposer, no duplicate uploads); every node records reads.
//!
//! A move packs the version's chunks into archives (`moves.rs`), uploads them a few at a
//! time, checks each with HeadObject (size and CRC32), and only then records the version cold
//! through Raft. The state machine releases the hot copies of chunks whose every reference is
//! now cold; the janitors then delete those files. A failed upload leaves everything hot and
//! the version is tried again at the next pass. Restores are in `restores.rs`.
//!
//! Tiering takes the block layer (hot reads and writes), the metadata and Raft handles, and
//! the backends from strata-cold; nothing else of the node.

mod moves;
mod restores;
pub mod verify;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use strata_cluster::tier::ColdLocation;
use strata_cluster::{BucketName, ChunkId, Command, ObjectKey, StateMachine, StoreError, TenantId};
use strata_cold::{Backends, ColdError, ColdStore};

use crate::blocks::{BlockError, BlockManager};
use crate::clock::now_ms;
use crate::config::TierConfig;
use crate::metrics as m;
use crate::raft::{Cluster, ClusterError};

/// A key's read is recorded again only if the last recorded one is older than this.
const ACCESS_GRANULARITY_MS: i64 = 3600 * 1000;
/// Keys whose reads wait to be recorded (more are dropped until the next flush).
const MAX_NOTED_READS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Blocks(#[from] BlockError),
    #[error(transparent)]
    Metadata(#[from] StoreError),
    #[error("cold backend {name:?} is not configured on this node (configured: {configured})")]
    NoBackend { name: String, configured: String },
    #[error("{object} in backend {backend} is archived and must be restored first")]
    NotRestored { backend: String, object: String },
    #[error("cold backend {backend}: {source}")]
    Backend { backend: String, source: ColdError },
    #[error(
        "the cold copy of chunk {id} in {backend}/{object} is corrupt (hashes to {actual}); not used"
    )]
    Corrupt {
        id: ChunkId,
        actual: ChunkId,
        backend: String,
        object: String,
    },
    #[error("tiering task failed: {0}")]
    Task(String),
}

pub type TierResult<T> = Result<T, TierError>;

/// What one pass did (the leader keeps the last one for `strata tier status`).
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub finished_ms: i64,
    pub moved_versions: u64,
    pub failed_versions: u64,
    pub pending_versions: u64,
    pub archives: u64,
    pub archive_bytes: u64,
    pub backend_requests: u64,
    pub restores_done: u64,
    pub restores_waiting: u64,
    pub archives_deleted: u64,
    pub orphans_deleted: u64,
    /// Archives checked (verify.cold_requests_per_day), and of those found missing or corrupt.
    pub archives_checked: u64,
    pub bad_archives: u64,
    /// Cold versions made hot again because their archive failed its check (their chunks all
    /// had hot copies); their policy moves them again.
    pub versions_made_hot: u64,
    pub errors: Vec<String>,
}

pub struct Tiering {
    backends: Backends,
    sm: Arc<StateMachine>,
    cluster: Arc<Cluster>,
    blocks: Arc<BlockManager>,
    config: TierConfig,
    reads: Mutex<HashSet<(TenantId, BucketName, ObjectKey)>>,
    last: Mutex<PassReport>,
    /// When the leader last looked for orphan archives (None: not since this node started).
    orphan_sweep: Mutex<Option<std::time::Instant>>,
    /// Backend requests per day the archive checks may make, and what is left of them.
    cold_requests_per_day: u64,
    cold_budget: Mutex<verify::Budget>,
}

impl Tiering {
    pub fn new(
        backends: Backends,
        sm: Arc<StateMachine>,
        cluster: Arc<Cluster>,
        blocks: Arc<BlockManager>,
        config: TierConfig,
        cold_requests_per_day: u64,
    ) -> Tiering {
        Tiering {
            backends,
            sm,
            cluster,
            blocks,
            config,
            reads: Mutex::new(HashSet::new()),
            last: Mutex::new(PassReport::default()),
            orphan_sweep: Mutex::new(None),
            cold_requests_per_day,
            cold_budget: verify::Budget::new(),
        }
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn backend(&self, name: &str) -> TierResult<&Arc<dyn ColdStore>> {
        self.backends.get(name).ok_or_else(|| TierError::NoBackend {
            name: name.to_owned(),
            configured: self.backends.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Remembers that a key was read (recorded in batches by [`Tiering::flush_reads`]).
    pub fn note_read(&self, tenant: TenantId, bucket: &BucketName, key: &ObjectKey) {
        if let Ok(mut r) = self.reads.lock()
            && r.len() < MAX_NOTED_READS
        {
            r.insert((tenant, bucket.clone(), key.clone()));
        }
    }

    pub fn last_pass(&self) -> PassReport {
        self.last.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Records the reads noted since the last flush (only keys not recorded within the hour).
    pub async fn flush_reads(&self) -> TierResult<()> {
        let reads: Vec<_> = match self.reads.lock() {
            Ok(mut r) => r.drain().collect(),
            Err(_) => return Ok(()),
        };
        let now = now_ms();
        let mut keys = Vec::new();
        for (t, b, k) in reads {
            if self
                .sm
                .last_access(t, &b, &k)?
                .is_none_or(|at| now - at >= ACCESS_GRANULARITY_MS)
            {
                keys.push((t, b, k));
            }
        }
        for batch in keys.chunks(1000) {
            self.cluster
                .propose(Command::RecordAccess {
                    keys: batch.to_vec(),
                    now_ms: now,
                })
                .await?;
        }
        Ok(())
    }

    /// Sets the tier gauges from this node's view.
    pub fn update_gauges(&self) {
        if let Ok(t) = self.sm.tier_totals() {
            for name in self.backends.keys() {
                let bytes = t.bytes.get(name).copied().unwrap_or(0);
                metrics::gauge!(m::TIER_BYTES, "tier" => name.clone()).set(bytes as f64);
            }
            metrics::gauge!(m::RESTORES_IN_FLIGHT).set(t.restores as f64);
        }
        let (_, hot) = self.blocks.store().usage();
        metrics::gauge!(m::TIER_BYTES, "tier" => "hot").set(hot as f64);
    }

    /// One leader pass: moves, restores, archive deletion.
    pub async fn run_pass(&self) -> PassReport {
        let mut report = PassReport::default();
        if let Err(e) = self.transitions(&mut report).await {
            report.errors.push(format!("moves: {e}"));
        }
        if let Err(e) = self.advance_restores(&mut report).await {
            report.errors.push(format!("restores: {e}"));
        }
        if let Err(e) = self.delete_dead_archives(&mut report).await {
            report.errors.push(format!("archive deletion: {e}"));
        }
        if let Err(e) = self.sweep_orphan_archives(&mut report).await {
            report.errors.push(format!("orphan archive sweep: {e}"));
        }
        if let Err(e) = self.verify_archives(&mut report).await {
            report.errors.push(format!("archive checks: {e}"));
        }
        report.finished_ms = now_ms();
        for e in &report.errors {
            tracing::warn!(error = %e, "tiering pass");
        }
        metrics::gauge!(m::TIER_MOVES_PENDING).set(report.pending_versions as f64);
        self.update_gauges();
        if let Ok(mut last) = self.last.lock() {
            *last = report.clone();
        }
        report
    }

    /// Bytes `offset..offset+len` of an archive.
    async fn fetch(&self, backend: &str, object: &str, offset: u64, len: u64) -> TierResult<Bytes> {
        let store = self.backend(backend)?;
        strata_cold::observe(store.as_ref(), "get", store.get_range(object, offset, len))
            .await
            .map_err(|e| match e {
                ColdError::NotRestored(_) => TierError::NotRestored {
                    backend: backend.to_owned(),
                    object: object.to_owned(),
                },
                source => TierError::Backend {
                    backend: backend.to_owned(),
                    source,
                },
            })
    }

    /// Reads a chunk's cold copy and checks it is the chunk.
    pub async fn read_cold(&self, id: ChunkId, loc: &ColdLocation) -> TierResult<Bytes> {
        let data = self
            .fetch(&loc.backend, &loc.object, loc.offset, u64::from(loc.len))
            .await?;
        check(id, &data, loc).await?;
        metrics::counter!(m::TIER_COLD_READ_BYTES).increment(data.len() as u64);
        Ok(data)
    }

    async fn delete_dead_archives(&self, report: &mut PassReport) -> TierResult<()> {
        for (backend, object) in self.sm.dead_archives(1000)? {
            let Ok(store) = self.backend(&backend) else {
                continue; // not configured here: left for a node that has it
            };
            let store = store.clone();
            report.backend_requests += 1;
            match strata_cold::observe(store.as_ref(), "delete", store.delete(&object)).await {
                Ok(()) | Err(ColdError::NotFound(_)) => {
                    self.cluster
                        .propose(Command::ArchiveDeleted { backend, object })
                        .await?;
                    report.archives_deleted += 1;
                }
                Err(e) => report
                    .errors
                    .push(format!("deleting {backend}/{object}: {e}")),
            }
        }
        Ok(())
    }

    /// Deletes archives that no metadata records and that are older than
    /// `tier.orphan_archive_grace`: a pass commits or deletes its own archives before it ends,
    /// so these come from a leader that crashed or was deposed mid-pass. Runs at the first
    /// pass after the node starts, then at most hourly (listing costs requests).
    async fn sweep_orphan_archives(&self, report: &mut PassReport) -> TierResult<()> {
        {
            let Ok(mut last) = self.orphan_sweep.lock() else {
                return Ok(());
            };
            if last.is_some_and(|t| t.elapsed() < ORPHAN_SWEEP_EVERY) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        let before = now_ms() - self.config.orphan_archive_grace.as_millis() as i64;
        for store in self.backends.values() {
            report.backend_requests += 1;
            let listed = match strata_cold::observe(
                store.as_ref(),
                "list",
                store.list("archives/", ORPHAN_SWEEP_LIMIT),
            )
            .await
            {
                Ok(l) => l,
                Err(e) => {
                    report
                        .errors
                        .push(format!("listing backend {}: {e}", store.name()));
                    continue;
                }
            };
            for (object, modified) in listed {
                if modified > before || self.sm.archive(store.name(), &object)?.is_some() {
                    continue;
                }
                report.backend_requests += 1;
                match strata_cold::observe(store.as_ref(), "delete", store.delete(&object)).await {
                    Ok(()) => {
                        report.orphans_deleted += 1;
                        tracing::info!(backend = store.name(), object, "deleted an orphan archive");
                    }
                    Err(e) => report
                        .errors
                        .push(format!("deleting orphan {}/{object}: {e}", store.name())),
                }
            }
        }
        Ok(())
    }
}

/// How often the leader lists its backends for orphan archives.
const ORPHAN_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Archives looked at per backend and sweep.
const ORPHAN_SWEEP_LIMIT: usize = 100_000;

/// Checks that bytes read from a cold copy are the chunk (never serve or store anything else).
async fn check(id: ChunkId, data: &Bytes, loc: &ColdLocation) -> TierResult<()> {
    let c = data.clone();
    let actual = tokio::task::spawn_blocking(move || ChunkId::of(&c))
        .await
        .map_err(|e| TierError::Task(e.to_string()))?;
    if actual != id {
        metrics::counter!(m::CHUNK_CORRUPT).increment(1);
        return Err(TierError::Corrupt {
            id,
            actual,
            backend: loc.backend.clone(),
            object: loc.object.clone(),
        });
    }
    Ok(())
}
