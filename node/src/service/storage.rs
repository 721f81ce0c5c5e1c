//! The client Storage service. Handlers authenticate, validate input into domain types, and
//! then read the state machine or hand work to the session actors.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use ractor::ActorRef;
use strata_cluster::query::{ListCursor, ListQuery};
use strata_cluster::records::VersionRecord;
use strata_cluster::{
    BucketName, Command, ObjectKey, Rejection, Response as SmResponse, SessionId, StateMachine,
    TenantId,
};
use strata_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::ingress::{MessagePermits, Stillness, StreamGate, StreamTicket};
use super::limits::TenantLimits;
use super::observe::{observe, record};
use crate::actors::supervisor::{SupervisorMsg, call, session_actor};
use crate::actors::upload_session::{Ack, SessionMsg};
use crate::auth::{self, Access};
use crate::budget::MemoryBudget;
use crate::clock::now_ms;
use crate::config::Config;
use crate::error::{NodeError, NodeResult};
use crate::metrics as m;
use crate::raft::Cluster;
use crate::reads::Reads;
use crate::tiering::Tiering;

/// Chunks of one PutChunks stream being verified and written at once.
const PUT_WINDOW: usize = 8;
/// Largest data piece of one Get message (clients' default message limit is 4 MiB).
const GET_PIECE: usize = 1024 * 1024;
const DEFAULT_PAGE: u32 = 1000;
/// Largest object: 1 PiB (keeps every offset arithmetic far from overflow).
const MAX_OBJECT_BYTES: u64 = 1 << 50;
pub struct StorageService {
    sm: Arc<StateMachine>,
    cluster: Arc<Cluster>,
    reads: Arc<Reads>,
    tiering: Arc<Tiering>,
    sup: ActorRef<SupervisorMsg>,
    config: Arc<Config>,
    budget: Arc<MemoryBudget>,
    streams: Arc<StreamGate>,
    limits: Arc<TenantLimits>,
}

/// What the Storage service works with (built by the server).
pub struct StorageDeps {
    pub sm: Arc<StateMachine>,
    pub cluster: Arc<Cluster>,
    pub reads: Arc<Reads>,
    pub tiering: Arc<Tiering>,
    pub sup: ActorRef<SupervisorMsg>,
    pub config: Arc<Config>,
    pub budget: Arc<MemoryBudget>,
    pub streams: Arc<StreamGate>,
    pub limits: Arc<TenantLimits>,
}

impl StorageService {
    pub fn new(d: StorageDeps) -> Self {
        StorageService {
            sm: d.sm,
            cluster: d.cluster,
            reads: d.reads,
            tiering: d.tiering,
            sup: d.sup,
            config: d.config,
            budget: d.budget,
            streams: d.streams,
            limits: d.limits,
        }
    }

    /// The tenant the call acts for, if its token allows `access` (to the bucket the request
    /// names, if it names one) and its plan's request rate allows one more call.
    fn tenant<T: Bucketed>(&self, req: &Request<T>, access: Access) -> NodeResult<TenantId> {
        let bucket = req
            .get_ref()
            .bucket_name()
            .and_then(|b| convert::bucket(b).ok());
        let tenant = auth::tenant(&self.sm, req.metadata(), access, bucket.as_ref())?;
        self.limits.admit(tenant)?;
        Ok(tenant)
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
        let head = self.sm.object(tenant, bucket, key)?.ok_or_else(not_found)?;
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
            .sm
            .version(tenant, bucket, key, v)?
            .ok_or_else(|| NodeError::NotFound(format!("{bucket}/{key} has no version {v}")))?;
        Ok((rec, head.version_count))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Requests that name a bucket (a token limited to one bucket is checked against it). Calls
/// on an upload session name none: the session was opened by a call that did.
trait Bucketed {
    fn bucket_name(&self) -> Option<&str>;
}

macro_rules! bucketed {
    ($($named:ty),* ; $($unnamed:ty),*) => {
        $(impl Bucketed for $named {
            fn bucket_name(&self) -> Option<&str> {
                Some(&self.bucket)
            }
        })*
        $(impl Bucketed for $unnamed {
            fn bucket_name(&self) -> Option<&str> {
                None
            }
        })*
    };
}

bucketed!(
    pb::CreateUploadRequest, pb::GetRequest, pb::StatRequest, pb::RestoreRequest,
    pb::ListRequest, pb::ListVersionsRequest, pb::DeleteRequest, pb::BucketRequest,
    pb::UndeleteRequest;
    pb::GetUploadRequest, pb::CompleteUploadRequest, pb::AbortUploadRequest,
    pb::ListBucketsRequest, Streaming<pb::PutChunkRequest>
);

#[tonic::async_trait]
impl pb::storage_server::Storage for StorageService {
    async fn create_upload(
        &self,
        req: Request<pb::CreateUploadRequest>,
    ) -> Result<Response<pb::CreateUploadResponse>, Status> {
        observe("CreateUpload", async {
            let tenant = self.tenant(&req, Access::Write)?;
            let r = req.get_ref();
            let bucket = convert::bucket(&r.bucket)?;
            let key = convert::key(&r.key)?;
            let max_chunk = self.config.max_chunk_bytes;
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
            let opened = self.cluster.propose(cmd).await.map_err(NodeError::from);
            if let Err(NodeError::Rejected(r)) = &opened {
                if let Some(limit) = strata_cluster::plans::limit_label(r) {
                    self.limits.refused(tenant, limit);
                }
            }
            match opened? {
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
        let start = std::time::Instant::now();
        let opened = self
            .tenant(&req, Access::Write)
            .and_then(|tenant| Ok((tenant, self.streams.enter(tenant, "put")?)));
        let (tenant, ticket) = match opened {
            Ok(t) => t,
            Err(e) => {
                record("PutChunks", start, Some(&e));
                return Err(e.into());
            }
        };
        let permits = req
            .extensions()
            .get::<Arc<MessagePermits>>()
            .cloned()
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel(PUT_WINDOW * 2);
        let pump = Pump {
            sup: self.sup.clone(),
            budget: self.budget.clone(),
            limits: self.limits.clone(),
            permits,
            tenant,
            max_chunk: self.config.max_chunk_bytes as usize,
            idle: self.config.stream_idle_timeout,
            _ticket: ticket,
        };
        let inbound = req.into_inner();
        tokio::spawn(async move {
            let result = pump.run(inbound, &tx).await;
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
            let tenant = self.tenant(&req, Access::Read)?;
            self.cluster.linearize().await?;
            let id = convert::session_id(&req.get_ref().session_id)?;
            let rec = match self.sm.session(&id)? {
                Some(rec) if rec.tenant == tenant => rec,
                _ => return Err(Rejection::SessionNotFound.into()),
            };
            let chunks = self.sm.session_chunks(&id)?;
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
                    + self.config.session_idle_timeout.as_millis() as i64,
            })
        })
        .await
    }

    async fn complete_upload(
        &self,
        req: Request<pb::CompleteUploadRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        observe("CompleteUpload", async {
            let tenant = self.tenant(&req, Access::Write)?;
            let r = req.get_ref();
            let id = convert::session_id(&r.session_id)?;
            let file_hash = convert::hash32(&r.file_hash, "file_hash")?;
            let actor = match session_actor(&self.sup, id).await {
                Err(NodeError::Rejected(Rejection::SessionNotFound)) => {
                    // A repeat of a completion that committed (its answer was lost): the
                    // completion record names the version. After a read barrier, so that a
                    // completion (or the session itself) committed through another node is seen.
                    self.cluster.linearize().await?;
                    if let Some(view) = self.sm.completion(&id, tenant, &file_hash)? {
                        return Ok(convert::object_info(&view));
                    }
                    session_actor(&self.sup, id).await?
                }
                other => other?,
            };
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
            let tenant = self.tenant(&req, Access::Write)?;
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
            let tenant = self.tenant(&req, Access::Read)?;
            let ticket = self.streams.enter(tenant, "get")?;
            self.cluster.linearize().await?;
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
                .sm
                .version_tier(tenant, &bucket, &key, rec.info.version)?;
            if let Some(why) = super::tier::cold_read_refusal(&bucket, &key, &tier) {
                return Err(NodeError::FailedPrecondition(why));
            }
            self.tiering.note_read(tenant, &bucket, &key);
            let mut info = convert::version_info(
                bucket.as_str(),
                key.as_str(),
                &rec.info,
                version_count,
                None,
            );
            info.tier = Some(super::tier::tier_info(&tier));
            let (tx, rx) = mpsc::channel(4);
            let download = Download {
                reads: self.reads.clone(),
                budget: self.budget.clone(),
                limits: self.limits.clone(),
                tenant,
                idle: self.config.stream_idle_timeout,
                _ticket: ticket,
            };
            tokio::spawn(download.run(rec, r.offset, end, info, tx));
            Ok(Box::pin(ReceiverStream::new(rx)) as Self::GetStream)
        })
        .await
    }

    async fn stat(
        &self,
        req: Request<pb::StatRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        observe("Stat", async {
            let tenant = self.tenant(&req, Access::Read)?;
            self.cluster.linearize().await?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let (rec, count) = self.find_version(tenant, &bucket, &key, r.version)?;
            let mut info =
                convert::version_info(bucket.as_str(), key.as_str(), &rec.info, count, None);
            let tier = self
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
            let tenant = self.tenant(&req, Access::Write)?;
            self.cluster.linearize().await?;
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
            let current = self.sm.version_tier(tenant, &bucket, &key, version)?;
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
                    .config
                    .tier_backends()
                    .into_iter()
                    .find(|b| b.name == backend)
                    .map_or(1, |b| b.restore_days),
                d => d,
            };
            self.cluster
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
            let tier = self.sm.version_tier(tenant, &bucket, &key, version)?;
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
            let tenant = self.tenant(&req, Access::Read)?;
            let r = req.get_ref();
            if !r.stale {
                self.cluster.linearize().await?;
            }
            let bucket = convert::bucket(&r.bucket)?;
            if !self.sm.bucket_exists(tenant, &bucket)? {
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
            let page = self.sm.list(&ListQuery {
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
                next_page_token: page.next.map(|c| c.to_token()).unwrap_or_default(),
            })
        })
        .await
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        observe("ListVersions", async {
            let tenant = self.tenant(&req, Access::Read)?;
            self.cluster.linearize().await?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let head = self
                .sm
                .object(tenant, &bucket, &key)?
                .ok_or_else(|| NodeError::NotFound(format!("{bucket}/{key} not found")))?;
            let deleted = head.trash.map(|t| t.deleted_at_ms);
            let versions = self.sm.versions(tenant, &bucket, &key)?;
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
            let tenant = self.tenant(&req, Access::Write)?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let now = now_ms();
            let purge_at_ms = now + self.config.trash_retention.as_millis() as i64;
            let cmd = Command::TrashObject {
                tenant,
                bucket: bucket.clone(),
                key: key.clone(),
                now_ms: now,
                purge_at_ms,
            };
            match self.cluster.propose(cmd).await.map_err(NodeError::from) {
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
            let tenant = self.tenant(&req, Access::Write)?;
            let bucket = convert::bucket(&req.get_ref().bucket)?;
            let now = now_ms();
            self.cluster
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
            let tenant = self.tenant(&req, Access::Read)?;
            let only = auth::only_bucket(&self.sm, req.metadata())?;
            self.cluster.linearize().await?;
            let buckets = self.sm.buckets(tenant)?;
            Ok(pb::ListBucketsResponse {
                buckets: buckets
                    .into_iter()
                    .filter(|(b, _)| only.as_ref().is_none_or(|o| o == b))
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
            let tenant = self.tenant(&req, Access::Write)?;
            let bucket = convert::bucket(&req.get_ref().bucket)?;
            match self
                .cluster
                .propose(Command::DeleteBucket {
                    tenant,
                    bucket: bucket.clone(),
                })
                .await
                .map_err(NodeError::from)
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
            let tenant = self.tenant(&req, Access::Write)?;
            let r = req.get_ref();
            let (bucket, key) = (convert::bucket(&r.bucket)?, convert::key(&r.key)?);
            let cmd = Command::UntrashObject {
                tenant,
                bucket: bucket.clone(),
                key: key.clone(),
            };
            match self.cluster.propose(cmd).await.map_err(NodeError::from) {
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

/// One PutChunks stream: reads messages (each already holding its memory permit, taken by
/// the ingress layer before its bytes were read), hands each chunk to the session actor (at
/// most PUT_WINDOW in flight, which also bounds how far the client can get ahead), and sends
/// the acks in order. A stream with nothing to read and nothing in flight for `idle` is
/// closed; a message that cannot be read ends the call with its error, never with OK.
struct Pump {
    sup: ActorRef<SupervisorMsg>,
    budget: Arc<MemoryBudget>,
    limits: Arc<TenantLimits>,
    permits: Arc<MessagePermits>,
    tenant: TenantId,
    max_chunk: usize,
    idle: Duration,
    _ticket: StreamTicket,
}

impl Pump {
    async fn run(
        self,
        mut inbound: Streaming<pb::PutChunkRequest>,
        tx: &mpsc::Sender<Result<pb::PutChunkAck, Status>>,
    ) -> NodeResult<()> {
        let tenant = self.tenant;
        let mut session: Option<(SessionId, ActorRef<SessionMsg>)> = None;
        let mut pending = FuturesOrdered::new();
        let mut inbound_open = true;
        while inbound_open || !pending.is_empty() {
            // With nothing in flight, a stream that has not moved for `idle` is closed: the
            // client sent nothing (DEADLINE_EXCEEDED), or the node had no memory for its next
            // chunk (RESOURCE_EXHAUSTED). Checked at least every second.
            let still = match self.permits.stillness() {
                Stillness::Idle(d) | Stillness::Starved(d) => d,
            };
            let check = self
                .idle
                .saturating_sub(still)
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            let idle = tokio::time::sleep(check);
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
                    // The client went away: durable chunks stay in the session.
                    if tx.send(Ok(msg)).await.is_err() {
                        return Ok(());
                    }
                    self.permits.touch();
                }
                msg = inbound.message(), if inbound_open && pending.len() < PUT_WINDOW => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => { inbound_open = false; continue; }
                        Err(status) => return Err(inbound_error(status, self.max_chunk)),
                    };
                    self.permits.touch();
                    // Taken by the ingress layer before the message's bytes were read; taken
                    // here only if the layer is absent.
                    let permit = match self.permits.next() {
                        Some(p) => p,
                        None => self.budget.client(msg.data.len() as u64).await?,
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
                            let actor = session_actor(&self.sup, id).await?;
                            session = Some((id, actor.clone()));
                            actor
                        }
                    };
                    if msg.data.len() > self.max_chunk {
                        return Err(NodeError::InvalidArgument(format!(
                            "chunk at offset {} is {} bytes, over the {}-byte limit", msg.offset, msg.data.len(), self.max_chunk
                        )));
                    }
                    let id = convert::chunk_id(&msg.id, "chunk id")?;
                    let (offset, data) = (msg.offset, msg.data);
                    let limits = self.limits.clone();
                    pending.push_back(async move {
                        // The tenant's bandwidth: the chunk waits (with the others in the
                        // window, so the client is slowed by flow control), then is written.
                        limits.pace(tenant, data.len() as u64).await?;
                        call(&actor, |reply| SessionMsg::Put { tenant, offset, id, data, permit: Some(permit), reply }).await?
                    });
                }
                _ = idle, if pending.is_empty() => match self.permits.stillness() {
                    Stillness::Idle(d) if d >= self.idle => {
                        metrics::counter!(m::INGRESS_REFUSED, "limit" => "stream_idle_timeout").increment(1);
                        return Err(NodeError::DeadlineExceeded(format!(
                            "no chunk arrived for {} (stream_idle_timeout): the stream is closed; chunks acknowledged so far are kept in the session",
                            humantime::format_duration(self.idle)
                        )));
                    }
                    Stillness::Starved(d) if d >= self.idle => {
                        metrics::counter!(m::INGRESS_REFUSED, "limit" => "max_inflight_bytes").increment(1);
                        return Err(NodeError::ResourceExhausted(format!(
                            "the node had no memory for this stream's next chunk for {} (max_inflight_bytes, stream_idle_timeout): retry; chunks acknowledged so far are kept in the session",
                            humantime::format_duration(self.idle)
                        )));
                    }
                    _ => continue,
                },
            }
        }
        Ok(())
    }
}

/// A PutChunks message that could not be read: the client's own error, or a message over the
/// size limit (tonic says OUT_OF_RANGE; it is a resource limit, named as such).
fn inbound_error(status: Status, max_chunk: usize) -> NodeError {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            if status.message().contains("too large") || status.message().contains("limit") =>
        {
            NodeError::ResourceExhausted(format!(
                "{} (the message limit is max_chunk_bytes plus 1 MiB; chunks of at most {max_chunk} bytes)",
                status.message()
            ))
        }
        _ => NodeError::from_status(status),
    }
}

/// Chunks of one download read ahead of the one being sent.
const GET_READ_AHEAD: usize = 3;

/// One Get stream: bytes [start, end) of a version. Up to GET_READ_AHEAD chunks are read (and
/// verified) ahead of the one being sent, each holding memory from the client pool; when the
/// client goes away or stops reading for `idle`, the reads ahead are cancelled.
struct Download {
    reads: Arc<Reads>,
    budget: Arc<MemoryBudget>,
    limits: Arc<TenantLimits>,
    tenant: TenantId,
    idle: Duration,
    _ticket: StreamTicket,
}

/// A spawned task that is cancelled when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Download {
    async fn run(
        self,
        rec: VersionRecord,
        start: u64,
        end: u64,
        info: pb::ObjectInfo,
        tx: mpsc::Sender<Result<pb::GetResponse, Status>>,
    ) {
        let started = std::time::Instant::now();
        let object = format!("{}/{} version {}", info.bucket, info.key, info.version);
        let first = pb::GetResponse {
            info: Some(info),
            data: Bytes::new(),
        };
        if !self.send(&tx, Ok(first)).await {
            return;
        }
        let wanted: Vec<_> = rec
            .chunks
            .into_iter()
            .filter(|c| c.offset < end && c.offset + c.len as u64 > start)
            .collect();
        let mut ahead = std::collections::VecDeque::new();
        let mut next_read = 0;
        for c in &wanted {
            while next_read < wanted.len() && ahead.len() < GET_READ_AHEAD {
                let chunk = &wanted[next_read];
                let permit = tokio::select! {
                    p = self.budget.client(u64::from(chunk.len)) => p,
                    _ = tx.closed() => return,
                };
                let permit = match permit {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(NodeError::from(e).into())).await;
                        return;
                    }
                };
                let (reads, id) = (self.reads.clone(), chunk.id);
                ahead.push_back(AbortOnDrop(tokio::spawn(async move {
                    let r = reads.chunk(id).await;
                    (r, permit)
                })));
                next_read += 1;
            }
            let Some(mut task) = ahead.pop_front() else {
                break;
            };
            let (data, _permit) = match (&mut task.0).await {
                Ok((Ok(d), p)) => (d, p),
                Ok((Err(e), _)) => {
                    tracing::error!(object, offset = c.offset, error = %e, "download failed");
                    let status: Status = NodeError::from(e).into();
                    let named = Status::new(
                        status.code(),
                        format!(
                            "{object}, bytes {}..{}: {}",
                            c.offset,
                            c.offset + u64::from(c.len),
                            status.message()
                        ),
                    );
                    let _ = tx.send(Err(named)).await;
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
                let paced = tokio::select! {
                    r = self.limits.pace(self.tenant, n) => r,
                    _ = tx.closed() => return,
                };
                if let Err(e) = paced {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                let msg = pb::GetResponse {
                    info: None,
                    data: part,
                };
                if !self.send(&tx, Ok(msg)).await {
                    return;
                }
                metrics::counter!(m::DOWNLOAD_BYTES).increment(n);
            }
        }
        metrics::histogram!(m::GRPC_DURATION, "method" => "Get.stream")
            .record(started.elapsed().as_secs_f64());
    }

    /// Sends one message; false when the client is gone or has not read for `idle`.
    async fn send(
        &self,
        tx: &mpsc::Sender<Result<pb::GetResponse, Status>>,
        msg: Result<pb::GetResponse, Status>,
    ) -> bool {
        match tokio::time::timeout(self.idle, tx.send(msg)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                metrics::counter!(m::INGRESS_REFUSED, "limit" => "stream_idle_timeout")
                    .increment(1);
                tracing::debug!("download stalled for the stream idle timeout; closing it");
                false
            }
        }
    }
}

fn decode_token(t: &str) -> NodeResult<Option<ListCursor>> {
    ListCursor::from_token(t)
        .ok_or_else(|| NodeError::InvalidArgument("page_token is not one this node issued".into()))
}
