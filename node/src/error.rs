//! The node's error type and its one mapping to gRPC statuses.

use strata_cluster::{ApplyError, ChunkId, Invalid, Rejection, StoreError};
use tonic::{Code, Status};

use crate::chunk_store::ChunkStoreError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Metadata(#[from] StoreError),
    #[error(transparent)]
    ChunkStore(#[from] ChunkStoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ApplyError> for NodeError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Rejected(r) => NodeError::Rejected(r),
            ApplyError::Store(s) => NodeError::Metadata(s),
        }
    }
}

impl NodeError {
    pub fn code(&self) -> Code {
        match self {
            NodeError::InvalidArgument(_) | NodeError::Invalid(_) => Code::InvalidArgument,
            NodeError::NotFound(_) => Code::NotFound,
            NodeError::OutOfRange(_) => Code::OutOfRange,
            NodeError::FailedPrecondition(_) => Code::FailedPrecondition,
            NodeError::Unauthenticated(_) => Code::Unauthenticated,
            NodeError::PermissionDenied(_) => Code::PermissionDenied,
            NodeError::Unavailable(_) => Code::Unavailable,
            NodeError::ResourceExhausted(_) => Code::ResourceExhausted,
            NodeError::Rejected(r) => match r {
                Rejection::SessionNotFound
                | Rejection::ObjectNotFound
                | Rejection::VersionNotFound(_)
                | Rejection::BucketNotFound => Code::NotFound,
                Rejection::NotInTrash | Rejection::Incomplete(_) => Code::FailedPrecondition,
                Rejection::ChunkOutOfBounds { .. }
                | Rejection::ChunkOverlap { .. }
                | Rejection::ManifestMismatch { .. }
                | Rejection::ManifestSize { .. } => Code::InvalidArgument,
                Rejection::TenantExists(_) | Rejection::BucketExists => Code::AlreadyExists,
                Rejection::TenantNotFound(_) | Rejection::TokenNotFound => Code::NotFound,
                Rejection::BucketNotEmpty(_) => Code::FailedPrecondition,
                Rejection::InvalidLayout(_) => Code::InvalidArgument,
                Rejection::NodeNotInLayout(_) | Rejection::PolicyNotFound(_) => Code::NotFound,
                Rejection::NotCold | Rejection::AlreadyCold => Code::FailedPrecondition,
                Rejection::ColdCopyMissing(_) => Code::Aborted,
                Rejection::NothingStaged | Rejection::LayoutVersion { .. } => {
                    Code::FailedPrecondition
                }
            },
            NodeError::Metadata(_) => Code::Unavailable,
            NodeError::ChunkStore(e) => match e {
                ChunkStoreError::DiskFull(_) => Code::ResourceExhausted,
                ChunkStoreError::ReadOnly(_) => Code::Unavailable,
                ChunkStoreError::Corrupt(_) => Code::DataLoss,
                ChunkStoreError::Missing(_) => Code::DataLoss,
                ChunkStoreError::Io { .. } => Code::Internal,
            },
            NodeError::Internal(_) => Code::Internal,
        }
    }

    /// A status from another node, kept with its code.
    pub fn from_status(s: tonic::Status) -> NodeError {
        let m = s.message().to_owned();
        match s.code() {
            Code::InvalidArgument => NodeError::InvalidArgument(m),
            Code::NotFound => NodeError::NotFound(m),
            Code::FailedPrecondition => NodeError::FailedPrecondition(m),
            Code::Unauthenticated => NodeError::Unauthenticated(m),
            Code::PermissionDenied => NodeError::PermissionDenied(m),
            Code::OutOfRange => NodeError::OutOfRange(m),
            Code::ResourceExhausted => NodeError::ResourceExhausted(m),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                NodeError::Unavailable(m)
            }
            _ => NodeError::Internal(m),
        }
    }

    pub fn missing_chunk(id: &ChunkId) -> NodeError {
        NodeError::ChunkStore(ChunkStoreError::Missing(*id))
    }
}

/// The one place a node error becomes a gRPC status.
impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        let message = match &e {
            NodeError::Rejected(Rejection::Incomplete(gaps)) => {
                let shown: Vec<String> = gaps
                    .iter()
                    .take(8)
                    .map(|g| format!("{}..{}", g.offset, g.offset + g.len))
                    .collect();
                format!(
                    "upload is incomplete: {} byte range(s) missing: {}{}",
                    gaps.len(),
                    shown.join(", "),
                    if gaps.len() > 8 { ", ..." } else { "" }
                )
            }
            other => other.to_string(),
        };
        Status::new(e.code(), message)
    }
}

pub type NodeResult<T> = Result<T, NodeError>;
