//! What a cold backend hands back, distrusted: whole archive objects (footer, index, chunk
//! bounds, as the archive check reads them) and x-amz-restore headers. The first byte picks
//! which. Nothing may panic; an index that is accepted only names bytes inside the archive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_cluster::tier::{StorageClass, archive, parse_restore_header};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        let total = body.len() as u64;
        let footer = &body[body.len().saturating_sub(archive::FOOTER_LEN as usize)..];
        let Ok((at, len)) = archive::index_range(total, footer) else {
            return;
        };
        assert!(
            at + len + archive::FOOTER_LEN == total,
            "index range {at}+{len} of {total}"
        );
        let index = &body[at as usize..(at + len) as usize];
        if let Ok(entries) = archive::read_index(index, at) {
            for (_, offset, len) in entries {
                assert!(offset + u64::from(len) <= at);
            }
        }
    } else if let Ok(header) = std::str::from_utf8(body) {
        for class in [
            StorageClass::Standard,
            StorageClass::GlacierIr,
            StorageClass::Glacier,
            StorageClass::DeepArchive,
        ] {
            let _ = parse_restore_header(class, Some(header));
        }
    }
});
