//! Moving versions to a cold backend: chunks packed into archives, uploaded and checked, and
//! only then the move recorded through Raft.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use strata_cluster::query::TierCandidate;
use strata_cluster::tier::{ArchiveRecord, ColdLocation, StorageClass};
use strata_cluster::{ChunkId, Command, Rejection, StoreError};
use strata_cold::{ColdError, ColdStore};
use tokio::task::JoinSet;

use super::{PassReport, TierResult, Tiering};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::raft::{Cluster, ClusterError};
use crate::rate_limit::RateLimit;

/// Versions looked at per pass.
const PASS_VERSIONS: usize = 10_000;
/// Moves are recorded (and their archives settled) at least every this many bytes.
const SETTLE_BYTES: u64 = 1 << 30;

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
    fn add(
        &mut self,
        id: ChunkId,
        data: &[u8],
    ) -> Result<(ColdLocation, Option<Sealed>), StoreError> {
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
        Ok((loc, if full { self.seal()? } else { None }))
    }

    /// Closes the open archive (if any): appends its index, length and magic.
    fn seal(&mut self) -> Result<Option<Sealed>, StoreError> {
        let Some(OpenArchive {
            object,
            mut buf,
            index,
        }) = self.current.take()
        else {
            return Ok(None);
        };
        let entries: strata_cluster::tier::archive::Index = index
            .iter()
            .map(|(id, o, l)| (*id.as_bytes(), *o, *l))
            .collect();
        buf.extend_from_slice(&strata_cluster::tier::archive::tail(&entries)?);
        Ok(Some(Sealed {
            object,
            body: buf.freeze(),
            chunks: index.len() as u32,
        }))
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
    let put = strata_cold::observe(
        store.as_ref(),
        "put",
        store.put(&a.object, a.body, crc, class),
    );
    let receipt = match put.await {
        Ok(r) => r,
        Err(e) => return Err((a.object, e)),
    };
    match strata_cold::verify(store.as_ref(), &a.object, size, crc, receipt).await {
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
    async fn settle(&mut self, cluster: &Cluster, parallel: usize, report: &mut PassReport) {
        match self.packer.seal() {
            Ok(Some(sealed)) => self.spawn(sealed, parallel, report).await,
            Ok(None) => {}
            // Its chunks' versions find no verified archive below and stay hot.
            Err(e) => report.errors.push(format!("sealing an archive: {e}")),
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
            match cluster.propose(cmd).await {
                Ok(_) => {
                    self.used.extend(used);
                    report.moved_versions += 1;
                    metrics::counter!(m::TIER_MOVES, "backend" => backend, "result" => "ok")
                        .increment(1);
                    tracing::info!(bucket = %c.bucket, key = %c.key, version = c.version,
                        backend = self.store.name(), class = %self.class, "version moved to cold storage");
                }
                // Purged or moved meanwhile: nothing to do (unused archives are deleted below).
                Err(ClusterError::Rejected(
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

impl Tiering {
    pub(super) async fn transitions(&self, report: &mut PassReport) -> TierResult<()> {
        let candidates = self.sm.tier_candidates(now_ms(), PASS_VERSIONS)?;
        report.pending_versions = candidates.len() as u64;
        if candidates.is_empty() {
            return Ok(());
        }
        let cfg = &self.config;
        let mut rate = (cfg.rate_bytes > 0).then(|| RateLimit::new(cfg.rate_bytes));
        let mut groups: BTreeMap<(String, StorageClass), Group> = BTreeMap::new();
        for c in candidates {
            let store = match self.backend(&c.policy.backend) {
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
            let Some(rec) = self.sm.version(c.tenant, &c.bucket, &c.key, c.version)? else {
                continue;
            };
            let mut new_chunks = BTreeSet::new();
            let mut seen = HashSet::new();
            let mut readable = true;
            for e in &rec.chunks {
                if !seen.insert(e.id) || self.sm.cold_chunk(&e.id)?.is_some() {
                    continue;
                }
                new_chunks.insert(e.id);
                if group.placed.contains_key(&e.id) {
                    continue;
                }
                let data = match self.blocks.read(e.id).await {
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
                    let pause = r.spend(data.len() as u64);
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                group.staged += data.len() as u64;
                let (loc, sealed) = group.packer.add(e.id, &data)?;
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
                group.settle(&self.cluster, cfg.parallel, report).await;
            }
        }
        for group in groups.values_mut() {
            group.settle(&self.cluster, cfg.parallel, report).await;
            // Archives no recorded move points to (their versions failed or raced): delete now.
            let unused: Vec<String> = group
                .verified
                .keys()
                .filter(|o| !group.used.contains(*o))
                .cloned()
                .collect();
            for object in unused {
                let store = group.store.clone();
                if let Err(e) =
                    strata_cold::observe(store.as_ref(), "delete", store.delete(&object)).await
                {
                    report
                        .errors
                        .push(format!("deleting unused archive {object}: {e}"));
                }
            }
        }
        Ok(())
    }
}
