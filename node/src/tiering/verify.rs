//! Checking the cold copies (on the leader, at the end of a tiering pass): archives are checked
//! oldest-checked first, within `verify.cold_requests_per_day` backend requests. A check is a
//! HeadObject (the archive exists, with the size recorded); for classes that are readable
//! without a restore, also the archive's footer and index and one chunk picked at random,
//! re-hashed with BLAKE3. An archive found missing or corrupt is recorded (node-local tree
//! `cold_bad`, `strata repair status`, `strata_cold_verify_total`); a later good check clears
//! the record. The cold versions with a chunk in a bad archive whose chunks all still have hot
//! copies (none released) are made hot again (`FinishRestore`), so their policy moves them
//! again into a new archive; a version with a released chunk in it has no other copy of it and
//! stays reported.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use strata_cluster::ChunkId;
use strata_cluster::tier::ArchiveRecord;
use strata_cold::ColdError;

use super::{PassReport, TierResult, Tiering};
use crate::clock::now_ms;
use crate::metrics as m;

const CHECKED_TREE: &str = "cold_checked";
const BAD_TREE: &str = "cold_bad";
/// Backend requests one archive check can cost (HEAD, footer, index, one chunk).
const REQUESTS_PER_CHECK: f64 = 4.0;
/// Archive records looked at per pass when choosing which to check.
const MAX_SCANNED: usize = 100_000;
const DAY_MS: f64 = 86_400_000.0;
/// Chunks and versions looked at when recovering from one bad archive.
const RECOVER_LIMIT: usize = 100_000;

/// An archive whose check failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BadArchive {
    pub backend: String,
    pub object: String,
    /// "missing" or "corrupt", with what was seen.
    pub result: String,
    pub detail: String,
    pub found_ms: i64,
    /// Chunks whose only cold copy this archive is.
    pub live_chunks: u32,
}

/// The request budget: refilled at the configured rate, at most one day's worth kept.
pub(super) struct Budget {
    tokens: f64,
    last: Instant,
}

impl Budget {
    pub fn new() -> Mutex<Budget> {
        Mutex::new(Budget {
            tokens: 0.0,
            last: Instant::now(),
        })
    }
}

enum Outcome {
    Good,
    Missing,
    Corrupt(String),
    /// The check could not be made (backend unreachable): tried again later.
    Failed(String),
}

fn key(backend: &str, object: &str) -> Vec<u8> {
    [backend.as_bytes(), &[0], object.as_bytes()].concat()
}

impl Tiering {
    fn cold_tree(&self, name: &str) -> Option<sled::Tree> {
        self.sm.db().open_tree(name).ok()
    }

    /// Archives whose last check failed.
    pub fn bad_archives(&self, limit: usize) -> Vec<BadArchive> {
        let Some(t) = self.cold_tree(BAD_TREE) else {
            return Vec::new();
        };
        t.iter()
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .take(limit)
            .collect()
    }

    /// How many archive checks the budget allows now (and spends them).
    fn checks_allowed(&self) -> usize {
        let per_day = self.cold_requests_per_day as f64;
        let Ok(mut b) = self.cold_budget.lock() else {
            return 0;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_millis() as f64;
        b.last = now;
        b.tokens = (b.tokens + per_day * elapsed / DAY_MS).min(per_day);
        let n = (b.tokens / REQUESTS_PER_CHECK).floor();
        b.tokens -= n * REQUESTS_PER_CHECK;
        n as usize
    }

    pub(super) async fn verify_archives(&self, report: &mut PassReport) -> TierResult<()> {
        let n = self.checks_allowed();
        if n == 0 {
            return Ok(());
        }
        let (Some(checked), Some(bad)) = (self.cold_tree(CHECKED_TREE), self.cold_tree(BAD_TREE))
        else {
            return Ok(());
        };
        let mut archives: Vec<(i64, ArchiveRecord)> = self
            .sm
            .archives(MAX_SCANNED)?
            .into_iter()
            .filter(|a| a.live_chunks > 0)
            .map(|a| {
                let at = checked
                    .get(key(&a.backend, &a.object))
                    .ok()
                    .flatten()
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map_or(0, i64::from_be_bytes);
                (at, a)
            })
            .collect();
        archives.sort_by_key(|(at, a)| (*at, a.created_at_ms));
        for (_, a) in archives.into_iter().take(n) {
            let outcome = self.check_archive(&a).await;
            let k = key(&a.backend, &a.object);
            let result = match &outcome {
                Outcome::Good => "ok",
                Outcome::Missing => "missing",
                Outcome::Corrupt(_) => "corrupt",
                Outcome::Failed(_) => "error",
            };
            metrics::counter!(m::COLD_VERIFY, "backend" => a.backend.clone(), "result" => result)
                .increment(1);
            report.archives_checked += 1;
            match outcome {
                Outcome::Failed(e) => {
                    report
                        .errors
                        .push(format!("checking {} in {}: {e}", a.object, a.backend));
                    continue;
                }
                Outcome::Good => {
                    let _ = bad.remove(&k);
                }
                Outcome::Missing | Outcome::Corrupt(_) => {
                    let detail = match &outcome {
                        Outcome::Corrupt(d) => d.clone(),
                        _ => "the backend does not have it".into(),
                    };
                    tracing::error!(backend = %a.backend, object = %a.object, result, %detail, "cold archive failed its check");
                    report.bad_archives += 1;
                    let rec = BadArchive {
                        backend: a.backend.clone(),
                        object: a.object.clone(),
                        result: result.into(),
                        detail,
                        found_ms: now_ms(),
                        live_chunks: a.live_chunks,
                    };
                    if let Ok(v) = serde_json::to_vec(&rec) {
                        let _ = bad.insert(&k, v);
                    }
                    match self.recover_archive(&a).await {
                        Ok((hot_again, stranded)) => {
                            report.versions_made_hot += hot_again;
                            if stranded > 0 {
                                report.errors.push(format!(
                                    "{} in {}: {stranded} version(s) have chunks whose only copy was in it",
                                    a.object, a.backend
                                ));
                            }
                        }
                        Err(e) => report.errors.push(format!(
                            "recovering from {} in {}: {e}",
                            a.object, a.backend
                        )),
                    }
                }
            }
            let _ = checked.insert(&k, &now_ms().to_be_bytes());
        }
        Ok(())
    }

    /// Makes hot again every cold version with a chunk in the bad archive `a` whose chunks all
    /// have hot copies; returns (versions made hot, versions that cannot be).
    async fn recover_archive(&self, a: &ArchiveRecord) -> TierResult<(u64, u64)> {
        let sm = self.sm.clone();
        let (backend, object) = (a.backend.clone(), a.object.clone());
        let uses = tokio::task::spawn_blocking(move || {
            let chunks = sm.cold_chunks_in(&backend, &object, RECOVER_LIMIT)?;
            let ids: std::collections::HashSet<ChunkId> =
                chunks.iter().map(|(id, _)| *id).collect();
            sm.versions_using(&ids, RECOVER_LIMIT)
        })
        .await
        .map_err(|e| super::TierError::Task(e.to_string()))??;
        let (mut hot_again, mut stranded) = (0, 0);
        let mut seen = std::collections::HashSet::new();
        for u in uses {
            if !seen.insert((u.tenant, u.bucket.clone(), u.key.clone(), u.version)) {
                continue;
            }
            let tier = self
                .sm
                .version_tier(u.tenant, &u.bucket, &u.key, u.version)?;
            if !matches!(tier, strata_cluster::tier::VersionTier::Cold(_)) {
                continue;
            }
            let Some(rec) = self.sm.version(u.tenant, &u.bucket, &u.key, u.version)? else {
                continue;
            };
            let mut all_hot = true;
            for c in &rec.chunks {
                if self.sm.cold_chunk(&c.id)?.is_some_and(|cc| cc.released) {
                    all_hot = false;
                    break;
                }
            }
            if !all_hot {
                stranded += 1;
                continue;
            }
            self.cluster
                .propose(strata_cluster::Command::FinishRestore {
                    tenant: u.tenant,
                    bucket: u.bucket.clone(),
                    key: u.key.clone(),
                    version: u.version,
                    now_ms: now_ms(),
                })
                .await?;
            tracing::warn!(bucket = %u.bucket, key = %u.key, version = u.version, "version made hot again: its cold archive failed its check (its policy moves it again)");
            hot_again += 1;
        }
        Ok((hot_again, stranded))
    }

    async fn check_archive(&self, a: &ArchiveRecord) -> Outcome {
        let store = match self.backend(&a.backend) {
            Ok(s) => s.clone(),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let store = store.as_ref();
        let head = match strata_cold::observe(store, "head", store.head(&a.object)).await {
            Ok(h) => h,
            Err(ColdError::NotFound(_)) => return Outcome::Missing,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        if head.size != a.bytes {
            return Outcome::Corrupt(format!(
                "{} bytes in the backend, {} recorded",
                head.size, a.bytes
            ));
        }
        // An archived class needs a restore before any read: the HEAD is the whole check.
        if a.class.needs_restore() {
            return Outcome::Good;
        }
        let get = |offset: u64, len: u64| async move {
            strata_cold::observe(store, "get", store.get_range(&a.object, offset, len)).await
        };
        use strata_cluster::tier::archive;
        if a.bytes < archive::FOOTER_LEN {
            return Outcome::Corrupt("too short for an archive footer".into());
        }
        let footer = match get(a.bytes - archive::FOOTER_LEN, archive::FOOTER_LEN).await {
            Ok(f) => f,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let (index_at, index_len) = match archive::index_range(a.bytes, &footer) {
            Ok(r) => r,
            Err(why) => return Outcome::Corrupt(why),
        };
        let index = match get(index_at, index_len).await {
            Ok(i) => i,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let entries = match archive::read_index(&index, index_at) {
            Ok(e) => e,
            Err(why) => return Outcome::Corrupt(why),
        };
        let (id, offset, len) = entries[rand::random::<u64>() as usize % entries.len()];
        let id = ChunkId::from_bytes(id);
        let data = match get(offset, u64::from(len)).await {
            Ok(d) => d,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let ok = tokio::task::spawn_blocking(move || ChunkId::of(&data) == id)
            .await
            .unwrap_or(false);
        if ok {
            Outcome::Good
        } else {
            Outcome::Corrupt(format!(
                "chunk {id} at offset {offset} does not hash to its id"
            ))
        }
    }
}
