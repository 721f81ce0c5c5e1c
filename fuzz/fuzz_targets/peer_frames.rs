//! What another node sends on a QUIC peer stream: a frame header and body (`peer_frame`), as
//! the transport reads them. Nothing may panic; a header past the limit is refused before its
//! body is allocated; a body that decodes survives encode -> decode -> encode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_cluster::peer_frame::{self, Reply, Request};

fn check<T: serde::Serialize + serde::de::DeserializeOwned>(body: &[u8]) {
    if let Ok(msg) = peer_frame::decode_body::<T>(body) {
        let frame = peer_frame::encode(&msg).expect("a decoded message encodes");
        let len = peer_frame::body_len(frame[..4].try_into().expect("header")).expect("its length");
        assert_eq!(len, frame.len() - 4);
        let back: T = peer_frame::decode_body(&frame[4..]).expect("an encoded frame decodes");
        assert_eq!(peer_frame::encode(&back).expect("encodes"), frame);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((header, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(len) = peer_frame::body_len(*header) else {
        return;
    };
    let body = &rest[..len.min(rest.len())];
    check::<Request>(body);
    check::<Reply>(body);
});
