//! Placement: the node's background chunk mover. Every tick it retries the replication queue
//! (chunks written here that have not reached all their homes), and runs a rebalance pass
//! whenever the layout has a version this node has not finished moving chunks for, or the
//! last pass left chunks pending (a home was down). The work runs in tasks so the actor keeps
//! answering; its state is on disk (queue and finished layout version), so a restarted actor
//! or node picks up where it stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::blocks::{BlockManager, BlockResult};
use crate::metrics as m;

/// How often the actor looks for work.
pub const TICK: Duration = Duration::from_secs(1);
/// Wait before another pass when the last one left chunks pending.
const RETRY_PASS: Duration = Duration::from_secs(3);
/// Queue entries handled per queue pass.
const QUEUE_BATCH: usize = 512;

pub struct PlacementActor;

pub enum PlacementMsg {
    Tick,
    QueueDone(BlockResult<usize>),
    PassDone(BlockResult<u64>),
}

pub struct PlacementState {
    blocks: Arc<BlockManager>,
    queue_running: bool,
    pass_running: bool,
    /// No pass before this instant (after one that left chunks pending or failed).
    next_pass: Instant,
    /// The last pass left chunks pending: run another even if the layout did not change.
    pass_pending: bool,
}

impl Actor for PlacementActor {
    type Msg = PlacementMsg;
    type State = PlacementState;
    type Arguments = Arc<BlockManager>;

    async fn pre_start(
        &self,
        myself: ActorRef<PlacementMsg>,
        blocks: Arc<BlockManager>,
    ) -> Result<PlacementState, ActorProcessingErr> {
        myself.send_interval(TICK, || PlacementMsg::Tick);
        Ok(PlacementState {
            blocks,
            queue_running: false,
            pass_running: false,
            next_pass: Instant::now(),
            pass_pending: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PlacementMsg>,
        msg: PlacementMsg,
        st: &mut PlacementState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PlacementMsg::Tick => st.tick(&myself)?,
            PlacementMsg::QueueDone(r) => {
                st.queue_running = false;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "replication queue pass failed; retrying");
                }
            }
            PlacementMsg::PassDone(r) => {
                st.pass_running = false;
                match r {
                    Ok(0) => {
                        st.pass_pending = false;
                        tracing::info!(
                            layout = st.blocks.scanned_version(),
                            "rebalance pass complete: every chunk held here is at its homes"
                        );
                    }
                    Ok(n) => {
                        st.pass_pending = true;
                        st.next_pass = Instant::now() + RETRY_PASS;
                        tracing::info!(pending = n, "rebalance pass left chunks pending; retrying");
                    }
                    Err(e) => {
                        st.pass_pending = true;
                        st.next_pass = Instant::now() + RETRY_PASS;
                        tracing::warn!(error = %e, "rebalance pass failed; retrying");
                    }
                }
            }
        }
        Ok(())
    }
}

impl PlacementState {
    fn tick(&mut self, myself: &ActorRef<PlacementMsg>) -> Result<(), ActorProcessingErr> {
        let blocks = &self.blocks;
        metrics::gauge!(m::REPLICATION_QUEUE).set(blocks.queue_len() as f64);
        // Nothing moves before the peer transport is up (a joining node).
        if !blocks.transport_up() {
            return Ok(());
        }
        let current = blocks.layout_version()?;
        metrics::gauge!(m::LAYOUT_VERSION).set(current as f64);
        if !self.queue_running && blocks.queue_len() > 0 {
            self.queue_running = true;
            let (blocks, me) = (blocks.clone(), myself.clone());
            tokio::spawn(async move {
                let r = blocks.drain_queue(QUEUE_BATCH).await;
                let _ = me.cast(PlacementMsg::QueueDone(r));
            });
        }
        // A node the leader marked down (it stopped answering) keeps its chunks until it is
        // marked active again, instead of releasing them to the nodes that stood in for it.
        let marked_down = blocks
            .layout()?
            .current
            .nodes
            .get(&blocks.node_id())
            .map(|r| r.state)
            == Some(strata_cluster::NodeState::Down);
        let due = current > 0
            && !marked_down
            && (blocks.scanned_version() != current || self.pass_pending)
            && Instant::now() >= self.next_pass;
        if !self.pass_running && due {
            self.pass_running = true;
            let (blocks, me) = (blocks.clone(), myself.clone());
            tokio::spawn(async move {
                let r = blocks.rebalance_pass().await;
                let _ = me.cast(PlacementMsg::PassDone(r));
            });
        }
        Ok(())
    }
}
