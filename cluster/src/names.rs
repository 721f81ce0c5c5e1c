//! Validated bucket names and object keys. Everything past the gRPC edge takes these types, so
//! an unchecked string never reaches the state machine.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Invalid;

/// Longest object key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// A bucket name: 3 to 63 characters of lowercase ASCII letters, digits, '-' and '.', starting
/// and ending with a letter or digit (the S3 rules, so names can move between systems).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BucketName(String);

impl BucketName {
    pub fn new(name: &str) -> Result<BucketName, Invalid> {
        let bad = |why: &str| Err(Invalid::Bucket(format!("bucket name {name:?} {why}")));
        if name.len() < 3 || name.len() > 63 {
            return bad("must be 3 to 63 characters long");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return bad("may only contain lowercase letters, digits, '-' and '.'");
        }
        let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !edge_ok(name.as_bytes()[0]) || !edge_ok(name.as_bytes()[name.len() - 1]) {
            return bad("must start and end with a letter or digit");
        }
        if name.contains("..") {
            return bad("must not contain \"..\"");
        }
        Ok(BucketName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object key: 1 to 1024 bytes of UTF-8, '/'-separated segments that are never empty, "." or
/// "..", with no NUL or other control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn new(key: &str) -> Result<ObjectKey, Invalid> {
        let shown: String = key.chars().take(80).collect();
        let bad = |why: &str| Err(Invalid::Key(format!("key {shown:?} {why}")));
        if key.is_empty() {
            return bad("is empty");
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Invalid::Key(format!(
                "key is {} bytes long, the limit is {MAX_KEY_LEN}",
                key.len()
            )));
        }
        if key.chars().any(|c| c.is_control()) {
            return bad("contains NUL or another control character");
        }
        for segment in key.split('/') {
            match segment {
                "" => return bad("has an empty segment (leading, trailing or doubled '/')"),
                "." | ".." => return bad("has a \".\" or \"..\" segment"),
                _ => {}
            }
        }
        Ok(ObjectKey(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys() {
        for ok in ["a", "a/b/c.txt", "photos/2024/ü.jpg", "x..y", ".hidden/a"] {
            assert!(ObjectKey::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "a/../b", "..", ".", "a/./b", "a\0b", "a\nb",
        ] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(ObjectKey::new(&"k".repeat(1024)).is_ok());
        assert!(ObjectKey::new(&"k".repeat(1025)).is_err());
    }

    #[test]
    fn buckets() {
        for ok in ["abc", "my-bucket.2", "000"] {
            assert!(BucketName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "Abc", "-abc", "abc-", "a_b", "a..b", &"a".repeat(64)] {
            assert!(BucketName::new(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn accepted_keys_have_only_sound_segments(key in "\\PC{0,40}") {
            if let Ok(k) = ObjectKey::new(&key) {
                prop_assert!(k.as_str().len() <= MAX_KEY_LEN);
                prop_assert!(!k.as_str().contains('\0'));
                for seg in k.as_str().split('/') {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                }
            }
        }

        #[test]
        fn keys_built_from_sound_segments_are_accepted(
            segs in proptest::collection::vec("[a-zA-Z0-9_ .-]{1,12}", 1..8)
        ) {
            let key = segs.join("/");
            let sound = segs.iter().all(|s| s != "." && s != "..");
            prop_assert_eq!(ObjectKey::new(&key).is_ok(), sound);
        }

        #[test]
        fn any_dotdot_segment_is_rejected(pre in "[a-z]{1,5}", post in "[a-z]{1,5}") {
            let key = format!("{pre}/../{post}");
            prop_assert!(ObjectKey::new(&key).is_err());
        }
    }
}
