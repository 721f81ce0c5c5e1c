//! Cold-tier backends. A [`ColdStore`] keeps whole objects (Strata's archives) under names the
//! tiering code chooses; it knows storage classes and, where the class needs one, restores.
//! Three backends: S3 (Glacier classes), Backblaze B2 (S3-compatible, always online) and a local
//! directory (the embedded default, with a simulated restore delay).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use strata_cluster::tier::{RestoreTier, StorageClass};

use crate::config::{BackendConfig, BackendKind, Config};
use crate::metrics as m;

mod local;
mod s3;

pub use local::LocalStore;
pub use s3::S3Store;

#[derive(Debug, thiserror::Error)]
pub enum ColdError {
    #[error("{0} does not exist in the cold backend")]
    NotFound(String),
    #[error("{0} is archived and must be restored before it can be read")]
    NotRestored(String),
    #[error("{0}")]
    Backend(String),
}

/// Where a restore of an object stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreStatus {
    /// The object's class is online: it is readable without a restore.
    NotNeeded,
    NotRequested,
    InProgress,
    /// A restored copy is readable.
    Ready,
}

/// What a backend reports about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdObject {
    pub size: u64,
    pub class: StorageClass,
    pub restore: RestoreStatus,
    /// CRC32 of the whole object, if the backend keeps one.
    pub crc32: Option<u32>,
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
    /// Writes `object` durably, with the CRC32 of `body` for the backend to check.
    async fn put(
        &self,
        object: &str,
        body: Bytes,
        crc32: u32,
        class: StorageClass,
    ) -> Result<(), ColdError>;
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

/// Checks that `object` as the backend reports it is the one written: same size and CRC32.
pub async fn verify(
    store: &dyn ColdStore,
    object: &str,
    size: u64,
    crc32: u32,
) -> Result<ColdObject, ColdError> {
    let head = observe(store, "head", store.head(object)).await?;
    if head.size != size {
        return Err(ColdError::Backend(format!(
            "{object} is {} bytes in backend {}, {size} were written",
            head.size,
            store.name()
        )));
    }
    match head.crc32 {
        Some(c) if c == crc32 => Ok(head),
        Some(c) => Err(ColdError::Backend(format!(
            "{object} has CRC32 {c:08x} in backend {}, {crc32:08x} was written",
            store.name()
        ))),
        None => Err(ColdError::Backend(format!(
            "backend {} reports no CRC32 for {object}: its copy cannot be verified",
            store.name()
        ))),
    }
}

/// Counts a backend request and its failure.
pub async fn observe<T>(
    store: &dyn ColdStore,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, ColdError>>,
) -> Result<T, ColdError> {
    let backend = store.name().to_owned();
    metrics::counter!(m::TIER_BACKEND_REQUESTS, "backend" => backend.clone(), "op" => op)
        .increment(1);
    let r = fut.await;
    if let Err(e) = &r
        && !matches!(e, ColdError::NotRestored(_))
    {
        metrics::counter!(m::TIER_BACKEND_ERRORS, "backend" => backend, "op" => op).increment(1);
    }
    r
}

/// The configured backends by name.
pub type Backends = BTreeMap<String, Arc<dyn ColdStore>>;

/// Opens every configured backend (the embedded `local` one included).
pub async fn open_backends(config: &Config) -> anyhow::Result<Backends> {
    let mut out: Backends = BTreeMap::new();
    for b in config.tier_backends() {
        let store: Arc<dyn ColdStore> = match b.kind {
            BackendKind::Local => Arc::new(LocalStore::open(&b)?),
            BackendKind::S3 | BackendKind::B2 => Arc::new(S3Store::open(&b).await?),
        };
        out.insert(b.name.clone(), store);
    }
    Ok(out)
}

/// The storage class a backend config names (checked when the config loads).
pub fn configured_class(b: &BackendConfig) -> StorageClass {
    StorageClass::parse(&b.storage_class).unwrap_or(match b.kind {
        BackendKind::Local | BackendKind::S3 => StorageClass::Glacier,
        BackendKind::B2 => StorageClass::Standard,
    })
}
