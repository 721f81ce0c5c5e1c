//! Errors of the metadata layer.

use serde::{Deserialize, Serialize};

use crate::ids::ChunkId;

/// Input that fails validation before any command is built.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum Invalid {
    #[error("{0}")]
    Bucket(String),
    #[error("{0}")]
    Key(String),
}

/// A missing byte range of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub offset: u64,
    pub len: u64,
}

/// A command the state machine refused. Refusals are deterministic: every replica applying the
/// same command to the same state refuses it the same way, so they are part of the result, not
/// failures of the log.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    #[error("upload session not found (unknown, expired, completed or aborted)")]
    SessionNotFound,
    #[error("object not found")]
    ObjectNotFound,
    #[error("version {0} not found")]
    VersionNotFound(u64),
    #[error("bucket not found")]
    BucketNotFound,
    #[error("the object is not in the trash")]
    NotInTrash,
    #[error("chunk at offset {offset} would end at {end}, past the declared size {size}")]
    ChunkOutOfBounds { offset: u64, end: u64, size: u64 },
    #[error("chunk at offset {offset} overlaps a chunk already in the session")]
    ChunkOverlap { offset: u64 },
    #[error("chunk at offset {offset} is not the chunk the manifest names there ({expected})")]
    ManifestMismatch { offset: u64, expected: ChunkId },
    #[error("manifest covers {covered} bytes but the declared size is {size}")]
    ManifestSize { covered: u64, size: u64 },
    #[error("upload is missing {} byte range(s), first at offset {}", .0.len(), .0.first().map(|g| g.offset).unwrap_or(0))]
    Incomplete(Vec<Gap>),
    #[error("tenant name {0:?} is already taken")]
    TenantExists(String),
    #[error("tenant {0:?} not found")]
    TenantNotFound(String),
    #[error("bucket already exists")]
    BucketExists,
    #[error("bucket is not empty ({0} key(s), live or in the trash): delete them first")]
    BucketNotEmpty(u64),
    #[error("token not found")]
    TokenNotFound,
    #[error("{0}")]
    InvalidLayout(String),
    #[error("node {0} is not in the layout")]
    NodeNotInLayout(u64),
    #[error("no layout change is staged")]
    NothingStaged,
    #[error(
        "the staged layout would be version {expected}, not {given}: review it with `strata layout show` and apply that version"
    )]
    LayoutVersion { expected: u64, given: u64 },
    #[error("tier policy {0:?} not found")]
    PolicyNotFound(String),
    #[error("the object version is not in cold storage")]
    NotCold,
    #[error("the object version is already in cold storage")]
    AlreadyCold,
    #[error("chunk {0} has no cold copy recorded: the transition raced with another change")]
    ColdCopyMissing(ChunkId),
    #[error(
        "the tenant has {limit} upload sessions open, the limit of its plan {plan:?} (max_open_uploads): complete or abort some first"
    )]
    TooManyOpenUploads { limit: u32, plan: String },
    #[error(
        "object size {size} bytes is over the limit of the tenant's plan {plan:?} (max_object_size {limit} bytes)"
    )]
    ObjectTooLarge { size: u64, limit: u64, plan: String },
    #[error(
        "the tenant stores {used} bytes (open uploads included) and this upload declares {size}: over the limit of its plan {plan:?} (max_bytes {limit})"
    )]
    BytesQuota {
        used: u64,
        size: u64,
        limit: u64,
        plan: String,
    },
    #[error(
        "the tenant has {used} objects, the limit of its plan {plan:?} (max_objects {limit}): delete some first"
    )]
    ObjectsQuota { used: u64, limit: u64, plan: String },
    #[error("plan {0:?} not found")]
    PlanNotFound(String),
    #[error("plan {name:?} is in use by {tenants} tenant(s): move them to another plan first")]
    PlanInUse { name: String, tenants: u64 },
    #[error("batches nest at most {limit} deep")]
    BatchTooDeep { limit: usize },
    #[error("join token not recognised by this cluster")]
    JoinTokenUnknown,
    #[error("join token expired")]
    JoinTokenExpired,
    #[error("join token already used")]
    JoinTokenUsed,
    #[error("node {0} was removed from the cluster: its certificates are revoked")]
    NodeRevoked(u64),
}

/// Failure of the state machine itself (not a refusal): the node cannot serve metadata.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store: {0}")]
    Sled(#[from] sled::Error),
    #[error("metadata record {what} is corrupt: {why}")]
    Corrupt { what: &'static str, why: String },
    #[error("cannot encode {what}: {why}")]
    Encode { what: &'static str, why: String },
}

/// Either outcome of applying a command.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for ApplyError {
    fn from(e: sled::Error) -> Self {
        ApplyError::Store(StoreError::Sled(e))
    }
}
