//! Conversions between protobuf messages and domain types: the one place per message where the
//! wire format meets the model.

use strata_cluster::records::{ManifestEntry, ObjectView, VersionInfo};
use strata_cluster::{BucketName, ChunkId, ObjectKey, SessionId};
use strata_proto::v1 as pb;

use crate::config::MAX_UPLOAD_CHUNKS;
use crate::error::{NodeError, NodeResult};

/// An operator-chosen name (policy, plan): 1-64 letters, digits, '-' or '_'.
pub fn simple_name(what: &str, name: &str) -> NodeResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if !ok {
        return Err(NodeError::InvalidArgument(format!(
            "{what} name {name:?} must be 1-64 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

pub fn bucket(s: &str) -> NodeResult<BucketName> {
    Ok(BucketName::new(s)?)
}

pub fn key(s: &str) -> NodeResult<ObjectKey> {
    Ok(ObjectKey::new(s)?)
}

pub fn session_id(s: &str) -> NodeResult<SessionId> {
    if s.is_empty() {
        return Err(NodeError::InvalidArgument("session_id is required".into()));
    }
    // A malformed id cannot name an open session.
    SessionId::parse(s)
        .ok_or_else(|| NodeError::NotFound(format!("upload session {s:?} not found")))
}

pub fn chunk_id(bytes: &[u8], what: &str) -> NodeResult<ChunkId> {
    ChunkId::from_slice(bytes).ok_or_else(|| {
        NodeError::InvalidArgument(format!(
            "{what} must be a 32-byte BLAKE3 hash, got {} bytes",
            bytes.len()
        ))
    })
}

pub fn hash32(bytes: &[u8], what: &str) -> NodeResult<[u8; 32]> {
    chunk_id(bytes, what).map(|c| *c.as_bytes())
}

pub fn manifest(
    entries: &[pb::ChunkRef],
    max_chunk: u32,
) -> NodeResult<Option<Vec<ManifestEntry>>> {
    if entries.is_empty() {
        return Ok(None);
    }
    if entries.len() > MAX_UPLOAD_CHUNKS {
        return Err(NodeError::InvalidArgument(format!(
            "the manifest lists {} chunks, over the limit of {MAX_UPLOAD_CHUNKS} per upload: use larger chunks (up to {max_chunk} bytes) or split the file",
            entries.len()
        )));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let id = chunk_id(&e.id, &format!("manifest entry {i} id"))?;
            if e.len == 0 || e.len > max_chunk {
                return Err(NodeError::InvalidArgument(format!(
                    "manifest entry {i} has length {}, which must be between 1 and {max_chunk}",
                    e.len
                )));
            }
            Ok(ManifestEntry { id, len: e.len })
        })
        .collect::<NodeResult<Vec<_>>>()
        .map(Some)
}

pub fn object_info(view: &ObjectView) -> pb::ObjectInfo {
    version_info(
        view.bucket.as_str(),
        view.key.as_str(),
        &view.info,
        view.version_count,
        view.trash.map(|t| t.deleted_at_ms),
    )
}

pub fn version_info(
    bucket: &str,
    key: &str,
    v: &VersionInfo,
    version_count: u32,
    deleted_at_ms: Option<i64>,
) -> pb::ObjectInfo {
    pb::ObjectInfo {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        version: v.version,
        size: v.size,
        file_hash: v.file_hash.to_vec().into(),
        content_type: v.content_type.clone(),
        created_at_ms: v.created_at_ms,
        chunk_count: v.chunk_count,
        deleted_at_ms: deleted_at_ms.unwrap_or(0),
        version_count,
        tier: None,
    }
}
