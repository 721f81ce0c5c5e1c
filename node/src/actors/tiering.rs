//! The tiering actor: every `tier.interval` it records the reads this node saw and, on the
//! leader, runs a tiering pass (see `crate::tiering`). Passes run one at a time; ticks that queue
//! up behind a long pass are skipped.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::context::Context;
use crate::tiering::{self, PassReport};

pub struct TieringActor;

pub enum TieringMsg {
    Tick,
    /// Runs a pass now (leader only) and replies with what it did.
    RunNow(RpcReplyPort<PassReport>),
}

pub struct TieringState {
    ctx: Arc<Context>,
    last: Option<Instant>,
}

impl Actor for TieringActor {
    type Msg = TieringMsg;
    type State = TieringState;
    type Arguments = Arc<Context>;

    async fn pre_start(
        &self,
        myself: ActorRef<TieringMsg>,
        ctx: Arc<Context>,
    ) -> Result<TieringState, ActorProcessingErr> {
        myself.send_interval(ctx.config.tier.interval, || TieringMsg::Tick);
        tiering::update_gauges(&ctx);
        Ok(TieringState { ctx, last: None })
    }

    async fn handle(
        &self,
        _myself: ActorRef<TieringMsg>,
        msg: TieringMsg,
        st: &mut TieringState,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = st.ctx.clone();
        if let Err(e) = tiering::flush_reads(&ctx).await {
            tracing::debug!(error = %e, "reads not recorded yet; retrying next interval");
        }
        match msg {
            TieringMsg::Tick => {
                let recent = st
                    .last
                    .is_some_and(|t| t.elapsed() < ctx.config.tier.interval / 2);
                if ctx.cluster.is_leader() && !recent {
                    tiering::run_pass(&ctx).await;
                    st.last = Some(Instant::now());
                } else {
                    tiering::update_gauges(&ctx);
                }
            }
            TieringMsg::RunNow(reply) => {
                let report = tiering::run_pass(&ctx).await;
                st.last = Some(Instant::now());
                let _ = reply.send(report);
            }
        }
        Ok(())
    }
}
