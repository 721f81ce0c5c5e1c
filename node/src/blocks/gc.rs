//! Deleting copies nothing needs. A chunk file is deleted only under the chunk's lock, after
//! checking there that the local metadata replica has no hot reference to it and that the file
//! is older than `gc_grace`: a chunk written here whose reference is still on its way through
//! Raft (or whose bytes were stored again by a new upload, which re-stamps the file) is kept.

use std::sync::Arc;

use strata_cluster::{ChunkId, StateMachine};

use super::{BlockManager, BlockResult, for_each_limited};
use crate::chunk_store::{FileInfo, Removal, old_enough};
use crate::metrics as m;
use crate::peer::{ErrorCode, PeerError};

/// Peers asked at once to drop a chunk.
const DROP_PARALLEL: usize = 8;
/// Orphans (files found by walking the store, not through the GC queue) are collected only
/// once at least this old, whatever `gc_grace` says: nothing bounds how long ago such a file's
/// upload began.
const ORPHAN_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// The check made under the lock: keep a file that something needs hot, or that is young.
/// A metadata read error keeps it too (deleting is the one thing that cannot be undone).
fn keep(sm: &StateMachine, id: &ChunkId, info: &FileInfo, grace: std::time::Duration) -> bool {
    !old_enough(info, grace) || sm.chunk_needs_hot(id).unwrap_or(true)
}

impl BlockManager {
    /// Deletes this node's copy of a chunk that nothing needs hot any more (see the module).
    /// The caller makes sure the local metadata is current (a read barrier), or a lagging node
    /// would take a freshly referenced chunk for garbage.
    pub async fn collect(&self, id: ChunkId) -> BlockResult<Removal> {
        self.collect_older_than(id, self.config.gc_grace).await
    }

    async fn collect_older_than(
        &self,
        id: ChunkId,
        grace: std::time::Duration,
    ) -> BlockResult<Removal> {
        let sm = self.sm.clone();
        let r = self
            .store
            .remove_unless(id, move |info| keep(&sm, &id, info, grace))
            .await?;
        if r == Removal::Deleted {
            metrics::counter!(m::CHUNKS_COLLECTED).increment(1);
        }
        Ok(r)
    }

    /// Asks every other member to drop its copy (each decides with its own metadata and
    /// grace, as `collect` does). Returns whether a member kept its copy for being younger
    /// than the grace (ask again later). Other failures are logged: a member that misses this
    /// finds the file in its own orphan sweep.
    pub async fn drop_everywhere(self: &Arc<Self>, id: ChunkId) -> bool {
        let Ok(peers) = self.peers() else {
            return false;
        };
        let targets: Vec<_> = self
            .members
            .all()
            .iter()
            .filter(|(n, _)| **n != self.me)
            .map(|(n, a)| (*n, *a))
            .collect();
        let young = for_each_limited(targets, DROP_PARALLEL, |(node, addr)| async move {
            match peers.drop_chunk(addr, id).await {
                Ok(_) => false,
                Err(PeerError::Remote {
                    code: ErrorCode::Young,
                    ..
                }) => true,
                Err(e) => {
                    tracing::debug!(chunk = %id, node, error = %e, "peer did not drop the collected chunk");
                    false
                }
            }
        })
        .await;
        young.into_iter().any(|y| y)
    }

    /// Deletes chunk files that nothing needs hot and that are older than the grace period
    /// (and ORPHAN_MIN_AGE): a crash between a chunk's write and its reference leaves one
    /// (never acknowledged), so does a replica sent for an upload that then failed, or a copy
    /// that missed its collection while this node was down. The caller makes sure the local
    /// metadata is current. Returns how many went.
    pub async fn collect_orphans(&self) -> BlockResult<usize> {
        let grace = self.config.gc_grace.max(ORPHAN_MIN_AGE);
        let mut deleted = 0;
        for id in self.store.ids().await? {
            if self.collect_older_than(id, grace).await? == Removal::Deleted {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// A peer's DropChunk: the same check as `collect`.
    pub(super) async fn drop_requested(&self, id: ChunkId) -> BlockResult<Removal> {
        self.collect(id).await
    }
}
