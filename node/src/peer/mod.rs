//! The peer transport: chunks travel between nodes over QUIC (quinn) with mutual TLS.
//!
//! One bidirectional stream per request. Each side first sends a frame: a 4-byte big-endian
//! length and a bincode [`Request`] or [`Reply`] (`strata_cluster::peer_frame`); chunk bytes, when there are any, follow raw on
//! the same stream (PutChunk's after the request, GetChunk's after the reply). The receiver of
//! chunk bytes verifies their BLAKE3 before storing or using them; a node serves only bytes
//! its store verified on read. Every request has a deadline; flow control is QUIC's.
//!
//! This module is transport only: what a request does is up to the [`server::Handler`] the
//! node plugs in (the block layer's).

mod client;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use strata_cluster::ChunkId;
use strata_cluster::peer_frame;

use crate::metrics as m;

pub use client::PeerClient;

/// Largest chunk the protocol carries (the configuration's ceiling for max_chunk_bytes).
pub use crate::config::MAX_CHUNK_LIMIT;

/// Ids per HasChunks request (its frame fits `peer_frame::MAX_FRAME` easily).
pub const MAX_HAS_CHUNKS: usize = 4096;
/// Connecting (handshake included) to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// A request that carries chunk bytes (16 MiB at 1 MB/s fits).
const DATA_TIMEOUT: Duration = Duration::from_secs(30);
/// A request without chunk bytes (HasChunks, DropChunk).
const SMALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer whose connection failed is not tried again for this long: requests to it fail at
/// once instead of each waiting for a handshake that will not come.
const DOWN_BACKOFF: Duration = Duration::from_secs(1);

pub use strata_cluster::peer_frame::{ErrorCode, Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot reach peer {addr}: {why}")]
    Unreachable { addr: SocketAddr, why: String },
    #[error("peer {addr} did not answer within {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error(
        "peer {addr} is not answering (last failure {ago_ms} ms ago: {why}); not retried for {backoff_ms} ms"
    )]
    Down {
        addr: SocketAddr,
        ago_ms: u64,
        backoff_ms: u64,
        why: String,
    },
    #[error("peer {addr}: {message}")]
    Remote {
        addr: SocketAddr,
        code: ErrorCode,
        message: String,
    },
    #[error("peer {addr} sent bytes that do not hash to chunk {id}")]
    Corrupt { addr: SocketAddr, id: ChunkId },
    #[error("peer {addr} broke the protocol: {why}")]
    Protocol { addr: SocketAddr, why: String },
}

impl PeerError {
    /// Whether the peer reported or sent a corrupt copy.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            PeerError::Corrupt { .. }
                | PeerError::Remote {
                    code: ErrorCode::Corrupt,
                    ..
                }
        )
    }

    /// Whether the peer answered that it does not hold the chunk.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            PeerError::Remote {
                code: ErrorCode::NotFound,
                ..
            }
        )
    }

    fn kind(&self) -> &'static str {
        match self {
            PeerError::Unreachable { .. } => "unreachable",
            PeerError::Timeout { .. } => "timeout",
            PeerError::Down { .. } => "down",
            PeerError::Remote { .. } => "remote",
            PeerError::Corrupt { .. } => "corrupt",
            PeerError::Protocol { .. } => "protocol",
        }
    }
}

/// Writes one frame (`strata_cluster::peer_frame`).
pub(crate) async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), String> {
    let buf = peer_frame::encode(msg)?;
    send.write_all(&buf).await.map_err(|e| e.to_string())?;
    metrics::counter!(m::QUIC_SENT_BYTES).increment(buf.len() as u64);
    Ok(())
}

/// Reads one frame.
pub(crate) async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, String> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| e.to_string())?;
    let len = peer_frame::body_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    metrics::counter!(m::QUIC_RECEIVED_BYTES).increment(4 + len as u64);
    peer_frame::decode_body(&body)
}

/// Reads exactly `len` raw bytes.
pub async fn read_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Bytes, String> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    metrics::counter!(m::QUIC_RECEIVED_BYTES).increment(len as u64);
    Ok(Bytes::from(body))
}

/// The UDP address of a peer's QUIC endpoint: the host and port of its gRPC address (QUIC
/// listens on UDP at the same port number as gRPC on TCP). Resolves names (DNS): call it when
/// membership changes, not per request.
pub async fn quic_addr(grpc_url: &str) -> Option<SocketAddr> {
    let hostport = grpc_url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    tokio::net::lookup_host(hostport).await.ok()?.next()
}
