//! Answering other nodes: the peer transport's handler. Chunk bytes in either direction take
//! memory from the budget's peer pool before they are read into memory.

use std::sync::Arc;

use bytes::Bytes;
use strata_cluster::ChunkId;

use super::BlockManager;
use crate::chunk_store::{ChunkStoreError, Removal};
use crate::metrics as m;
use crate::peer::server::{Handler, error};
use crate::peer::{ErrorCode, MAX_CHUNK_LIMIT, MAX_HAS_CHUNKS, Reply, Request, read_body};

pub struct PeerService(pub Arc<BlockManager>);

fn store_error(e: ChunkStoreError) -> (Reply, Option<Bytes>) {
    let code = match &e {
        ChunkStoreError::Corrupt(_) => ErrorCode::Corrupt,
        ChunkStoreError::Missing(_) => ErrorCode::NotFound,
        _ => ErrorCode::Unavailable,
    };
    error(code, e.to_string())
}

#[async_trait::async_trait]
impl Handler for PeerService {
    async fn answer(&self, req: Request, recv: &mut quinn::RecvStream) -> (Reply, Option<Bytes>) {
        let b = &self.0;
        match req {
            Request::GetChunk { id, offset, len } => b.serve_get(id, offset, len).await,
            Request::PutChunk { id, len } => b.serve_put(id, len, recv).await,
            Request::HasChunks { ids } => {
                if ids.len() > MAX_HAS_CHUNKS {
                    return error(
                        ErrorCode::InvalidArgument,
                        format!("at most {MAX_HAS_CHUNKS} ids per HasChunks"),
                    );
                }
                match b.store.has(ids).await {
                    Ok(v) => (Reply::Has(v), None),
                    Err(e) => store_error(e),
                }
            }
            Request::DropChunk { id } => match b.drop_requested(id).await {
                Ok(Removal::Deleted) => (Reply::Dropped { existed: true }, None),
                Ok(Removal::Absent) => (Reply::Dropped { existed: false }, None),
                Ok(Removal::Kept) if b.sm.chunk_needs_hot(&id).unwrap_or(true) => error(
                    ErrorCode::Refused,
                    format!("chunk {id} is still referenced (and hot) here; not dropped"),
                ),
                Ok(Removal::Kept) => error(
                    ErrorCode::Young,
                    format!("chunk {id} was written less than gc_grace ago; not dropped yet"),
                ),
                Err(e) => error(ErrorCode::Unavailable, e.to_string()),
            },
        }
    }
}

impl BlockManager {
    async fn serve_get(
        &self,
        id: ChunkId,
        offset: u64,
        len: Option<u64>,
    ) -> (Reply, Option<Bytes>) {
        let size = match self.store.sizes(vec![id]).await {
            Ok(s) => s.first().copied().flatten(),
            Err(e) => return store_error(e),
        };
        let Some(size) = size else {
            return store_error(ChunkStoreError::Missing(id));
        };
        let _permit = match self.budget.peer(size).await {
            Ok(p) => p,
            Err(e) => return error(ErrorCode::Unavailable, e.to_string()),
        };
        let data = match self.store.get(id).await {
            Ok(d) => d,
            Err(e) => return store_error(e),
        };
        let size = data.len() as u64;
        let len = len.unwrap_or(size.saturating_sub(offset));
        match offset.checked_add(len) {
            Some(end) if end <= size => {
                let slice = data.slice(offset as usize..end as usize);
                (Reply::Chunk { len }, Some(slice))
            }
            _ => error(
                ErrorCode::InvalidArgument,
                format!("range {offset}+{len} is past the end of the {size}-byte chunk {id}"),
            ),
        }
    }

    async fn serve_put(
        &self,
        id: ChunkId,
        len: u32,
        recv: &mut quinn::RecvStream,
    ) -> (Reply, Option<Bytes>) {
        if len > MAX_CHUNK_LIMIT {
            return error(
                ErrorCode::InvalidArgument,
                format!("a {len}-byte chunk is over the {MAX_CHUNK_LIMIT}-byte limit"),
            );
        }
        let _permit = match self.budget.peer(u64::from(len)).await {
            Ok(p) => p,
            Err(e) => return error(ErrorCode::Unavailable, e.to_string()),
        };
        let data = match read_body(recv, len as usize).await {
            Ok(d) => d,
            Err(e) => {
                return error(
                    ErrorCode::InvalidArgument,
                    format!("reading the chunk: {e}"),
                );
            }
        };
        let check = data.clone();
        let matches = tokio::task::spawn_blocking(move || ChunkId::of(&check) == id).await;
        if !matches!(matches, Ok(true)) {
            metrics::counter!(m::QUIC_ERRORS, "kind" => "corrupt").increment(1);
            return error(
                ErrorCode::Corrupt,
                format!("the bytes sent do not hash to chunk {id}; nothing was stored"),
            );
        }
        match self.store.put(id, data).await {
            Ok(new) => {
                metrics::counter!(m::REPLICA_RECEIVED_BYTES).increment(u64::from(len));
                (Reply::Stored { new }, None)
            }
            Err(e) => store_error(e),
        }
    }
}
