//! Cold-tier metadata: policies that say which objects go cold, where each cold chunk lives
//! (an archive object in a cold backend, at an offset), which versions are cold, and restores in
//! progress. The bytes themselves move in the node; this is what every replica agrees on.
//!
//! A chunk's hot copies may be released only when every reference to it comes from a cold
//! version: the state machine counts cold references next to the plain ones and releases a
//! chunk (queues its hot files for collection) exactly when the two counts meet.

use serde::{Deserialize, Serialize};

use crate::ids::TenantId;
use crate::names::BucketName;

/// The storage class a cold object is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StorageClass {
    /// Online (B2, or S3 STANDARD): readable at once.
    Standard,
    /// S3 Glacier Instant Retrieval: online, millisecond reads.
    GlacierIr,
    /// S3 Glacier Flexible Retrieval: needs a restore (minutes to hours).
    Glacier,
    /// S3 Glacier Deep Archive: needs a restore (hours).
    DeepArchive,
}

impl StorageClass {
    pub const ALL: [StorageClass; 4] = [
        StorageClass::Standard,
        StorageClass::GlacierIr,
        StorageClass::Glacier,
        StorageClass::DeepArchive,
    ];

    /// The S3 name of the class.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageClass::Standard => "STANDARD",
            StorageClass::GlacierIr => "GLACIER_IR",
            StorageClass::Glacier => "GLACIER",
            StorageClass::DeepArchive => "DEEP_ARCHIVE",
        }
    }

    pub fn parse(s: &str) -> Option<StorageClass> {
        let up = s.trim().to_ascii_uppercase().replace('-', "_");
        StorageClass::ALL.into_iter().find(|c| c.as_str() == up)
    }

    /// Whether reading an object of this class needs a restore first.
    pub fn needs_restore(self) -> bool {
        matches!(self, StorageClass::Glacier | StorageClass::DeepArchive)
    }
}

impl std::fmt::Display for StorageClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How fast (and at what price) a restore runs, as S3's RestoreObject names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreTier {
    Expedited,
    Standard,
    Bulk,
}

impl RestoreTier {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreTier::Expedited => "Expedited",
            RestoreTier::Standard => "Standard",
            RestoreTier::Bulk => "Bulk",
        }
    }

    pub fn parse(s: &str) -> Option<RestoreTier> {
        match s.trim().to_ascii_lowercase().as_str() {
            "expedited" => Some(RestoreTier::Expedited),
            "standard" => Some(RestoreTier::Standard),
            "bulk" => Some(RestoreTier::Bulk),
            _ => None,
        }
    }
}

/// Which objects a policy looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyScope {
    Cluster,
    Bucket {
        tenant: TenantId,
        bucket: BucketName,
    },
}

/// "Versions of at least `min_size` bytes, not read for `min_idle_ms`, go to `backend`".
/// Bucket policies are tried before cluster-wide ones, each group in name order; the first
/// that matches a version decides where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierPolicy {
    pub name: String,
    pub scope: PolicyScope,
    /// A backend name from the nodes' `[[tier.backends]]` configuration.
    pub backend: String,
    /// None: the backend's configured class.
    pub storage_class: Option<StorageClass>,
    pub min_idle_ms: u64,
    pub min_size: u64,
    pub created_at_ms: i64,
}

impl TierPolicy {
    /// Whether a version of `size` bytes idle for `idle_ms` in `tenant`/`bucket` matches.
    pub fn matches(&self, tenant: TenantId, bucket: &BucketName, size: u64, idle_ms: u64) -> bool {
        let in_scope = match &self.scope {
            PolicyScope::Cluster => true,
            PolicyScope::Bucket {
                tenant: t,
                bucket: b,
            } => *t == tenant && b == bucket,
        };
        in_scope && size >= self.min_size && idle_ms >= self.min_idle_ms
    }
}

/// Picks the policy that decides a version (see [`TierPolicy`]).
pub fn choose_policy<'a>(
    policies: &'a [TierPolicy],
    tenant: TenantId,
    bucket: &BucketName,
    size: u64,
    idle_ms: u64,
) -> Option<&'a TierPolicy> {
    let bucket_first = policies
        .iter()
        .filter(|p| matches!(p.scope, PolicyScope::Bucket { .. }))
        .chain(
            policies
                .iter()
                .filter(|p| matches!(p.scope, PolicyScope::Cluster)),
        );
    bucket_first
        .into_iter()
        .find(|p| p.matches(tenant, bucket, size, idle_ms))
}

/// Where a chunk's cold copy is: bytes `offset..offset+len` of an archive object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdLocation {
    pub backend: String,
    pub object: String,
    pub offset: u64,
    pub len: u32,
    pub class: StorageClass,
}

/// A chunk with a cold copy. `released`: its hot copies are gone (or going); reads need the
/// cold copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdChunk {
    pub loc: ColdLocation,
    pub released: bool,
}

/// An archive object in a cold backend: chunks packed one after another, then an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    pub backend: String,
    pub object: String,
    pub class: StorageClass,
    /// Size of the whole object (chunks plus index).
    pub bytes: u64,
    /// Chunks whose cold copy is this archive; at 0 the archive is queued for deletion.
    pub live_chunks: u32,
    pub created_at_ms: i64,
}

/// A version whose chunks all have cold copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdVersion {
    pub backend: String,
    pub class: StorageClass,
    pub since_ms: i64,
}

/// A restore asked for a cold version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    pub tier: RestoreTier,
    /// How long the backend keeps its temporary restored copy (S3 RestoreObject Days).
    pub days: u32,
    pub since_ms: i64,
    /// The archives are readable and the chunks are being written back to hot storage (their
    /// hot copies are kept from here on).
    pub rehydrating: bool,
}

/// Where an object version stands, for Stat and Get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionTier {
    Hot,
    Cold(ColdVersion),
    Restoring(ColdVersion, RestoreRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, scope: PolicyScope, min_size: u64) -> TierPolicy {
        TierPolicy {
            name: name.into(),
            scope,
            backend: name.into(),
            storage_class: None,
            min_idle_ms: 1000,
            min_size,
            created_at_ms: 0,
        }
    }

    #[test]
    fn bucket_policies_win_over_cluster_ones() {
        let photos = BucketName::new("photos").expect("bucket");
        let other = BucketName::new("other").expect("bucket");
        let policies = vec![
            policy("a-cluster", PolicyScope::Cluster, 0),
            policy(
                "z-bucket",
                PolicyScope::Bucket {
                    tenant: TenantId(1),
                    bucket: photos.clone(),
                },
                100,
            ),
        ];
        let pick = |t, b: &BucketName, size, idle| {
            choose_policy(&policies, TenantId(t), b, size, idle).map(|p| p.name.clone())
        };
        assert_eq!(pick(1, &photos, 100, 1000).as_deref(), Some("z-bucket"));
        // Too small for the bucket policy: the cluster one decides.
        assert_eq!(pick(1, &photos, 99, 1000).as_deref(), Some("a-cluster"));
        assert_eq!(pick(2, &photos, 100, 1000).as_deref(), Some("a-cluster"));
        assert_eq!(pick(1, &other, 100, 1000).as_deref(), Some("a-cluster"));
        // Not idle long enough for either.
        assert_eq!(pick(1, &photos, 100, 999), None);
    }

    #[test]
    fn class_names_round_trip() {
        for c in StorageClass::ALL {
            assert_eq!(StorageClass::parse(c.as_str()), Some(c));
        }
        assert_eq!(
            StorageClass::parse("deep-archive"),
            Some(StorageClass::DeepArchive)
        );
        assert_eq!(StorageClass::parse("ONEZONE_IA"), None);
        assert!(StorageClass::Glacier.needs_restore());
        assert!(!StorageClass::GlacierIr.needs_restore());
        assert_eq!(RestoreTier::parse("Bulk"), Some(RestoreTier::Bulk));
    }
}

/// Where a restore of an archived object stands (what a backend reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreStatus {
    /// The object's class is online: it is readable without a restore.
    NotNeeded,
    NotRequested,
    InProgress,
    /// A restored copy is readable.
    Ready,
}

/// Reads S3's x-amz-restore header: `ongoing-request="true"` while it runs, `"false"` (with an
/// expiry date) once the restored copy is readable. Anything else counts as still running.
pub fn parse_restore_header(class: StorageClass, header: Option<&str>) -> RestoreStatus {
    if !class.needs_restore() {
        return RestoreStatus::NotNeeded;
    }
    match header {
        None => RestoreStatus::NotRequested,
        Some(h) if h.contains("ongoing-request=\"true\"") => RestoreStatus::InProgress,
        Some(h) if h.contains("ongoing-request=\"false\"") => RestoreStatus::Ready,
        Some(_) => RestoreStatus::InProgress,
    }
}

/// The cold archive format: chunk bytes back to back, then the index (a record: id, offset
/// and length of every chunk), the index's length (u32, little-endian) and `MAGIC`. Read back
/// by the archive check from ranges of a backend object, so every field is distrusted.
pub mod archive {
    use crate::error::StoreError;
    use crate::records;

    pub const MAGIC: &[u8; 8] = b"STRATAPK";
    /// The index length and the magic.
    pub const FOOTER_LEN: u64 = 4 + MAGIC.len() as u64;

    /// (chunk id, offset, length) of every chunk of an archive.
    pub type Index = Vec<([u8; 32], u64, u32)>;

    /// What follows the chunk bytes: the index and the footer.
    pub fn tail(index: &Index) -> Result<Vec<u8>, StoreError> {
        let mut out = records::encode(index)?;
        let len = u32::try_from(out.len()).map_err(|_| StoreError::Corrupt {
            what: "archive index",
            why: format!("{} bytes do not fit a u32 length", out.len()),
        })?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(MAGIC);
        Ok(out)
    }

    /// Where the index of an archive of `total` bytes lies, given its last `FOOTER_LEN` bytes:
    /// (offset, length).
    pub fn index_range(total: u64, footer: &[u8]) -> Result<(u64, u64), String> {
        if total < FOOTER_LEN || footer.len() as u64 != FOOTER_LEN {
            return Err("too short for an archive footer".into());
        }
        if &footer[4..] != MAGIC {
            return Err("the archive footer is damaged".into());
        }
        let len = u64::from(u32::from_le_bytes([
            footer[0], footer[1], footer[2], footer[3],
        ]));
        let at = (total - FOOTER_LEN)
            .checked_sub(len)
            .ok_or("the archive index length is past the start")?;
        Ok((at, len))
    }

    /// The index read from its bytes; not empty, and every chunk within the chunk bytes that
    /// end at `index_at`.
    pub fn read_index(bytes: &[u8], index_at: u64) -> Result<Index, String> {
        let index: Index = records::decode("archive index", bytes)
            .map_err(|e| format!("the archive index: {e}"))?;
        if index.is_empty() {
            return Err("the archive index is empty".into());
        }
        for (id, offset, len) in &index {
            if offset.saturating_add(u64::from(*len)) > index_at {
                return Err(format!(
                    "chunk {} is indexed past the chunk bytes",
                    crate::ChunkId::from_bytes(*id)
                ));
            }
        }
        Ok(index)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn an_archive_tail_reads_back_and_damage_is_named() {
            let index: Index = vec![([1; 32], 0, 10), ([2; 32], 10, 5)];
            let mut archive = vec![0u8; 15];
            archive.extend(tail(&index).expect("tail"));
            let total = archive.len() as u64;
            let footer = &archive[archive.len() - FOOTER_LEN as usize..];
            let (at, len) = index_range(total, footer).expect("range");
            assert_eq!(at, 15);
            let bytes = &archive[at as usize..(at + len) as usize];
            assert_eq!(read_index(bytes, at).expect("index"), index);
            assert!(
                read_index(bytes, 14).is_err(),
                "a chunk past the chunk bytes"
            );
            let mut bad = footer.to_vec();
            bad[11] ^= 1;
            assert!(index_range(total, &bad).is_err());
            assert!(index_range(3, footer).is_err());
        }
    }
}
