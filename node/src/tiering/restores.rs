//! Restores: asking the backend to make archived objects readable, then bringing the chunks
//! back to hot storage (rehydration) and recording the version hot again.

use std::collections::{BTreeMap, HashSet};

use strata_cluster::ChunkId;
use strata_cluster::Command;
use strata_cluster::tier::ColdLocation;
use strata_cold::RestoreStatus;

use super::{PassReport, TierResult, Tiering, check};
use crate::clock::now_ms;
use crate::metrics as m;

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

impl Tiering {
    pub(super) async fn advance_restores(&self, report: &mut PassReport) -> TierResult<()> {
        for r in self.sm.restores()? {
            let Some(rec) = self.sm.version(r.tenant, &r.bucket, &r.key, r.version)? else {
                continue;
            };
            // The chunks to bring back: released ones (and, once rehydrating, every cold one: a
            // pass that failed half-way finds them unreleased).
            let mut need: BTreeMap<(String, String), Vec<(ChunkId, ColdLocation)>> =
                BTreeMap::new();
            let mut seen = HashSet::new();
            for e in &rec.chunks {
                if !seen.insert(e.id) {
                    continue;
                }
                if let Some(cold) = self.sm.cold_chunk(&e.id)?
                    && (cold.released || r.record.rehydrating)
                {
                    need.entry((cold.loc.backend.clone(), cold.loc.object.clone()))
                        .or_default()
                        .push((e.id, cold.loc));
                }
            }
            let mut ready = true;
            for (backend, object) in need.keys() {
                let store = match self.backend(backend) {
                    Ok(s) => s.clone(),
                    Err(e) => {
                        report.errors.push(e.to_string());
                        ready = false;
                        continue;
                    }
                };
                report.backend_requests += 1;
                let state =
                    match strata_cold::observe(store.as_ref(), "head", store.head(object)).await {
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
                        if let Err(e) = strata_cold::observe(
                            store.as_ref(),
                            "restore",
                            store.restore(object, tier, days),
                        )
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
            if let Err(e) = self.rehydrate(&r, need).await {
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
        &self,
        r: &strata_cluster::query::RestoreView,
        need: BTreeMap<(String, String), Vec<(ChunkId, ColdLocation)>>,
    ) -> TierResult<()> {
        if !r.record.rehydrating {
            self.cluster
                .propose(Command::Rehydrate {
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
                let data = self.fetch(&backend, &object, start, end - start).await?;
                for (id, loc) in run {
                    let lo = (loc.offset - start) as usize;
                    let piece = data.slice(lo..lo + loc.len as usize);
                    check(*id, &piece, loc).await?;
                    let n = piece.len() as u64;
                    self.blocks.store_new(*id, piece, None).await?;
                    metrics::counter!(m::TIER_REHYDRATED_BYTES).increment(n);
                }
            }
        }
        self.cluster
            .propose(Command::FinishRestore {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_cluster::tier::StorageClass;

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
