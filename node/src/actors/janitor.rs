//! Janitor: the node's periodic sweep. It aborts upload sessions idle past their timeout,
//! purges trashed keys past retention, and deletes chunks nothing references any more. Each
//! step is bounded per sweep; what is left waits for the next one.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use strata_cluster::Command;

use super::supervisor::SupervisorMsg;
use crate::context::{Context, now_ms};
use crate::metrics as m;

/// Work items handled per sweep and step.
const BATCH: usize = 1000;
/// A chunk file younger than this is never taken for an orphan: a replica arrives from the
/// writing node before the AddChunk that references it is applied here.
const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(600);
/// Sweeps between two orphan chunk checks (also run at start).
const ORPHAN_CHECK_EVERY: u32 = 20;

pub struct Janitor;

pub enum JanitorMsg {
    /// Runs one sweep; the reply (if any) is sent when it is done.
    Sweep(Option<RpcReplyPort<()>>),
}

pub struct JanitorState {
    ctx: Arc<Context>,
    supervisor: ActorRef<SupervisorMsg>,
    last_sweep: Option<Instant>,
    /// Sweeps until the next orphan chunk check (0: at the next sweep).
    orphan_countdown: u32,
}

impl Actor for Janitor {
    type Msg = JanitorMsg;
    type State = JanitorState;
    type Arguments = (Arc<Context>, ActorRef<SupervisorMsg>);

    async fn pre_start(
        &self,
        myself: ActorRef<JanitorMsg>,
        (ctx, supervisor): Self::Arguments,
    ) -> Result<JanitorState, ActorProcessingErr> {
        myself.send_interval(ctx.config.janitor_interval, || JanitorMsg::Sweep(None));
        // The first sweep runs at start (it also looks for orphan chunk files).
        myself.cast(JanitorMsg::Sweep(None))?;
        Ok(JanitorState {
            ctx,
            supervisor,
            last_sweep: None,
            orphan_countdown: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<JanitorMsg>,
        msg: JanitorMsg,
        st: &mut JanitorState,
    ) -> Result<(), ActorProcessingErr> {
        let JanitorMsg::Sweep(reply) = msg;
        // Ticks that queued up behind a long sweep are skipped.
        let recent = st
            .last_sweep
            .is_some_and(|t| t.elapsed() < st.ctx.config.janitor_interval / 2);
        if reply.is_some() || !recent {
            if st.orphan_countdown == 0 {
                match collect_orphans(&st.ctx).await {
                    Ok(n) => {
                        st.orphan_countdown = ORPHAN_CHECK_EVERY;
                        if n > 0 {
                            tracing::info!(
                                chunks = n,
                                "deleted orphan chunk files left by an earlier crash"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "orphan chunk check failed; retrying next interval")
                    }
                }
            }
            if let Err(e) = sweep(st).await {
                tracing::warn!(error = %e, "janitor sweep failed; retrying next interval");
            }
            st.last_sweep = Some(Instant::now());
        }
        if let Some(r) = reply {
            let _ = r.send(());
        }
        Ok(())
    }
}

/// Deletes chunk files nothing references (or whose chunk was released to the cold tier) and
/// the GC queue does not know: a crash between a
/// chunk's durable write and its AddChunk leaves one (it was never acknowledged), and so does
/// a replica sent for an upload that then failed. Files younger than ORPHAN_GRACE stay. Runs once
/// per node start and every ORPHAN_CHECK_EVERY sweeps. A write in progress holds the chunk's lock until its AddChunk is applied, so
/// checking the references under that lock never races with it.
async fn collect_orphans(ctx: &Arc<Context>) -> anyhow::Result<usize> {
    let c = ctx.clone();
    let ids = tokio::task::spawn_blocking(move || c.store.ids()).await?;
    let mut deleted = 0;
    for id in ids {
        let _lock = ctx.lock_chunk(&id).await;
        if ctx.store.age(&id).is_some_and(|age| age < ORPHAN_GRACE) {
            continue; // maybe a replica whose AddChunk is still on its way
        }
        // Unreferenced, or released to the cold tier (a copy that missed its collection,
        // e.g. on a node that was down then).
        if !ctx.sm.chunk_needs_hot(&id)? {
            let c = ctx.clone();
            tokio::task::spawn_blocking(move || c.store.delete(&id)).await??;
            metrics::counter!(m::CHUNKS_COLLECTED).increment(1);
            deleted += 1;
        }
    }
    Ok(deleted)
}

async fn drop_on_peers(ctx: &Arc<Context>, id: strata_cluster::ChunkId) {
    let Ok(peers) = ctx.placement.peers() else {
        return;
    };
    for (node, addr) in crate::placement::member_addrs(ctx).await {
        if node == ctx.cluster.id {
            continue;
        }
        if let Err(e) = peers.drop_chunk(addr, id).await {
            tracing::debug!(chunk = %id, node, error = %e, "peer did not drop the collected chunk");
        }
    }
}

async fn sweep(st: &JanitorState) -> anyhow::Result<()> {
    let ctx = &st.ctx;
    let now = now_ms();

    // Expiry and purge are cluster-wide decisions: the leader's janitor makes them (any node
    // could, the commands are idempotent, but one proposer avoids duplicate work).
    let leader = ctx.cluster.is_leader();
    let idle_before = now - ctx.config.session_idle_timeout.as_millis() as i64;
    let idle = if leader {
        ctx.sm.idle_sessions(idle_before)?
    } else {
        Vec::new()
    };
    for session in idle.into_iter().take(BATCH) {
        let _ = st.supervisor.cast(SupervisorMsg::Forget(session));
        let cmd = Command::AbortSession {
            session,
            tenant: None,
            idle_before_ms: Some(idle_before),
        };
        match ctx.propose(cmd).await {
            Ok(_) => {
                metrics::counter!(m::SESSIONS_EXPIRED).increment(1);
                tracing::info!(%session, "expired idle upload session");
            }
            Err(e) => tracing::warn!(%session, error = %e, "could not expire session"),
        }
    }

    let due = if leader {
        ctx.sm.trash_due(now, BATCH)?
    } else {
        Vec::new()
    };
    for (tenant, bucket, key) in due {
        let cmd = Command::PurgeObject {
            tenant,
            bucket: bucket.clone(),
            key: key.clone(),
            now_ms: now,
        };
        match ctx.propose(cmd).await {
            Ok(_) => metrics::counter!(m::TRASH_PURGED).increment(1),
            Err(e) => tracing::warn!(%bucket, %key, error = %e, "could not purge trashed key"),
        }
    }

    for id in ctx.sm.gc_queue(BATCH)? {
        let _lock = ctx.lock_chunk(&id).await;
        if ctx.sm.chunk_needs_hot(&id)? {
            continue; // referenced (hot) again since it was queued; apply already dequeued it
        }
        let c = ctx.clone();
        if tokio::task::spawn_blocking(move || c.store.contains(&id).then(|| c.store.delete(&id)))
            .await?
            .transpose()?
            .is_some()
        {
            metrics::counter!(m::CHUNKS_COLLECTED).increment(1);
        }
        // Every node deletes its own copy; the leader also asks every other member to drop
        // theirs (they refuse while their metadata still references it), then drops the queue
        // entry. A node that misses both finds the file in its next orphan check.
        if leader {
            drop_on_peers(ctx, id).await;
            ctx.propose(Command::ChunkCollected { id }).await?;
        }
    }

    let (chunks, bytes) = ctx.store.usage();
    metrics::gauge!(m::CHUNK_STORE_CHUNKS).set(chunks as f64);
    metrics::gauge!(m::CHUNK_STORE_BYTES).set(bytes as f64);
    metrics::gauge!(m::UPTIME).set(ctx.started.elapsed().as_secs_f64());
    Ok(())
}
