//! This node's QUIC endpoint as a client: one connection per peer, opened on first use and
//! kept. A peer that stopped answering costs a short, bounded wait: keep-alives detect a lost
//! connection in about a second (see `tls::transport`), a failed handshake marks the peer down
//! for `DOWN_BACKOFF`, and requests to a peer marked down fail at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use strata_cluster::ChunkId;

use super::{
    CONNECT_TIMEOUT, DATA_TIMEOUT, DOWN_BACKOFF, MAX_CHUNK_LIMIT, PeerError, Reply, Request,
    SMALL_TIMEOUT, read_body, read_frame, tls, write_frame,
};
use crate::metrics as m;

#[derive(Default)]
struct PeerState {
    conn: Option<quinn::Connection>,
    /// When the last connection attempt failed, and why.
    failed: Option<(Instant, String)>,
}

pub struct PeerClient {
    endpoint: quinn::Endpoint,
    peers: Mutex<HashMap<SocketAddr, PeerState>>,
}

impl PeerClient {
    pub fn new(endpoint: quinn::Endpoint) -> PeerClient {
        PeerClient {
            endpoint,
            peers: Mutex::new(HashMap::new()),
        }
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, PeerState>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live cached connection, or the reason not to try now.
    fn cached(&self, addr: SocketAddr) -> Result<Option<quinn::Connection>, PeerError> {
        let mut peers = self.peers();
        let state = peers.entry(addr).or_default();
        if let Some(c) = &state.conn {
            if c.close_reason().is_none() {
                return Ok(Some(c.clone()));
            }
            state.conn = None;
        }
        if let Some((at, why)) = &state.failed
            && at.elapsed() < DOWN_BACKOFF
        {
            return Err(PeerError::Down {
                addr,
                ago_ms: at.elapsed().as_millis() as u64,
                backoff_ms: DOWN_BACKOFF.as_millis() as u64,
                why: why.clone(),
            });
        }
        Ok(None)
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, PeerError> {
        if let Some(c) = self.cached(addr)? {
            return Ok(c);
        }
        let attempt = async {
            let connecting = self
                .endpoint
                .connect(addr, tls::PEER_NAME)
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "handshake timed out after {} ms",
                    CONNECT_TIMEOUT.as_millis()
                )),
            }
        };
        let result = attempt.await;
        let mut peers = self.peers();
        let state = peers.entry(addr).or_default();
        match result {
            Ok(conn) => {
                state.failed = None;
                state.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(why) => {
                state.failed = Some((Instant::now(), why.clone()));
                Err(PeerError::Unreachable { addr, why })
            }
        }
    }

    /// Forgets a connection that failed under a request, so the next one reconnects.
    fn forget(&self, addr: SocketAddr, conn: &quinn::Connection) {
        let mut peers = self.peers();
        if let Some(state) = peers.get_mut(&addr)
            && state
                .conn
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            state.conn = None;
        }
    }

    /// The current path MTU towards `addr` (None before a connection exists).
    pub fn path_mtu(&self, addr: SocketAddr) -> Option<u16> {
        self.cached(addr)
            .ok()
            .flatten()
            .map(|c| c.stats().path.current_mtu)
    }

    /// One request on a new stream, with a deadline.
    async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        body: Option<Bytes>,
    ) -> Result<(Reply, Option<Bytes>), PeerError> {
        let (op, limit) = match req {
            Request::GetChunk { .. } => ("get_chunk", DATA_TIMEOUT),
            Request::PutChunk { .. } => ("put_chunk", DATA_TIMEOUT),
            Request::HasChunks { .. } => ("has_chunks", SMALL_TIMEOUT),
            Request::DropChunk { .. } => ("drop_chunk", SMALL_TIMEOUT),
        };
        let result = tokio::time::timeout(limit, self.exchange(addr, req, body))
            .await
            .unwrap_or(Err(PeerError::Timeout {
                addr,
                secs: limit.as_secs(),
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
        let lost = |why: String| PeerError::Unreachable { addr, why };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.forget(addr, &conn);
                return Err(lost(e.to_string()));
            }
        };
        let sent = async {
            write_frame(&mut send, req).await?;
            if let Some(body) = body {
                let n = body.len() as u64;
                send.write_chunk(body).await.map_err(|e| e.to_string())?;
                metrics::counter!(m::QUIC_SENT_BYTES).increment(n);
            }
            let _ = send.finish();
            read_frame::<Reply>(&mut recv).await
        }
        .await;
        let reply = match sent {
            Ok(r) => r,
            Err(e) => {
                // A connection that died under the request (peer gone, idle timeout).
                if conn.close_reason().is_some() {
                    self.forget(addr, &conn);
                    return Err(lost(e));
                }
                return Err(broken(e));
            }
        };
        match reply {
            Reply::Chunk { len } => {
                if len > u64::from(MAX_CHUNK_LIMIT) {
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
