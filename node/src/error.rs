//! The node's error type and its one mapping to gRPC statuses. Each layer has its own error
//! enum (chunk store, Raft, block layer, tiering, reads); they are wrapped here unchanged, so a
//! data loss stays DATA_LOSS and a refusal by the leader keeps the leader's code and message.

use strata_cluster::{ApplyError, ChunkId, Invalid, Rejection, StoreError};
use tonic::{Code, Status};

use crate::blocks::BlockError;
use crate::budget::BudgetError;
use crate::chunk_store::ChunkStoreError;
use crate::raft::ClusterError;
use crate::reads::ReadError;
use crate::tiering::TierError;

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
    /// Over a rate limit: RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` of `retry_after`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Aborted(String),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Metadata(#[from] StoreError),
    #[error(transparent)]
    ChunkStore(#[from] ChunkStoreError),
    #[error(transparent)]
    Cluster(ClusterError),
    #[error(transparent)]
    Blocks(#[from] BlockError),
    #[error(transparent)]
    Tier(#[from] TierError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A state-machine refusal stays a refusal (with its own code); every other Raft-layer error
/// keeps its meaning.
impl From<ClusterError> for NodeError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Rejected(r) => NodeError::Rejected(r),
            ClusterError::Store(s) => NodeError::Metadata(s),
            other => NodeError::Cluster(other),
        }
    }
}

impl From<ApplyError> for NodeError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Rejected(r) => NodeError::Rejected(r),
            ApplyError::Store(s) => NodeError::Metadata(s),
        }
    }
}

fn store_code(e: &ChunkStoreError) -> Code {
    match e {
        ChunkStoreError::DiskFull { .. } => Code::ResourceExhausted,
        ChunkStoreError::ReadOnly(_) => Code::Unavailable,
        ChunkStoreError::Corrupt(_) | ChunkStoreError::Missing(_) => Code::DataLoss,
        ChunkStoreError::Io { .. } | ChunkStoreError::Task(_) => Code::Internal,
    }
}

fn budget_code(e: &BudgetError) -> Code {
    match e {
        BudgetError::TooLarge { .. } => Code::ResourceExhausted,
        BudgetError::Closed => Code::Unavailable,
    }
}

fn block_code(e: &BlockError) -> Code {
    match e {
        BlockError::Store(s) => store_code(s),
        BlockError::Lost(_) => Code::DataLoss,
        BlockError::Unreachable { .. }
        | BlockError::Quorum { .. }
        | BlockError::NotReady
        | BlockError::Metadata(_) => Code::Unavailable,
        BlockError::Budget(b) => budget_code(b),
        BlockError::Queue(_) => Code::Internal,
    }
}

fn tier_code(e: &TierError) -> Code {
    match e {
        TierError::Cluster(c) => NodeError::cluster_code(c),
        TierError::Blocks(b) => block_code(b),
        TierError::Metadata(_) | TierError::Backend { .. } => Code::Unavailable,
        TierError::NoBackend { .. } | TierError::NotRestored { .. } => Code::FailedPrecondition,
        TierError::Corrupt { .. } => Code::DataLoss,
        TierError::Task(_) => Code::Internal,
    }
}

fn read_code(e: &ReadError) -> Code {
    match e {
        ReadError::Hot(h) => block_code(h),
        ReadError::Cold(c) => tier_code(c),
        ReadError::Metadata(_) => Code::Unavailable,
        // No hot copy and no usable cold copy: data loss only when both are gone for good.
        ReadError::Both { hot, cold } => match (block_code(hot), tier_code(cold)) {
            (Code::DataLoss, Code::DataLoss) => Code::DataLoss,
            (_, Code::FailedPrecondition) => Code::FailedPrecondition,
            _ => Code::Unavailable,
        },
    }
}

impl NodeError {
    fn cluster_code(e: &ClusterError) -> Code {
        match e {
            ClusterError::Rejected(r) => NodeError::rejection_code(r),
            other => other.code(),
        }
    }

    fn rejection_code(r: &Rejection) -> Code {
        match r {
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
            Rejection::JoinTokenUnknown
            | Rejection::JoinTokenExpired
            | Rejection::JoinTokenUsed => Code::Unauthenticated,
            Rejection::NodeRevoked(_) => Code::PermissionDenied,
            Rejection::TooManyOpenUploads { .. }
            | Rejection::ObjectTooLarge { .. }
            | Rejection::BytesQuota { .. }
            | Rejection::ObjectsQuota { .. } => Code::ResourceExhausted,
            Rejection::PlanNotFound(_) => Code::NotFound,
            Rejection::PlanInUse { .. } => Code::FailedPrecondition,
            Rejection::BatchTooDeep { .. } => Code::InvalidArgument,
            Rejection::NothingStaged | Rejection::LayoutVersion { .. } => Code::FailedPrecondition,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            NodeError::InvalidArgument(_) | NodeError::Invalid(_) => Code::InvalidArgument,
            NodeError::NotFound(_) => Code::NotFound,
            NodeError::OutOfRange(_) => Code::OutOfRange,
            NodeError::FailedPrecondition(_) => Code::FailedPrecondition,
            NodeError::Unauthenticated(_) => Code::Unauthenticated,
            NodeError::PermissionDenied(_) => Code::PermissionDenied,
            NodeError::Unavailable(_) => Code::Unavailable,
            NodeError::ResourceExhausted(_) | NodeError::RateLimited { .. } => {
                Code::ResourceExhausted
            }
            NodeError::DataLoss(_) => Code::DataLoss,
            NodeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            NodeError::AlreadyExists(_) => Code::AlreadyExists,
            NodeError::Aborted(_) => Code::Aborted,
            NodeError::Rejected(r) => NodeError::rejection_code(r),
            NodeError::Metadata(_) => Code::Unavailable,
            NodeError::ChunkStore(e) => store_code(e),
            NodeError::Cluster(e) => NodeError::cluster_code(e),
            NodeError::Blocks(e) => block_code(e),
            NodeError::Tier(e) => tier_code(e),
            NodeError::Read(e) => read_code(e),
            NodeError::Budget(e) => budget_code(e),
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
            Code::Unavailable | Code::Cancelled => NodeError::Unavailable(m),
            Code::DataLoss => NodeError::DataLoss(m),
            Code::DeadlineExceeded => NodeError::DeadlineExceeded(m),
            Code::AlreadyExists => NodeError::AlreadyExists(m),
            Code::Aborted => NodeError::Aborted(m),
            _ => NodeError::Internal(m),
        }
    }

    pub fn missing_chunk(id: &ChunkId) -> NodeError {
        NodeError::ChunkStore(ChunkStoreError::Missing(*id))
    }

    /// An equivalent error for another waiter on the same work (errors are not Clone: some
    /// wrap io::Error): same code and message.
    pub fn duplicate(&self) -> NodeError {
        NodeError::from_status(Status::new(self.code(), self.to_string()))
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
            NodeError::RateLimited {
                message,
                retry_after,
            } => {
                let details = tonic_types::ErrorDetails::with_retry_info(Some(*retry_after));
                return <Status as tonic_types::StatusExt>::with_error_details(
                    e.code(),
                    message,
                    details,
                );
            }
            other => other.to_string(),
        };
        Status::new(e.code(), message)
    }
}

pub type NodeResult<T> = Result<T, NodeError>;
