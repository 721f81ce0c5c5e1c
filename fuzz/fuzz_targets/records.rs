//! Stored records as read back from sled (a corrupt or hostile byte string): every record
//! type through `records::decode`, bounded by its length limit. The first byte picks the type.
//! Decoding may fail; nothing may panic or allocate past the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_cluster::plans::{Plan, Usage};
use strata_cluster::records::{self, *};
use strata_cluster::tier::{ArchiveRecord, ColdChunk, RestoreRecord, TierPolicy};
use strata_cluster::{Command, Layout};

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) {
    let _ = records::decode::<T>("fuzzed record", b);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 16 {
        0 => decode::<Command>(body),
        1 => decode::<SessionRecord>(body),
        2 => decode::<VersionRecord>(body),
        3 => decode::<ObjectHead>(body),
        4 => decode::<ChunkMeta>(body),
        5 => decode::<TokenRecord>(body),
        6 => decode::<TenantRecord>(body),
        7 => decode::<Vec<ManifestEntry>>(body),
        8 => decode::<Layout>(body),
        9 => decode::<Plan>(body),
        10 => decode::<Usage>(body),
        11 => decode::<ArchiveRecord>(body),
        12 => decode::<ColdChunk>(body),
        13 => decode::<RestoreRecord>(body),
        14 => decode::<TierPolicy>(body),
        _ => {
            let _ = records::decode_snapshot::<Vec<(Vec<u8>, Vec<u8>)>>("fuzzed snapshot", body);
        }
    }
});
