//! Strata's internal wire encoding (bincode 2 with serde, standard configuration): Raft
//! messages between nodes and the peer protocol's frames. Encoding can fail (a type serde
//! cannot represent); callers see that as an error, never as an empty message.

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode {what}: {why}")]
    Encode { what: &'static str, why: String },
    #[error("cannot decode {what}: {why}")]
    Decode { what: &'static str, why: String },
}

pub fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(|e| CodecError::Encode {
        what,
        why: e.to_string(),
    })
}

/// The most bytes one message's strings and byte arrays may declare in all: the internal
/// service's message limit. bincode allocates a string's declared length before reading it, so
/// without a bound a few hostile bytes declaring 2^60 ask for that much (found by
/// `fuzz/raft_payloads`); past it decoding fails instead.
pub const MESSAGE_LIMIT: usize = 256 << 20;

/// Decodes a whole message: bytes left over after the value are an error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let config = bincode::config::standard().with_limit::<MESSAGE_LIMIT>();
    let (v, used) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|e| CodecError::Decode {
            what,
            why: e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(CodecError::Decode {
            what,
            why: format!("{} bytes left over after the message", bytes.len() - used),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fuzz/raft_payloads` crash: a forwarded command whose key declares a length near 2^64
    /// made bincode panic with "capacity overflow" before the limit.
    #[test]
    fn a_huge_declared_length_is_an_error_not_a_panic() {
        let bytes = [
            0x06, 0x78, 0x00, 0xfd, 0x1f, 0x00, 0xff, 0xff, 0x7e, 0xff, 0x01, 0xe0, 0xf6, 0x8a,
            0xbf, 0x7e,
        ];
        assert!(decode::<crate::Command>("forwarded command", &bytes).is_err());
        let long = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<String>("string", &long).is_err());
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        let v = (7u32, "x".to_string());
        let mut bytes = encode("pair", &v).expect("encode");
        assert_eq!(decode::<(u32, String)>("pair", &bytes).expect("decode"), v);
        bytes.push(0);
        assert!(decode::<(u32, String)>("pair", &bytes).is_err());
        assert!(decode::<(u32, String)>("pair", &[0xff; 3]).is_err());
    }
}
