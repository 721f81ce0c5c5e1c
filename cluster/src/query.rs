//! Reads of the state machine. Reads never change state; they see every command applied so far.

use crate::error::StoreError;
use crate::ids::{ChunkId, SessionId, TenantId, TokenHash};
use crate::keys;
use crate::names::{BucketName, ObjectKey};
use crate::records::*;
use crate::state_machine::{StateMachine, read};

/// `bucket NUL key` from a record key's tail (None if it is not two valid names).
fn bucket_and_key(rest: &[u8]) -> Option<(BucketName, ObjectKey)> {
    let nul = rest.iter().position(|b| *b == 0)?;
    let b = std::str::from_utf8(&rest[..nul]).ok()?;
    let k = std::str::from_utf8(&rest[nul + 1..]).ok()?;
    Some((BucketName::new(b).ok()?, ObjectKey::new(k).ok()?))
}

/// A version whose content uses a given chunk (see `versions_using`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionUse {
    pub chunk: ChunkId,
    pub tenant: TenantId,
    pub bucket: BucketName,
    pub key: ObjectKey,
    pub version: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectView>,
    pub folders: Vec<String>,
    /// Where the next page starts (the last name returned), if there is more.
    pub next: Option<ListCursor>,
}

/// A position in a listing: after a key, or after every key of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListCursor {
    AfterKey(String),
    AfterFolder(String),
}

impl ListCursor {
    /// The opaque `page_token` a client gets for this position.
    pub fn to_token(&self) -> String {
        match self {
            ListCursor::AfterKey(k) => format!("k{}", hex::encode(k)),
            ListCursor::AfterFolder(f) => format!("f{}", hex::encode(f)),
        }
    }

    /// Reads a `page_token` back (empty: from the start). `None` when the token is not one
    /// `to_token` made.
    pub fn from_token(t: &str) -> Option<Option<ListCursor>> {
        let Some(kind) = t.bytes().next() else {
            return Some(None);
        };
        let name = String::from_utf8(hex::decode(t.get(1..)?).ok()?).ok()?;
        match kind {
            b'k' => Some(Some(ListCursor::AfterKey(name))),
            b'f' => Some(Some(ListCursor::AfterFolder(name))),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    pub tenant: TenantId,
    pub bucket: &'a BucketName,
    pub prefix: &'a str,
    pub delimiter: &'a str,
    pub limit: usize,
    pub start: Option<ListCursor>,
    /// List the trash instead of live keys.
    pub trash: bool,
}

/// Counts for `strata status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tenants: u64,
    pub objects: u64,
    pub sessions: u64,
}

impl StateMachine {
    pub fn principal(&self, token: &TokenHash) -> Result<Option<Principal>, StoreError> {
        Ok(self.token(token)?.map(|r| r.principal))
    }

    /// A token's record: its principal, scope, bucket and expiry.
    pub fn token(&self, token: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        read(&self.tree, "token", &keys::token(&token.0))
    }

    pub fn tenant(&self, id: TenantId) -> Result<Option<TenantRecord>, StoreError> {
        read(&self.tree, "tenant", &keys::tenant(id))
    }

    pub fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        read(&self.tree, "session", &keys::session(id))
    }

    pub fn session_manifest(
        &self,
        id: &SessionId,
    ) -> Result<Option<Vec<ManifestEntry>>, StoreError> {
        read(&self.tree, "manifest", &keys::session_manifest(id))
    }

    /// The session's durable chunks in offset order.
    pub fn session_chunks(&self, id: &SessionId) -> Result<Vec<(u64, SessionChunk)>, StoreError> {
        let prefix = keys::session_chunk_prefix(id);
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let offset = keys::be_u64(&k, prefix.len()).unwrap_or(0);
            out.push((offset, decode("session chunk", &v)?));
        }
        Ok(out)
    }

    /// Sessions whose last activity is older than `before_ms`.
    pub fn idle_sessions(&self, before_ms: i64) -> Result<Vec<SessionId>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::SESSION]) {
            let (_, v) = kv?;
            let rec: SessionRecord = decode("session", &v)?;
            if rec.last_activity_ms < before_ms {
                out.push(rec.id);
            }
        }
        Ok(out)
    }

    /// Trashed keys whose purge time is at or before `now_ms`, at most `limit`.
    pub fn trash_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(TenantId, BucketName, ObjectKey)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::TRASH]).take(limit) {
            let (k, _) = kv?;
            let purge_at = keys::be_u64(&k, 1).unwrap_or(u64::MAX);
            if purge_at > now_ms.max(0) as u64 {
                break;
            }
            let tenant = TenantId(keys::be_u64(&k, 9).unwrap_or(0));
            if let Some((b, key)) = k.get(17..).and_then(bucket_and_key) {
                out.push((tenant, b, key));
            }
        }
        Ok(out)
    }

    /// Chunks no one references any more, waiting for their files to be deleted.
    pub fn gc_queue(&self, limit: usize) -> Result<Vec<ChunkId>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::GC_QUEUE]).take(limit) {
            let (k, _) = kv?;
            if let Some(id) = ChunkId::from_slice(&k[1..]) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Chunks with at least one reference (a version or an open session), in id order,
    /// starting after `after`, at most `limit` of them: one page of a walk over every chunk
    /// the cluster must keep.
    pub fn referenced_chunks(
        &self,
        after: Option<&ChunkId>,
        limit: usize,
    ) -> Result<Vec<ChunkId>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded(keys::chunk_global(id)),
            None => Bound::Included(vec![keys::CHUNK_GLOBAL]),
        };
        let end = Bound::Excluded(vec![keys::CHUNK_GLOBAL + 1]);
        let mut out = Vec::new();
        for kv in self.tree.range::<Vec<u8>, _>((start, end)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            if keys::be_u64(&v, 0).unwrap_or(0) == 0 {
                continue;
            }
            if let Some(id) = ChunkId::from_slice(&k[1..]) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Versions (tenant, bucket, key, version) whose content uses any of `ids`, at most
    /// `limit` of them. Walks every version record: for diagnostics (`strata repair status`),
    /// not for the data path.
    pub fn versions_using(
        &self,
        ids: &std::collections::HashSet<ChunkId>,
        limit: usize,
    ) -> Result<Vec<VersionUse>, StoreError> {
        let mut out = Vec::new();
        if ids.is_empty() {
            return Ok(out);
        }
        for kv in self.tree.scan_prefix([keys::VERSION]) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let rec: VersionRecord = decode("version", &v)?;
            let Some(hit) = rec.chunks.iter().find(|c| ids.contains(&c.id)) else {
                continue;
            };
            // `v tenant(8) bucket NUL key NUL version(8)`
            let tenant = TenantId(keys::be_u64(&k, 1).unwrap_or(0));
            if let Some((b, key)) = k.get(9..k.len().saturating_sub(9)).and_then(bucket_and_key) {
                out.push(VersionUse {
                    chunk: hit.id,
                    tenant,
                    bucket: b,
                    key,
                    version: rec.info.version,
                });
            }
        }
        Ok(out)
    }

    /// References to a chunk across all tenants (versions and open sessions).
    pub fn chunk_refs(&self, id: &ChunkId) -> Result<u64, StoreError> {
        Ok(self
            .tree
            .get(keys::chunk_global(id))?
            .and_then(|v| keys::be_u64(&v, 0))
            .unwrap_or(0))
    }

    pub fn tenant_chunk(
        &self,
        id: &ChunkId,
        tenant: TenantId,
    ) -> Result<Option<ChunkMeta>, StoreError> {
        read(&self.tree, "chunk", &keys::chunk_tenant(id, tenant))
    }

    pub fn bucket_exists(&self, tenant: TenantId, bucket: &BucketName) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(keys::bucket(tenant, bucket))?)
    }

    pub fn object(
        &self,
        tenant: TenantId,
        bucket: &BucketName,
        key: &ObjectKey,
    ) -> Result<Option<ObjectHead>, StoreError> {
        read(&self.tree, "object", &keys::object(tenant, bucket, key))
    }

    pub fn version(
        &self,
        tenant: TenantId,
        bucket: &BucketName,
        key: &ObjectKey,
        version: u64,
    ) -> Result<Option<VersionRecord>, StoreError> {
        read(
            &self.tree,
            "version",
            &keys::version(tenant, bucket, key, version),
        )
    }

    /// Every version of a key, newest first.
    pub fn versions(
        &self,
        tenant: TenantId,
        bucket: &BucketName,
        key: &ObjectKey,
    ) -> Result<Vec<VersionInfo>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .tree
            .scan_prefix(keys::version_prefix(tenant, bucket, key))
            .rev()
        {
            let (_, v) = kv?;
            out.push(decode::<VersionRecord>("version", &v)?.info);
        }
        Ok(out)
    }

    pub fn list(&self, q: &ListQuery) -> Result<ListPage, StoreError> {
        let base = keys::object_prefix(q.tenant, q.bucket);
        let scan_prefix = [base.as_slice(), q.prefix.as_bytes()].concat();
        let mut page = ListPage::default();
        let mut from: Vec<u8> = match &q.start {
            None => scan_prefix.clone(),
            Some(ListCursor::AfterKey(k)) => [base.as_slice(), k.as_bytes(), &[0]].concat(),
            // 0xFF never occurs in UTF-8: it sorts after every key inside the folder.
            Some(ListCursor::AfterFolder(f)) => [base.as_slice(), f.as_bytes(), &[0xFF]].concat(),
        };
        if from < scan_prefix {
            from = scan_prefix.clone();
        }
        let limit = q.limit.max(1);
        let mut count = 0usize;
        let mut last: Option<ListCursor> = None;
        'outer: loop {
            let mut iter = self.tree.range(from.clone()..);
            loop {
                let Some(kv) = iter.next() else { break 'outer };
                let (k, v) = kv?;
                if !k.starts_with(&scan_prefix) {
                    break 'outer;
                }
                let name = String::from_utf8_lossy(&k[base.len()..]).into_owned();
                let rest = &name[q.prefix.len()..];
                if !q.delimiter.is_empty()
                    && let Some(pos) = rest.find(q.delimiter)
                {
                    let folder = format!("{}{}", q.prefix, &rest[..pos + q.delimiter.len()]);
                    // A folder shows when it holds a key this listing shows (live or trash).
                    let has_visible = self.folder_has(&base, &folder, q.trash)?;
                    if has_visible {
                        if count == limit {
                            page.next = last.clone();
                            break 'outer;
                        }
                        page.folders.push(folder.clone());
                        count += 1;
                        last = Some(ListCursor::AfterFolder(folder.clone()));
                    }
                    from = [base.as_slice(), folder.as_bytes(), &[0xFF]].concat();
                    continue 'outer;
                }
                let head: ObjectHead = decode("object", &v)?;
                if head.trash.is_some() != q.trash {
                    continue;
                }
                if count == limit {
                    page.next = last.clone();
                    break 'outer;
                }
                let Ok(key) = ObjectKey::new(&name) else {
                    continue;
                };
                page.objects.push(ObjectView {
                    bucket: q.bucket.clone(),
                    key,
                    info: head.current,
                    version_count: head.version_count,
                    trash: head.trash,
                });
                count += 1;
                last = Some(ListCursor::AfterKey(name));
            }
        }
        Ok(page)
    }

    /// Whether a folder holds at least one key that the listing shows (live or trashed).
    fn folder_has(&self, base: &[u8], folder: &str, trash: bool) -> Result<bool, StoreError> {
        for kv in self.tree.scan_prefix([base, folder.as_bytes()].concat()) {
            let (_, v) = kv?;
            let head: ObjectHead = decode("object", &v)?;
            if head.trash.is_some() == trash {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn counts(&self) -> Result<Counts, StoreError> {
        let count = |p: u8| self.tree.scan_prefix([p]).count() as u64;
        Ok(Counts {
            tenants: count(keys::TENANT),
            objects: count(keys::OBJECT),
            sessions: count(keys::SESSION),
        })
    }
}

/// A token as an operator sees it: never the token itself, only an id derived from its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenView {
    pub hash: TokenHash,
    pub principal: Principal,
    pub tenant_name: Option<String>,
    pub created_at_ms: i64,
    pub scope: TokenScope,
    pub bucket: Option<BucketName>,
    pub expires_ms: Option<i64>,
}

impl StateMachine {
    /// Every token (admin and tenant), by hash order.
    pub fn tokens(&self) -> Result<Vec<TokenView>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::TOKEN]) {
            let (k, v) = kv?;
            let Some(hash) = k.get(1..33).and_then(|h| <[u8; 32]>::try_from(h).ok()) else {
                continue;
            };
            let rec: TokenRecord = decode("token", &v)?;
            let tenant_name = match rec.principal {
                Principal::Tenant(t) => self.tenant(t)?.map(|r| r.name),
                Principal::Admin => None,
            };
            out.push(TokenView {
                hash: TokenHash(hash),
                principal: rec.principal,
                tenant_name,
                created_at_ms: rec.created_at_ms,
                scope: rec.scope,
                bucket: rec.bucket,
                expires_ms: rec.expires_ms,
            });
        }
        Ok(out)
    }

    /// A tenant's buckets with their creation times, in name order.
    pub fn buckets(&self, tenant: TenantId) -> Result<Vec<(BucketName, i64)>, StoreError> {
        let prefix = [&[keys::BUCKET][..], &tenant.0.to_be_bytes()].concat();
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let rec: BucketRecord = decode("bucket", &v)?;
            if let Some(name) = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|n| BucketName::new(n).ok())
            {
                out.push((name, rec.created_at_ms));
            }
        }
        Ok(out)
    }
}

impl StateMachine {
    /// Whether any admin token exists (a fresh node creates one at first start).
    pub fn has_admin_token(&self) -> Result<bool, StoreError> {
        for kv in self.tree.scan_prefix([keys::TOKEN]) {
            let (_, v) = kv?;
            if decode::<TokenRecord>("token", &v)?.principal == Principal::Admin {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl StateMachine {
    /// The current, previous and staged layouts (all empty before the first apply).
    pub fn layout(&self) -> Result<crate::layout::LayoutState, StoreError> {
        Ok(read(
            &self.tree,
            "layout",
            &keys::meta(crate::state_machine::LAYOUT),
        )?
        .unwrap_or_default())
    }

    /// The cluster CA certificate (PEM), once the initializing node has recorded it.
    pub fn cluster_ca(&self) -> Result<Option<String>, StoreError> {
        read(
            &self.tree,
            "cluster CA",
            &keys::meta(crate::state_machine::CLUSTER_CA),
        )
    }

    /// The member that holds the CA key and signs certificates.
    pub fn ca_signer(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tree
            .get(keys::meta(crate::state_machine::CA_SIGNER))?
            .and_then(|v| keys::be_u64(&v, 0)))
    }

    /// Whether `node`'s certificates are revoked (it was removed from the cluster).
    pub fn is_revoked(&self, node: u64) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(keys::revoked_node(node))?)
    }

    /// The nodes whose certificates are revoked.
    pub fn revoked_nodes(&self) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::REVOKED_NODE]) {
            let (k, _) = kv?;
            if let Some(id) = keys::be_u64(&k, 1) {
                out.push(id);
            }
        }
        Ok(out)
    }
}

/// A version a tiering policy wants moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierCandidate {
    pub tenant: TenantId,
    pub bucket: BucketName,
    pub key: ObjectKey,
    pub version: u64,
    pub size: u64,
    pub policy: crate::tier::TierPolicy,
}

/// A restore in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreView {
    pub tenant: TenantId,
    pub bucket: BucketName,
    pub key: ObjectKey,
    pub version: u64,
    pub record: crate::tier::RestoreRecord,
}

/// Cold-tier totals for `strata tier status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierTotals {
    /// Live cold chunk bytes per backend.
    pub bytes: std::collections::BTreeMap<String, u64>,
    /// Archive objects (and their bytes) per backend.
    pub archives: std::collections::BTreeMap<String, (u64, u64)>,
    pub dead_archives: u64,
    pub cold_versions: u64,
    pub restores: u64,
}

impl StateMachine {
    pub fn tier_policies(&self) -> Result<Vec<crate::tier::TierPolicy>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::POLICY]) {
            out.push(decode("tier policy", &kv?.1)?);
        }
        Ok(out)
    }

    pub fn tier_policy(&self, name: &str) -> Result<Option<crate::tier::TierPolicy>, StoreError> {
        read(&self.tree, "tier policy", &keys::policy(name))
    }

    /// Chunks whose cold copy is in the archive `object` of `backend`, at most `limit` (a walk
    /// of every cold-chunk record: for repairs, not for the data path).
    pub fn cold_chunks_in(
        &self,
        backend: &str,
        object: &str,
        limit: usize,
    ) -> Result<Vec<(ChunkId, crate::tier::ColdChunk)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::COLD_CHUNK]) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let c: crate::tier::ColdChunk = decode("cold chunk", &v)?;
            if c.loc.backend == backend
                && c.loc.object == object
                && let Some(id) = ChunkId::from_slice(&k[1..])
            {
                out.push((id, c));
            }
        }
        Ok(out)
    }

    pub fn cold_chunk(&self, id: &ChunkId) -> Result<Option<crate::tier::ColdChunk>, StoreError> {
        read(&self.tree, "cold chunk", &keys::cold_chunk(id))
    }

    /// Whether this chunk's hot copies must be kept: it is referenced and not released to the
    /// cold tier. Chunk collection and peers' DropChunk go by this.
    pub fn chunk_needs_hot(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.chunk_refs(id)? > 0 && !self.cold_chunk(id)?.is_some_and(|c| c.released))
    }

    /// Whether a version is hot, cold, or being restored.
    pub fn version_tier(
        &self,
        tenant: TenantId,
        bucket: &BucketName,
        key: &ObjectKey,
        version: u64,
    ) -> Result<crate::tier::VersionTier, StoreError> {
        use crate::tier::VersionTier;
        let cold = read(
            &self.tree,
            "cold version",
            &keys::cold_version(tenant, bucket, key, version),
        )?;
        let Some(cold) = cold else {
            return Ok(VersionTier::Hot);
        };
        let restore = read(
            &self.tree,
            "restore",
            &keys::restore(tenant, bucket, key, version),
        )?;
        Ok(match restore {
            Some(r) => VersionTier::Restoring(cold, r),
            None => VersionTier::Cold(cold),
        })
    }

    /// When a key was last read, if it has been since the access clock started.
    pub fn last_access(
        &self,
        tenant: TenantId,
        bucket: &BucketName,
        key: &ObjectKey,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tree
            .get(keys::access(tenant, bucket, key))?
            .and_then(|v| keys::be_u64(&v, 0))
            .map(|v| v as i64))
    }

    /// Hot versions that a policy wants moved now, at most `limit`, in key order.
    pub fn tier_candidates(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<TierCandidate>, StoreError> {
        let policies = self.tier_policies()?;
        let mut out = Vec::new();
        if policies.is_empty() {
            return Ok(out);
        }
        for kv in self.tree.scan_prefix([keys::VERSION]) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let Some((tenant, bucket, key, version)) = keys::parse_version(&k) else {
                continue;
            };
            let mut mark = k.to_vec();
            mark[0] = keys::COLD_VERSION;
            if self.tree.contains_key(&mark)? {
                continue;
            }
            let rec: VersionRecord = decode("version", &v)?;
            let touched = self
                .last_access(tenant, &bucket, &key)?
                .unwrap_or(0)
                .max(rec.info.created_at_ms);
            let idle = now_ms.saturating_sub(touched).max(0) as u64;
            if let Some(p) =
                crate::tier::choose_policy(&policies, tenant, &bucket, rec.info.size, idle)
            {
                out.push(TierCandidate {
                    policy: p.clone(),
                    tenant,
                    bucket,
                    key,
                    version,
                    size: rec.info.size,
                });
            }
        }
        Ok(out)
    }

    pub fn restores(&self) -> Result<Vec<RestoreView>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::RESTORE]) {
            let (k, v) = kv?;
            if let Some((tenant, bucket, key, version)) = keys::parse_version(&k) {
                out.push(RestoreView {
                    tenant,
                    bucket,
                    key,
                    version,
                    record: decode("restore", &v)?,
                });
            }
        }
        Ok(out)
    }

    pub fn archive(
        &self,
        backend: &str,
        object: &str,
    ) -> Result<Option<crate::tier::ArchiveRecord>, StoreError> {
        read(&self.tree, "archive", &keys::archive(backend, object))
    }

    /// Archive records (archives some chunk's cold copy is in), in key order, at most `limit`.
    pub fn archives(&self, limit: usize) -> Result<Vec<crate::tier::ArchiveRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::ARCHIVE]).take(limit) {
            out.push(decode("archive", &kv?.1)?);
        }
        Ok(out)
    }

    /// Archives no chunk needs any more, to delete from their backends.
    pub fn dead_archives(&self, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([keys::ARCHIVE_DEAD]).take(limit) {
            if let Some(a) = keys::parse_archive(&kv?.0) {
                out.push(a);
            }
        }
        Ok(out)
    }

    pub fn tier_totals(&self) -> Result<TierTotals, StoreError> {
        let mut t = TierTotals::default();
        for kv in self.tree.scan_prefix(keys::meta("tier-bytes/")) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[1 + "tier-bytes/".len()..]).into_owned();
            t.bytes.insert(name, keys::be_u64(&v, 0).unwrap_or(0));
        }
        for kv in self.tree.scan_prefix([keys::ARCHIVE]) {
            let a: crate::tier::ArchiveRecord = decode("archive", &kv?.1)?;
            let e = t.archives.entry(a.backend).or_default();
            e.0 += 1;
            e.1 += a.bytes;
        }
        t.dead_archives = self.tree.scan_prefix([keys::ARCHIVE_DEAD]).count() as u64;
        t.cold_versions = self.tree.scan_prefix([keys::COLD_VERSION]).count() as u64;
        t.restores = self.tree.scan_prefix([keys::RESTORE]).count() as u64;
        Ok(t)
    }
}

impl StateMachine {
    /// A tenant's id by name.
    pub fn tenant_id(&self, name: &str) -> Result<Option<TenantId>, StoreError> {
        Ok(self
            .tree
            .get(keys::meta(&format!("tenant-name/{name}")))?
            .and_then(|v| keys::be_u64(&v, 0))
            .map(TenantId))
    }
}

/// A tenant's plan and usage, as `strata tenant show` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantUsage {
    pub plan: crate::plans::Plan,
    pub usage: crate::plans::Usage,
    pub open_uploads: u64,
}

impl StateMachine {
    /// The name of the plan the tenant is on.
    pub fn tenant_plan_name(&self, tenant: TenantId) -> Result<String, StoreError> {
        Ok(
            read::<String>(&self.tree, "tenant plan", &keys::tenant_plan(tenant))?
                .unwrap_or_else(|| crate::plans::DEFAULT_PLAN.to_owned()),
        )
    }

    /// A plan by name (`default` always exists: stored, or built in).
    pub fn plan(&self, name: &str) -> Result<Option<crate::plans::Plan>, StoreError> {
        let stored = read(&self.tree, "plan", &keys::plan(name))?;
        Ok(stored.or_else(|| {
            (name == crate::plans::DEFAULT_PLAN).then(crate::plans::Plan::builtin_default)
        }))
    }

    /// The plan the tenant is on.
    pub fn plan_of(&self, tenant: TenantId) -> Result<crate::plans::Plan, StoreError> {
        let name = self.tenant_plan_name(tenant)?;
        match self.plan(&name)? {
            Some(p) => Ok(p),
            None => Ok(self
                .plan(crate::plans::DEFAULT_PLAN)?
                .unwrap_or_else(crate::plans::Plan::builtin_default)),
        }
    }

    /// Every plan by name, `default` included, with how many tenants are on each.
    pub fn plans(&self) -> Result<Vec<(crate::plans::Plan, u64)>, StoreError> {
        let mut on: std::collections::BTreeMap<String, u64> = Default::default();
        for kv in self.tree.scan_prefix(keys::tenant_plan_prefix()) {
            let name: String = decode("tenant plan", &kv?.1)?;
            *on.entry(name).or_default() += 1;
        }
        let assigned: u64 = on.values().sum();
        let tenants = self.tree.scan_prefix([keys::TENANT]).count() as u64;
        let mut out = Vec::new();
        let mut saw_default = false;
        for kv in self.tree.scan_prefix([keys::PLAN]) {
            let p: crate::plans::Plan = decode("plan", &kv?.1)?;
            saw_default |= p.name == crate::plans::DEFAULT_PLAN;
            out.push(p);
        }
        if !saw_default {
            out.push(crate::plans::Plan::builtin_default());
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out
            .into_iter()
            .map(|p| {
                let n = if p.name == crate::plans::DEFAULT_PLAN {
                    tenants.saturating_sub(assigned)
                } else {
                    on.get(&p.name).copied().unwrap_or(0)
                };
                (p, n)
            })
            .collect())
    }

    /// The tenant's plan, usage and open uploads.
    pub fn tenant_usage(&self, tenant: TenantId) -> Result<TenantUsage, StoreError> {
        Ok(TenantUsage {
            plan: self.plan_of(tenant)?,
            usage: read(&self.tree, "usage", &keys::usage(tenant))?.unwrap_or_default(),
            open_uploads: self
                .tree
                .get(keys::open_sessions(tenant))?
                .and_then(|v| keys::be_u64(&v, 0))
                .unwrap_or(0),
        })
    }
}
