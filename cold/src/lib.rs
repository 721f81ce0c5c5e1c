//! strata-cold: Strata's cold-tier backends. A [`ColdStore`] keeps whole objects (Strata's
//! archives) under names the tiering code chooses; it knows storage classes and, where the
//! class needs one, restores. Three backends: S3 (Glacier classes), Backblaze B2
//! (S3-compatible, always online) and a local directory (the embedded default, with a
//! simulated restore delay).
//!
//! Boundary: knows nothing of the node (chunks, Raft, gRPC); it depends on strata-cluster only
//! for the storage-class and restore-tier types. This crate is the only one that links
//! aws-sdk-s3.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_cluster::tier::{RestoreTier, StorageClass};

mod local;
mod s3;

pub use local::LocalStore;
pub use s3::S3Store;

/// Metric names this crate records (the node describes them to its exporter).
pub mod metrics {
    pub const BACKEND_REQUESTS: &str = "strata_tier_backend_requests_total";
    pub const BACKEND_ERRORS: &str = "strata_tier_backend_errors_total";
}

#[derive(Debug, thiserror::Error)]
pub enum ColdError {
    #[error("{0} does not exist in the cold backend")]
    NotFound(String),
    #[error("{0} is archived and must be restored before it can be read")]
    NotRestored(String),
    #[error("{0}")]
    Backend(String),
    #[error("cold backend {name}: {why}")]
    Config { name: String, why: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A directory (archived classes need a simulated restore).
    Local,
    /// Amazon S3 or another S3 server: GLACIER, DEEP_ARCHIVE, GLACIER_IR or STANDARD.
    S3,
    /// Backblaze B2 through its S3-compatible endpoint: always online (STANDARD).
    B2,
}

/// One backend's configuration (a `[[tier.backends]]` entry in the node's config).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The name tier policies use.
    pub name: String,
    pub kind: BackendKind,
    /// Local: the directory.
    #[serde(default)]
    pub path: PathBuf,
    /// Local: how long a restore takes.
    #[serde(default, with = "humantime_serde")]
    pub restore_delay: Duration,
    /// S3/B2: endpoint URL (empty: AWS's endpoint for the region).
    #[serde(default)]
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default)]
    pub bucket: String,
    /// Prefix of every object name Strata writes.
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (http://host/bucket/key), needed by most non-AWS servers.
    #[serde(default)]
    pub path_style: bool,
    /// Credentials (B2: application key id and key). Empty: AWS's standard credential chain
    /// (environment, profile, instance role).
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    /// Class written when a policy names none (S3 and local: GLACIER; B2: STANDARD).
    #[serde(default)]
    pub storage_class: String,
    /// Days a restored copy stays readable in the backend (S3 RestoreObject Days).
    #[serde(default = "default_restore_days")]
    pub restore_days: u32,
}

/// Debug output never shows the secret key.
impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("restore_delay", &self.restore_delay)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("storage_class", &self.storage_class)
            .field("restore_days", &self.restore_days)
            .finish()
    }
}

pub fn default_region() -> String {
    "us-east-1".into()
}

fn default_restore_days() -> u32 {
    1
}

impl BackendConfig {
    /// The embedded `local` backend at `path`.
    pub fn local(path: PathBuf, restore_delay: Duration) -> BackendConfig {
        BackendConfig {
            name: "local".into(),
            kind: BackendKind::Local,
            path,
            restore_delay,
            endpoint: String::new(),
            region: default_region(),
            bucket: String::new(),
            prefix: String::new(),
            path_style: false,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            storage_class: String::new(),
            restore_days: 1,
        }
    }
}

pub use strata_cluster::tier::RestoreStatus;

/// What a backend reports about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdObject {
    pub size: u64,
    pub class: StorageClass,
    pub restore: RestoreStatus,
    /// CRC32 of the whole object, if the backend keeps one (S3, local).
    pub crc32: Option<u32>,
    /// MD5 of the whole object, where the backend reports one (B2: the ETag of a
    /// single-part upload).
    pub md5: Option<[u8; 16]>,
}

/// What a backend's put computed and had the backend check, for the verification after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PutReceipt {
    /// Sent as Content-MD5 (B2, which does not take x-amz-checksum-* headers).
    pub md5: Option<[u8; 16]>,
}

#[async_trait::async_trait]
pub trait ColdStore: Send + Sync {
    /// The name policies use.
    fn name(&self) -> &str;
    /// "local", "s3" or "b2".
    fn kind(&self) -> &'static str;
    /// The class objects get when a policy names none.
    fn default_class(&self) -> StorageClass;
    /// Whether `class` is one this backend can write.
    fn supports(&self, class: StorageClass) -> bool;
    /// Writes `object` durably, with a digest of `body` the backend checks on arrival (CRC32
    /// for S3 and local, Content-MD5 for B2).
    async fn put(
        &self,
        object: &str,
        body: Bytes,
        crc32: u32,
        class: StorageClass,
    ) -> Result<PutReceipt, ColdError>;
    async fn head(&self, object: &str) -> Result<ColdObject, ColdError>;
    /// Starts a restore (a restore already running is not an error).
    async fn restore(&self, object: &str, tier: RestoreTier, days: u32) -> Result<(), ColdError>;
    /// Bytes `offset..offset+len` of the object (restored first, if its class needs it).
    async fn get_range(&self, object: &str, offset: u64, len: u64) -> Result<Bytes, ColdError>;
    async fn delete(&self, object: &str) -> Result<(), ColdError>;
    /// Up to `limit` objects whose names start with `prefix`, with their modification time
    /// (milliseconds since the epoch).
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, i64)>, ColdError>;
}

/// Checks that `object` as the backend reports it is the one written: same size, and the same
/// CRC32 where the backend keeps one, else the same MD5 (B2's ETag).
pub async fn verify(
    store: &dyn ColdStore,
    object: &str,
    size: u64,
    crc32: u32,
    receipt: PutReceipt,
) -> Result<ColdObject, ColdError> {
    let head = observe(store, "head", store.head(object)).await?;
    if head.size != size {
        return Err(ColdError::Backend(format!(
            "{object} is {} bytes in backend {}, {size} were written",
            head.size,
            store.name()
        )));
    }
    match (head.crc32, head.md5, receipt.md5) {
        (Some(c), _, _) if c == crc32 => Ok(head),
        (Some(c), _, _) => Err(ColdError::Backend(format!(
            "{object} has CRC32 {c:08x} in backend {}, {crc32:08x} was written",
            store.name()
        ))),
        (None, Some(got), Some(sent)) if got == sent => Ok(head),
        (None, Some(got), Some(sent)) => Err(ColdError::Backend(format!(
            "{object} has MD5 {} in backend {}, {} was written",
            hex(&got),
            store.name(),
            hex(&sent)
        ))),
        _ => Err(ColdError::Backend(format!(
            "backend {} reports no CRC32 or MD5 for {object}: its copy cannot be verified",
            store.name()
        ))),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Counts a backend request and its failure.
pub async fn observe<T>(
    store: &dyn ColdStore,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, ColdError>>,
) -> Result<T, ColdError> {
    let backend = store.name().to_owned();
    ::metrics::counter!(metrics::BACKEND_REQUESTS, "backend" => backend.clone(), "op" => op)
        .increment(1);
    let r = fut.await;
    if let Err(e) = &r
        && !matches!(e, ColdError::NotRestored(_))
    {
        ::metrics::counter!(metrics::BACKEND_ERRORS, "backend" => backend, "op" => op).increment(1);
    }
    r
}

/// The configured backends by name.
pub type Backends = BTreeMap<String, Arc<dyn ColdStore>>;

/// Opens every backend in `configs`.
pub async fn open_backends(configs: &[BackendConfig]) -> Result<Backends, ColdError> {
    let mut out: Backends = BTreeMap::new();
    for b in configs {
        let store: Arc<dyn ColdStore> = match b.kind {
            BackendKind::Local => Arc::new(LocalStore::open(b).await?),
            BackendKind::S3 | BackendKind::B2 => Arc::new(S3Store::open(b).await),
        };
        out.insert(b.name.clone(), store);
    }
    Ok(out)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The storage class a backend config names (checked when the config loads).
pub fn configured_class(b: &BackendConfig) -> StorageClass {
    StorageClass::parse(&b.storage_class).unwrap_or(match b.kind {
        BackendKind::Local | BackendKind::S3 => StorageClass::Glacier,
        BackendKind::B2 => StorageClass::Standard,
    })
}
