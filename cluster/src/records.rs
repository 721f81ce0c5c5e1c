//! What the state machine stores, and how it is encoded: every value is one format-version byte
//! followed by bincode (serde), so a later release can migrate old records.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::StoreError;
use crate::ids::{ChunkId, SessionId, TenantId};
use crate::names::{BucketName, ObjectKey};

/// Format version written in front of every stored value.
pub const FORMAT_V1: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard()).map_err(
        |e| StoreError::Encode {
            what: std::any::type_name::<T>(),
            why: e.to_string(),
        },
    )?;
    Ok(out)
}

/// The most bytes a record's strings and byte arrays may declare: a length past it (corrupt or
/// hostile input) is refused before anything is allocated for it. No record comes near it: the
/// largest, a manifest, is 65,536 entries of 36 bytes.
pub const RECORD_LIMIT: usize = 256 << 20;

/// The same for a Raft snapshot, which holds the whole state machine in one value.
pub const SNAPSHOT_LIMIT: usize = 4 << 30;

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    decode_limited::<T, RECORD_LIMIT>(what, bytes)
}

/// `decode` for a Raft snapshot.
pub fn decode_snapshot<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode_limited::<T, SNAPSHOT_LIMIT>(what, bytes)
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => {
            let config = bincode::config::standard().with_limit::<LIMIT>();
            bincode::serde::decode_from_slice(rest, config)
                .map(|(v, _)| v)
                .map_err(|e| StoreError::Corrupt {
                    what,
                    why: e.to_string(),
                })
        }
        Some((v, _)) => Err(StoreError::Corrupt {
            what,
            why: format!("unknown format version {v}"),
        }),
        None => Err(StoreError::Corrupt {
            what,
            why: "empty record".into(),
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: String,
    pub created_at_ms: i64,
}

/// Who a bearer token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    Tenant(TenantId),
    Admin,
}

/// What a tenant token may do (the admin token may do everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenScope {
    /// Reads: get, stat, list, versions, upload progress.
    Read,
    /// Reads and writes.
    ReadWrite,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub principal: Principal,
    pub created_at_ms: i64,
    pub scope: TokenScope,
    /// Only this bucket (None: every bucket of the tenant).
    pub bucket: Option<crate::names::BucketName>,
    /// Refused from this time on (None: never expires).
    pub expires_ms: Option<i64>,
}

impl TokenRecord {
    /// A token that may do everything its principal may, for ever.
    pub fn full(principal: Principal, created_at_ms: i64) -> TokenRecord {
        TokenRecord {
            principal,
            created_at_ms,
            scope: TokenScope::ReadWrite,
            bucket: None,
            expires_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    pub created_at_ms: i64,
}

/// One chunk of a version, at its place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub len: u32,
}

/// The summary of a version, also kept in the object's head for listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    pub size: u64,
    pub file_hash: [u8; 32],
    pub content_type: String,
    pub created_at_ms: i64,
    pub chunk_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub info: VersionInfo,
    pub chunks: Vec<ChunkEntry>,
}

/// A key's head: its current version and trash state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectHead {
    pub current: VersionInfo,
    pub version_count: u32,
    pub trash: Option<TrashState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrashState {
    pub deleted_at_ms: i64,
    pub purge_at_ms: i64,
}

/// What a caller sees of an object version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectView {
    pub bucket: BucketName,
    pub key: ObjectKey,
    pub info: VersionInfo,
    pub version_count: u32,
    pub trash: Option<TrashState>,
}

/// References one tenant holds on one chunk (committed versions plus open sessions). Dedup is
/// decided on this record, so a tenant learns nothing about another tenant's chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    pub refs: u64,
    pub len: u32,
    /// Chaining values of this chunk at file offsets where it was seen (a few at most), so a
    /// deduplicated upload can check its whole-file hash without reading the chunk.
    pub cvs: Vec<(u64, [u8; 32])>,
}

/// How many offsets' chaining values a chunk remembers.
pub const MAX_REMEMBERED_CVS: usize = 4;

/// One entry of an upload manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub id: ChunkId,
    pub len: u32,
}

/// What a completed upload session committed, kept for `COMPLETED_RETENTION_MS` so that
/// CompleteUpload is idempotent: a retry (by the client, or by the node forwarding to a new
/// leader after the old one committed the first attempt) gets the same version, not "session
/// not found".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedSession {
    pub tenant: TenantId,
    pub bucket: BucketName,
    pub key: ObjectKey,
    pub version: u64,
    pub file_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub tenant: TenantId,
    pub bucket: BucketName,
    pub key: ObjectKey,
    pub size: u64,
    pub content_type: String,
    pub has_manifest: bool,
    /// BLAKE3 of the encoded manifest: a resumed CreateUpload must name the same file.
    pub manifest_digest: [u8; 32],
    pub created_at_ms: i64,
    pub last_activity_ms: i64,
    pub bytes_present: u64,
}

/// A durable chunk of an open session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionChunk {
    pub id: ChunkId,
    pub len: u32,
    pub cv: Option<[u8; 32]>,
}

/// A join token (kept by its hash): how many more nodes it admits, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub created_ms: i64,
    pub expires_ms: i64,
    pub uses_left: u32,
    /// Nodes admitted with it so far.
    pub used_by: Vec<u64>,
}
