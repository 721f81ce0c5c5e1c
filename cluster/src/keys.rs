//! Key layout of the single sled tree that holds the state machine. One tree lets every command
//! commit as one atomic batch. Each record kind has a one-byte prefix; names end with a NUL
//! (which validated names never contain) so that prefix scans and ordering follow the names.

use crate::ids::{ChunkId, SessionId, TenantId};
use crate::names::{BucketName, ObjectKey};

pub const META: u8 = b'm';
pub const TENANT: u8 = b'n';
pub const TOKEN: u8 = b't';
pub const BUCKET: u8 = b'b';
pub const OBJECT: u8 = b'o';
pub const VERSION: u8 = b'v';
pub const CHUNK_TENANT: u8 = b'c';
pub const CHUNK_GLOBAL: u8 = b'C';
pub const GC_QUEUE: u8 = b'g';
pub const SESSION: u8 = b's';
pub const SESSION_BY_KEY: u8 = b'S';
pub const SESSION_CHUNK: u8 = b'p';
pub const SESSION_MANIFEST: u8 = b'M';
pub const TRASH: u8 = b'x';
pub const POLICY: u8 = b'P';
pub const COLD_CHUNK: u8 = b'Z';
pub const COLD_REFS: u8 = b'z';
pub const ARCHIVE: u8 = b'A';
pub const ARCHIVE_DEAD: u8 = b'D';
pub const COLD_VERSION: u8 = b'K';
pub const RESTORE: u8 = b'R';
pub const ACCESS: u8 = b'a';
pub const JOIN_TOKEN: u8 = b'j';
pub const REVOKED_NODE: u8 = b'r';
pub const PLAN: u8 = b'l';
pub const COMPLETED: u8 = b'q';
pub const COMPLETED_AT: u8 = b'Q';

pub fn meta(name: &str) -> Vec<u8> {
    [&[META], name.as_bytes()].concat()
}

pub fn tenant(t: TenantId) -> Vec<u8> {
    [&[TENANT][..], &t.0.to_be_bytes()].concat()
}

/// How many upload sessions a tenant has open.
pub fn open_sessions(t: TenantId) -> Vec<u8> {
    meta(&format!("open-sessions/{}", t.0))
}

/// Marks a session opened for a key without a head: it holds one of its tenant's object slots
/// (`plans::Usage::reserved_objects`) until it ends.
pub fn session_new_key(s: &SessionId) -> Vec<u8> {
    [&session_new_key_prefix()[..], s.as_bytes()].concat()
}

/// Prefix of the session markers above.
pub fn session_new_key_prefix() -> Vec<u8> {
    meta("new-key/")
}

/// A tenant's usage counters (`plans::Usage`).
pub fn usage(t: TenantId) -> Vec<u8> {
    meta(&format!("usage/{}", t.0))
}

/// Prefix of the tenant-to-plan assignments.
pub fn tenant_plan_prefix() -> Vec<u8> {
    meta("tenant-plan/")
}

/// The plan a tenant is on (absent: the default plan).
pub fn tenant_plan(t: TenantId) -> Vec<u8> {
    [tenant_plan_prefix(), t.0.to_be_bytes().to_vec()].concat()
}

pub fn plan(name: &str) -> Vec<u8> {
    [&[PLAN][..], name.as_bytes()].concat()
}

pub fn join_token(hash: &[u8; 32]) -> Vec<u8> {
    [&[JOIN_TOKEN][..], hash].concat()
}

pub fn revoked_node(node: u64) -> Vec<u8> {
    [&[REVOKED_NODE][..], &node.to_be_bytes()].concat()
}

pub fn token(hash: &[u8; 32]) -> Vec<u8> {
    [&[TOKEN][..], hash].concat()
}

pub fn bucket(t: TenantId, b: &BucketName) -> Vec<u8> {
    [&[BUCKET][..], &t.0.to_be_bytes(), b.as_str().as_bytes()].concat()
}

/// Prefix of every object of a bucket: `o tenant bucket NUL`.
pub fn object_prefix(t: TenantId, b: &BucketName) -> Vec<u8> {
    [
        &[OBJECT][..],
        &t.0.to_be_bytes(),
        b.as_str().as_bytes(),
        &[0],
    ]
    .concat()
}

pub fn object(t: TenantId, b: &BucketName, k: &ObjectKey) -> Vec<u8> {
    [object_prefix(t, b).as_slice(), k.as_str().as_bytes()].concat()
}

/// Prefix of every version of one key: `v tenant bucket NUL key NUL`.
pub fn version_prefix(t: TenantId, b: &BucketName, k: &ObjectKey) -> Vec<u8> {
    [
        &[VERSION][..],
        &t.0.to_be_bytes(),
        b.as_str().as_bytes(),
        &[0],
        k.as_str().as_bytes(),
        &[0],
    ]
    .concat()
}

pub fn version(t: TenantId, b: &BucketName, k: &ObjectKey, v: u64) -> Vec<u8> {
    [version_prefix(t, b, k).as_slice(), &v.to_be_bytes()].concat()
}

pub fn chunk_tenant(c: &ChunkId, t: TenantId) -> Vec<u8> {
    [&[CHUNK_TENANT][..], c.as_bytes(), &t.0.to_be_bytes()].concat()
}

pub fn chunk_global(c: &ChunkId) -> Vec<u8> {
    [&[CHUNK_GLOBAL][..], c.as_bytes()].concat()
}

pub fn gc(c: &ChunkId) -> Vec<u8> {
    [&[GC_QUEUE][..], c.as_bytes()].concat()
}

pub fn session(s: &SessionId) -> Vec<u8> {
    [&[SESSION][..], s.as_bytes()].concat()
}

pub fn session_manifest(s: &SessionId) -> Vec<u8> {
    [&[SESSION_MANIFEST][..], s.as_bytes()].concat()
}

pub fn session_by_key_prefix(t: TenantId, b: &BucketName, k: &ObjectKey) -> Vec<u8> {
    [
        &[SESSION_BY_KEY][..],
        &t.0.to_be_bytes(),
        b.as_str().as_bytes(),
        &[0],
        k.as_str().as_bytes(),
        &[0],
    ]
    .concat()
}

pub fn session_by_key(t: TenantId, b: &BucketName, k: &ObjectKey, s: &SessionId) -> Vec<u8> {
    [session_by_key_prefix(t, b, k).as_slice(), s.as_bytes()].concat()
}

/// A completed upload session's outcome, kept for an hour so a retried CompleteUpload gets
/// the version it committed.
pub fn completed(s: &SessionId) -> Vec<u8> {
    [&[COMPLETED][..], s.as_bytes()].concat()
}

/// Expiry index of `completed`: `Q completed_at session`.
pub fn completed_at(at_ms: i64, s: &SessionId) -> Vec<u8> {
    [
        &[COMPLETED_AT][..],
        &(at_ms.max(0) as u64).to_be_bytes(),
        s.as_bytes(),
    ]
    .concat()
}

/// Every `completed_at` key of a completion before `at_ms` sorts below this.
pub fn completed_before(at_ms: i64) -> Vec<u8> {
    [&[COMPLETED_AT][..], &(at_ms.max(0) as u64).to_be_bytes()].concat()
}

/// The `completed` key an expiry index key points at.
pub fn completed_of_index(index: &[u8]) -> Option<Vec<u8>> {
    let session = index.get(9..).filter(|s| s.len() == 16)?;
    Some([&[COMPLETED][..], session].concat())
}

pub fn session_chunk_prefix(s: &SessionId) -> Vec<u8> {
    [&[SESSION_CHUNK][..], s.as_bytes()].concat()
}

pub fn session_chunk(s: &SessionId, offset: u64) -> Vec<u8> {
    [session_chunk_prefix(s).as_slice(), &offset.to_be_bytes()].concat()
}

/// Trash index ordered by purge time: `x purge_at tenant bucket NUL key`.
pub fn trash(purge_at_ms: i64, t: TenantId, b: &BucketName, k: &ObjectKey) -> Vec<u8> {
    [
        &[TRASH][..],
        &(purge_at_ms.max(0) as u64).to_be_bytes(),
        &t.0.to_be_bytes(),
        b.as_str().as_bytes(),
        &[0],
        k.as_str().as_bytes(),
    ]
    .concat()
}

pub fn policy(name: &str) -> Vec<u8> {
    [&[POLICY][..], name.as_bytes()].concat()
}

pub fn cold_chunk(c: &ChunkId) -> Vec<u8> {
    [&[COLD_CHUNK][..], c.as_bytes()].concat()
}

pub fn cold_refs(c: &ChunkId) -> Vec<u8> {
    [&[COLD_REFS][..], c.as_bytes()].concat()
}

pub fn archive(backend: &str, object: &str) -> Vec<u8> {
    [&[ARCHIVE][..], backend.as_bytes(), &[0], object.as_bytes()].concat()
}

pub fn archive_dead(backend: &str, object: &str) -> Vec<u8> {
    [
        &[ARCHIVE_DEAD][..],
        backend.as_bytes(),
        &[0],
        object.as_bytes(),
    ]
    .concat()
}

/// `(backend, object)` of an `archive` or `archive_dead` key.
pub fn parse_archive(key: &[u8]) -> Option<(String, String)> {
    let rest = key.get(1..)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let backend = std::str::from_utf8(&rest[..nul]).ok()?;
    let object = std::str::from_utf8(&rest[nul + 1..]).ok()?;
    Some((backend.to_owned(), object.to_owned()))
}

/// A cold-version mark: the version key under another prefix.
pub fn cold_version(t: TenantId, b: &BucketName, k: &ObjectKey, v: u64) -> Vec<u8> {
    let mut key = version(t, b, k, v);
    key[0] = COLD_VERSION;
    key
}

/// A restore record: the version key under another prefix.
pub fn restore(t: TenantId, b: &BucketName, k: &ObjectKey, v: u64) -> Vec<u8> {
    let mut key = version(t, b, k, v);
    key[0] = RESTORE;
    key
}

/// Decodes a version-shaped key (`version`, `cold_version`, `restore`).
pub fn parse_version(key: &[u8]) -> Option<(TenantId, BucketName, ObjectKey, u64)> {
    let tenant = TenantId(be_u64(key, 1)?);
    let rest = key.get(9..key.len().checked_sub(8)?)?;
    let version = be_u64(key, key.len() - 8)?;
    let (b, k) = rest
        .strip_suffix(&[0])?
        .split_at(rest.iter().position(|c| *c == 0)?);
    let bucket = BucketName::new(std::str::from_utf8(b).ok()?).ok()?;
    let key = ObjectKey::new(std::str::from_utf8(k.get(1..)?).ok()?).ok()?;
    Some((tenant, bucket, key, version))
}

/// When a key was last read (coarse): `a tenant bucket NUL key`.
pub fn access(t: TenantId, b: &BucketName, k: &ObjectKey) -> Vec<u8> {
    let mut key = object(t, b, k);
    key[0] = ACCESS;
    key
}

/// Reads the big-endian u64 at `at` of a key.
pub fn be_u64(key: &[u8], at: usize) -> Option<u64> {
    key.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
}
