//! Storing a new chunk: here and at its homes, acknowledged once W homes hold it durably.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use strata_cluster::ChunkId;
use strata_cluster::layout::NodeId;

use super::{BlockError, BlockManager, BlockResult};
use crate::budget::Permit;
use crate::metrics as m;

type Replica = BoxFuture<'static, (NodeId, Result<(), String>)>;

impl BlockManager {
    /// Stores a verified chunk on this node and sends it to its other homes at the same time;
    /// returns once W of its homes hold it durably (this node counts if it is a home). Homes
    /// that answer make the quorum: a slow or dead one only delays its own copy, which
    /// continues in the background (holding `permit`, the bytes' memory) and, failing that,
    /// from the persistent replication queue. Returns whether this node's file is new.
    pub async fn store_new(
        self: &Arc<Self>,
        id: ChunkId,
        data: Bytes,
        permit: Option<Permit>,
    ) -> BlockResult<bool> {
        let layout = self.sm.layout()?.current;
        let homes = layout.homes(&id);
        let remote: Vec<NodeId> = homes.iter().copied().filter(|n| *n != self.me).collect();
        if remote.is_empty() {
            // This node is the only home (or there is no layout yet).
            return Ok(self.store.put(id, data).await?);
        }
        let me_home = homes.contains(&self.me);
        let need = layout.effective_write_quorum().max(1);
        let peers = self.peers()?.clone();
        self.queue.enqueue(&id)?;
        let claimed = self.queue.claim(id);
        let book = self.members.all();
        let mut sends: FuturesUnordered<Replica> = remote
            .iter()
            .map(|&node| {
                let (peers, data, addr) = (peers.clone(), data.clone(), book.get(&node).copied());
                Box::pin(async move {
                    let Some(addr) = addr else {
                        return (node, Err(format!("node {node} has no known address")));
                    };
                    let n = data.len() as u64;
                    match peers.put_chunk(addr, id, data).await {
                        Ok(_) => {
                            metrics::counter!(m::REPLICA_SENT_BYTES).increment(n);
                            (node, Ok(()))
                        }
                        Err(e) => (node, Err(e.to_string())),
                    }
                }) as Replica
            })
            .collect();
        let local = self.store.put(id, data.clone());
        tokio::pin!(local);
        let mut local_result = None;
        let (mut remote_ok, mut outstanding) = (0, remote.len());
        let mut errors = Vec::new();
        loop {
            let local_ok = matches!(local_result, Some(Ok(_)));
            let copies = remote_ok + usize::from(me_home && local_ok);
            if local_result.is_some() && (copies >= need || outstanding == 0) {
                break;
            }
            tokio::select! {
                r = &mut local, if local_result.is_none() => local_result = Some(r),
                Some((node, r)) = sends.next(), if outstanding > 0 => {
                    outstanding -= 1;
                    match r {
                        Ok(()) => remote_ok += 1,
                        Err(e) => {
                            tracing::warn!(chunk = %id, node, error = %e, "replica not written");
                            errors.push(e);
                        }
                    }
                }
            }
        }
        let release = |q: &super::queue::Queue| {
            if claimed {
                q.release_claim(&id);
            }
        };
        let new_here = match local_result {
            Some(Ok(new)) => new,
            // A node that is not a home needs its copy only as the source of later retries.
            Some(Err(_)) if !me_home && remote_ok == remote.len() => false,
            Some(Err(e)) => {
                release(&self.queue);
                return Err(e.into());
            }
            None => false,
        };
        let copies = remote_ok + usize::from(me_home);
        if copies < need {
            release(&self.queue);
            return Err(BlockError::Quorum {
                id,
                copies,
                need,
                why: errors.join("; "),
            });
        }
        if remote_ok == remote.len() {
            self.replicated(id, me_home).await;
            release(&self.queue);
            return Ok(new_here);
        }
        // Acknowledged with copies still on their way: the queue entry must survive a crash.
        self.queue.flush().await?;
        let blocks = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut all = errors.is_empty();
            while let Some((node, r)) = sends.next().await {
                if let Err(e) = r {
                    tracing::warn!(chunk = %id, node, error = %e, "replica not written; queued for retry");
                    all = false;
                }
            }
            if all {
                blocks.replicated(id, me_home).await;
            }
            if claimed {
                blocks.queue.release_claim(&id);
            }
        });
        Ok(new_here)
    }

    /// Every home holds the chunk: forget it in the queue, and release the local copy if this
    /// node is not a home.
    pub(super) async fn replicated(&self, id: ChunkId, me_home: bool) {
        self.queue.dequeue(&id);
        if !me_home {
            match self.store.remove(id).await {
                Ok(true) => metrics::counter!(m::REBALANCE_RELEASED_CHUNKS).increment(1),
                Ok(false) => {}
                Err(e) => tracing::warn!(chunk = %id, error = %e, "could not release a copy"),
            }
        }
    }
}
