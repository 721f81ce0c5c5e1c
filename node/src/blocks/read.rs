//! Reading a chunk wherever a good copy is: this node, the hot-chunk cache, the homes under
//! the current layout, the previous layout's homes (a rebalance may not have finished), then
//! every other member. Every copy fetched is verified; a corrupt one is counted and skipped,
//! and a home whose own copy was corrupt puts the good one back.

use std::collections::HashSet;

use bytes::Bytes;
use strata_cluster::ChunkId;
use strata_cluster::layout::NodeId;

use super::{BlockError, BlockManager, BlockResult};
use crate::chunk_store::ChunkStoreError;
use crate::metrics as m;
use crate::peer::PeerError;

/// Chunks fetched from peers, kept for repeated reads, bounded in bytes.
pub(super) struct Cache(Option<quick_cache::sync::Cache<ChunkId, Bytes, ChunkWeight>>);

#[derive(Clone)]
pub(super) struct ChunkWeight;

impl quick_cache::Weighter<ChunkId, Bytes> for ChunkWeight {
    fn weight(&self, _: &ChunkId, v: &Bytes) -> u64 {
        v.len() as u64 + 64
    }
}

impl Cache {
    pub fn new(bytes: u64) -> Cache {
        Cache((bytes > 0).then(|| {
            quick_cache::sync::Cache::with_weighter(
                (bytes / (1 << 20)).max(16) as usize,
                bytes,
                ChunkWeight,
            )
        }))
    }

    fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.0.as_ref()?.get(id)
    }

    fn insert(&self, id: ChunkId, data: Bytes) {
        if let Some(c) = &self.0 {
            c.insert(id, data);
        }
    }
}

impl BlockManager {
    /// A chunk's bytes, verified, from wherever a good copy is.
    pub async fn read(&self, id: ChunkId) -> BlockResult<Bytes> {
        let local_corrupt = match self.store.get(id).await {
            Ok(data) => return Ok(data),
            Err(ChunkStoreError::Missing(_)) => false,
            Err(ChunkStoreError::Corrupt(_)) => true,
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "local read failed; trying peers");
                false
            }
        };
        if let Some(hit) = self.cache.get(&id) {
            metrics::counter!(m::READ_CACHE_HITS).increment(1);
            return Ok(hit);
        }
        let home_here = self.sm.layout()?.current.homes(&id).contains(&self.me);
        let data = match self.fetch_remote(id).await {
            Err(BlockError::NotReady) if local_corrupt => {
                self.note_lost(&id, true);
                return Err(BlockError::Lost(id));
            }
            Err(e @ BlockError::Lost(_)) => {
                // Recorded for `strata repair status` (the verifier clears it if a good copy
                // comes back).
                self.note_lost(&id, local_corrupt);
                return Err(e);
            }
            r => r?,
        };
        if local_corrupt && home_here {
            match self.store.put(id, data.clone()).await {
                Ok(_) => {
                    metrics::counter!(m::REPAIRS, "source" => "read").increment(1);
                    tracing::info!(chunk = %id, "repaired the local copy from a peer")
                }
                Err(e) => {
                    tracing::warn!(chunk = %id, error = %e, "could not repair the local copy")
                }
            }
        } else {
            self.cache.insert(id, data.clone());
        }
        Ok(data)
    }

    /// A verified copy of the chunk from another node: its homes under the current layout
    /// first, then the previous layout's, then every other member. `Lost` when every node
    /// that answered has no good copy.
    pub(super) async fn fetch_remote(&self, id: ChunkId) -> BlockResult<Bytes> {
        let state = self.sm.layout()?;
        let book = self.members.all();
        let mut order: Vec<NodeId> = state.current.homes(&id);
        if let Some(prev) = &state.previous {
            order.extend(prev.homes(&id));
        }
        order.extend(book.keys().copied());
        let mut seen = HashSet::new();
        order.retain(|n| *n != self.me && seen.insert(*n));
        let peers = self.peers()?;
        let mut errors = Vec::new();
        for node in order {
            let Some(addr) = book.get(&node) else {
                continue;
            };
            match peers.get_chunk(*addr, id).await {
                Ok(data) => {
                    metrics::counter!(m::PEER_READ_BYTES).increment(data.len() as u64);
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
        // Every node that answered said missing or corrupt: no good copy is left anywhere.
        if errors
            .iter()
            .all(|e: &PeerError| e.is_not_found() || e.is_corruption())
        {
            return Err(BlockError::Lost(id));
        }
        Err(BlockError::Unreachable {
            id,
            why: errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}
