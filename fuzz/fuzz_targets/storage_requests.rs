//! Client requests as a node's Storage service receives them: protobuf bytes decoded by prost,
//! then every name, id and token checked the way the handlers check them. The first byte picks
//! the message type. Decoding may fail; nothing may panic, and what validation accepts must be
//! accepted again in its own rendering (names are stored and compared in that form).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_cluster::query::ListCursor;
use strata_cluster::{BucketName, ChunkId, ObjectKey, SessionId};
use strata_proto::v1 as pb;

fn bucket(s: &str) {
    if let Ok(b) = BucketName::new(s) {
        assert!(
            BucketName::new(b.as_str()).is_ok(),
            "{s:?} accepted once only"
        );
    }
}

fn key(s: &str) {
    if let Ok(k) = ObjectKey::new(s) {
        assert!(
            ObjectKey::new(k.as_str()).is_ok(),
            "{s:?} accepted once only"
        );
    }
}

fn session(s: &str) {
    if let Some(id) = SessionId::parse(s) {
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
    }
}

fn chunk(b: &[u8]) {
    if let Some(id) = ChunkId::from_slice(b) {
        assert_eq!(id.as_bytes()[..], b[..]);
    }
}

fn page_token(t: &str) {
    if let Some(Some(c)) = ListCursor::from_token(t) {
        assert_eq!(ListCursor::from_token(&c.to_token()), Some(Some(c)));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 12 {
        0 => {
            if let Ok(r) = pb::CreateUploadRequest::decode(body) {
                bucket(&r.bucket);
                key(&r.key);
                r.manifest.iter().for_each(|c| chunk(&c.id));
            }
        }
        1 => {
            if let Ok(r) = pb::PutChunkRequest::decode(body) {
                session(&r.session_id);
                chunk(&r.id);
            }
        }
        2 => {
            if let Ok(r) = pb::CompleteUploadRequest::decode(body) {
                session(&r.session_id);
                chunk(&r.file_hash);
            }
        }
        3 => {
            if let Ok(r) = pb::GetRequest::decode(body) {
                bucket(&r.bucket);
                key(&r.key);
            }
        }
        4 => {
            if let Ok(r) = pb::ListRequest::decode(body) {
                bucket(&r.bucket);
                page_token(&r.page_token);
                if !r.prefix.is_empty() {
                    key(&r.prefix);
                }
            }
        }
        5 => {
            if let Ok(r) = pb::StatRequest::decode(body) {
                bucket(&r.bucket);
                key(&r.key);
            }
        }
        6 => {
            if let Ok(r) = pb::DeleteRequest::decode(body) {
                bucket(&r.bucket);
                key(&r.key);
            }
        }
        7 => {
            if let Ok(r) = pb::UndeleteRequest::decode(body) {
                bucket(&r.bucket);
                key(&r.key);
            }
        }
        8 => {
            if let Ok(r) = pb::ListVersionsRequest::decode(body) {
                bucket(&r.bucket);
                key(&r.key);
            }
        }
        9 => {
            if let Ok(r) = pb::RestoreRequest::decode(body) {
                bucket(&r.bucket);
                key(&r.key);
            }
        }
        10 => {
            if let Ok(r) = pb::GetUploadRequest::decode(body) {
                session(&r.session_id);
            }
        }
        _ => {
            if let Ok(r) = pb::BucketRequest::decode(body) {
                bucket(&r.bucket);
            }
        }
    }
});
