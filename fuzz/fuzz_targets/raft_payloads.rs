//! What another node sends the internal Cluster service: Raft RPCs and forwarded commands,
//! bincode (`strata_cluster::codec`). The first byte picks the message. Decoding may fail;
//! nothing may panic, and a message that decodes must survive encode -> decode -> encode
//! unchanged (its canonical form is stable, so a relayed message means what it meant).
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use strata_cluster::Command;
use strata_cluster::codec;
use strata_cluster::raft::{NodeId, TypeConfig};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(what: &'static str, b: &[u8]) {
    if let Ok(v) = codec::decode::<T>(what, b) {
        let once = codec::encode(what, &v).expect("a decoded message encodes");
        let back = codec::decode::<T>(what, &once).expect("an encoded message decodes");
        let twice = codec::encode(what, &back).expect("a decoded message encodes");
        assert_eq!(once, twice, "{what} changes between encodings");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => round_trip::<AppendEntriesRequest<TypeConfig>>("append entries request", body),
        1 => round_trip::<VoteRequest<NodeId>>("vote request", body),
        2 => round_trip::<InstallSnapshotRequest<TypeConfig>>("install snapshot request", body),
        _ => round_trip::<Command>("forwarded command", body),
    }
});
