//! The Verifier: redundancy verification of this node's chunks (see `crate::blocks::verify`).
//! Every tick it starts, when due and not already running, a scrub pass (an interrupted pass
//! resumes from its saved cursor; a new one starts `scrub_interval` after the last ended, or
//! at once on `strata scrub start`) and an anti-entropy check (every `check_interval`). The
//! work runs in tasks so the actor keeps answering; its progress is on disk.
//!
//! On the Raft leader it also watches the storage nodes: one that has not answered for
//! `down_after` is marked down (a new layout version without it, so every chunk it held gets
//! a copy elsewhere); a down node that answers again is marked active (and the extra copies
//! are released by the rebalance once every home holds the chunk).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_cluster::Command;
use strata_cluster::layout::{NodeId, NodeState};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::blocks::verify::{CheckRecord, ScrubRecord};
use crate::blocks::{BlockManager, BlockResult};
use crate::clock::now_ms;
use crate::config::VerifyConfig;
use crate::raft::Cluster;

/// How often the actor looks for work.
const TICK: Duration = Duration::from_secs(1);
/// Wait before retrying a pass that failed.
const RETRY: Duration = Duration::from_secs(10);

pub struct VerifierActor;

pub enum VerifierMsg {
    Tick,
    ScrubDone(BlockResult<ScrubRecord>),
    CheckDone(BlockResult<CheckRecord>),
    /// A SetNodeDown proposal finished (either way).
    Proposed,
    /// Which storage nodes answered, under layout `version`.
    Probed {
        version: u64,
        answers: Vec<(NodeId, bool)>,
    },
}

pub struct VerifierArgs {
    pub blocks: Arc<BlockManager>,
    pub config: VerifyConfig,
    pub cluster: Arc<Cluster>,
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
    /// Leader only: when each storage node last answered (or since when this node watches).
    last_seen: HashMap<NodeId, Instant>,
    probing: bool,
    /// A SetNodeDown proposal is on its way.
    proposing: bool,
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
            last_seen: HashMap::new(),
            probing: false,
            proposing: false,
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
            VerifierMsg::Proposed => st.proposing = false,
            VerifierMsg::Probed { version, answers } => {
                st.probing = false;
                st.judge(&myself, version, answers);
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
        // Nothing to compare with before the peer transport is up (a joining node).
        if !self.args.blocks.transport_up() {
            return;
        }
        self.watch(myself);
        let blocks = &self.args.blocks;
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

    /// Leader only: asks every other storage node (and every down one) whether it answers.
    fn watch(&mut self, myself: &ActorRef<VerifierMsg>) {
        if !self.args.cluster.is_leader() {
            self.last_seen.clear();
            return;
        }
        if self.probing || self.proposing {
            return;
        }
        let Ok(state) = self.args.blocks.layout() else {
            return;
        };
        let me = self.args.cluster.id;
        let nodes: Vec<NodeId> = state
            .current
            .nodes
            .iter()
            .filter(|(n, r)| **n != me && r.state != NodeState::Draining)
            .map(|(n, _)| *n)
            .collect();
        if nodes.is_empty() {
            return;
        }
        self.probing = true;
        let (blocks, me, version) = (
            self.args.blocks.clone(),
            myself.clone(),
            state.current.version,
        );
        tokio::spawn(async move {
            let answers = blocks.probe(nodes).await;
            let _ = me.cast(VerifierMsg::Probed { version, answers });
        });
    }

    /// Marks a node down after `down_after` without an answer, or active once it answers.
    fn judge(
        &mut self,
        myself: &ActorRef<VerifierMsg>,
        version: u64,
        answers: Vec<(NodeId, bool)>,
    ) {
        let Ok(state) = self.args.blocks.layout() else {
            return;
        };
        if state.current.version != version || !self.args.cluster.is_leader() {
            return;
        }
        let now = Instant::now();
        // A leader marked down earlier (its QUIC stopped answering while Raft did not) is
        // plainly up: it marks itself active first.
        let me = self.args.cluster.id;
        let mut change = (state.current.nodes.get(&me).map(|r| r.state) == Some(NodeState::Down))
            .then_some((me, false));
        for (node, ok) in answers {
            let seen = self.last_seen.entry(node).or_insert(now);
            if ok {
                *seen = now;
            }
            let role = state.current.nodes.get(&node).map(|r| r.state);
            if change.is_none() {
                if ok && role == Some(NodeState::Down) {
                    change = Some((node, false));
                } else if !ok
                    && role == Some(NodeState::Active)
                    && now.duration_since(*seen) >= self.args.config.down_after
                {
                    change = Some((node, true));
                }
            }
        }
        let Some((node, down)) = change else {
            return;
        };
        self.proposing = true;
        let (cluster, me) = (self.args.cluster.clone(), myself.clone());
        let down_after = self.args.config.down_after;
        tokio::spawn(async move {
            let cmd = Command::SetNodeDown {
                node,
                down,
                layout_version: version,
            };
            match cluster.propose(cmd).await {
                Ok(_) if down => tracing::warn!(
                    node,
                    ?down_after,
                    "storage node has not answered for down_after: marked down; its chunks get copies on other nodes"
                ),
                Ok(_) => tracing::info!(node, "down node answers again: marked active"),
                Err(e) => {
                    tracing::warn!(node, down, error = %e, "could not change the node's state")
                }
            }
            let _ = me.cast(VerifierMsg::Proposed);
        });
    }
}
