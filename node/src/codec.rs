//! The node's internal binary encoding (bincode 2 with serde, standard configuration): Raft
//! messages on the wire and the peer protocol's frames. Encoding can fail (a type serde cannot
//! represent); callers see that as an error, never as an empty message.

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

/// Decodes a whole message: bytes left over after the value are an error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (v, used) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| {
            CodecError::Decode {
                what,
                why: e.to_string(),
            }
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
