//! Tiering: moves object versions that a policy selects to a cold backend, brings restored
//! versions back to hot storage, deletes archives nothing needs, and reads online cold chunks.
//! The leader does the moves (one proposer, no duplicate uploads); every node records reads.
//!
//! A move packs the version's chunks into archives (see [`Packer`]), uploads them a few at a
//! time, checks each with HeadObject (size and CRC32), and only then records the version cold
//! through Raft. The state machine releases the hot copies of chunks whose every reference is
//! now cold; the janitors then delete those files. A failed upload leaves everything hot and
//! the version is tried again at the next pass.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use strata_cluster::query::TierCandidate;
use strata_cluster::tier::{ArchiveRecord, ColdLocation, StorageClass};
use strata_cluster::{BucketName, ChunkId, Command, ObjectKey, Rejection, TenantId};
use tokio::task::JoinSet;

use crate::cold::{self, Backends, ColdError, ColdStore, RestoreStatus};
use crate::context::{Context, now_ms};
use crate::error::{NodeError, NodeResult};
use crate::metrics as m;
use crate::placement::RateLimit;

/// Versions looked at per pass.
const PASS_VERSIONS: usize = 10_000;
/// Moves are recorded (and their archives settled) at least every this many bytes.
const SETTLE_BYTES: u64 = 1 << 30;
/// A key's read is recorded again only if the last recorded one is older than this.
const ACCESS_GRANULARITY_MS: i64 = 3600 * 1000;
/// Archive trailer: index, its length (u32 LE), then this magic.
pub const ARCHIVE_MAGIC: &[u8; 8] = b"STRATAPK";

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
    pub errors: Vec<String>,
}

pub struct Tiering {
    pub backends: Backends,
    reads: Mutex<HashSet<(TenantId, BucketName, ObjectKey)>>,
    last: Mutex<PassReport>,
    /// When the leader last looked for orphan archives (None: not since this node started).
    orphan_sweep: Mutex<Option<std::time::Instant>>,
}

impl Tiering {
    pub fn new(backends: Backends) -> Tiering {
        Tiering {
            backends,
            reads: Mutex::new(HashSet::new()),
            last: Mutex::new(PassReport::default()),
            orphan_sweep: Mutex::new(None),
        }
    }

    pub fn backend(&self, name: &str) -> NodeResult<&Arc<dyn ColdStore>> {
        self.backends.get(name).ok_or_else(|| {
            NodeError::FailedPrecondition(format!(
                "cold backend {name:?} is not configured on this node (configured: {})",
                self.backends.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Remembers that a key was read (recorded in batches by [`flush_reads`]).
    pub fn note_read(&self, tenant: TenantId, bucket: &BucketName, key: &ObjectKey) {
        if let Ok(mut r) = self.reads.lock()
            && r.len() < 100_000
        {
            r.insert((tenant, bucket.clone(), key.clone()));
        }
    }

    pub fn last_pass(&self) -> PassReport {
        self.last.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Records the reads noted since the last flush (only keys not recorded within the hour).
pub async fn flush_reads(ctx: &Arc<Context>) -> NodeResult<()> {
    let reads: Vec<_> = match ctx.tiering.reads.lock() {
        Ok(mut r) => r.drain().collect(),
        Err(_) => return Ok(()),
    };
    let now = now_ms();
    let mut keys = Vec::new();
    for (t, b, k) in reads {
        if ctx
            .sm
            .last_access(t, &b, &k)?
            .is_none_or(|at| now - at >= ACCESS_GRANULARITY_MS)
        {
            keys.push((t, b, k));
        }
    }
    for batch in keys.chunks(1000) {
        ctx.propose(Command::RecordAccess {
            keys: batch.to_vec(),
            now_ms: now,
        })
        .await?;
    }
    Ok(())
}

/// Sets the tier gauges from this node's view.
pub fn update_gauges(ctx: &Context) {
    if let Ok(t) = ctx.sm.tier_totals() {
        for name in ctx.tiering.backends.keys() {
            let bytes = t.bytes.get(name).copied().unwrap_or(0);
            metrics::gauge!(m::TIER_BYTES, "tier" => name.clone()).set(bytes as f64);
        }
        metrics::gauge!(m::RESTORES_IN_FLIGHT).set(t.restores as f64);
    }
    let (_, hot) = ctx.store.usage();
    metrics::gauge!(m::TIER_BYTES, "tier" => "hot").set(hot as f64);
}

/// One leader pass: moves, restores, archive deletion.
pub async fn run_pass(ctx: &Arc<Context>) -> PassReport {
    let mut report = PassReport::default();
    if let Err(e) = transitions(ctx, &mut report).await {
        report.errors.push(format!("moves: {e}"));
    }
    if let Err(e) = advance_restores(ctx, &mut report).await {
        report.errors.push(format!("restores: {e}"));
    }
    if let Err(e) = delete_dead_archives(ctx, &mut report).await {
        report.errors.push(format!("archive deletion: {e}"));
    }
    if let Err(e) = sweep_orphan_archives(ctx, &mut report).await {
        report.errors.push(format!("orphan archive sweep: {e}"));
    }
    report.finished_ms = now_ms();
    for e in &report.errors {
        tracing::warn!(error = %e, "tiering pass");
    }
    metrics::gauge!(m::TIER_MOVES_PENDING).set(report.pending_versions as f64);
    update_gauges(ctx);
    if let Ok(mut last) = ctx.tiering.last.lock() {
        *last = report.clone();
    }
    report
}

/// Builds archives: chunks one after another, then the index (so an archive describes itself
/// even without Strata's metadata), its length and a magic.
struct Packer {
    store: Arc<dyn ColdStore>,
    class: StorageClass,
    pack_bytes: u64,
    current: Option<OpenArchive>,
}

/// The archive being filled: its object name, bytes so far, and index.
struct OpenArchive {
    object: String,
    buf: BytesMut,
    index: Vec<(ChunkId, u64, u32)>,
}

impl Packer {
    fn new_object(&self) -> String {
        let now = now_ms();
        format!(
            "archives/{}/{}.spk",
            now / (86_400 * 1000),
            hex::encode(rand::random::<[u8; 12]>())
        )
    }

    /// Appends a chunk; returns its location and, if the archive is now full, the sealed one.
    fn add(&mut self, id: ChunkId, data: &[u8]) -> (ColdLocation, Option<Sealed>) {
        let cap = (self.pack_bytes as usize).clamp(data.len(), 256 << 20);
        let object = self.new_object();
        let (backend, class) = (self.store.name().to_owned(), self.class);
        let a = self.current.get_or_insert_with(|| OpenArchive {
            object,
            buf: BytesMut::with_capacity(cap),
            index: Vec::new(),
        });
        let loc = ColdLocation {
            backend,
            object: a.object.clone(),
            offset: a.buf.len() as u64,
            len: data.len() as u32,
            class,
        };
        a.index.push((id, loc.offset, loc.len));
        a.buf.extend_from_slice(data);
        let full = a.buf.len() as u64 >= self.pack_bytes;
        (loc, if full { self.seal() } else { None })
    }

    fn seal(&mut self) -> Option<Sealed> {
        let OpenArchive {
            object,
            mut buf,
            index,
        } = self.current.take()?;
        let entries: Vec<([u8; 32], u64, u32)> = index
            .iter()
            .map(|(id, o, l)| (*id.as_bytes(), *o, *l))
            .collect();
        let encoded = strata_cluster::records::encode(&entries);
        buf.extend_from_slice(&encoded);
        buf.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        buf.extend_from_slice(ARCHIVE_MAGIC);
        Some(Sealed {
            object,
            body: buf.freeze(),
            chunks: index.len() as u32,
        })
    }
}

struct Sealed {
    object: String,
    body: Bytes,
    chunks: u32,
}

/// Uploads and verifies one archive.
async fn upload(
    store: Arc<dyn ColdStore>,
    class: StorageClass,
    a: Sealed,
) -> Result<ArchiveRecord, (String, ColdError)> {
    let size = a.body.len() as u64;
    let crc = crc32fast::hash(&a.body);
    let put = cold::observe(
        store.as_ref(),
        "put",
        store.put(&a.object, a.body, crc, class),
    );
    if let Err(e) = put.await {
        return Err((a.object, e));
    }
    match cold::verify(store.as_ref(), &a.object, size, crc).await {
        Ok(_) => {
            metrics::counter!(m::TIER_MOVED_BYTES, "backend" => store.name().to_owned())
                .increment(size);
            Ok(ArchiveRecord {
                backend: store.name().to_owned(),
                object: a.object,
                class,
                bytes: size,
                live_chunks: a.chunks,
                created_at_ms: now_ms(),
            })
        }
        Err(e) => Err((a.object, e)),
    }
}

/// One group of moves to the same backend and class.
struct Group {
    store: Arc<dyn ColdStore>,
    class: StorageClass,
    packer: Packer,
    uploads: JoinSet<Result<ArchiveRecord, (String, ColdError)>>,
    /// Chunks put in an archive this pass.
    placed: HashMap<ChunkId, ColdLocation>,
    verified: HashMap<String, ArchiveRecord>,
    failed: HashSet<String>,
    used: HashSet<String>,
    /// Versions whose chunks are placed, waiting for their archives.
    waiting: Vec<(TierCandidate, BTreeSet<ChunkId>)>,
    staged: u64,
}

impl Group {
    async fn spawn(&mut self, sealed: Sealed, parallel: usize, report: &mut PassReport) {
        while self.uploads.len() >= parallel {
            self.join_one(report).await;
        }
        report.archives += 1;
        report.archive_bytes += sealed.body.len() as u64;
        report.backend_requests += 2; // PutObject and HeadObject
        let (store, class) = (self.store.clone(), self.class);
        self.uploads.spawn(upload(store, class, sealed));
    }

    async fn join_one(&mut self, report: &mut PassReport) {
        match self.uploads.join_next().await {
            Some(Ok(Ok(rec))) => {
                self.verified.insert(rec.object.clone(), rec);
            }
            Some(Ok(Err((object, e)))) => {
                report.errors.push(format!(
                    "archive {object} to backend {}: {e}",
                    self.store.name()
                ));
                self.failed.insert(object);
            }
            Some(Err(e)) => report.errors.push(format!("upload task: {e}")),
            None => {}
        }
    }

    /// Seals the open archive, waits for every upload, and records the waiting versions whose
    /// archives all verified.
    async fn settle(&mut self, ctx: &Arc<Context>, parallel: usize, report: &mut PassReport) {
        if let Some(sealed) = self.packer.seal() {
            self.spawn(sealed, parallel, report).await;
        }
        while !self.uploads.is_empty() {
            self.join_one(report).await;
        }
        self.staged = 0;
        for (c, new_chunks) in std::mem::take(&mut self.waiting) {
            let mut chunks = Vec::new();
            let mut archives = BTreeMap::new();
            let mut ok = true;
            for id in &new_chunks {
                let Some(loc) = self.placed.get(id) else {
                    continue;
                };
                match self.verified.get(&loc.object) {
                    Some(a) => {
                        archives.insert(a.object.clone(), a.clone());
                        chunks.push((*id, loc.clone()));
                    }
                    None => ok = false,
                }
            }
            let backend = self.store.name().to_owned();
            if !ok {
                report.failed_versions += 1;
                metrics::counter!(m::TIER_MOVES, "backend" => backend, "result" => "failed")
                    .increment(1);
                continue;
            }
            let used: Vec<String> = archives.keys().cloned().collect();
            let cmd = Command::TransitionVersion {
                tenant: c.tenant,
                bucket: c.bucket.clone(),
                key: c.key.clone(),
                version: c.version,
                backend: backend.clone(),
                class: self.class,
                chunks,
                archives: archives.into_values().collect(),
                now_ms: now_ms(),
            };
            match ctx.propose(cmd).await {
                Ok(_) => {
                    self.used.extend(used);
                    report.moved_versions += 1;
                    metrics::counter!(m::TIER_MOVES, "backend" => backend, "result" => "ok")
                        .increment(1);
                    tracing::info!(bucket = %c.bucket, key = %c.key, version = c.version,
                        backend = self.store.name(), class = %self.class, "version moved to cold storage");
                }
                // Purged or moved meanwhile: nothing to do (unused archives are deleted below).
                Err(NodeError::Rejected(
                    Rejection::VersionNotFound(_) | Rejection::AlreadyCold,
                )) => {}
                Err(e) => {
                    report.failed_versions += 1;
                    report
                        .errors
                        .push(format!("recording {}/{} cold: {e}", c.bucket, c.key));
                    metrics::counter!(m::TIER_MOVES, "backend" => backend, "result" => "failed")
                        .increment(1);
                }
            }
        }
    }
}

async fn transitions(ctx: &Arc<Context>, report: &mut PassReport) -> NodeResult<()> {
    let candidates = ctx.sm.tier_candidates(now_ms(), PASS_VERSIONS)?;
    report.pending_versions = candidates.len() as u64;
    if candidates.is_empty() {
        return Ok(());
    }
    let cfg = &ctx.config.tier;
    let mut rate = (cfg.rate_bytes > 0).then(|| RateLimit::new(cfg.rate_bytes));
    let mut groups: BTreeMap<(String, StorageClass), Group> = BTreeMap::new();
    for c in candidates {
        let store = match ctx.tiering.backend(&c.policy.backend) {
            Ok(s) => s.clone(),
            Err(e) => {
                report.errors.push(format!("policy {}: {e}", c.policy.name));
                continue;
            }
        };
        let class = c.policy.storage_class.unwrap_or(store.default_class());
        if !store.supports(class) {
            report.errors.push(format!(
                "policy {}: backend {} cannot store class {class}",
                c.policy.name,
                store.name()
            ));
            continue;
        }
        let group = groups
            .entry((store.name().to_owned(), class))
            .or_insert_with(|| Group {
                packer: Packer {
                    store: store.clone(),
                    class,
                    pack_bytes: cfg.pack_bytes.max(1),
                    current: None,
                },
                store: store.clone(),
                class,
                uploads: JoinSet::new(),
                placed: HashMap::new(),
                verified: HashMap::new(),
                failed: HashSet::new(),
                used: HashSet::new(),
                waiting: Vec::new(),
                staged: 0,
            });
        let Some(rec) = ctx.sm.version(c.tenant, &c.bucket, &c.key, c.version)? else {
            continue;
        };
        let mut new_chunks = BTreeSet::new();
        let mut seen = HashSet::new();
        let mut readable = true;
        for e in &rec.chunks {
            if !seen.insert(e.id) || ctx.sm.cold_chunk(&e.id)?.is_some() {
                continue;
            }
            new_chunks.insert(e.id);
            if group.placed.contains_key(&e.id) {
                continue;
            }
            let data = match ctx.read_chunk(e.id).await {
                Ok(d) => d,
                Err(err) => {
                    report.errors.push(format!(
                        "reading chunk {} of {}/{}: {err}",
                        e.id, c.bucket, c.key
                    ));
                    readable = false;
                    break;
                }
            };
            if let Some(r) = rate.as_mut() {
                r.spend(data.len() as u64).await;
            }
            group.staged += data.len() as u64;
            let (loc, sealed) = group.packer.add(e.id, &data);
            group.placed.insert(e.id, loc);
            if let Some(s) = sealed {
                group.spawn(s, cfg.parallel, report).await;
            }
        }
        if !readable {
            report.failed_versions += 1;
            continue;
        }
        group.waiting.push((c, new_chunks));
        if group.staged >= SETTLE_BYTES {
            group.settle(ctx, cfg.parallel, report).await;
        }
    }
    for group in groups.values_mut() {
        group.settle(ctx, cfg.parallel, report).await;
        // Archives no recorded move points to (their versions failed or raced): delete now.
        let unused: Vec<String> = group
            .verified
            .keys()
            .filter(|o| !group.used.contains(*o))
            .cloned()
            .collect();
        for object in unused {
            let store = group.store.clone();
            if let Err(e) = cold::observe(store.as_ref(), "delete", store.delete(&object)).await {
                report
                    .errors
                    .push(format!("deleting unused archive {object}: {e}"));
            }
        }
    }
    Ok(())
}

/// Writes a chunk back to hot storage: here, then its homes (W of them before returning).
async fn write_hot(ctx: &Arc<Context>, id: ChunkId, data: Bytes) -> NodeResult<()> {
    let _lock = ctx.lock_chunk(&id).await;
    let c = ctx.clone();
    let d = data.clone();
    tokio::task::spawn_blocking(move || c.store.put(&id, &d))
        .await
        .map_err(|e| NodeError::Internal(format!("write task: {e}")))??;
    crate::placement::replicate_new(ctx, id, data).await
}

/// Bytes `offset..offset+len` of an archive, with backend errors as node errors.
async fn fetch(
    ctx: &Context,
    backend: &str,
    object: &str,
    offset: u64,
    len: u64,
) -> NodeResult<Bytes> {
    let store = ctx.tiering.backend(backend)?;
    cold::observe(store.as_ref(), "get", store.get_range(object, offset, len))
        .await
        .map_err(|e| match e {
            ColdError::NotRestored(_) => NodeError::FailedPrecondition(format!(
                "{object} in backend {backend} is archived and must be restored first"
            )),
            e => NodeError::Unavailable(format!("cold backend {backend}: {e}")),
        })
}

/// Checks that bytes read from a cold copy are the chunk (never serve or store anything else).
async fn check(id: ChunkId, data: &Bytes, loc: &ColdLocation) -> NodeResult<()> {
    let c = data.clone();
    let actual = tokio::task::spawn_blocking(move || ChunkId::of(&c))
        .await
        .map_err(|e| NodeError::Internal(format!("hash task: {e}")))?;
    if actual != id {
        metrics::counter!(m::CHUNK_CORRUPT).increment(1);
        return Err(NodeError::Internal(format!(
            "the cold copy of chunk {id} in {}/{} is corrupt (hashes to {actual}); not used",
            loc.backend, loc.object
        )));
    }
    Ok(())
}

/// Reads a chunk's cold copy and checks it is the chunk.
pub async fn read_cold(ctx: &Context, id: ChunkId, loc: &ColdLocation) -> NodeResult<Bytes> {
    let data = fetch(
        ctx,
        &loc.backend,
        &loc.object,
        loc.offset,
        u64::from(loc.len),
    )
    .await?;
    check(id, &data, loc).await?;
    metrics::counter!(m::TIER_COLD_READ_BYTES).increment(data.len() as u64);
    Ok(data)
}

/// Largest range a restore reads from an archive in one GET (adjacent chunks are read
/// together, so a packed archive comes back in few requests).
const RESTORE_READ_BYTES: u64 = 64 * 1024 * 1024;

/// Groups chunks of one archive (sorted by offset) into runs of adjacent ones, each at most
/// RESTORE_READ_BYTES long (a larger single chunk is a run of its own).
fn adjacent_runs(chunks: &[(ChunkId, ColdLocation)]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let start = chunks[i].1.offset;
        let mut end = start + u64::from(chunks[i].1.len);
        let mut j = i + 1;
        while j < chunks.len()
            && chunks[j].1.offset == end
            && end + u64::from(chunks[j].1.len) - start <= RESTORE_READ_BYTES
        {
            end += u64::from(chunks[j].1.len);
            j += 1;
        }
        runs.push(i..j);
        i = j;
    }
    runs
}

async fn advance_restores(ctx: &Arc<Context>, report: &mut PassReport) -> NodeResult<()> {
    for r in ctx.sm.restores()? {
        let Some(rec) = ctx.sm.version(r.tenant, &r.bucket, &r.key, r.version)? else {
            continue;
        };
        // The chunks to bring back: released ones (and, once rehydrating, every cold one: a
        // pass that failed half-way finds them unreleased).
        let mut need: BTreeMap<(String, String), Vec<(ChunkId, ColdLocation)>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for e in &rec.chunks {
            if !seen.insert(e.id) {
                continue;
            }
            if let Some(cold) = ctx.sm.cold_chunk(&e.id)?
                && (cold.released || r.record.rehydrating)
            {
                need.entry((cold.loc.backend.clone(), cold.loc.object.clone()))
                    .or_default()
                    .push((e.id, cold.loc));
            }
        }
        let mut ready = true;
        for (backend, object) in need.keys() {
            let store = match ctx.tiering.backend(backend) {
                Ok(s) => s.clone(),
                Err(e) => {
                    report.errors.push(e.to_string());
                    ready = false;
                    continue;
                }
            };
            report.backend_requests += 1;
            let state = match cold::observe(store.as_ref(), "head", store.head(object)).await {
                Ok(h) => h.restore,
                Err(e) => {
                    report.errors.push(format!("{backend}/{object}: {e}"));
                    ready = false;
                    continue;
                }
            };
            match state {
                RestoreStatus::NotNeeded | RestoreStatus::Ready => {}
                RestoreStatus::NotRequested => {
                    ready = false;
                    report.backend_requests += 1;
                    let days = r.record.days;
                    let tier = r.record.tier;
                    if let Err(e) =
                        cold::observe(store.as_ref(), "restore", store.restore(object, tier, days))
                            .await
                    {
                        report
                            .errors
                            .push(format!("restore {backend}/{object}: {e}"));
                    } else {
                        tracing::info!(
                            backend,
                            object,
                            tier = tier.as_str(),
                            "archive restore requested"
                        );
                    }
                }
                RestoreStatus::InProgress => ready = false,
            }
        }
        if !ready {
            report.restores_waiting += 1;
            continue;
        }
        if let Err(e) = rehydrate(ctx, &r, need).await {
            report.restores_waiting += 1;
            report
                .errors
                .push(format!("bringing back {}/{}: {e}", r.bucket, r.key));
            continue;
        }
        report.restores_done += 1;
    }
    Ok(())
}

async fn rehydrate(
    ctx: &Arc<Context>,
    r: &strata_cluster::query::RestoreView,
    need: BTreeMap<(String, String), Vec<(ChunkId, ColdLocation)>>,
) -> NodeResult<()> {
    if !r.record.rehydrating {
        ctx.propose(Command::Rehydrate {
            tenant: r.tenant,
            bucket: r.bucket.clone(),
            key: r.key.clone(),
            version: r.version,
        })
        .await?;
    }
    for ((backend, object), mut chunks) in need {
        chunks.sort_by_key(|(_, loc)| loc.offset);
        for run in adjacent_runs(&chunks) {
            let run = &chunks[run];
            let start = run[0].1.offset;
            let end = run
                .last()
                .map_or(start, |(_, l)| l.offset + u64::from(l.len));
            let data = fetch(ctx, &backend, &object, start, end - start).await?;
            for (id, loc) in run {
                let lo = (loc.offset - start) as usize;
                let piece = data.slice(lo..lo + loc.len as usize);
                check(*id, &piece, loc).await?;
                let n = piece.len() as u64;
                write_hot(ctx, *id, piece).await?;
                metrics::counter!(m::TIER_REHYDRATED_BYTES).increment(n);
            }
        }
    }
    ctx.propose(Command::FinishRestore {
        tenant: r.tenant,
        bucket: r.bucket.clone(),
        key: r.key.clone(),
        version: r.version,
        now_ms: now_ms(),
    })
    .await?;
    tracing::info!(bucket = %r.bucket, key = %r.key, version = r.version, "version restored to hot storage");
    Ok(())
}

async fn delete_dead_archives(ctx: &Arc<Context>, report: &mut PassReport) -> NodeResult<()> {
    for (backend, object) in ctx.sm.dead_archives(1000)? {
        let Ok(store) = ctx.tiering.backend(&backend) else {
            continue; // not configured here: left for a node that has it
        };
        let store = store.clone();
        report.backend_requests += 1;
        match cold::observe(store.as_ref(), "delete", store.delete(&object)).await {
            Ok(()) | Err(ColdError::NotFound(_)) => {
                ctx.propose(Command::ArchiveDeleted { backend, object })
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

/// How often the leader lists its backends for orphan archives.
const ORPHAN_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Archives looked at per backend and sweep.
const ORPHAN_SWEEP_LIMIT: usize = 100_000;

/// Deletes archives that no metadata records and that are older than
/// `tier.orphan_archive_grace`: a pass commits or deletes its own archives before it ends, so
/// these come from a leader that crashed or was deposed mid-pass. Runs at the first pass after
/// the node starts, then at most hourly (listing costs requests).
async fn sweep_orphan_archives(ctx: &Arc<Context>, report: &mut PassReport) -> NodeResult<()> {
    {
        let Ok(mut last) = ctx.tiering.orphan_sweep.lock() else {
            return Ok(());
        };
        if last.is_some_and(|t| t.elapsed() < ORPHAN_SWEEP_EVERY) {
            return Ok(());
        }
        *last = Some(std::time::Instant::now());
    }
    let before = now_ms() - ctx.config.tier.orphan_archive_grace.as_millis() as i64;
    for store in ctx.tiering.backends.values() {
        report.backend_requests += 1;
        let listed = match cold::observe(
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
            if modified > before || ctx.sm.archive(store.name(), &object)?.is_some() {
                continue;
            }
            report.backend_requests += 1;
            match cold::observe(store.as_ref(), "delete", store.delete(&object)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(offset: u64, len: u32) -> (ChunkId, ColdLocation) {
        (
            ChunkId::of(&offset.to_be_bytes()),
            ColdLocation {
                backend: "b".into(),
                object: "o".into(),
                offset,
                len,
                class: StorageClass::Glacier,
            },
        )
    }

    #[test]
    fn restores_read_adjacent_chunks_together() {
        const M: u32 = 16 << 20;
        // Four adjacent 16 MiB chunks fill one 64 MiB read; a gap and an oversize chunk split.
        let chunks = vec![
            loc(0, M),
            loc(16 << 20, M),
            loc(32 << 20, M),
            loc(48 << 20, M),
            loc(64 << 20, M),
            loc(100 << 20, 10),
            loc(100 << 20 | 10, 100 << 20),
        ];
        assert_eq!(adjacent_runs(&chunks), vec![0..4, 4..5, 5..6, 6..7]);
        assert!(adjacent_runs(&[]).is_empty());
    }
}
