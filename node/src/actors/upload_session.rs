//! UploadSession: one actor per open upload. It owns the session's in-memory view (which
//! chunks are durable, which are being written), checks each incoming chunk against the
//! session, and has the heavy work (BLAKE3 verification, the durable write, the AddChunk
//! command) done in a spawned task so the actor keeps answering while chunks are in flight.
//! Everything it knows is in the state machine too: a restarted actor recovers it in pre_start.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use strata_cluster::file_hash::{self, Piece};
use strata_cluster::records::{ManifestEntry, ObjectView, SessionChunk, SessionRecord};
use strata_cluster::{ChunkId, Command, Rejection, Response, SessionId, StateMachine, TenantId};

use crate::blocks::BlockManager;
use crate::budget::Permit;
use crate::clock::now_ms;
use crate::config::MAX_UPLOAD_CHUNKS;
use crate::error::{NodeError, NodeResult};
use crate::metrics as m;
use crate::raft::Cluster;
use crate::reads::Reads;

pub struct UploadSession;

/// What a session works with.
#[derive(Clone)]
pub struct SessionDeps {
    pub sm: Arc<StateMachine>,
    pub cluster: Arc<Cluster>,
    pub blocks: Arc<BlockManager>,
    pub reads: Arc<Reads>,
    pub max_chunk_bytes: u32,
}

pub struct SessionArgs {
    pub id: SessionId,
    pub deps: SessionDeps,
}

/// Acknowledgement of one durable chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub offset: u64,
    pub id: ChunkId,
    pub written: bool,
    pub bytes_present: u64,
}

pub enum SessionMsg {
    /// Checks a chunk against the session and, if it fits, stores it; replies once durable.
    Put {
        tenant: TenantId,
        offset: u64,
        id: ChunkId,
        data: Bytes,
        /// The memory the chunk's bytes hold (released once they are stored everywhere).
        permit: Option<Permit>,
        reply: RpcReplyPort<NodeResult<Ack>>,
    },
    /// A spawned write finished (internal).
    Stored {
        offset: u64,
        result: NodeResult<(SessionChunk, bool, u64)>,
    },
    Complete {
        tenant: TenantId,
        file_hash: [u8; 32],
        reply: RpcReplyPort<NodeResult<ObjectView>>,
    },
    Abort {
        tenant: TenantId,
        reply: RpcReplyPort<NodeResult<()>>,
    },
}

pub struct SessionState {
    deps: SessionDeps,
    rec: SessionRecord,
    /// Manifest entries by offset, when the session has a manifest.
    manifest: Option<BTreeMap<u64, ManifestEntry>>,
    present: BTreeMap<u64, SessionChunk>,
    inflight: HashMap<u64, Inflight>,
}

struct Inflight {
    id: ChunkId,
    len: u32,
    waiters: Vec<RpcReplyPort<NodeResult<Ack>>>,
}

impl Actor for UploadSession {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let sm = &args.deps.sm;
        let rec = sm
            .session(&args.id)?
            .ok_or_else(|| format!("session {} not found", args.id))?;
        let manifest = if rec.has_manifest {
            let entries = sm.session_manifest(&args.id)?.unwrap_or_default();
            let mut at = 0u64;
            let mut map = BTreeMap::new();
            for e in entries {
                map.insert(at, e);
                at += e.len as u64;
            }
            Some(map)
        } else {
            None
        };
        let present = sm.session_chunks(&args.id)?.into_iter().collect();
        Ok(SessionState {
            deps: args.deps,
            rec,
            manifest,
            present,
            inflight: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        st: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Put {
                tenant,
                offset,
                id,
                data,
                permit,
                reply,
            } => {
                if let Err(e) = st
                    .check_tenant(tenant)
                    .and_then(|_| st.check_put(offset, &id, data.len()))
                {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                if let Some(have) = st.present.get(&offset) {
                    let ack = Ack {
                        offset,
                        id: have.id,
                        written: false,
                        bytes_present: st.rec.bytes_present,
                    };
                    let _ = reply.send(Ok(ack));
                    return Ok(());
                }
                if let Some(f) = st.inflight.get_mut(&offset) {
                    f.waiters.push(reply);
                    return Ok(());
                }
                st.inflight.insert(
                    offset,
                    Inflight {
                        id,
                        len: data.len() as u32,
                        waiters: vec![reply],
                    },
                );
                let job = WriteJob {
                    blocks: st.deps.blocks.clone(),
                    cluster: st.deps.cluster.clone(),
                    permit,
                    session: st.rec.id,
                    tenant,
                    offset,
                    id,
                    data,
                    size: st.rec.size,
                };
                tokio::spawn(async move {
                    let result = job.run().await;
                    let _ = myself.cast(SessionMsg::Stored { offset, result });
                });
            }
            SessionMsg::Stored { offset, result } => {
                let Some(f) = st.inflight.remove(&offset) else {
                    return Ok(());
                };
                let ack = match result {
                    Ok((chunk, written, bytes_present)) => {
                        st.present.insert(offset, chunk);
                        st.rec.bytes_present = bytes_present;
                        Ok(Ack {
                            offset,
                            id: chunk.id,
                            written,
                            bytes_present,
                        })
                    }
                    Err(e) => Err(e),
                };
                for w in f.waiters {
                    let _ = w.send(match &ack {
                        Ok(a) => Ok(*a),
                        Err(e) => Err(e.duplicate()),
                    });
                }
            }
            SessionMsg::Complete {
                tenant,
                file_hash,
                reply,
            } => {
                let result = match st.check_tenant(tenant) {
                    Ok(()) => st.complete(file_hash).await,
                    Err(e) => Err(e),
                };
                let done = result.is_ok();
                let _ = reply.send(result);
                if done {
                    myself.stop(Some("completed".into()));
                }
            }
            SessionMsg::Abort { tenant, reply } => {
                let result = match st.check_tenant(tenant) {
                    Ok(()) => st
                        .deps
                        .cluster
                        .propose(Command::AbortSession {
                            session: st.rec.id,
                            tenant: Some(tenant),
                            idle_before_ms: None,
                        })
                        .await
                        .map(|_| ())
                        .map_err(NodeError::from),
                    Err(e) => Err(e),
                };
                let done = result.is_ok();
                let _ = reply.send(result);
                if done {
                    myself.stop(Some("aborted".into()));
                }
            }
        }
        Ok(())
    }
}

impl SessionState {
    fn check_tenant(&self, tenant: TenantId) -> NodeResult<()> {
        if tenant != self.rec.tenant {
            return Err(Rejection::SessionNotFound.into());
        }
        Ok(())
    }

    /// Whether a chunk of `len` bytes with `id` may be stored at `offset` in this session.
    fn check_put(&self, offset: u64, id: &ChunkId, len: usize) -> NodeResult<()> {
        let max = self.deps.max_chunk_bytes as usize;
        if len == 0 {
            return Err(NodeError::InvalidArgument(format!(
                "chunk at offset {offset} is empty"
            )));
        }
        if len > max {
            return Err(NodeError::InvalidArgument(format!(
                "chunk at offset {offset} is {len} bytes, over the {max}-byte limit"
            )));
        }
        let end = offset.saturating_add(len as u64);
        if end > self.rec.size {
            return Err(Rejection::ChunkOutOfBounds {
                offset,
                end,
                size: self.rec.size,
            }
            .into());
        }
        if let Some(manifest) = &self.manifest {
            match manifest.get(&offset) {
                Some(e) if e.id == *id && e.len as usize == len => {}
                Some(e) => {
                    return Err(NodeError::InvalidArgument(format!(
                        "chunk at offset {offset} ({id}, {len} bytes) is not the manifest's chunk there ({}, {} bytes)",
                        e.id, e.len
                    )));
                }
                None => {
                    return Err(NodeError::InvalidArgument(format!(
                        "offset {offset} is not where a manifest chunk starts"
                    )));
                }
            }
        }
        let same = |have: &ChunkId, have_len: u32| *have == *id && have_len as usize == len;
        if let Some(c) = self.present.get(&offset) {
            return if same(&c.id, c.len) {
                Ok(())
            } else {
                Err(Rejection::ChunkOverlap { offset }.into())
            };
        }
        if let Some(f) = self.inflight.get(&offset) {
            return if same(&f.id, f.len) {
                Ok(())
            } else {
                Err(Rejection::ChunkOverlap { offset }.into())
            };
        }
        if self.present.len() + self.inflight.len() >= MAX_UPLOAD_CHUNKS {
            return Err(NodeError::InvalidArgument(format!(
                "an upload holds at most {MAX_UPLOAD_CHUNKS} chunks: use larger chunks (up to {max} bytes) or split the file"
            )));
        }
        // No manifest: chunks may come at any offsets; they must not overlap.
        let overlaps = |o: u64, l: u32| o < end && offset < o + l as u64;
        let before = self
            .present
            .range(..offset)
            .next_back()
            .map(|(o, c)| (*o, c.len));
        let after = self
            .present
            .range(offset..)
            .next()
            .map(|(o, c)| (*o, c.len));
        if before.into_iter().chain(after).any(|(o, l)| overlaps(o, l))
            || self.inflight.iter().any(|(o, f)| overlaps(*o, f.len))
        {
            return Err(Rejection::ChunkOverlap { offset }.into());
        }
        Ok(())
    }

    async fn complete(&mut self, declared: [u8; 32]) -> NodeResult<ObjectView> {
        if !self.inflight.is_empty() {
            return Err(NodeError::FailedPrecondition(format!(
                "{} chunk(s) are still being written: wait for their acknowledgements",
                self.inflight.len()
            )));
        }
        self.check_complete()?;
        let actual = self.file_hash().await?;
        if actual != declared {
            return Err(NodeError::InvalidArgument(format!(
                "whole-file BLAKE3 mismatch: declared {}, the uploaded content hashes to {}; no version was created",
                hex::encode(declared),
                hex::encode(actual)
            )));
        }
        let cmd = Command::CompleteSession {
            session: self.rec.id,
            tenant: self.rec.tenant,
            file_hash: actual,
            now_ms: now_ms(),
        };
        match self.deps.cluster.propose(cmd).await? {
            Response::Committed(view) => Ok(view),
            other => Err(NodeError::Internal(format!(
                "unexpected response to CompleteSession: {other:?}"
            ))),
        }
    }

    /// Refuses to complete while bytes are missing, naming the missing chunks.
    fn check_complete(&self) -> NodeResult<()> {
        let chunks: Vec<(u64, SessionChunk)> = self.present.iter().map(|(o, c)| (*o, *c)).collect();
        let gaps = strata_cluster::state_machine::gaps(&chunks, self.rec.size);
        if gaps.is_empty() {
            return Ok(());
        }
        let Some(manifest) = &self.manifest else {
            return Err(Rejection::Incomplete(gaps).into());
        };
        let missing: Vec<(u64, &ManifestEntry)> = manifest
            .iter()
            .filter(|(o, _)| !self.present.contains_key(o))
            .map(|(o, e)| (*o, e))
            .collect();
        let shown: Vec<String> = missing
            .iter()
            .take(8)
            .map(|(o, e)| format!("{} at offset {o}", e.id))
            .collect();
        Err(NodeError::FailedPrecondition(format!(
            "upload is incomplete: {} of {} chunk(s) missing: {}{}",
            missing.len(),
            manifest.len(),
            shown.join(", "),
            if missing.len() > 8 { ", ..." } else { "" }
        )))
    }

    /// The whole file's BLAKE3: from chunk chaining values when the chunk shape allows it,
    /// otherwise by reading (and verifying) every chunk in order.
    async fn file_hash(&self) -> NodeResult<[u8; 32]> {
        if self.rec.size == 0 {
            return Ok(*blake3::hash(b"").as_bytes());
        }
        if self.present.len() == 1 {
            return Ok(*self
                .present
                .values()
                .next()
                .map(|c| c.id)
                .unwrap_or(ChunkId::from_bytes([0; 32]))
                .as_bytes());
        }
        let pieces: Vec<Piece> = self
            .present
            .iter()
            .map(|(o, c)| Piece {
                offset: *o,
                len: c.len as u64,
                cv: c.cv,
            })
            .collect();
        if let Some(h) = file_hash::combine(&pieces) {
            return Ok(h);
        }
        let mut hasher = blake3::Hasher::new();
        for id in self.present.values().map(|c| c.id) {
            let data = self.deps.reads.chunk(id).await?;
            hasher = tokio::task::spawn_blocking(move || {
                hasher.update(&data);
                hasher
            })
            .await
            .map_err(|e| NodeError::Internal(format!("hash task: {e}")))?;
        }
        Ok(*hasher.finalize().as_bytes())
    }
}

/// Verifies and durably stores one chunk (here and at W of its homes), then records it in the
/// session. No lock is held across any of it: the block layer guards its own file changes, and
/// a chunk stored but not yet recorded is protected from collection by its age.
struct WriteJob {
    blocks: Arc<BlockManager>,
    cluster: Arc<Cluster>,
    permit: Option<Permit>,
    session: SessionId,
    tenant: TenantId,
    offset: u64,
    id: ChunkId,
    data: Bytes,
    size: u64,
}

impl WriteJob {
    async fn run(self) -> NodeResult<(SessionChunk, bool, u64)> {
        let len = self.data.len();
        let (actual, cv) = hash_chunk(self.offset, self.data.clone(), self.size).await?;
        if actual != self.id {
            return Err(NodeError::InvalidArgument(format!(
                "chunk at offset {} hashes to {actual}, not the declared {}; nothing was stored",
                self.offset, self.id
            )));
        }
        metrics::counter!(m::UPLOAD_BYTES).increment(len as u64);
        let id = self.id;
        // W durable copies before the chunk is recorded and acknowledged. Every home writes
        // and syncs the bytes even if it holds them already (see `ChunkStore::put`), so the ack
        // comes no sooner for bytes another tenant stores.
        self.blocks.store_new(id, self.data, self.permit).await?;
        let cmd = Command::AddChunk {
            session: self.session,
            tenant: self.tenant,
            offset: self.offset,
            id,
            len: len as u32,
            cv,
            now_ms: now_ms(),
        };
        match self.cluster.propose(cmd).await? {
            Response::ChunkAdded {
                bytes_present,
                new_to_tenant,
                ..
            } => Ok((
                SessionChunk {
                    id,
                    len: len as u32,
                    cv,
                },
                new_to_tenant,
                bytes_present,
            )),
            other => Err(NodeError::Internal(format!(
                "unexpected response to AddChunk: {other:?}"
            ))),
        }
    }
}

/// The chunk's BLAKE3 id and, when the file has more than this chunk, its chaining value at
/// `offset` (for the whole-file hash). Off offset 0 the two are separate passes, run on two
/// blocking threads at once.
async fn hash_chunk(
    offset: u64,
    data: Bytes,
    size: u64,
) -> NodeResult<(ChunkId, Option<[u8; 32]>)> {
    let join = |e: tokio::task::JoinError| NodeError::Internal(format!("hash task: {e}"));
    if offset == 0 {
        let whole_file = data.len() as u64 == size;
        let (id, cv) = tokio::task::spawn_blocking(move || file_hash::id_and_cv_at_zero(&data))
            .await
            .map_err(join)?;
        return Ok((ChunkId::from_bytes(id), (!whole_file).then_some(cv)));
    }
    let d2 = data.clone();
    let cv_task = tokio::task::spawn_blocking(move || file_hash::chunk_cv(offset, &d2));
    let id = tokio::task::spawn_blocking(move || ChunkId::of(&data))
        .await
        .map_err(join)?;
    let cv = cv_task.await.map_err(join)?;
    Ok((id, cv))
}
