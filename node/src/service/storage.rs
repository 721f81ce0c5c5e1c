//! The client Storage service. Handlers authenticate, validate input into domain types, and
//! then read the state machine or hand work to the session actors.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use ractor::ActorRef;
use strata_cluster::query::{ListCursor, ListQuery};
use strata_cluster::records::VersionRecord;
use strata_cluster::{
    BucketName, Command, ObjectKey, Rejection, Response as SmResponse, SessionId, TenantId,
};
use strata_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::observe::{observe, record};
use crate::actors::supervisor::{SupervisorMsg, call, session_actor};
use crate::actors::upload_session::{Ack, SessionMsg};
use crate::auth;
use crate::context::{Context, now_ms};
use crate::error::{NodeError, NodeResult};
use crate::metrics as m;

/// Chunks of one PutChunks stream being verified and written at once.
const PUT_WINDOW: usize = 8;
/// Largest data piece of one Get message (clients' default message limit is 4 MiB).
const GET_PIECE: usize = 1024 * 1024;
const DEFAULT_PAGE: u32 = 1000;
/// Largest object: 1 PiB (keeps every offset arithmetic far from overflow).
const MAX_OBJECT_BYTES: u64 = 1 << 50;
/// Chunks of one download read ahead of the one being sent.
const GET_READ_AHEAD: usize = 3;

pub struct StorageService {
    ctx: Arc<Context>,
    sup: ActorRef<SupervisorMsg>,
}

impl StorageService {
    pub fn new(ctx: Arc<Context>, sup: ActorRef<SupervisorMsg>) -> Self {
        StorageService { ctx, sup }
    }

    fn tenant<T>(&self, req: &Request<T>) -> NodeResult<TenantId> {
        auth::tenant(&self.ctx.sm, req.metadata())
    }

    /// The version a Get or Stat names: the current one of a live key, or a given one.
    fn find_version(
        &self,
        tenant: TenantId,
        bucket: &BucketName,
        key: &ObjectKey,
        version: u64,
    ) -> NodeResult<(VersionRecord, u32)> {
        let not_found = || NodeError::NotFound(format!("{bucket}/{key} not found"));
        let head = self
            .ctx
            .sm
            .object(tenant, bucket, key)?
            .ok_or_else(not_found)?;
        if head.trash.is_some() {
            return Err(NodeError::NotFound(format!(
                "{bucket}/{key} is in the trash: undelete it to read it"
            )));
        }
        let v = if version == 0 {
            head.current.version
        } else {
            version
        };
        let rec = self
            .ctx
            .sm
            .version(tenant, bucket, key, v)?
            .ok_or_else(|| NodeError::NotFound(format!("{bucket}/{key} has no version {v}")))?;
        Ok((rec, head.version_count))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::storage_server::Storage for StorageService {
    async fn create_upload(
        &self,
        req: Request<pb::CreateUploadRequest>,
    ) -> Result<Response<pb::CreateUploadResponse>, Status> {
        observe("CreateUpload", async {
            let tenant = self.tenant(&req)?;
            let r = req.get_ref();
            let bucket = convert::bucket(&r.bucket)?;
            let key = convert::key(&r.key)?;
            let max_chunk = self.ctx.config.max_chunk_bytes;
            let manifest = convert::manifest(&r.manifest, max_chunk)?;
            if r.size > MAX_OBJECT_BYTES {
                return Err(NodeError::InvalidArgument(format!(
                    "size {} is over the {MAX_OBJECT_BYTES}-byte (1 PiB) object limit",
                    r.size
                )));
            }
            if r.content_type.len() > 256 {
                return Err(NodeError::InvalidArgument(
                    "content_type is longer than 256 bytes".into(),
                ));
            }
            let session = SessionId::from_bytes(rand::random());
            let cmd = Command::OpenSession {
                session,
                tenant,
                bucket,
                key,
                size: r.size,
                manifest: manifest.clone(),
                content_type: r.content_type.clone(),
                now_ms: now_ms(),
            };
            match self.ctx.propose(cmd).await? {
                SmResponse::SessionOpened {
                    session,
                    resumed,
                    existing,
                    bytes_present,
                } => {
                    if !resumed {
                        metrics::counter!(m::DEDUP_BYTES).increment(bytes_present);
                    }
                    Ok(pb::CreateUploadResponse {
                        session_id: session.to_string(),
                        existing,
                        resumed,
                        max_chunk_size: max_chunk,
                        bytes_present,
                    })
                }
                other => Err(NodeError::Internal(format!(
                    "unexpected response to OpenSession: {other:?}"
                ))),
            }
        })
        .await
    }

    type PutChunksStream = BoxStream<pb::PutChunkAck>;

    async fn put_chunks(
        &self,
        req: Request<Streaming<pb::PutChunkRequest>>,
    ) -> Result<Response<Self::PutChunksStream>, Status> {
        let tenant = match self.tenant(&req) {
            Ok(t) => t,
            Err(e) => {
                record("PutChunks", std::time::Instant::now(), Some(&e));
                return Err(e.into());
            }
        };
        let (tx, rx) = mpsc::channel(PUT_WINDOW * 2);
        let (ctx, sup) = (self.ctx.clone(), self.sup.clone());
        let inbound = req.into_inner();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let result = pump_chunks(&ctx, &sup, tenant, inbound, &tx).await;
            record("PutChunks", start, result.as_ref().err());
            if let Err(e) = result {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_upload(
        &self,
        req: Request<pb::GetUploadRequest>,
    ) -> Result<Response<pb::UploadProgress>, Status> {
        observe("GetUpload", async {
            let tenant = self.tenant(&req)?;
            self.ctx.linearize().await?;
            let id = convert::session_id(&req.get_ref().session_id)?;
            let rec = match self.ctx.sm.session(&id)? {
                Some(rec) if rec.tenant == tenant => rec,
                _ => return Err(Rejection::SessionNotFound.into()),
            };
            let chunks = self.ctx.sm.session_chunks(&id)?;
            let missing = strata_cluster::state_machine::gaps(&chunks, rec.size);
            Ok(pb::UploadProgress {
                session_id: id.to_string(),
                bucket: rec.bucket.to_string(),
                key: rec.key.to_string(),
                size: rec.size,
                bytes_present: rec.bytes_present,
                chunks: chunks
                    .iter()
                    .map(|(o, c)| pb::PresentChunk {
                        offset: *o,
                        id: c.id.as_bytes().to_vec().into(),
                        len: c.len,
                    })
                    .collect(),
                missing: missing
                    .iter()
                    .map(|g| pb::ByteRange {
                        offset: g.offset,
                        len: g.len,
                    })
                    .collect(),
                created_at_ms: rec.created_at_ms,
                last_activity_ms: rec.last_activity_ms,
                expires_at_ms: rec.last_activity_ms
                    + self.ctx.config.session_idle_timeout.as_millis() as i64,
            })
        })
        .await
    }

    async fn complete_upload(
        &self,
        req: Request<pb::CompleteUploadRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        observe("CompleteUpload", async {
            let tenant = self.tenant(&req)?;
            let r = req.get_ref();
            let id = convert::session_id(&r.session_id)?;
            let file_hash = convert::hash32(&r.file_hash, "file_hash")?;
            let actor = session_actor(&self.sup, id).await?;
            let view = call(&actor, |reply| SessionMsg::Complete {
                tenant,
                file_hash,
                reply,
            })
            .await??;
            Ok(convert::object_info(&view))
        })
        .await
    }

    async fn abort_upload(
        &self,
        req: Request<pb::AbortUploadRequest>,
    ) -> Result<Response<pb::AbortUploadResponse>, Status> {
        observe("AbortUpload", async {
            let tenant = self.tenant(&req)?;
            let id = convert::session_id(&req.get_ref().session_id)?;
            let actor = session_actor(&self.sup, id).await?;
            call(&actor, |reply| SessionMsg::Abort { tenant, reply }).await??;
            Ok(pb::AbortUploadResponse {})
        })
        .await
    }

    type GetStream = BoxStream<pb::GetResponse>;

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        observe("Get", async {
            let tenant = self.tenant(&req)?;
            self.ctx.linearize().await?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let (rec, version_count) = self.find_version(tenant, &bucket, &key, r.version)?;
            let size = rec.info.size;
            if r.offset > size {
                return Err(NodeError::OutOfRange(format!(
                    "range starts at {} but {bucket}/{key} is {size} bytes",
                    r.offset
                )));
            }
            let end = if r.length == 0 {
                size
            } else {
                r.offset.saturating_add(r.length)
            };
            if end > size {
                return Err(NodeError::OutOfRange(format!(
                    "range {}..{end} runs past the end of {bucket}/{key} ({size} bytes)",
                    r.offset
                )));
            }
            let tier = self
                .ctx
                .sm
                .version_tier(tenant, &bucket, &key, rec.info.version)?;
            if let Some(why) = super::tier::cold_read_refusal(&bucket, &key, &tier) {
                return Err(NodeError::FailedPrecondition(why));
            }
            self.ctx.tiering.note_read(tenant, &bucket, &key);
            let mut info = convert::version_info(
                bucket.as_str(),
                key.as_str(),
                &rec.info,
                version_count,
                None,
            );
            info.tier = Some(super::tier::tier_info(&tier));
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(stream_range(self.ctx.clone(), rec, r.offset, end, info, tx));
            Ok(Box::pin(ReceiverStream::new(rx)) as Self::GetStream)
        })
        .await
    }

    async fn stat(
        &self,
        req: Request<pb::StatRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        observe("Stat", async {
            let tenant = self.tenant(&req)?;
            self.ctx.linearize().await?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let (rec, count) = self.find_version(tenant, &bucket, &key, r.version)?;
            let mut info =
                convert::version_info(bucket.as_str(), key.as_str(), &rec.info, count, None);
            let tier = self
                .ctx
                .sm
                .version_tier(tenant, &bucket, &key, rec.info.version)?;
            info.tier = Some(super::tier::tier_info(&tier));
            Ok(info)
        })
        .await
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        observe("Restore", async {
            let tenant = self.tenant(&req)?;
            self.ctx.linearize().await?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let tier = super::tier::restore_tier(&r.tier)?;
            if r.days > 3650 {
                return Err(NodeError::InvalidArgument(format!(
                    "days {} is over 3650 (ten years)",
                    r.days
                )));
            }
            let (rec, count) = self.find_version(tenant, &bucket, &key, r.version)?;
            let version = rec.info.version;
            let current = self.ctx.sm.version_tier(tenant, &bucket, &key, version)?;
            let backend = match &current {
                strata_cluster::tier::VersionTier::Hot => {
                    return Err(NodeError::FailedPrecondition(format!(
                        "{bucket}/{key} version {version} is hot (not in cold storage): nothing to restore"
                    )));
                }
                strata_cluster::tier::VersionTier::Cold(c)
                | strata_cluster::tier::VersionTier::Restoring(c, _) => c.backend.clone(),
            };
            let days = match r.days {
                0 => self
                    .ctx
                    .config
                    .tier_backends()
                    .into_iter()
                    .find(|b| b.name == backend)
                    .map_or(1, |b| b.restore_days),
                d => d,
            };
            self.ctx
                .propose(Command::StartRestore {
                    tenant,
                    bucket: bucket.clone(),
                    key: key.clone(),
                    version,
                    tier,
                    days,
                    now_ms: now_ms(),
                })
                .await?;
            let mut info =
                convert::version_info(bucket.as_str(), key.as_str(), &rec.info, count, None);
            let tier = self.ctx.sm.version_tier(tenant, &bucket, &key, version)?;
            info.tier = Some(super::tier::tier_info(&tier));
            Ok(info)
        })
        .await
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        observe("List", async {
            let tenant = self.tenant(&req)?;
            let r = req.get_ref();
            if !r.stale {
                self.ctx.linearize().await?;
            }
            let bucket = convert::bucket(&r.bucket)?;
            if !self.ctx.sm.bucket_exists(tenant, &bucket)? {
                return Err(NodeError::NotFound(format!("bucket {bucket} not found")));
            }
            if r.prefix.len() > strata_cluster::names::MAX_KEY_LEN || r.prefix.contains('\0') {
                return Err(NodeError::InvalidArgument(
                    "prefix must be at most 1024 bytes with no NUL".into(),
                ));
            }
            if r.delimiter.len() > 16 || r.delimiter.contains('\0') {
                return Err(NodeError::InvalidArgument(
                    "delimiter must be at most 16 bytes with no NUL".into(),
                ));
            }
            let page_size = match r.page_size {
                0 => DEFAULT_PAGE,
                n if n > DEFAULT_PAGE => {
                    return Err(NodeError::InvalidArgument(format!(
                        "page_size must be at most {DEFAULT_PAGE}"
                    )));
                }
                n => n,
            };
            let start = decode_token(&r.page_token)?;
            let page = self.ctx.sm.list(&ListQuery {
                tenant,
                bucket: &bucket,
                prefix: &r.prefix,
                delimiter: &r.delimiter,
                limit: page_size as usize,
                start,
                trash: r.trash,
            })?;
            Ok(pb::ListResponse {
                objects: page.objects.iter().map(convert::object_info).collect(),
                folders: page.folders,
                next_page_token: page.next.map(|c| encode_token(&c)).unwrap_or_default(),
            })
        })
        .await
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        observe("ListVersions", async {
            let tenant = self.tenant(&req)?;
            self.ctx.linearize().await?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let head = self
                .ctx
                .sm
                .object(tenant, &bucket, &key)?
                .ok_or_else(|| NodeError::NotFound(format!("{bucket}/{key} not found")))?;
            let deleted = head.trash.map(|t| t.deleted_at_ms);
            let versions = self.ctx.sm.versions(tenant, &bucket, &key)?;
            Ok(pb::ListVersionsResponse {
                versions: versions
                    .iter()
                    .map(|v| {
                        convert::version_info(
                            bucket.as_str(),
                            key.as_str(),
                            v,
                            head.version_count,
                            deleted,
                        )
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        observe("Delete", async {
            let tenant = self.tenant(&req)?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let now = now_ms();
            let purge_at_ms = now + self.ctx.config.trash_retention.as_millis() as i64;
            let cmd = Command::TrashObject {
                tenant,
                bucket: bucket.clone(),
                key: key.clone(),
                now_ms: now,
                purge_at_ms,
            };
            match self.ctx.propose(cmd).await {
                Ok(SmResponse::Trashed(t)) => Ok(pb::DeleteResponse {
                    purge_at_ms: t.purge_at_ms,
                }),
                Ok(other) => Err(NodeError::Internal(format!(
                    "unexpected response to TrashObject: {other:?}"
                ))),
                Err(NodeError::Rejected(Rejection::ObjectNotFound)) => {
                    Err(NodeError::NotFound(format!("{bucket}/{key} not found")))
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn create_bucket(
        &self,
        req: Request<pb::BucketRequest>,
    ) -> Result<Response<pb::BucketInfo>, Status> {
        observe("CreateBucket", async {
            let tenant = self.tenant(&req)?;
            let bucket = convert::bucket(&req.get_ref().bucket)?;
            let now = now_ms();
            self.ctx
                .propose(Command::CreateBucket {
                    tenant,
                    bucket: bucket.clone(),
                    now_ms: now,
                })
                .await?;
            Ok(pb::BucketInfo {
                bucket: bucket.to_string(),
                created_at_ms: now,
            })
        })
        .await
    }

    async fn list_buckets(
        &self,
        req: Request<pb::ListBucketsRequest>,
    ) -> Result<Response<pb::ListBucketsResponse>, Status> {
        observe("ListBuckets", async {
            let tenant = self.tenant(&req)?;
            self.ctx.linearize().await?;
            let buckets = self.ctx.sm.buckets(tenant)?;
            Ok(pb::ListBucketsResponse {
                buckets: buckets
                    .into_iter()
                    .map(|(b, t)| pb::BucketInfo {
                        bucket: b.to_string(),
                        created_at_ms: t,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn delete_bucket(
        &self,
        req: Request<pb::BucketRequest>,
    ) -> Result<Response<pb::DeleteBucketResponse>, Status> {
        observe("DeleteBucket", async {
            let tenant = self.tenant(&req)?;
            let bucket = convert::bucket(&req.get_ref().bucket)?;
            match self
                .ctx
                .propose(Command::DeleteBucket {
                    tenant,
                    bucket: bucket.clone(),
                })
                .await
            {
                Ok(_) => Ok(pb::DeleteBucketResponse {}),
                Err(NodeError::Rejected(Rejection::BucketNotFound)) => {
                    Err(NodeError::NotFound(format!("bucket {bucket} not found")))
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn undelete(
        &self,
        req: Request<pb::UndeleteRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        observe("Undelete", async {
            let tenant = self.tenant(&req)?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let cmd = Command::UntrashObject {
                tenant,
                bucket: bucket.clone(),
                key: key.clone(),
            };
            match self.ctx.propose(cmd).await {
                Ok(SmResponse::Untrashed(view)) => Ok(convert::object_info(&view)),
                Ok(other) => Err(NodeError::Internal(format!(
                    "unexpected response to UntrashObject: {other:?}"
                ))),
                Err(NodeError::Rejected(Rejection::ObjectNotFound)) => Err(NodeError::NotFound(
                    format!("{bucket}/{key} not found (purged, or never existed)"),
                )),
                Err(NodeError::Rejected(Rejection::NotInTrash)) => Err(
                    NodeError::FailedPrecondition(format!("{bucket}/{key} is not in the trash")),
                ),
                Err(e) => Err(e),
            }
        })
        .await
    }
}

/// Reads a PutChunks stream, hands each chunk to the session actor (at most PUT_WINDOW in
/// flight, which also bounds how far the client can get ahead), and sends acks in order.
async fn pump_chunks(
    ctx: &Context,
    sup: &ActorRef<SupervisorMsg>,
    tenant: TenantId,
    mut inbound: Streaming<pb::PutChunkRequest>,
    tx: &mpsc::Sender<Result<pb::PutChunkAck, Status>>,
) -> NodeResult<()> {
    let mut session: Option<(SessionId, ActorRef<SessionMsg>)> = None;
    let mut pending = FuturesOrdered::new();
    let max = ctx.config.max_chunk_bytes as usize;
    let mut inbound_open = true;
    while inbound_open || !pending.is_empty() {
        tokio::select! {
            biased;
            Some(ack) = pending.next(), if !pending.is_empty() => {
                let ack: Ack = ack?;
                let msg = pb::PutChunkAck {
                    offset: ack.offset,
                    id: Bytes::copy_from_slice(ack.id.as_bytes()),
                    written: ack.written,
                    bytes_present: ack.bytes_present,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return Ok(()); // the client went away; durable chunks stay in the session
                }
            }
            msg = inbound.message(), if inbound_open && pending.len() < PUT_WINDOW => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => { inbound_open = false; continue; }
                    Err(status) => {
                        tracing::debug!(%status, "PutChunks client stream ended with an error");
                        inbound_open = false;
                        continue;
                    }
                };
                let actor = match &session {
                    Some((id, actor)) => {
                        if !msg.session_id.is_empty() && msg.session_id != id.to_string() {
                            return Err(NodeError::InvalidArgument("one PutChunks stream serves one session: session_id changed".into()));
                        }
                        actor.clone()
                    }
                    None => {
                        let id = convert::session_id(&msg.session_id)?;
                        let actor = session_actor(sup, id).await?;
                        session = Some((id, actor.clone()));
                        actor
                    }
                };
                if msg.data.len() > max {
                    return Err(NodeError::InvalidArgument(format!(
                        "chunk at offset {} is {} bytes, over the {max}-byte limit", msg.offset, msg.data.len()
                    )));
                }
                let id = convert::chunk_id(&msg.id, "chunk id")?;
                let (offset, data) = (msg.offset, msg.data);
                pending.push_back(async move {
                    call(&actor, |reply| SessionMsg::Put { tenant, offset, id, data, reply }).await?
                });
            }
        }
    }
    Ok(())
}

/// Streams bytes [start, end) of a version, reading (and verifying) the next chunk while the
/// current one is sent.
async fn stream_range(
    ctx: Arc<Context>,
    rec: VersionRecord,
    start: u64,
    end: u64,
    info: pb::ObjectInfo,
    tx: mpsc::Sender<Result<pb::GetResponse, Status>>,
) {
    let started = std::time::Instant::now();
    if tx
        .send(Ok(pb::GetResponse {
            info: Some(info),
            data: Bytes::new(),
        }))
        .await
        .is_err()
    {
        return;
    }
    let wanted: Vec<_> = rec
        .chunks
        .into_iter()
        .filter(|c| c.offset < end && c.offset + c.len as u64 > start)
        .collect();
    let read = |id| {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.read_chunk(id).await })
    };
    // Up to GET_READ_AHEAD chunks are read and verified while earlier ones are sent.
    let mut ahead = std::collections::VecDeque::new();
    let mut next_read = 0;
    for c in &wanted {
        while next_read < wanted.len() && ahead.len() < GET_READ_AHEAD {
            ahead.push_back(read(wanted[next_read].id));
            next_read += 1;
        }
        let Some(task) = ahead.pop_front() else { break };
        let data = match task.await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "download failed");
                let _ = tx.send(Err(e.into())).await;
                return;
            }
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("read task: {e}"))))
                    .await;
                return;
            }
        };
        let hi = (end.saturating_sub(c.offset) as usize).min(data.len());
        let lo = (start.saturating_sub(c.offset) as usize).min(hi);
        let mut piece = data.slice(lo..hi);
        while !piece.is_empty() {
            let part = piece.split_to(piece.len().min(GET_PIECE));
            let n = part.len() as u64;
            if tx
                .send(Ok(pb::GetResponse {
                    info: None,
                    data: part,
                }))
                .await
                .is_err()
            {
                return;
            }
            metrics::counter!(m::DOWNLOAD_BYTES).increment(n);
        }
    }
    metrics::histogram!(m::GRPC_DURATION, "method" => "Get.stream")
        .record(started.elapsed().as_secs_f64());
}

fn encode_token(c: &ListCursor) -> String {
    match c {
        ListCursor::AfterKey(k) => format!("k{}", hex::encode(k)),
        ListCursor::AfterFolder(f) => format!("f{}", hex::encode(f)),
    }
}

fn decode_token(t: &str) -> NodeResult<Option<ListCursor>> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || NodeError::InvalidArgument("page_token is not one this node issued".into());
    let name = hex::decode(t.get(1..).ok_or_else(bad)?)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    match t.as_bytes()[0] {
        b'k' => Ok(Some(ListCursor::AfterKey(name))),
        b'f' => Ok(Some(ListCursor::AfterFolder(name))),
        _ => Err(bad()),
    }
}
