//! Serving peers: accept QUIC connections (the TLS handshake has already refused any peer
//! without a certificate from the cluster CA), then one task per request stream, answered by
//! the node's [`Handler`].

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use crate::tls::NodeTls;
use crate::tls::pki::CertFacts;

use bytes::Bytes;

use super::{DATA_TIMEOUT, ErrorCode, Reply, Request, read_frame, write_frame};
use crate::metrics as m;

/// What the node does with a peer's request. Chunk bytes of a PutChunk are still on `recv`
/// (read them with [`super::read_body`] once there is memory for them).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn answer(&self, req: Request, recv: &mut quinn::RecvStream) -> (Reply, Option<Bytes>);
}

/// An error reply.
pub fn error(code: ErrorCode, message: impl Into<String>) -> (Reply, Option<Bytes>) {
    (
        Reply::Error {
            code,
            message: message.into(),
        },
        None,
    )
}

/// Accepts connections until the endpoint closes.
/// Each stream first checks that the connection's node has not been revoked since its
/// handshake (a removed node's open connection serves nothing more).
pub async fn serve(endpoint: quinn::Endpoint, handler: Arc<dyn Handler>, tls: Arc<NodeTls>) {
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                // The client gave up (its handshake deadline, or it stopped): nothing refused.
                Err(quinn::ConnectionError::ConnectionClosed(c))
                    if c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR =>
                {
                    tracing::debug!(peer = %remote, "a peer abandoned its QUIC handshake");
                    return;
                }
                Err(e) => {
                    metrics::counter!(m::QUIC_ERRORS, "kind" => "handshake").increment(1);
                    tracing::warn!(peer = %remote, error = %e, "refused a QUIC connection");
                    return;
                }
            };
            let node = conn
                .peer_identity()
                .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
                .and_then(|certs| certs.first().and_then(|c| CertFacts::of(c).ok()))
                .and_then(|f| f.node);
            while let Ok((send, recv)) = conn.accept_bi().await {
                if node.is_none_or(|n| tls.is_revoked(n)) {
                    conn.close(1u32.into(), b"revoked");
                    tracing::info!(peer = %remote, ?node, "closed the QUIC connection of a revoked node");
                    return;
                }
                tokio::spawn(handle(handler.clone(), send, recv));
            }
        });
    }
}

async fn handle(
    handler: Arc<dyn Handler>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let result = tokio::time::timeout(DATA_TIMEOUT, async {
        let req: Request = read_frame(&mut recv).await?;
        let (reply, body) = handler.answer(req, &mut recv).await;
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
