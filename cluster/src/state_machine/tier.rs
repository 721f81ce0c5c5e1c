//! Applying the cold-tier commands. Invariants kept here:
//! - `cold_refs(c) <= refs(c)`: cold references are references from cold versions;
//! - a chunk has a cold record exactly while `cold_refs(c) > 0`;
//! - a chunk is `released` (its hot files may be deleted) only while `cold_refs(c) == refs(c)`,
//!   and a released chunk's GC-queue entry is what tells the nodes to delete their files;
//! - an archive's `live_chunks` counts the cold records pointing into it; at 0 it is queued
//!   for deletion from its backend.

use std::collections::HashMap;

use super::{ApplyError, Response, Txn};
use crate::error::{Rejection, StoreError};
use crate::ids::{ChunkId, TenantId};
use crate::keys;
use crate::names::{BucketName, ObjectKey};
use crate::records::VersionRecord;
use crate::tier::{
    ArchiveRecord, ColdChunk, ColdLocation, ColdVersion, RestoreRecord, RestoreTier, StorageClass,
};

/// A version's address.
pub(super) type At<'a> = (TenantId, &'a BucketName, &'a ObjectKey, u64);

fn load_version(tx: &Txn, (t, b, k, v): At) -> Result<VersionRecord, ApplyError> {
    tx.get::<VersionRecord>("version", &keys::version(t, b, k, v))?
        .ok_or_else(|| Rejection::VersionNotFound(v).into())
}

fn tier_bytes_key(backend: &str) -> Vec<u8> {
    keys::meta(&format!("tier-bytes/{backend}"))
}

fn adjust_archive(
    tx: &mut Txn,
    loc: &ColdLocation,
    delta: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    let key = keys::archive(&loc.backend, &loc.object);
    let mut rec = tx
        .get::<ArchiveRecord>("archive", &key)?
        .unwrap_or(ArchiveRecord {
            backend: loc.backend.clone(),
            object: loc.object.clone(),
            class: loc.class,
            bytes: 0,
            live_chunks: 0,
            created_at_ms: now_ms,
        });
    rec.live_chunks = (i64::from(rec.live_chunks) + delta).max(0) as u32;
    if rec.live_chunks == 0 {
        tx.put_raw(keys::archive_dead(&loc.backend, &loc.object), Vec::new());
    } else {
        tx.del(keys::archive_dead(&loc.backend, &loc.object));
    }
    tx.put(key, &rec)?;
    let bytes = tier_bytes_key(&loc.backend);
    let now = tx.get_u64(&bytes)? as i64 + delta * i64::from(loc.len);
    tx.put_u64(bytes, now.max(0) as u64);
    Ok(())
}

pub(super) fn is_released(tx: &Txn, id: &ChunkId) -> Result<bool, StoreError> {
    Ok(tx
        .get::<ColdChunk>("cold chunk", &keys::cold_chunk(id))?
        .is_some_and(|c| c.released))
}

/// Releases the chunk's hot copies if every reference to it is cold.
pub(super) fn maybe_release(tx: &mut Txn, id: &ChunkId) -> Result<bool, StoreError> {
    let key = keys::cold_chunk(id);
    let Some(mut cold) = tx.get::<ColdChunk>("cold chunk", &key)? else {
        return Ok(false);
    };
    let refs = tx.get_u64(&keys::chunk_global(id))?;
    if cold.released || refs == 0 || tx.get_u64(&keys::cold_refs(id))? < refs {
        return Ok(false);
    }
    cold.released = true;
    tx.put(key, &cold)?;
    tx.put_raw(keys::gc(id), Vec::new());
    Ok(true)
}

/// The chunk's bytes are on its homes again: its hot copies must stay.
pub(super) fn unrelease(tx: &mut Txn, id: &ChunkId) -> Result<(), StoreError> {
    let key = keys::cold_chunk(id);
    if let Some(mut cold) = tx.get::<ColdChunk>("cold chunk", &key)?
        && cold.released
    {
        cold.released = false;
        tx.put(key, &cold)?;
        if tx.get_u64(&keys::chunk_global(id))? > 0 {
            tx.del(keys::gc(id));
        }
    }
    Ok(())
}

/// Drops one cold reference; the last one drops the cold record (its archive loses a chunk).
fn cold_unref(tx: &mut Txn, id: &ChunkId, now_ms: i64) -> Result<(), StoreError> {
    let refs_key = keys::cold_refs(id);
    let left = tx.get_u64(&refs_key)?.saturating_sub(1);
    if left > 0 {
        tx.put_u64(refs_key, left);
        return Ok(());
    }
    tx.del(refs_key);
    let key = keys::cold_chunk(id);
    if let Some(cold) = tx.get::<ColdChunk>("cold chunk", &key)? {
        tx.del(key);
        adjust_archive(tx, &cold.loc, -1, now_ms)?;
    }
    Ok(())
}

pub(super) fn transition_version(
    tx: &mut Txn,
    at: At,
    backend: &str,
    class: StorageClass,
    chunks: &[(ChunkId, ColdLocation)],
    archives: &[ArchiveRecord],
    now_ms: i64,
) -> Result<Response, ApplyError> {
    let (t, b, k, v) = at;
    let rec = load_version(tx, at)?;
    let mark = keys::cold_version(t, b, k, v);
    if tx.get_raw(&mark)?.is_some() {
        return Err(Rejection::AlreadyCold.into());
    }
    let given: HashMap<&ChunkId, &ColdLocation> = chunks.iter().map(|(c, l)| (c, l)).collect();
    for c in &rec.chunks {
        if !given.contains_key(&c.id) && tx.get_raw(&keys::cold_chunk(&c.id))?.is_none() {
            return Err(Rejection::ColdCopyMissing(c.id).into());
        }
    }
    for a in archives {
        let key = keys::archive(&a.backend, &a.object);
        if tx.get_raw(&key)?.is_none() {
            tx.put(
                key,
                &ArchiveRecord {
                    live_chunks: 0,
                    ..a.clone()
                },
            )?;
        }
    }
    for c in &rec.chunks {
        let key = keys::cold_chunk(&c.id);
        if tx.get_raw(&key)?.is_none()
            && let Some(loc) = given.get(&c.id)
        {
            tx.put(
                key,
                &ColdChunk {
                    loc: (*loc).clone(),
                    released: false,
                },
            )?;
            adjust_archive(tx, loc, 1, now_ms)?;
        }
        let refs_key = keys::cold_refs(&c.id);
        let n = tx.get_u64(&refs_key)?;
        tx.put_u64(refs_key, n + 1);
    }
    tx.put(
        mark,
        &ColdVersion {
            backend: backend.to_owned(),
            class,
            since_ms: now_ms,
        },
    )?;
    let mut released = 0;
    for c in &rec.chunks {
        if maybe_release(tx, &c.id)? {
            released += 1;
        }
    }
    // An archive none of whose chunks were needed (another transition stored them first).
    for a in archives {
        let key = keys::archive(&a.backend, &a.object);
        if tx
            .get::<ArchiveRecord>("archive", &key)?
            .is_some_and(|r| r.live_chunks == 0)
        {
            tx.put_raw(keys::archive_dead(&a.backend, &a.object), Vec::new());
        }
    }
    Ok(Response::Transitioned { released })
}

pub(super) fn start_restore(
    tx: &mut Txn,
    at: At,
    tier: RestoreTier,
    days: u32,
    now_ms: i64,
) -> Result<Response, ApplyError> {
    let (t, b, k, v) = at;
    load_version(tx, at)?;
    if tx.get_raw(&keys::cold_version(t, b, k, v))?.is_none() {
        return Err(Rejection::NotCold.into());
    }
    let key = keys::restore(t, b, k, v);
    if let Some(r) = tx.get::<RestoreRecord>("restore", &key)? {
        return Ok(Response::RestoreStarted {
            since_ms: r.since_ms,
            already: true,
        });
    }
    tx.put(
        key,
        &RestoreRecord {
            tier,
            days,
            since_ms: now_ms,
            rehydrating: false,
        },
    )?;
    Ok(Response::RestoreStarted {
        since_ms: now_ms,
        already: false,
    })
}

/// The version's archives are readable: its chunks are about to be written back to hot
/// storage, so from now on their hot copies are kept (none is collected while they arrive).
pub(super) fn rehydrate(tx: &mut Txn, at: At) -> Result<Response, ApplyError> {
    let (t, b, k, v) = at;
    let rec = load_version(tx, at)?;
    let key = keys::restore(t, b, k, v);
    let Some(mut restore) = tx.get::<RestoreRecord>("restore", &key)? else {
        return Err(Rejection::NotCold.into());
    };
    for c in &rec.chunks {
        unrelease(tx, &c.id)?;
    }
    restore.rehydrating = true;
    tx.put(key, &restore)?;
    Ok(Response::Done)
}

pub(super) fn finish_restore(tx: &mut Txn, at: At, now_ms: i64) -> Result<Response, ApplyError> {
    let (t, b, k, v) = at;
    let rec = load_version(tx, at)?;
    if tx.get_raw(&keys::cold_version(t, b, k, v))?.is_none() {
        return Err(Rejection::NotCold.into());
    }
    for c in &rec.chunks {
        unrelease(tx, &c.id)?;
    }
    forget_version(tx, at, &rec)?;
    // Just read back: the policy's idle clock starts again.
    if tx.get_raw(&keys::object(t, b, k))?.is_some() {
        tx.put_u64(keys::access(t, b, k), now_ms.max(0) as u64);
    }
    Ok(Response::Done)
}

/// Drops a version's cold mark, cold references and restore record (if it has them).
pub(super) fn forget_version(tx: &mut Txn, at: At, rec: &VersionRecord) -> Result<(), StoreError> {
    let (t, b, k, v) = at;
    let mark = keys::cold_version(t, b, k, v);
    if tx.get_raw(&mark)?.is_none() {
        return Ok(());
    }
    for c in &rec.chunks {
        cold_unref(tx, &c.id, rec.info.created_at_ms)?;
    }
    tx.del(mark);
    tx.del(keys::restore(t, b, k, v));
    Ok(())
}
