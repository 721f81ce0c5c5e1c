//! Janitor: the node's periodic sweep. It aborts upload sessions idle past their timeout,
//! purges trashed keys past retention (both on the leader), and deletes this node's copies of
//! chunks nothing needs hot any more (the leader also asks the other members to drop theirs).
//! Each step is bounded per sweep; what is left waits for the next one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use strata_cluster::{Command, StateMachine};

use super::supervisor::SupervisorMsg;
use crate::blocks::BlockManager;
use crate::chunk_store::Removal;
use crate::clock::now_ms;
use crate::metrics as m;
use crate::raft::Cluster;
use crate::workers::{Board, WorkerState};

/// Work items handled per sweep and step.
const BATCH: usize = 1000;
/// Sweeps between two orphan chunk checks (also run at start).
const ORPHAN_CHECK_EVERY: u32 = 20;

pub struct Janitor;

pub enum JanitorMsg {
    /// Runs one sweep; the reply (if any) is sent when it is done.
    Sweep(Option<RpcReplyPort<()>>),
}

pub struct JanitorArgs {
    pub sm: Arc<StateMachine>,
    pub cluster: Arc<Cluster>,
    pub blocks: Arc<BlockManager>,
    pub interval: Duration,
    pub session_idle_timeout: Duration,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub board: Arc<Board>,
}

pub struct JanitorState {
    args: JanitorArgs,
    last_sweep: Option<Instant>,
    /// Sweeps until the next orphan chunk check (0: at the next sweep).
    orphan_countdown: u32,
}

impl Actor for Janitor {
    type Msg = JanitorMsg;
    type State = JanitorState;
    type Arguments = JanitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JanitorMsg>,
        args: JanitorArgs,
    ) -> Result<JanitorState, ActorProcessingErr> {
        myself.send_interval(args.interval, || JanitorMsg::Sweep(None));
        // The first sweep runs at start (it also looks for orphan chunk files).
        myself.cast(JanitorMsg::Sweep(None))?;
        Ok(JanitorState {
            args,
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
            .is_some_and(|t| t.elapsed() < st.args.interval / 2);
        if reply.is_some() || !recent {
            // Deletions are decided with the local metadata: first make it current, or a node
            // that lags (just resumed, partitioned) would take chunks referenced by writes it
            // has not applied yet for garbage.
            let current = match st.args.cluster.linearize().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "no read barrier: chunk collection skipped this sweep");
                    false
                }
            };
            if current && st.orphan_countdown == 0 {
                match st.args.blocks.collect_orphans().await {
                    Ok(n) => {
                        st.orphan_countdown = ORPHAN_CHECK_EVERY;
                        if n > 0 {
                            tracing::info!(chunks = n, "deleted chunk files nothing references");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "orphan chunk check failed; retrying next interval")
                    }
                }
            }
            st.orphan_countdown = st.orphan_countdown.saturating_sub(1);
            st.args
                .board
                .update("janitor", |w| w.state = WorkerState::Busy);
            let result = sweep(&st.args, current).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, "janitor sweep failed; retrying next interval");
            }
            let interval = st.args.interval;
            st.args.board.update("janitor", |w| {
                w.state = WorkerState::Idle;
                w.last_done_ms = now_ms();
                w.next_run_ms = now_ms() + interval.as_millis() as i64;
                w.last_error = result.err().map(|e| e.to_string());
                w.figures.insert(
                    "chunk collection".into(),
                    if current {
                        "on"
                    } else {
                        "skipped (no read barrier)"
                    }
                    .into(),
                );
            });
            st.last_sweep = Some(Instant::now());
        }
        if let Some(r) = reply {
            let _ = r.send(());
        }
        Ok(())
    }
}

/// One sweep; chunk files are collected only when `current` (the metadata passed a read
/// barrier just before).
async fn sweep(a: &JanitorArgs, current: bool) -> anyhow::Result<()> {
    let now = now_ms();

    // Expiry and purge are cluster-wide decisions: the leader's janitor makes them (any node
    // could, the commands are idempotent, but one proposer avoids duplicate work).
    let leader = a.cluster.is_leader();
    let idle_before = now - a.session_idle_timeout.as_millis() as i64;
    let idle = if leader {
        a.sm.idle_sessions(idle_before)?
    } else {
        Vec::new()
    };
    for session in idle.into_iter().take(BATCH) {
        let _ = a.supervisor.cast(SupervisorMsg::Forget(session));
        let cmd = Command::AbortSession {
            session,
            tenant: None,
            idle_before_ms: Some(idle_before),
        };
        match a.cluster.propose(cmd).await {
            Ok(_) => {
                metrics::counter!(m::SESSIONS_EXPIRED).increment(1);
                tracing::info!(%session, "expired idle upload session");
            }
            Err(e) => tracing::warn!(%session, error = %e, "could not expire session"),
        }
    }

    let due = if leader {
        a.sm.trash_due(now, BATCH)?
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
        match a.cluster.propose(cmd).await {
            Ok(_) => metrics::counter!(m::TRASH_PURGED).increment(1),
            Err(e) => tracing::warn!(%bucket, %key, error = %e, "could not purge trashed key"),
        }
    }

    // Every node deletes its own copy (under the chunk's lock, after the grace period); the
    // leader also asks every other member to drop theirs (each decides the same way with its
    // own metadata), then drops the queue entry, once no copy was kept for being younger than
    // the grace (those are tried again at the next sweeps). A copy missed (its node was down)
    // is found by that node's orphan check.
    let gc = if current {
        a.sm.gc_queue(BATCH)?
    } else {
        Vec::new()
    };
    for id in gc {
        let young = match a.blocks.collect(id).await {
            Ok(Removal::Kept) if a.sm.chunk_needs_hot(&id)? => continue, // referenced again
            Ok(Removal::Kept) => true,
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "could not collect a chunk");
                continue;
            }
        };
        if leader {
            let peers_young = a.blocks.drop_everywhere(id).await;
            if !young && !peers_young {
                a.cluster.propose(Command::ChunkCollected { id }).await?;
            }
        }
    }

    let (chunks, bytes) = a.blocks.store().usage();
    metrics::gauge!(m::CHUNK_STORE_CHUNKS).set(chunks as f64);
    metrics::gauge!(m::CHUNK_STORE_BYTES).set(bytes as f64);
    Ok(())
}
