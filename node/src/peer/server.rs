//! Serving peers: accept QUIC connections (the TLS handshake has already refused any peer
//! without a certificate from the cluster CA), then one task per request stream.

use std::sync::Arc;

use bytes::Bytes;
use strata_cluster::ChunkId;

use super::{ErrorCode, MAX_HAS_CHUNKS, Reply, Request, read_body, read_frame, write_frame};
use crate::chunk_store::ChunkStoreError;
use crate::context::Context;
use crate::metrics as m;

/// Accepts connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, ctx: Arc<Context>) {
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    metrics::counter!(m::QUIC_ERRORS, "kind" => "handshake").increment(1);
                    tracing::warn!(peer = %remote, error = %e, "refused a QUIC connection");
                    return;
                }
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(handle(ctx.clone(), send, recv));
            }
        });
    }
}

async fn handle(ctx: Arc<Context>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let result = tokio::time::timeout(super::REQUEST_TIMEOUT, async {
        let req: Request = read_frame(&mut recv).await?;
        let (reply, body) = answer(&ctx, req, &mut recv).await;
        write_frame(&mut send, &reply).await?;
        if let Some(body) = body {
            let n = body.len() as u64;
            send.write_chunk(body).await.map_err(|e| e.to_string())?;
            metrics::counter!(m::QUIC_SENT_BYTES).increment(n);
        }
        send.finish().map_err(|e| e.to_string())
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            metrics::counter!(m::QUIC_ERRORS, "kind" => "stream").increment(1);
            tracing::debug!(error = %e, "peer request failed");
        }
        Err(_) => {
            metrics::counter!(m::QUIC_ERRORS, "kind" => "timeout").increment(1);
            tracing::debug!("peer request timed out");
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> (Reply, Option<Bytes>) {
    (
        Reply::Error {
            code,
            message: message.into(),
        },
        None,
    )
}

fn store_error(e: ChunkStoreError) -> (Reply, Option<Bytes>) {
    let code = match &e {
        ChunkStoreError::Corrupt(_) => ErrorCode::Corrupt,
        ChunkStoreError::Missing(_) => ErrorCode::NotFound,
        _ => ErrorCode::Unavailable,
    };
    error(code, e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn answer(
    ctx: &Arc<Context>,
    req: Request,
    recv: &mut quinn::RecvStream,
) -> (Reply, Option<Bytes>) {
    match req {
        Request::GetChunk { id, offset, len } => {
            let c = ctx.clone();
            let data = match blocking(move || c.store.get(&id)).await {
                Some(Ok(d)) => d,
                Some(Err(e)) => return store_error(e),
                None => return error(ErrorCode::Unavailable, "read task failed"),
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
        Request::PutChunk { id, len } => {
            if len > crate::config::MAX_CHUNK_LIMIT {
                return error(
                    ErrorCode::InvalidArgument,
                    format!(
                        "a {len}-byte chunk is over the {} limit",
                        crate::config::MAX_CHUNK_LIMIT
                    ),
                );
            }
            let Ok(_permit) = ctx.inflight.acquire_many(len / 1024 + 1).await else {
                return error(ErrorCode::Unavailable, "node is shutting down");
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
            if blocking(move || ChunkId::of(&check) == id).await != Some(true) {
                metrics::counter!(m::QUIC_ERRORS, "kind" => "corrupt").increment(1);
                return error(
                    ErrorCode::Corrupt,
                    format!("the bytes sent do not hash to chunk {id}; nothing was stored"),
                );
            }
            let _lock = ctx.lock_chunk(&id).await;
            let c = ctx.clone();
            match blocking(move || c.store.put(&id, &data)).await {
                Some(Ok(new)) => {
                    metrics::counter!(m::REPLICA_RECEIVED_BYTES).increment(len as u64);
                    (Reply::Stored { new }, None)
                }
                Some(Err(e)) => store_error(e),
                None => error(ErrorCode::Unavailable, "write task failed"),
            }
        }
        Request::HasChunks { ids } => {
            if ids.len() > MAX_HAS_CHUNKS {
                return error(
                    ErrorCode::InvalidArgument,
                    format!("at most {MAX_HAS_CHUNKS} ids per HasChunks"),
                );
            }
            let c = ctx.clone();
            match blocking(move || ids.iter().map(|id| c.store.contains(id)).collect()).await {
                Some(v) => (Reply::Has(v), None),
                None => error(ErrorCode::Unavailable, "lookup task failed"),
            }
        }
        Request::DropChunk { id } => {
            let _lock = ctx.lock_chunk(&id).await;
            match ctx.sm.chunk_needs_hot(&id) {
                Ok(false) => {}
                Ok(true) => {
                    return error(
                        ErrorCode::Refused,
                        format!("chunk {id} is still referenced (and hot) here; not dropped"),
                    );
                }
                Err(e) => return error(ErrorCode::Unavailable, e.to_string()),
            }
            let c = ctx.clone();
            match blocking(move || {
                let existed = c.store.contains(&id);
                c.store.delete(&id).map(|()| existed)
            })
            .await
            {
                Some(Ok(existed)) => (Reply::Dropped { existed }, None),
                Some(Err(e)) => store_error(e),
                None => error(ErrorCode::Unavailable, "delete task failed"),
            }
        }
    }
}
