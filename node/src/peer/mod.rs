//! The peer transport: chunks travel between nodes over QUIC (quinn) with mutual TLS.
//!
//! One bidirectional stream per request. Each side first sends a frame: a 4-byte big-endian
//! length and a bincode [`Request`] or [`Reply`]; chunk bytes, when there are any, follow raw on
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
use serde::{Deserialize, Serialize};
use strata_cluster::ChunkId;

use crate::codec::{decode, encode};
use crate::metrics as m;

pub use client::PeerClient;

/// Largest chunk the protocol carries (the configuration's ceiling for max_chunk_bytes).
pub use crate::config::MAX_CHUNK_LIMIT;

/// Largest request or reply frame (a HasChunks of MAX_HAS_CHUNKS ids fits easily).
const MAX_FRAME: usize = 1 << 20;
/// Ids per HasChunks request.
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// The chunk's bytes `[offset, offset + len)`, or the whole chunk when `len` is None.
    GetChunk {
        id: ChunkId,
        offset: u64,
        len: Option<u64>,
    },
    /// `len` bytes follow; the receiver stores them if they hash to `id`.
    PutChunk {
        id: ChunkId,
        len: u32,
    },
    HasChunks {
        ids: Vec<ChunkId>,
    },
    /// Deletes the receiver's copy if its metadata says nothing references the chunk.
    DropChunk {
        id: ChunkId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// `len` bytes of chunk data follow.
    Chunk {
        len: u64,
    },
    Stored {
        new: bool,
    },
    Has(Vec<bool>),
    Dropped {
        existed: bool,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    NotFound,
    /// The peer's copy failed verification (it quarantined it) or sent bytes did not hash to
    /// the id.
    Corrupt,
    InvalidArgument,
    /// Disk full, read-only or failing, or the node is busy or stopping.
    Unavailable,
    /// The chunk is still referenced (DropChunk).
    Refused,
    /// The chunk's file is younger than gc_grace: asked again later (DropChunk).
    Young,
}

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

/// Writes one frame.
pub(crate) async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), String> {
    let body = encode("peer frame", msg).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    send.write_all(&buf).await.map_err(|e| e.to_string())?;
    metrics::counter!(m::QUIC_SENT_BYTES).increment(buf.len() as u64);
    Ok(())
}

/// Reads one frame.
pub(crate) async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "frame of {len} bytes is over the {MAX_FRAME} limit"
        ));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    metrics::counter!(m::QUIC_RECEIVED_BYTES).increment(4 + len as u64);
    decode("peer frame", &body).map_err(|e| e.to_string())
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
