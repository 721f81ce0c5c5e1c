//! The peer transport: chunks travel between nodes over QUIC (quinn) with mutual TLS.
//!
//! One bidirectional stream per request. Each side first sends a frame: a 4-byte big-endian
//! length and a bincode [`Request`] or [`Reply`]; chunk bytes, when there are any, follow raw on
//! the same stream (PutChunk's after the request, GetChunk's after the reply). The receiver of
//! chunk bytes verifies their BLAKE3 before storing or using them; a node serves only bytes
//! its store verified on read. Every request has a deadline; flow control is QUIC's.

pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_cluster::ChunkId;

use crate::metrics as m;
use crate::raft::network::{decode, encode};

/// Largest request or reply frame (a HasChunks of MAX_HAS_CHUNKS ids fits easily).
const MAX_FRAME: usize = 1 << 20;
/// Ids per HasChunks request.
pub const MAX_HAS_CHUNKS: usize = 4096;
/// Connecting (handshake included) to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request, chunk transfer included (16 MiB at 1 MB/s fits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot reach peer {addr}: {why}")]
    Unreachable { addr: SocketAddr, why: String },
    #[error("peer {addr} did not answer within {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
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

    fn kind(&self) -> &'static str {
        match self {
            PeerError::Unreachable { .. } => "unreachable",
            PeerError::Timeout { .. } => "timeout",
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
    let body = encode(msg);
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
    decode(&body)
}

/// Reads exactly `len` raw bytes.
pub(crate) async fn read_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Bytes, String> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    metrics::counter!(m::QUIC_RECEIVED_BYTES).increment(len as u64);
    Ok(Bytes::from(body))
}

/// This node's QUIC endpoint as a client: connections to peers, opened on first use and kept.
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    connections: Mutex<HashMap<SocketAddr, quinn::Connection>>,
}

impl PeerClient {
    pub fn new(endpoint: quinn::Endpoint) -> PeerClient {
        PeerClient {
            endpoint,
            connections: Mutex::new(HashMap::new()),
        }
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, PeerError> {
        if let Some(c) = self.cached(addr) {
            return Ok(c);
        }
        let unreachable = |why: String| PeerError::Unreachable { addr, why };
        let connecting = self
            .endpoint
            .connect(addr, tls::PEER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable("handshake timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        if let Ok(mut map) = self.connections.lock() {
            map.insert(addr, conn.clone());
        }
        Ok(conn)
    }

    /// The current path MTU towards `addr` (None before a connection exists).
    pub fn path_mtu(&self, addr: SocketAddr) -> Option<u16> {
        self.cached(addr).map(|c| c.stats().path.current_mtu)
    }

    fn cached(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        let mut map = self.connections.lock().ok()?;
        match map.get(&addr) {
            Some(c) if c.close_reason().is_none() => Some(c.clone()),
            Some(_) => {
                map.remove(&addr);
                None
            }
            None => None,
        }
    }

    /// One request on a new stream, with a deadline.
    async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        body: Option<Bytes>,
    ) -> Result<(Reply, Option<Bytes>), PeerError> {
        let op = match req {
            Request::GetChunk { .. } => "get_chunk",
            Request::PutChunk { .. } => "put_chunk",
            Request::HasChunks { .. } => "has_chunks",
            Request::DropChunk { .. } => "drop_chunk",
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(addr, req, body))
            .await
            .unwrap_or(Err(PeerError::Timeout {
                addr,
                secs: REQUEST_TIMEOUT.as_secs(),
            }));
        match &result {
            Ok(_) => metrics::counter!(m::PEER_REQUESTS, "op" => op, "result" => "ok").increment(1),
            Err(e) => {
                metrics::counter!(m::PEER_REQUESTS, "op" => op, "result" => "error").increment(1);
                metrics::counter!(m::QUIC_ERRORS, "kind" => e.kind()).increment(1);
            }
        }
        result
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        req: &Request,
        body: Option<Bytes>,
    ) -> Result<(Reply, Option<Bytes>), PeerError> {
        let conn = self.connection(addr).await?;
        let broken = |why: String| PeerError::Protocol { addr, why };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                // A dead cached connection: forget it so the next call reconnects.
                if let Ok(mut map) = self.connections.lock() {
                    map.remove(&addr);
                }
                return Err(PeerError::Unreachable {
                    addr,
                    why: e.to_string(),
                });
            }
        };
        write_frame(&mut send, req).await.map_err(broken)?;
        if let Some(body) = body {
            let n = body.len() as u64;
            send.write_chunk(body)
                .await
                .map_err(|e| broken(e.to_string()))?;
            metrics::counter!(m::QUIC_SENT_BYTES).increment(n);
        }
        let _ = send.finish();
        let reply: Reply = read_frame(&mut recv).await.map_err(broken)?;
        match reply {
            Reply::Chunk { len } => {
                if len > crate::config::MAX_CHUNK_LIMIT as u64 {
                    return Err(broken(format!("announced a {len}-byte chunk")));
                }
                let data = read_body(&mut recv, len as usize).await.map_err(broken)?;
                Ok((Reply::Chunk { len }, Some(data)))
            }
            Reply::Error { code, message } => Err(PeerError::Remote {
                addr,
                code,
                message,
            }),
            other => Ok((other, None)),
        }
    }

    /// The whole chunk, verified against its id.
    pub async fn get_chunk(&self, addr: SocketAddr, id: ChunkId) -> Result<Bytes, PeerError> {
        let (_, data) = self
            .call(
                addr,
                &Request::GetChunk {
                    id,
                    offset: 0,
                    len: None,
                },
                None,
            )
            .await?;
        let data = data.unwrap_or_default();
        let check = data.clone();
        let ok = tokio::task::spawn_blocking(move || ChunkId::of(&check) == id)
            .await
            .unwrap_or(false);
        if !ok {
            metrics::counter!(m::QUIC_ERRORS, "kind" => "corrupt").increment(1);
            return Err(PeerError::Corrupt { addr, id });
        }
        Ok(data)
    }

    /// A byte range of a chunk (the peer verified the whole chunk before sending it).
    pub async fn get_range(
        &self,
        addr: SocketAddr,
        id: ChunkId,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, PeerError> {
        let (_, data) = self
            .call(
                addr,
                &Request::GetChunk {
                    id,
                    offset,
                    len: Some(len),
                },
                None,
            )
            .await?;
        Ok(data.unwrap_or_default())
    }

    /// Sends a chunk; the peer stores it durably after verifying it. Returns whether the
    /// peer did not have it before.
    pub async fn put_chunk(
        &self,
        addr: SocketAddr,
        id: ChunkId,
        data: Bytes,
    ) -> Result<bool, PeerError> {
        let req = Request::PutChunk {
            id,
            len: data.len() as u32,
        };
        match self.call(addr, &req, Some(data)).await? {
            (Reply::Stored { new }, _) => Ok(new),
            (other, _) => Err(PeerError::Protocol {
                addr,
                why: format!("unexpected reply to PutChunk: {other:?}"),
            }),
        }
    }

    /// Which of `ids` the peer holds.
    pub async fn has_chunks(
        &self,
        addr: SocketAddr,
        ids: Vec<ChunkId>,
    ) -> Result<Vec<bool>, PeerError> {
        let n = ids.len();
        match self.call(addr, &Request::HasChunks { ids }, None).await? {
            (Reply::Has(v), _) if v.len() == n => Ok(v),
            (other, _) => Err(PeerError::Protocol {
                addr,
                why: format!("unexpected reply to HasChunks: {other:?}"),
            }),
        }
    }

    pub async fn drop_chunk(&self, addr: SocketAddr, id: ChunkId) -> Result<bool, PeerError> {
        match self.call(addr, &Request::DropChunk { id }, None).await? {
            (Reply::Dropped { existed }, _) => Ok(existed),
            (other, _) => Err(PeerError::Protocol {
                addr,
                why: format!("unexpected reply to DropChunk: {other:?}"),
            }),
        }
    }
}

/// The UDP address of a peer's QUIC endpoint: the host and port of its gRPC address (QUIC
/// listens on UDP at the same port number as gRPC on TCP).
pub async fn quic_addr(grpc_url: &str) -> Option<SocketAddr> {
    let hostport = grpc_url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    tokio::net::lookup_host(hostport).await.ok()?.next()
}
