//! The sled-backed state machine. `apply` is deterministic and does no I/O besides sled: the
//! same commands in the same order give the same state on every replica. Applies are
//! serialized by a lock (one writer); each command's writes land as one atomic sled batch.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Serialize, de::DeserializeOwned};

use crate::command::{Command, Response};
use crate::error::{ApplyError, Gap, Rejection, StoreError};
use crate::ids::{ChunkId, SessionId, TenantId, TokenHash};
use crate::keys;
use crate::layout::LayoutState;
use crate::names::{BucketName, ObjectKey};
use crate::records::*;
use crate::tier::{ArchiveRecord, ColdChunk};

mod plans;
mod tier;

pub struct StateMachine {
    pub(crate) db: sled::Db,
    pub(crate) tree: sled::Tree,
    pub(crate) write: Mutex<()>,
}

impl StateMachine {
    pub fn open(path: &Path) -> Result<StateMachine, StoreError> {
        StateMachine::with_db(open_db(path)?)
    }

    /// The state machine in an open sled database (which the Raft log store may share).
    pub fn with_db(db: sled::Db) -> Result<StateMachine, StoreError> {
        let tree = db.open_tree("state")?;
        Ok(StateMachine {
            db,
            tree,
            write: Mutex::new(()),
        })
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Makes every applied command durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Number of commands applied so far (the Raft issue replaces this with the log index).
    pub fn applied(&self) -> Result<u64, StoreError> {
        Ok(self
            .tree
            .get(keys::meta("applied"))?
            .and_then(|v| keys::be_u64(&v, 0))
            .unwrap_or(0))
    }

    /// Applies a command outside Raft (tests, tools): counts it in the `applied` counter.
    pub fn apply(&self, cmd: &Command) -> Result<Response, ApplyError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let applied = self.applied()? + 1;
        let meta = [(keys::meta("applied"), applied.to_be_bytes().to_vec())];
        self.apply_locked(Some(cmd), &meta)
    }

    /// Applies `cmd` (or nothing, for Raft's blank and membership entries) and writes `meta`
    /// (e.g. the Raft log id now applied) in the same atomic batch, also when the command is
    /// refused. The caller holds the write lock.
    pub(crate) fn apply_locked(
        &self,
        cmd: Option<&Command>,
        meta: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Response, ApplyError> {
        let mut tx = Txn::new(&self.tree);
        for (k, v) in meta {
            tx.put_raw(k.clone(), v.clone());
        }
        let out = match cmd {
            None => Ok(Response::Done),
            Some(cmd) => apply_one(&mut tx, cmd),
        };
        match out {
            Ok(resp) => {
                tx.commit()?;
                Ok(resp)
            }
            Err(ApplyError::Rejected(r)) => {
                // A refused command changes nothing but still counts as applied.
                let mut only_meta = Txn::new(&self.tree);
                for (k, v) in meta {
                    only_meta.put_raw(k.clone(), v.clone());
                }
                only_meta.commit()?;
                Err(ApplyError::Rejected(r))
            }
            Err(e) => Err(e),
        }
    }
}

/// Applies one command inside `tx`. A batch applies its commands in order, each seeing the
/// ones before it; a refused command in a batch is rolled back alone and its refusal becomes
/// its result, so the batch as a whole commits atomically.
fn apply_one(tx: &mut Txn, cmd: &Command) -> Result<Response, ApplyError> {
    apply_nested(tx, cmd, 0)
}

/// How deep batches may nest: a caller's batch inside the batch the proposer groups concurrent
/// proposals into. Deeper nesting is refused, which keeps apply's recursion bounded whatever a
/// log entry holds.
const MAX_BATCH_DEPTH: usize = 2;

fn apply_nested(tx: &mut Txn, cmd: &Command, depth: usize) -> Result<Response, ApplyError> {
    {
        match cmd {
            Command::Batch(cmds) => {
                if depth >= MAX_BATCH_DEPTH {
                    return Err(Rejection::BatchTooDeep {
                        limit: MAX_BATCH_DEPTH,
                    }
                    .into());
                }
                let mut results = Vec::with_capacity(cmds.len());
                for c in cmds {
                    let savepoint = tx.pending.clone();
                    match apply_nested(tx, c, depth + 1) {
                        Ok(r) => results.push(Ok(r)),
                        Err(ApplyError::Rejected(r)) => {
                            tx.pending = savepoint;
                            results.push(Err(r));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(Response::Batch(results))
            }
            Command::CreateToken {
                tenant_name,
                token,
                now_ms,
                scope,
                bucket,
                expires_ms,
            } => {
                let name_key = keys::meta(&format!("tenant-name/{tenant_name}"));
                let Some(id) = tx.get_raw(&name_key)?.and_then(|v| keys::be_u64(&v, 0)) else {
                    return Err(Rejection::TenantNotFound(tenant_name.clone()).into());
                };
                let rec = TokenRecord {
                    principal: Principal::Tenant(TenantId(id)),
                    created_at_ms: *now_ms,
                    scope: *scope,
                    bucket: bucket.clone(),
                    expires_ms: *expires_ms,
                };
                tx.put(keys::token(&token.0), &rec)?;
                Ok(Response::TokenCreated(TenantId(id)))
            }
            Command::RevokeToken { token } => {
                if tx.get_raw(&keys::token(&token.0))?.is_none() {
                    return Err(Rejection::TokenNotFound.into());
                }
                tx.del(keys::token(&token.0));
                Ok(Response::Done)
            }
            Command::CreateBucket {
                tenant,
                bucket,
                now_ms,
            } => {
                let key = keys::bucket(*tenant, bucket);
                if tx.get_raw(&key)?.is_some() {
                    return Err(Rejection::BucketExists.into());
                }
                tx.put(
                    key,
                    &BucketRecord {
                        created_at_ms: *now_ms,
                    },
                )?;
                Ok(Response::Done)
            }
            Command::DeleteBucket { tenant, bucket } => {
                let key = keys::bucket(*tenant, bucket);
                if tx.get_raw(&key)?.is_none() {
                    return Err(Rejection::BucketNotFound.into());
                }
                let keys_in = tx
                    .tree
                    .scan_prefix(keys::object_prefix(*tenant, bucket))
                    .count() as u64;
                if keys_in > 0 {
                    return Err(Rejection::BucketNotEmpty(keys_in).into());
                }
                tx.del(key);
                Ok(Response::Done)
            }
            Command::CreateTenant {
                name,
                token,
                now_ms,
            } => create_tenant(tx, name, token, *now_ms),
            Command::CreateAdminToken { token, now_ms } => {
                let rec = TokenRecord::full(Principal::Admin, *now_ms);
                tx.put(keys::token(&token.0), &rec)?;
                Ok(Response::Done)
            }
            Command::OpenSession {
                session,
                tenant,
                bucket,
                key,
                size,
                manifest,
                content_type,
                now_ms,
            } => open_session(
                tx,
                session,
                *tenant,
                bucket,
                key,
                *size,
                manifest.as_deref(),
                content_type,
                *now_ms,
            ),
            Command::AddChunk {
                session,
                tenant,
                offset,
                id,
                len,
                cv,
                now_ms,
            } => add_chunk(tx, session, *tenant, *offset, id, *len, *cv, *now_ms),
            Command::CompleteSession {
                session,
                tenant,
                file_hash,
                now_ms,
            } => complete_session(tx, session, *tenant, file_hash, *now_ms),
            Command::AbortSession {
                session,
                tenant,
                idle_before_ms,
            } => abort_session(tx, session, *tenant, *idle_before_ms),
            Command::TrashObject {
                tenant,
                bucket,
                key,
                now_ms,
                purge_at_ms,
            } => trash_object(tx, *tenant, bucket, key, *now_ms, *purge_at_ms),
            Command::UntrashObject {
                tenant,
                bucket,
                key,
            } => untrash_object(tx, *tenant, bucket, key),
            Command::PurgeObject {
                tenant,
                bucket,
                key,
                now_ms,
            } => purge_object(tx, *tenant, bucket, key, *now_ms),
            Command::ChunkCollected { id } => {
                let released = tx
                    .get::<ColdChunk>("cold chunk", &keys::cold_chunk(id))?
                    .is_some_and(|c| c.released);
                if released || tx.get_u64(&keys::chunk_global(id))? == 0 {
                    tx.del(keys::gc(id));
                }
                Ok(Response::Done)
            }
            Command::SetPlan(p) => plans::set_plan(tx, p),
            Command::DeletePlan { name } => plans::delete_plan(tx, name),
            Command::SetTenantPlan { tenant_name, plan } => {
                plans::set_tenant_plan(tx, tenant_name, plan)
            }
            Command::SetTierPolicy(policy) => {
                tx.put(keys::policy(&policy.name), policy)?;
                Ok(Response::Done)
            }
            Command::DeleteTierPolicy { name } => {
                if tx.get_raw(&keys::policy(name))?.is_none() {
                    return Err(Rejection::PolicyNotFound(name.clone()).into());
                }
                tx.del(keys::policy(name));
                Ok(Response::Done)
            }
            Command::TransitionVersion {
                tenant,
                bucket,
                key,
                version,
                backend,
                class,
                chunks,
                archives,
                now_ms,
            } => tier::transition_version(
                tx,
                (*tenant, bucket, key, *version),
                backend,
                *class,
                chunks,
                archives,
                *now_ms,
            ),
            Command::StartRestore {
                tenant,
                bucket,
                key,
                version,
                tier,
                days,
                now_ms,
            } => tier::start_restore(tx, (*tenant, bucket, key, *version), *tier, *days, *now_ms),
            Command::Rehydrate {
                tenant,
                bucket,
                key,
                version,
            } => tier::rehydrate(tx, (*tenant, bucket, key, *version)),
            Command::FinishRestore {
                tenant,
                bucket,
                key,
                version,
                now_ms,
            } => tier::finish_restore(tx, (*tenant, bucket, key, *version), *now_ms),
            Command::ArchiveDeleted { backend, object } => {
                tx.del(keys::archive_dead(backend, object));
                let key = keys::archive(backend, object);
                if tx
                    .get::<ArchiveRecord>("archive", &key)?
                    .is_some_and(|a| a.live_chunks == 0)
                {
                    tx.del(key);
                }
                Ok(Response::Done)
            }
            Command::RecordAccess { keys: read, now_ms } => {
                for (t, b, k) in read {
                    if tx.get_raw(&keys::object(*t, b, k))?.is_some() {
                        tx.put_u64(keys::access(*t, b, k), (*now_ms).max(0) as u64);
                    }
                }
                Ok(Response::Done)
            }
            Command::StageLayout(change) => update_layout(tx, |l| l.stage(change)),
            Command::ApplyLayout { version } => update_layout(tx, |l| l.apply(*version)),
            Command::RevertLayout => update_layout(tx, |l| l.revert()),
            Command::SetNodeDown {
                node,
                down,
                layout_version,
            } => update_layout(tx, |l| l.set_down(*node, *down, *layout_version)),
            Command::SetClusterCa { cert_pem } => {
                let key = keys::meta(CLUSTER_CA);
                if tx.get_raw(&key)?.is_none() {
                    tx.put(key, cert_pem)?;
                }
                Ok(Response::Done)
            }
            Command::SetSigner { node } => {
                tx.put_u64(keys::meta(CA_SIGNER), *node);
                Ok(Response::Done)
            }
            Command::CreateJoinToken {
                token,
                expires_ms,
                uses,
                now_ms,
            } => {
                let rec = JoinTokenRecord {
                    created_ms: *now_ms,
                    expires_ms: *expires_ms,
                    uses_left: *uses,
                    used_by: Vec::new(),
                };
                tx.put(keys::join_token(&token.0), &rec)?;
                Ok(Response::Done)
            }
            Command::UseJoinToken {
                token,
                node,
                now_ms,
            } => {
                if tx.get_raw(&keys::revoked_node(*node))?.is_some() {
                    return Err(Rejection::NodeRevoked(*node).into());
                }
                let key = keys::join_token(&token.0);
                let Some(mut rec) = tx.get::<JoinTokenRecord>("join token", &key)? else {
                    return Err(Rejection::JoinTokenUnknown.into());
                };
                if *now_ms >= rec.expires_ms {
                    return Err(Rejection::JoinTokenExpired.into());
                }
                if rec.uses_left == 0 {
                    return Err(Rejection::JoinTokenUsed.into());
                }
                rec.uses_left -= 1;
                rec.used_by.push(*node);
                tx.put(key, &rec)?;
                Ok(Response::Done)
            }
            Command::RevokeNode { node, now_ms } => {
                tx.put_u64(keys::revoked_node(*node), (*now_ms).max(0) as u64);
                Ok(Response::Done)
            }
        }
    }
}

pub(crate) const LAYOUT: &str = "layout";
pub(crate) const CLUSTER_CA: &str = "cluster-ca";
pub(crate) const CA_SIGNER: &str = "ca-signer";

fn update_layout(
    tx: &mut Txn,
    change: impl FnOnce(&mut LayoutState) -> Result<(), Rejection>,
) -> Result<Response, ApplyError> {
    let key = keys::meta(LAYOUT);
    let mut layout: LayoutState = tx.get("layout", &key)?.unwrap_or_default();
    change(&mut layout)?;
    tx.put(key, &layout)?;
    Ok(Response::Done)
}

/// The metadata database handle (sled), shared by the state machine and the Raft log.
pub type MetaDb = sled::Db;

/// Opens the node's metadata database.
pub fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    Ok(sled::Config::new()
        .path(path)
        .cache_capacity(64 * 1024 * 1024)
        .flush_every_ms(Some(500))
        .open()?)
}

/// A raw key and value of the state tree.
type KeyValue = (Vec<u8>, Vec<u8>);

/// Reads through pending writes; commits them as one batch.
struct Txn<'a> {
    tree: &'a sled::Tree,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Txn {
            tree,
            pending: BTreeMap::new(),
        }
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn get<T: DeserializeOwned>(
        &self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get_raw(key)?.map(|v| decode(what, &v)).transpose()
    }

    fn get_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self
            .get_raw(key)?
            .and_then(|v| keys::be_u64(&v, 0))
            .unwrap_or(0))
    }

    fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        self.pending.insert(key, Some(encode(value)?));
        Ok(())
    }

    fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    fn put_u64(&mut self, key: Vec<u8>, value: u64) {
        self.put_raw(key, value.to_be_bytes().to_vec());
    }

    fn del(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Keys under `prefix`, as committed plus pending, in order.
    fn scan_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for kv in self.tree.scan_prefix(prefix) {
            out.insert(kv?.0.to_vec(), true);
        }
        for (k, v) in self.pending.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            out.insert(k.clone(), v.is_some());
        }
        Ok(out
            .into_iter()
            .filter(|(_, live)| *live)
            .map(|(k, _)| k)
            .collect())
    }

    /// Up to `limit` live keys under `prefix` that sort below `upper`, in order.
    fn keys_below(
        &self,
        prefix: &[u8],
        upper: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.range(prefix.to_vec()..upper.to_vec()) {
            let (k, _) = kv?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if !matches!(self.pending.get(k.as_ref()), Some(None)) {
                out.push(k.to_vec());
            }
        }
        Ok(out)
    }

    /// The last live key under `prefix` strictly before `key`, with its value.
    fn prev_before(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let mut from_tree = None;
        for kv in self.tree.range(prefix.to_vec()..key.to_vec()).rev() {
            let (k, v) = kv?;
            match self.pending.get(k.as_ref()) {
                Some(None) => continue, // deleted in this transaction
                _ => {
                    from_tree = Some((k.to_vec(), v.to_vec()));
                    break;
                }
            }
        }
        let from_pending = self
            .pending
            .range(prefix.to_vec()..key.to_vec())
            .rev()
            .find(|(_, v)| v.is_some())
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()));
        let best = match (from_tree, from_pending) {
            (Some(t), Some(p)) => Some(if p.0 >= t.0 {
                p
            } else {
                (t.0.clone(), self.get_raw(&t.0)?.unwrap_or(t.1))
            }),
            (t, p) => p.or(t),
        };
        Ok(best.filter(|(k, _)| k.starts_with(prefix)))
    }

    /// The first live key under `prefix` at or after `key`.
    fn next_from(&self, prefix: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut from_tree = None;
        for kv in self.tree.range(key.to_vec()..) {
            let (k, _) = kv?;
            if !k.starts_with(prefix) {
                break;
            }
            if !matches!(self.pending.get(k.as_ref()), Some(None)) {
                from_tree = Some(k.to_vec());
                break;
            }
        }
        let from_pending = self
            .pending
            .range(key.to_vec()..)
            .find(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone());
        let best = match (from_tree, from_pending) {
            (Some(t), Some(p)) => Some(t.min(p)),
            (t, p) => t.or(p),
        };
        Ok(best.filter(|k| k.starts_with(prefix)))
    }

    fn commit(self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in self.pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn next_id(&mut self, counter: &str) -> Result<u64, StoreError> {
        let key = keys::meta(counter);
        let next = self.get_u64(&key)? + 1;
        self.put_u64(key, next);
        Ok(next)
    }
}

fn create_tenant(
    tx: &mut Txn,
    name: &str,
    token: &TokenHash,
    now_ms: i64,
) -> Result<Response, ApplyError> {
    let name_key = keys::meta(&format!("tenant-name/{name}"));
    if tx.get_raw(&name_key)?.is_some() {
        return Err(Rejection::TenantExists(name.to_owned()).into());
    }
    let id = TenantId(tx.next_id("next-tenant")?);
    tx.put_u64(name_key, id.0);
    tx.put(
        keys::tenant(id),
        &TenantRecord {
            id,
            name: name.to_owned(),
            created_at_ms: now_ms,
        },
    )?;
    tx.put(
        keys::token(&token.0),
        &TokenRecord::full(Principal::Tenant(id), now_ms),
    )?;
    Ok(Response::TenantCreated(id))
}

fn manifest_digest(manifest: Option<&[ManifestEntry]>) -> Result<[u8; 32], StoreError> {
    Ok(*blake3::hash(&encode(&manifest)?).as_bytes())
}

#[allow(clippy::too_many_arguments)]
fn open_session(
    tx: &mut Txn,
    session: &SessionId,
    tenant: TenantId,
    bucket: &BucketName,
    key: &ObjectKey,
    size: u64,
    manifest: Option<&[ManifestEntry]>,
    content_type: &str,
    now_ms: i64,
) -> Result<Response, ApplyError> {
    if let Some(m) = manifest {
        let covered = m.iter().map(|e| e.len as u64).sum::<u64>();
        if covered != size {
            return Err(Rejection::ManifestSize { covered, size }.into());
        }
    }
    let digest = manifest_digest(manifest)?;

    // Resume: an open session of this tenant for the same key, size and manifest.
    for index_key in tx.scan_keys(&keys::session_by_key_prefix(tenant, bucket, key))? {
        let Some(id) = index_key
            .get(index_key.len() - 16..)
            .and_then(|s| <[u8; 16]>::try_from(s).ok())
        else {
            continue;
        };
        let old = SessionId::from_bytes(id);
        if let Some(mut rec) = tx.get::<SessionRecord>("session", &keys::session(&old))?
            && rec.size == size
            && rec.manifest_digest == digest
            && rec.content_type == content_type
        {
            rec.last_activity_ms = now_ms;
            let bytes_present = rec.bytes_present;
            tx.put(keys::session(&old), &rec)?;
            let existing = match manifest {
                Some(m) => present_indexes(tx, &old, m)?,
                None => Vec::new(),
            };
            return Ok(Response::SessionOpened {
                session: old,
                resumed: true,
                existing,
                bytes_present,
            });
        }
    }

    let new_key = tx.get_raw(&keys::object(tenant, bucket, key))?.is_none();
    plans::admit_session(tx, tenant, session, size, new_key)?;
    let mut rec = SessionRecord {
        id: *session,
        tenant,
        bucket: bucket.clone(),
        key: key.clone(),
        size,
        content_type: content_type.to_owned(),
        has_manifest: manifest.is_some(),
        manifest_digest: digest,
        created_at_ms: now_ms,
        last_activity_ms: now_ms,
        bytes_present: 0,
    };
    let mut existing = Vec::new();
    if let Some(m) = manifest {
        tx.put(keys::session_manifest(session), &m.to_vec())?;
        // Dedup: chunks the tenant already holds join the session at once (and are pinned by
        // the session's reference until it completes or ends).
        let mut offset = 0u64;
        for (i, e) in m.iter().enumerate() {
            if let Some(meta) = tx.get::<ChunkMeta>("chunk", &keys::chunk_tenant(&e.id, tenant))?
                && meta.refs > 0
                && meta.len == e.len
                && !tier::is_released(tx, &e.id)?
            {
                let cv = meta
                    .cvs
                    .iter()
                    .find(|(o, _)| *o == offset)
                    .map(|(_, cv)| *cv);
                tx.put(
                    keys::session_chunk(session, offset),
                    &SessionChunk {
                        id: e.id,
                        len: e.len,
                        cv,
                    },
                )?;
                add_ref(tx, &e.id, tenant, e.len, None)?;
                rec.bytes_present += e.len as u64;
                existing.push(i as u32);
            }
            offset += e.len as u64;
        }
    }
    let bytes_present = rec.bytes_present;
    tx.put(keys::session(session), &rec)?;
    tx.put_raw(
        keys::session_by_key(tenant, bucket, key, session),
        Vec::new(),
    );
    Ok(Response::SessionOpened {
        session: *session,
        resumed: false,
        existing,
        bytes_present,
    })
}

/// Manifest indexes whose chunk is present in the session.
fn present_indexes(
    tx: &Txn,
    session: &SessionId,
    m: &[ManifestEntry],
) -> Result<Vec<u32>, StoreError> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for (i, e) in m.iter().enumerate() {
        if let Some(c) =
            tx.get::<SessionChunk>("session chunk", &keys::session_chunk(session, offset))?
            && c.id == e.id
        {
            out.push(i as u32);
        }
        offset += e.len as u64;
    }
    Ok(out)
}

fn add_ref(
    tx: &mut Txn,
    id: &ChunkId,
    tenant: TenantId,
    len: u32,
    cv_at: Option<(u64, [u8; 32])>,
) -> Result<bool, StoreError> {
    let key = keys::chunk_tenant(id, tenant);
    let mut meta = tx.get::<ChunkMeta>("chunk", &key)?.unwrap_or(ChunkMeta {
        refs: 0,
        len,
        cvs: Vec::new(),
    });
    let new_to_tenant = meta.refs == 0;
    meta.refs += 1;
    if let Some((offset, cv)) = cv_at
        && !meta.cvs.iter().any(|(o, _)| *o == offset)
        && meta.cvs.len() < MAX_REMEMBERED_CVS
    {
        meta.cvs.push((offset, cv));
    }
    tx.put(key, &meta)?;
    let global = keys::chunk_global(id);
    let refs = tx.get_u64(&global)?;
    if refs == 0 {
        tx.del(keys::gc(id));
    }
    tx.put_u64(global, refs + 1);
    // Only AddChunk reaches here for a released chunk (dedup skips them): its bytes were
    // just written to its homes, so it is hot again.
    tier::unrelease(tx, id)?;
    Ok(new_to_tenant)
}

fn drop_ref(tx: &mut Txn, id: &ChunkId, tenant: TenantId) -> Result<(), StoreError> {
    let key = keys::chunk_tenant(id, tenant);
    if let Some(mut meta) = tx.get::<ChunkMeta>("chunk", &key)? {
        meta.refs = meta.refs.saturating_sub(1);
        if meta.refs == 0 {
            tx.del(key);
        } else {
            tx.put(key, &meta)?;
        }
    }
    let global = keys::chunk_global(id);
    let refs = tx.get_u64(&global)?.saturating_sub(1);
    if refs == 0 {
        tx.del(global);
        tx.put_raw(keys::gc(id), Vec::new());
    } else {
        tx.put_u64(global, refs);
        // The reference gone may have been the last hot one.
        tier::maybe_release(tx, id)?;
    }
    Ok(())
}

fn load_session(
    tx: &Txn,
    session: &SessionId,
    tenant: Option<TenantId>,
) -> Result<SessionRecord, ApplyError> {
    match tx.get::<SessionRecord>("session", &keys::session(session))? {
        Some(rec) if tenant.is_none_or(|t| t == rec.tenant) => Ok(rec),
        _ => Err(Rejection::SessionNotFound.into()),
    }
}

fn load_manifest(tx: &Txn, session: &SessionId) -> Result<Vec<ManifestEntry>, StoreError> {
    Ok(tx
        .get::<Vec<ManifestEntry>>("manifest", &keys::session_manifest(session))?
        .unwrap_or_default())
}

/// Decodes the session's chunks in offset order.
fn session_chunks(tx: &Txn, session: &SessionId) -> Result<Vec<(u64, SessionChunk)>, StoreError> {
    let prefix = keys::session_chunk_prefix(session);
    let mut out = Vec::new();
    for k in tx.scan_keys(&prefix)? {
        let offset = keys::be_u64(&k, prefix.len()).unwrap_or(0);
        if let Some(c) = tx.get::<SessionChunk>("session chunk", &k)? {
            out.push((offset, c));
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn add_chunk(
    tx: &mut Txn,
    session: &SessionId,
    tenant: TenantId,
    offset: u64,
    id: &ChunkId,
    len: u32,
    cv: Option<[u8; 32]>,
    now_ms: i64,
) -> Result<Response, ApplyError> {
    let mut rec = load_session(tx, session, Some(tenant))?;
    let end = offset.saturating_add(len as u64);
    if end > rec.size {
        return Err(Rejection::ChunkOutOfBounds {
            offset,
            end,
            size: rec.size,
        }
        .into());
    }
    if rec.has_manifest {
        let mut at = 0u64;
        let mut expected = None;
        for e in load_manifest(tx, session)? {
            if at == offset {
                expected = Some(e);
                break;
            }
            at += e.len as u64;
        }
        match expected {
            Some(e) if e.id == *id && e.len == len => {}
            Some(e) => {
                return Err(Rejection::ManifestMismatch {
                    offset,
                    expected: e.id,
                }
                .into());
            }
            None => return Err(Rejection::ChunkOverlap { offset }.into()),
        }
    }
    let key = keys::session_chunk(session, offset);
    if let Some(have) = tx.get::<SessionChunk>("session chunk", &key)? {
        if have.id == *id {
            rec.last_activity_ms = now_ms;
            let bytes_present = rec.bytes_present;
            tx.put(keys::session(session), &rec)?;
            return Ok(Response::ChunkAdded {
                bytes_present,
                added: false,
                new_to_tenant: false,
            });
        }
        return Err(Rejection::ChunkOverlap { offset }.into());
    }
    // Without a manifest, chunks may come at any offsets: refuse overlaps with neighbours.
    let prefix = keys::session_chunk_prefix(session);
    if let Some((k, v)) = tx.prev_before(&prefix, &key)? {
        let prev_off = keys::be_u64(&k, prefix.len()).unwrap_or(0);
        let prev: SessionChunk = decode("session chunk", &v)?;
        if prev_off + prev.len as u64 > offset {
            return Err(Rejection::ChunkOverlap { offset }.into());
        }
    }
    if let Some(k) = tx.next_from(&prefix, &key)?
        && keys::be_u64(&k, prefix.len()).unwrap_or(u64::MAX) < end
    {
        return Err(Rejection::ChunkOverlap { offset }.into());
    }
    tx.put(key, &SessionChunk { id: *id, len, cv })?;
    let new_to_tenant = add_ref(tx, id, tenant, len, cv.map(|c| (offset, c)))?;
    rec.bytes_present += len as u64;
    rec.last_activity_ms = now_ms;
    let bytes_present = rec.bytes_present;
    tx.put(keys::session(session), &rec)?;
    Ok(Response::ChunkAdded {
        bytes_present,
        added: true,
        new_to_tenant,
    })
}

/// Gaps in the byte range [0, size) not covered by `chunks` (offset order).
pub fn gaps(chunks: &[(u64, SessionChunk)], size: u64) -> Vec<Gap> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for (offset, c) in chunks {
        if *offset > at {
            out.push(Gap {
                offset: at,
                len: offset - at,
            });
        }
        at = at.max(offset.saturating_add(c.len as u64));
    }
    if at < size {
        out.push(Gap {
            offset: at,
            len: size - at,
        });
    }
    out
}

/// Removes a session's records and gives back what it reserved; returns whether it held an
/// object slot (see `plans::release_session`).
fn forget_session(tx: &mut Txn, rec: &SessionRecord) -> Result<bool, StoreError> {
    let held_slot = plans::release_session(tx, rec.tenant, &rec.id, rec.size)?;
    tx.del(keys::session(&rec.id));
    tx.del(keys::session_manifest(&rec.id));
    tx.del(keys::session_by_key(
        rec.tenant,
        &rec.bucket,
        &rec.key,
        &rec.id,
    ));
    Ok(held_slot)
}

fn complete_session(
    tx: &mut Txn,
    session: &SessionId,
    tenant: TenantId,
    file_hash: &[u8; 32],
    now_ms: i64,
) -> Result<Response, ApplyError> {
    let rec = match load_session(tx, session, Some(tenant)) {
        Ok(rec) => rec,
        Err(e) => {
            return match completed_before(tx, session, tenant, file_hash)? {
                Some(view) => Ok(Response::Committed(view)),
                None => Err(e),
            };
        }
    };
    let chunks = session_chunks(tx, session)?;
    let missing = gaps(&chunks, rec.size);
    if !missing.is_empty() {
        return Err(Rejection::Incomplete(missing).into());
    }
    let version = tx.next_id("next-version")?;
    let info = VersionInfo {
        version,
        size: rec.size,
        file_hash: *file_hash,
        content_type: rec.content_type.clone(),
        created_at_ms: now_ms,
        chunk_count: chunks.len() as u32,
    };
    // The session's chunk references become the version's: no refcount changes.
    let entries = chunks
        .iter()
        .map(|(offset, c)| ChunkEntry {
            id: c.id,
            offset: *offset,
            len: c.len,
        })
        .collect();
    for (offset, _) in &chunks {
        tx.del(keys::session_chunk(session, *offset));
    }
    let held_slot = forget_session(tx, &rec)?;
    tx.put(
        keys::version(tenant, &rec.bucket, &rec.key, version),
        &VersionRecord {
            info: info.clone(),
            chunks: entries,
        },
    )?;
    let bucket_key = keys::bucket(tenant, &rec.bucket);
    if tx.get_raw(&bucket_key)?.is_none() {
        tx.put(
            bucket_key,
            &BucketRecord {
                created_at_ms: now_ms,
            },
        )?;
    }
    let head_key = keys::object(tenant, &rec.bucket, &rec.key);
    let old = tx.get::<ObjectHead>("object", &head_key)?;
    plans::commit_version(tx, tenant, rec.size, old.is_none(), held_slot)?;
    if let Some(TrashState { purge_at_ms, .. }) = old.as_ref().and_then(|h| h.trash) {
        tx.del(keys::trash(purge_at_ms, tenant, &rec.bucket, &rec.key));
    }
    let head = ObjectHead {
        current: info,
        version_count: old.map_or(0, |h| h.version_count) + 1,
        trash: None,
    };
    tx.put(head_key, &head)?;
    remember_completion(tx, session, &rec, version, file_hash, now_ms)?;
    Ok(Response::Committed(ObjectView {
        bucket: rec.bucket,
        key: rec.key,
        info: head.current,
        version_count: head.version_count,
        trash: None,
    }))
}

/// How long a completed session's outcome is kept for retried CompleteUploads.
pub const COMPLETED_RETENTION_MS: i64 = 3600 * 1000;

/// Completion records expired per completion: more than the one each adds, so they never pile
/// up, few enough to keep a completion cheap.
const COMPLETED_EXPIRY_BATCH: usize = 8;

impl StateMachine {
    /// The version a completed `session` committed, for a CompleteUpload repeated after the
    /// session is gone (same tenant and file hash, within the retention, version still there).
    pub fn completion(
        &self,
        session: &SessionId,
        tenant: TenantId,
        file_hash: &[u8; 32],
    ) -> Result<Option<ObjectView>, StoreError> {
        completed_before(&Txn::new(&self.tree), session, tenant, file_hash)
    }
}

/// Records what `session` committed, and forgets a few records older than the retention.
fn remember_completion(
    tx: &mut Txn,
    session: &SessionId,
    rec: &SessionRecord,
    version: u64,
    file_hash: &[u8; 32],
    now_ms: i64,
) -> Result<(), ApplyError> {
    tx.put(
        keys::completed(session),
        &CompletedSession {
            tenant: rec.tenant,
            bucket: rec.bucket.clone(),
            key: rec.key.clone(),
            version,
            file_hash: *file_hash,
        },
    )?;
    tx.put_raw(keys::completed_at(now_ms, session), Vec::new());
    let upper = keys::completed_before(now_ms.saturating_sub(COMPLETED_RETENTION_MS));
    for index in tx.keys_below(&[keys::COMPLETED_AT], &upper, COMPLETED_EXPIRY_BATCH)? {
        if let Some(record) = keys::completed_of_index(&index) {
            tx.del(record);
        }
        tx.del(index);
    }
    Ok(())
}

/// The version `session` committed, when it was completed (within the retention) by the same
/// tenant with the same file hash and that version still exists.
fn completed_before(
    tx: &Txn,
    session: &SessionId,
    tenant: TenantId,
    file_hash: &[u8; 32],
) -> Result<Option<ObjectView>, StoreError> {
    let Some(done) = tx.get::<CompletedSession>("completed session", &keys::completed(session))?
    else {
        return Ok(None);
    };
    if done.tenant != tenant || done.file_hash != *file_hash {
        return Ok(None);
    }
    let vkey = keys::version(tenant, &done.bucket, &done.key, done.version);
    let Some(v) = tx.get::<VersionRecord>("version", &vkey)? else {
        return Ok(None);
    };
    let head = tx.get::<ObjectHead>("object", &keys::object(tenant, &done.bucket, &done.key))?;
    Ok(Some(ObjectView {
        bucket: done.bucket,
        key: done.key,
        info: v.info,
        version_count: head.as_ref().map_or(1, |h| h.version_count),
        trash: head.and_then(|h| h.trash),
    }))
}

fn abort_session(
    tx: &mut Txn,
    session: &SessionId,
    tenant: Option<TenantId>,
    idle_before_ms: Option<i64>,
) -> Result<Response, ApplyError> {
    let rec = load_session(tx, session, tenant)?;
    if idle_before_ms.is_some_and(|t| rec.last_activity_ms >= t) {
        return Ok(Response::Done); // active again since the sweeper looked: keep it
    }
    for (offset, c) in session_chunks(tx, session)? {
        tx.del(keys::session_chunk(session, offset));
        drop_ref(tx, &c.id, rec.tenant)?;
    }
    forget_session(tx, &rec)?;
    Ok(Response::Done)
}

fn trash_object(
    tx: &mut Txn,
    tenant: TenantId,
    bucket: &BucketName,
    key: &ObjectKey,
    now_ms: i64,
    purge_at_ms: i64,
) -> Result<Response, ApplyError> {
    let head_key = keys::object(tenant, bucket, key);
    let mut head = match tx.get::<ObjectHead>("object", &head_key)? {
        Some(h) if h.trash.is_none() => h,
        _ => return Err(Rejection::ObjectNotFound.into()),
    };
    let state = TrashState {
        deleted_at_ms: now_ms,
        purge_at_ms,
    };
    head.trash = Some(state);
    tx.put(head_key, &head)?;
    tx.put_raw(keys::trash(purge_at_ms, tenant, bucket, key), Vec::new());
    Ok(Response::Trashed(state))
}

fn untrash_object(
    tx: &mut Txn,
    tenant: TenantId,
    bucket: &BucketName,
    key: &ObjectKey,
) -> Result<Response, ApplyError> {
    let head_key = keys::object(tenant, bucket, key);
    let mut head = match tx.get::<ObjectHead>("object", &head_key)? {
        Some(h) => h,
        None => return Err(Rejection::ObjectNotFound.into()),
    };
    let Some(state) = head.trash.take() else {
        return Err(Rejection::NotInTrash.into());
    };
    tx.del(keys::trash(state.purge_at_ms, tenant, bucket, key));
    tx.put(head_key, &head)?;
    Ok(Response::Untrashed(ObjectView {
        bucket: bucket.clone(),
        key: key.clone(),
        info: head.current,
        version_count: head.version_count,
        trash: None,
    }))
}

fn purge_object(
    tx: &mut Txn,
    tenant: TenantId,
    bucket: &BucketName,
    key: &ObjectKey,
    now_ms: i64,
) -> Result<Response, ApplyError> {
    let head_key = keys::object(tenant, bucket, key);
    let head = match tx.get::<ObjectHead>("object", &head_key)? {
        Some(h) => h,
        None => return Err(Rejection::ObjectNotFound.into()),
    };
    let state = match head.trash {
        Some(s) if s.purge_at_ms <= now_ms => s,
        Some(_) => return Ok(Response::Purged { versions: 0 }),
        None => return Err(Rejection::NotInTrash.into()),
    };
    let mut versions = 0;
    let mut bytes = 0u64;
    for vkey in tx.scan_keys(&keys::version_prefix(tenant, bucket, key))? {
        if let Some(v) = tx.get::<VersionRecord>("version", &vkey)? {
            // Cold references go first, so no chunk is released on the way out.
            tier::forget_version(tx, (tenant, bucket, key, v.info.version), &v)?;
            for c in &v.chunks {
                drop_ref(tx, &c.id, tenant)?;
            }
            versions += 1;
            bytes = bytes.saturating_add(v.info.size);
        }
        tx.del(vkey);
    }
    plans::forget_object(tx, tenant, bytes)?;
    tx.del(keys::access(tenant, bucket, key));
    tx.del(keys::trash(state.purge_at_ms, tenant, bucket, key));
    tx.del(head_key);
    Ok(Response::Purged { versions })
}

/// Decodes a value read outside a command.
pub(crate) fn read<T: DeserializeOwned>(
    tree: &sled::Tree,
    what: &'static str,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    tree.get(key)?.map(|v| decode(what, &v)).transpose()
}

#[cfg(test)]
mod tests;
