//! NodeSupervisor: the root of the node's actors. It spawns one UploadSession per open upload
//! on demand (recovering its state from the state machine), the Janitor, Placement
//! (replication queue, rebalancing), Tiering and the Verifier (scrub, anti-entropy); a child
//! that fails is restarted with its state recovered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use strata_cluster::SessionId;

use strata_cluster::StateMachine;

use super::janitor::{Janitor, JanitorArgs, JanitorMsg};
use super::placement::{PlacementActor, PlacementMsg};
use super::tiering::{TieringActor, TieringArgs, TieringMsg};
use super::upload_session::{SessionArgs, SessionDeps, SessionMsg, UploadSession};
use super::verifier::{VerifierActor, VerifierArgs, VerifierMsg};
use crate::blocks::BlockManager;
use crate::config::Config;
use crate::error::{NodeError, NodeResult};
use crate::metrics as m;
use crate::raft::Cluster;
use crate::reads::Reads;
use crate::tiering::Tiering;
use crate::workers::Board;

pub struct NodeSupervisor;

/// What the actors work with (built by the server).
#[derive(Clone)]
pub struct ActorDeps {
    pub config: Arc<Config>,
    pub sm: Arc<StateMachine>,
    pub cluster: Arc<Cluster>,
    pub blocks: Arc<BlockManager>,
    pub tiering: Arc<Tiering>,
    pub reads: Arc<Reads>,
    pub board: Arc<Board>,
}

/// Stop reasons of a session actor that ended its session on purpose.
pub const PLANNED_STOPS: &[&str] = &["completed", "aborted", "session expired"];

pub enum SupervisorMsg {
    /// The actor of an open session, spawned (and recovered) if it is not running.
    Session(SessionId, RpcReplyPort<NodeResult<ActorRef<SessionMsg>>>),
    /// Stops a session's actor if it runs (its session was expired by the janitor).
    Forget(SessionId),
    /// Runs the janitor's sweep now and replies when it is done (admin and tests).
    SweepNow(RpcReplyPort<()>),
    /// The tiering actor (to run a pass now).
    Tiering(RpcReplyPort<Option<ActorRef<TieringMsg>>>),
}

pub struct SupervisorState {
    deps: ActorDeps,
    sessions: HashMap<SessionId, ActorRef<SessionMsg>>,
    by_actor: HashMap<ActorId, SessionId>,
    janitor: Option<ActorRef<JanitorMsg>>,
    placement: Option<ActorRef<PlacementMsg>>,
    tiering: Option<ActorRef<TieringMsg>>,
    verifier: Option<ActorRef<VerifierMsg>>,
}

impl SupervisorState {
    async fn spawn_session(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: SessionId,
    ) -> NodeResult<ActorRef<SessionMsg>> {
        if self.deps.sm.session(&id)?.is_none() {
            return Err(strata_cluster::Rejection::SessionNotFound.into());
        }
        let d = &self.deps;
        let args = SessionArgs {
            id,
            deps: SessionDeps {
                sm: d.sm.clone(),
                cluster: d.cluster.clone(),
                blocks: d.blocks.clone(),
                reads: d.reads.clone(),
                max_chunk_bytes: d.config.max_chunk_bytes,
            },
        };
        let (actor, _) = Actor::spawn_linked(None, UploadSession, args, myself.get_cell())
            .await
            .map_err(|e| NodeError::Internal(format!("cannot start session actor: {e}")))?;
        self.by_actor.insert(actor.get_id(), id);
        self.sessions.insert(id, actor.clone());
        metrics::gauge!(m::SESSIONS_OPEN).set(self.sessions.len() as f64);
        Ok(actor)
    }

    async fn spawn_janitor(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let d = &self.deps;
        let args = JanitorArgs {
            sm: d.sm.clone(),
            cluster: d.cluster.clone(),
            blocks: d.blocks.clone(),
            interval: d.config.janitor_interval,
            session_idle_timeout: d.config.session_idle_timeout,
            supervisor: myself.clone(),
            board: d.board.clone(),
        };
        let (janitor, _) = Actor::spawn_linked(None, Janitor, args, myself.get_cell()).await?;
        self.janitor = Some(janitor);
        Ok(())
    }

    async fn spawn_placement(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let blocks = self.deps.blocks.clone();
        let (actor, _) =
            Actor::spawn_linked(None, PlacementActor, blocks, myself.get_cell()).await?;
        self.placement = Some(actor);
        Ok(())
    }

    async fn spawn_tiering(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let args = TieringArgs {
            tiering: self.deps.tiering.clone(),
            cluster: self.deps.cluster.clone(),
            interval: self.deps.config.tier.interval,
            board: self.deps.board.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, TieringActor, args, myself.get_cell()).await?;
        self.tiering = Some(actor);
        Ok(())
    }

    async fn spawn_verifier(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let args = VerifierArgs {
            blocks: self.deps.blocks.clone(),
            config: self.deps.config.verify.clone(),
            cluster: self.deps.cluster.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, VerifierActor, args, myself.get_cell()).await?;
        self.verifier = Some(actor);
        Ok(())
    }

    fn is_verifier(&self, cell: &ActorCell) -> bool {
        self.verifier
            .as_ref()
            .is_some_and(|j| j.get_id() == cell.get_id())
    }

    fn is_tiering(&self, cell: &ActorCell) -> bool {
        self.tiering
            .as_ref()
            .is_some_and(|j| j.get_id() == cell.get_id())
    }

    fn is_janitor(&self, cell: &ActorCell) -> bool {
        self.janitor
            .as_ref()
            .is_some_and(|j| j.get_id() == cell.get_id())
    }

    fn is_placement(&self, cell: &ActorCell) -> bool {
        self.placement
            .as_ref()
            .is_some_and(|j| j.get_id() == cell.get_id())
    }

    fn forget_actor(&mut self, cell: &ActorCell) -> Option<SessionId> {
        let id = self.by_actor.remove(&cell.get_id())?;
        self.sessions.remove(&id);
        metrics::gauge!(m::SESSIONS_OPEN).set(self.sessions.len() as f64);
        Some(id)
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ActorDeps;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        deps: ActorDeps,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut st = SupervisorState {
            deps,
            sessions: HashMap::new(),
            by_actor: HashMap::new(),
            janitor: None,
            placement: None,
            tiering: None,
            verifier: None,
        };
        st.spawn_janitor(&myself).await?;
        st.spawn_placement(&myself).await?;
        st.spawn_tiering(&myself).await?;
        st.spawn_verifier(&myself).await?;
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Session(id, reply) => {
                let result = match st.sessions.get(&id) {
                    Some(a) => Ok(a.clone()),
                    None => st.spawn_session(&myself, id).await,
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::Forget(id) => {
                if let Some(a) = st.sessions.remove(&id) {
                    st.by_actor.remove(&a.get_id());
                    a.stop(Some("session expired".into()));
                }
            }
            SupervisorMsg::SweepNow(reply) => match &st.janitor {
                Some(j) => {
                    let _ = j.cast(JanitorMsg::Sweep(Some(reply)));
                }
                None => {
                    let _ = reply.send(());
                }
            },
            SupervisorMsg::Tiering(reply) => {
                let _ = reply.send(st.tiering.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let planned = reason
                    .as_deref()
                    .is_some_and(|r| PLANNED_STOPS.contains(&r));
                if let Some(id) = st.forget_actor(&cell) {
                    if !planned && st.deps.sm.session(&id)?.is_some() {
                        // Killed or stopped by someone else while its upload is open: bring it back.
                        metrics::counter!(m::ACTOR_RESTARTS).increment(1);
                        tracing::warn!(session = %id, ?reason, "upload session actor stopped unexpectedly; restarting it");
                        if let Err(e) = st.spawn_session(&myself, id).await {
                            tracing::warn!(session = %id, error = %e, "session not restarted");
                        }
                    }
                } else if reason.as_deref() != Some("shutdown") {
                    if st.is_janitor(&cell) {
                        tracing::warn!(?reason, "janitor stopped; restarting it");
                        st.spawn_janitor(&myself).await?;
                    } else if st.is_placement(&cell) {
                        tracing::warn!(?reason, "placement actor stopped; restarting it");
                        st.spawn_placement(&myself).await?;
                    } else if st.is_tiering(&cell) {
                        tracing::warn!(?reason, "tiering actor stopped; restarting it");
                        st.spawn_tiering(&myself).await?;
                    } else if st.is_verifier(&cell) {
                        tracing::warn!(?reason, "verifier stopped; restarting it");
                        st.spawn_verifier(&myself).await?;
                    }
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                metrics::counter!(m::ACTOR_RESTARTS).increment(1);
                if let Some(id) = st.forget_actor(&cell) {
                    tracing::error!(session = %id, error = %err, "upload session actor failed; restarting it from the state machine");
                    match st.spawn_session(&myself, id).await {
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(session = %id, error = %e, "session not restarted")
                        }
                    }
                } else if st.is_janitor(&cell) {
                    tracing::error!(error = %err, "janitor failed; restarting it");
                    st.spawn_janitor(&myself).await?;
                } else if st.is_placement(&cell) {
                    tracing::error!(error = %err, "placement actor failed; restarting it");
                    st.spawn_placement(&myself).await?;
                } else if st.is_tiering(&cell) {
                    tracing::error!(error = %err, "tiering actor failed; restarting it");
                    st.spawn_tiering(&myself).await?;
                } else if st.is_verifier(&cell) {
                    tracing::error!(error = %err, "verifier failed; restarting it");
                    st.spawn_verifier(&myself).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// How long a handler waits for an actor's answer before giving up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The actor of an open session (tenant checks happen in the actor).
pub async fn session_actor(
    sup: &ActorRef<SupervisorMsg>,
    id: SessionId,
) -> NodeResult<ActorRef<SessionMsg>> {
    call(sup, |reply| SupervisorMsg::Session(id, reply)).await?
}

/// Calls an actor with the standard timeout, mapping its failures to node errors.
pub async fn call<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
) -> NodeResult<T> {
    match actor.call(msg, Some(CALL_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        Ok(ractor::rpc::CallResult::Timeout) => Err(NodeError::Unavailable(
            "the node did not answer in time".into(),
        )),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(NodeError::Unavailable(
            "the actor serving this request stopped; retry".into(),
        )),
    }
}
