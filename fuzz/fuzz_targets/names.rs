//! Bucket names, object keys, session ids and page tokens straight from arbitrary text (the
//! CLI and every gRPC field reach these): no panic, and what is accepted stays accepted in its
//! own rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_cluster::query::ListCursor;
use strata_cluster::{BucketName, ObjectKey, SessionId};

fuzz_target!(|s: &str| {
    if let Ok(b) = BucketName::new(s) {
        assert_eq!(
            BucketName::new(b.as_str())
                .map(|x| x.as_str().to_owned())
                .ok(),
            Some(b.as_str().to_owned())
        );
    }
    if let Ok(k) = ObjectKey::new(s) {
        assert_eq!(
            ObjectKey::new(k.as_str())
                .map(|x| x.as_str().to_owned())
                .ok(),
            Some(k.as_str().to_owned())
        );
    }
    if let Some(id) = SessionId::parse(s) {
        assert_eq!(SessionId::parse(&id.to_string()), Some(id));
    }
    if let Some(Some(c)) = ListCursor::from_token(s) {
        assert_eq!(ListCursor::from_token(&c.to_token()), Some(Some(c)));
    }
});
