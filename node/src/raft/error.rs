//! Errors of the Raft layer: why a metadata write or read barrier did not happen. Each keeps
//! its meaning up to the gRPC status (`code`), and a write refused by the leader keeps the
//! leader's code and message when it is forwarded back.

use serde::{Deserialize, Serialize};
use strata_cluster::raft::NodeId;
use strata_cluster::{Rejection, StoreError};
use tonic::Code;

use crate::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the metadata cluster has no quorum ({0}); retry")]
    NoQuorum(String),
    /// The state machine refused the command (deterministic; nothing changed).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The leader answered a forwarded write with this error.
    #[error("{}", .0.message)]
    Leader(WireError),
    #[error("a metadata command of {bytes} bytes is over the {limit}-byte limit")]
    TooLarge { bytes: usize, limit: usize },
    #[error(
        "the metadata disk is nearly full ({free} bytes free; writes stop below {floor}): delete objects or abort uploads, or add space"
    )]
    DiskFull { free: u64, floor: u64 },
    #[error("node {0} is not a member of this cluster")]
    NotMember(NodeId),
    #[error(
        "node {0} is the cluster's last voter: removing it would leave no one to hold the metadata"
    )]
    LastVoter(NodeId),
    #[error("this node is behind the cluster: {0}")]
    Behind(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ClusterResult<T> = Result<T, ClusterError>;

/// An error as it crosses the wire between nodes: a gRPC code and the message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub code: i32,
    pub message: String,
}

impl ClusterError {
    pub fn code(&self) -> Code {
        match self {
            ClusterError::NoQuorum(_)
            | ClusterError::Behind(_)
            | ClusterError::ShuttingDown
            | ClusterError::Store(_) => Code::Unavailable,
            ClusterError::Rejected(_) => Code::FailedPrecondition,
            ClusterError::Leader(w) => Code::from_i32(w.code),
            ClusterError::TooLarge { .. } | ClusterError::DiskFull { .. } => {
                Code::ResourceExhausted
            }
            ClusterError::NotMember(_) => Code::NotFound,
            ClusterError::LastVoter(_) => Code::FailedPrecondition,
            ClusterError::Codec(_) | ClusterError::Internal(_) => Code::Internal,
        }
    }
}

impl From<&ClusterError> for WireError {
    fn from(e: &ClusterError) -> WireError {
        match e {
            ClusterError::Leader(w) => w.clone(),
            other => WireError {
                code: other.code() as i32,
                message: other.to_string(),
            },
        }
    }
}

impl From<WireError> for ClusterError {
    fn from(w: WireError) -> ClusterError {
        ClusterError::Leader(w)
    }
}
