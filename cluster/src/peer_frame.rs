//! The peer protocol's frames (QUIC streams between nodes; the transport is the node's
//! `peer/`): a 4-byte big-endian body length, then the body, one bincode message (`codec`).
//! Chunk bytes that follow a `PutChunk` request or a `Chunk` reply travel raw, outside frames.
//! Here, not in the node, so the fuzz targets reach the decoding without building the node.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ChunkId;
use crate::codec;

/// Largest frame body.
pub const MAX_FRAME: usize = 1 << 20;

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

/// A whole frame: header and body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, String> {
    let body = codec::encode("peer frame", msg).map_err(|e| e.to_string())?;
    if body.len() > MAX_FRAME {
        return Err(format!(
            "frame of {} bytes is over the {MAX_FRAME} limit",
            body.len()
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// The body length a frame header declares; refused past `MAX_FRAME` before anything is
/// allocated for it.
pub fn body_len(header: [u8; 4]) -> Result<usize, String> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "frame of {len} bytes is over the {MAX_FRAME} limit"
        ));
    }
    Ok(len)
}

/// A frame's body as a message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    codec::decode("peer frame", body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_headers_are_refused() {
        let req = Request::HasChunks {
            ids: vec![ChunkId::of(b"a"), ChunkId::of(b"b")],
        };
        let frame = encode(&req).expect("encode");
        let len = body_len(frame[..4].try_into().expect("header")).expect("length");
        assert_eq!(len, frame.len() - 4);
        match decode_body::<Request>(&frame[4..]).expect("decode") {
            Request::HasChunks { ids } => assert_eq!(ids.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(body_len(((MAX_FRAME + 1) as u32).to_be_bytes()).is_err());
        assert!(decode_body::<Request>(&frame[4..frame.len() - 1]).is_err());
    }
}
