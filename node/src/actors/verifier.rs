//! The Verifier: redundancy verification of this node's chunks (see `crate::blocks::verify`).
//! Every tick it starts, when due and not already running, a scrub pass (an interrupted pass
//! resumes from its saved cursor; a new one starts `scrub_interval` after the last ended, or
//! at once on `strata scrub start`) and an anti-entropy check (every `check_interval`). The
//! work runs in tasks so the actor keeps answering; its progress is on disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::blocks::verify::{CheckRecord, ScrubRecord};
use crate::blocks::{BlockManager, BlockResult};
use crate::clock::now_ms;
use crate::config::VerifyConfig;

/// How often the actor looks for work.
const TICK: Duration = Duration::from_secs(1);
/// Wait before retrying a pass that failed.
const RETRY: Duration = Duration::from_secs(10);

pub struct VerifierActor;

pub enum VerifierMsg {
    Tick,
    ScrubDone(BlockResult<ScrubRecord>),
    CheckDone(BlockResult<CheckRecord>),
}

pub struct VerifierArgs {
    pub blocks: Arc<BlockManager>,
    pub config: VerifyConfig,
}

pub struct VerifierState {
    args: VerifierArgs,
    scrub_running: bool,
    check_running: bool,
    /// No new scrub or check before these instants (after a failure).
    scrub_not_before: Instant,
    check_not_before: Instant,
    /// When the last check ended (None: not since the actor started; the record says when).
    last_check: Option<Instant>,
}

impl Actor for VerifierActor {
    type Msg = VerifierMsg;
    type State = VerifierState;
    type Arguments = VerifierArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<VerifierMsg>,
        args: VerifierArgs,
    ) -> Result<VerifierState, ActorProcessingErr> {
        myself.send_interval(TICK, || VerifierMsg::Tick);
        Ok(VerifierState {
            args,
            scrub_running: false,
            check_running: false,
            scrub_not_before: Instant::now(),
            check_not_before: Instant::now(),
            last_check: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<VerifierMsg>,
        msg: VerifierMsg,
        st: &mut VerifierState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VerifierMsg::Tick => st.tick(&myself),
            VerifierMsg::ScrubDone(r) => {
                st.scrub_running = false;
                // A start asked for while this pass ran is served by it.
                st.args.blocks.verify_control().take_start();
                if let Err(e) = r {
                    tracing::warn!(error = %e, "scrub pass failed; retrying");
                    st.scrub_not_before = Instant::now() + RETRY;
                }
            }
            VerifierMsg::CheckDone(r) => {
                st.check_running = false;
                st.last_check = Some(Instant::now());
                if let Err(e) = r {
                    tracing::warn!(error = %e, "anti-entropy check failed; retrying");
                    st.last_check = None;
                    st.check_not_before = Instant::now() + RETRY;
                }
            }
        }
        Ok(())
    }
}

impl VerifierState {
    fn tick(&mut self, myself: &ActorRef<VerifierMsg>) {
        let blocks = &self.args.blocks;
        // Nothing to compare with before the peer transport is up (a joining node).
        if !blocks.transport_up() {
            return;
        }
        let now = Instant::now();
        let ctl = blocks.verify_control();
        if !self.scrub_running && now >= self.scrub_not_before {
            let rec = blocks.scrub_record();
            let interval_ms = self.args.config.scrub_interval.as_millis() as i64;
            let due = rec.pass_started_ms != 0 // resume an interrupted pass
                || ctl.take_start()
                || now_ms() >= rec.last_done_ms.saturating_add(interval_ms);
            if due && !ctl.paused() {
                self.scrub_running = true;
                let (blocks, me) = (blocks.clone(), myself.clone());
                tokio::spawn(async move {
                    let r = blocks.scrub_pass().await;
                    let _ = me.cast(VerifierMsg::ScrubDone(r));
                });
            }
        }
        let check_due = match self.last_check {
            Some(t) => t.elapsed() >= self.args.config.check_interval,
            None => {
                let last = blocks.check_record().last_done_ms;
                now_ms() >= last.saturating_add(self.args.config.check_interval.as_millis() as i64)
            }
        };
        if !self.check_running && check_due && now >= self.check_not_before {
            // A rebalance in progress moves chunks here anyway: check once it is done.
            let settled = blocks
                .layout_version()
                .is_ok_and(|v| v > 0 && blocks.scanned_version() == v);
            if settled {
                self.check_running = true;
                // Missing chunks come back at the rebalance rate.
                let (blocks, me, rate) = (blocks.clone(), myself.clone(), blocks.rebalance_rate());
                tokio::spawn(async move {
                    let r = blocks.check_pass(rate).await;
                    let _ = me.cast(VerifierMsg::CheckDone(r));
                });
            }
        }
    }
}
