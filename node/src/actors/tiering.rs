//! The tiering actor: every `tier.interval` it records the reads this node saw and, on the
//! leader, runs a tiering pass (see `crate::tiering`). Passes run one at a time; ticks that queue
//! up behind a long pass are skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::clock::now_ms;
use crate::raft::Cluster;
use crate::tiering::{PassReport, Tiering};
use crate::workers::{Board, WorkerState};

pub struct TieringActor;

pub enum TieringMsg {
    Tick,
    /// Runs a pass now (leader only) and replies with what it did.
    RunNow(RpcReplyPort<PassReport>),
}

pub struct TieringArgs {
    pub tiering: Arc<Tiering>,
    pub cluster: Arc<Cluster>,
    pub interval: Duration,
    pub board: Arc<Board>,
}

pub struct TieringState {
    args: TieringArgs,
    last: Option<Instant>,
}

impl Actor for TieringActor {
    type Msg = TieringMsg;
    type State = TieringState;
    type Arguments = TieringArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TieringMsg>,
        args: TieringArgs,
    ) -> Result<TieringState, ActorProcessingErr> {
        myself.send_interval(args.interval, || TieringMsg::Tick);
        args.tiering.update_gauges();
        Ok(TieringState { args, last: None })
    }

    async fn handle(
        &self,
        _myself: ActorRef<TieringMsg>,
        msg: TieringMsg,
        st: &mut TieringState,
    ) -> Result<(), ActorProcessingErr> {
        let tiering = st.args.tiering.clone();
        if let Err(e) = tiering.flush_reads().await {
            tracing::debug!(error = %e, "reads not recorded yet; retrying next interval");
        }
        match msg {
            TieringMsg::Tick => {
                let recent = st.last.is_some_and(|t| t.elapsed() < st.args.interval / 2);
                let leader = st.args.cluster.is_leader();
                if leader && !recent {
                    st.pass(&tiering).await;
                } else {
                    tiering.update_gauges();
                }
                let interval = st.args.interval;
                st.args.board.update("tiering", |w| {
                    w.next_run_ms = now_ms() + interval.as_millis() as i64;
                    w.figures.insert(
                        "role".into(),
                        if leader {
                            "leader: runs passes"
                        } else {
                            "follower: records reads"
                        }
                        .into(),
                    );
                });
            }
            TieringMsg::RunNow(reply) => {
                let report = st.pass(&tiering).await;
                let _ = reply.send(report);
            }
        }
        Ok(())
    }
}

impl TieringState {
    /// One tiering pass, reported on the worker board.
    async fn pass(&mut self, tiering: &Tiering) -> PassReport {
        self.args
            .board
            .update("tiering", |w| w.state = WorkerState::Busy);
        let report = tiering.run_pass().await;
        self.last = Some(Instant::now());
        let r = &report;
        let summary = format!(
            "{} versions moved, {} failed, {} pending; {} archives; {} restores done, {} waiting",
            r.moved_versions,
            r.failed_versions,
            r.pending_versions,
            r.archives,
            r.restores_done,
            r.restores_waiting
        );
        let error = r.errors.first().cloned();
        self.args.board.update("tiering", |w| {
            w.state = WorkerState::Idle;
            w.last_done_ms = now_ms();
            w.last_error = error;
            w.figures.insert("last pass".into(), summary);
        });
        report
    }
}
