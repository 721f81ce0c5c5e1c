//! The tiering actor: every `tier.interval` it records the reads this node saw and, on the
//! leader, runs a tiering pass (see `crate::tiering`). Passes run one at a time; ticks that queue
//! up behind a long pass are skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::raft::Cluster;
use crate::tiering::{PassReport, Tiering};

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
                if st.args.cluster.is_leader() && !recent {
                    tiering.run_pass().await;
                    st.last = Some(Instant::now());
                } else {
                    tiering.update_gauges();
                }
            }
            TieringMsg::RunNow(reply) => {
                let report = tiering.run_pass().await;
                st.last = Some(Instant::now());
                let _ = reply.send(report);
            }
        }
        Ok(())
    }
}
