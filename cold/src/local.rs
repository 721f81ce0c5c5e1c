//! The local-directory backend: each object is a file, with a small JSON sidecar holding its
//! class, CRC32 and restore state. Archived classes behave like Glacier: reads fail until a
//! restore was asked for and `restore_delay` has passed. For one machine (or a shared
//! filesystem) and for seeing the whole cold-tier flow without a cloud account.
//!
//! Every file operation runs on a blocking thread (`blocking`), never on a tokio worker.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_cluster::tier::{RestoreTier, StorageClass};

use super::{
    BackendConfig, ColdError, ColdObject, ColdStore, PutReceipt, RestoreStatus, configured_class,
    now_ms,
};

pub struct LocalStore {
    name: String,
    class: StorageClass,
    dir: Arc<Dir>,
}

/// The directory and its rules, shared with the blocking threads.
struct Dir {
    root: PathBuf,
    restore_delay: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    class: StorageClass,
    crc32: u32,
    restore_requested_ms: Option<i64>,
}

fn io(e: std::io::Error) -> ColdError {
    ColdError::Backend(format!("local cold directory: {e}"))
}

impl LocalStore {
    pub async fn open(b: &BackendConfig) -> Result<LocalStore, ColdError> {
        let dir = Arc::new(Dir {
            root: b.path.clone(),
            restore_delay: b.restore_delay,
        });
        let root = dir.root.clone();
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(&root))
            .await
            .map_err(|e| ColdError::Backend(e.to_string()))?
            .map_err(|e| ColdError::Config {
                name: b.name.clone(),
                why: format!("cannot create cold directory {}: {e}", b.path.display()),
            })?;
        Ok(LocalStore {
            name: b.name.clone(),
            class: configured_class(b),
            dir,
        })
    }

    /// Runs `f` on the directory on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Dir) -> Result<T, ColdError> + Send + 'static,
    ) -> Result<T, ColdError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || f(&dir))
            .await
            .map_err(|e| ColdError::Backend(format!("local cold directory task: {e}")))?
    }
}

impl Dir {
    /// The file of an object; names are Strata's own (hex and '/'), never `..`.
    fn path(&self, object: &str) -> Result<PathBuf, ColdError> {
        if object.is_empty()
            || object
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(ColdError::Backend(format!("bad object name {object:?}")));
        }
        Ok(self.root.join(object))
    }

    fn sidecar_path(file: &Path) -> PathBuf {
        let mut s = file.as_os_str().to_owned();
        s.push(".meta.json");
        PathBuf::from(s)
    }

    fn read_sidecar(&self, object: &str) -> Result<(PathBuf, Sidecar), ColdError> {
        let file = self.path(object)?;
        let meta = match std::fs::read(Self::sidecar_path(&file)) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ColdError::NotFound(object.to_owned()));
            }
            Err(e) => return Err(io(e)),
        };
        let side = serde_json::from_slice(&meta)
            .map_err(|e| ColdError::Backend(format!("{object}: bad sidecar: {e}")))?;
        Ok((file, side))
    }

    fn status(&self, side: &Sidecar) -> RestoreStatus {
        if !side.class.needs_restore() {
            return RestoreStatus::NotNeeded;
        }
        match side.restore_requested_ms {
            None => RestoreStatus::NotRequested,
            Some(t) if now_ms() >= t + self.restore_delay.as_millis() as i64 => {
                RestoreStatus::Ready
            }
            Some(_) => RestoreStatus::InProgress,
        }
    }

    fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, i64)>, ColdError> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io)?;
                let path = entry.path();
                let meta = entry.metadata().map_err(io)?;
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Some(name) = path
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|p| p.to_str())
                    .map(str::to_owned)
                else {
                    continue;
                };
                if name.ends_with(".meta.json") || !name.starts_with(prefix) {
                    continue;
                }
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64);
                out.push((name, modified));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}

/// Writes `bytes` to `path` durably: temporary file, fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait::async_trait]
impl ColdStore for LocalStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn default_class(&self) -> StorageClass {
        self.class
    }

    fn supports(&self, _class: StorageClass) -> bool {
        true
    }

    async fn put(
        &self,
        object: &str,
        body: Bytes,
        crc32: u32,
        class: StorageClass,
    ) -> Result<PutReceipt, ColdError> {
        let object = object.to_owned();
        let side = serde_json::to_vec(&Sidecar {
            class,
            crc32,
            restore_requested_ms: None,
        })
        .map_err(|e| ColdError::Backend(e.to_string()))?;
        self.blocking(move |d| {
            let file = d.path(&object)?;
            write_durably(&file, &body).map_err(io)?;
            write_durably(&Dir::sidecar_path(&file), &side).map_err(io)?;
            Ok(PutReceipt::default())
        })
        .await
    }

    async fn head(&self, object: &str) -> Result<ColdObject, ColdError> {
        let object = object.to_owned();
        self.blocking(move |d| {
            let (file, side) = d.read_sidecar(&object)?;
            // The CRC32 of what the file holds now, so a damaged file shows.
            let body = std::fs::read(file).map_err(io)?;
            Ok(ColdObject {
                size: body.len() as u64,
                class: side.class,
                restore: d.status(&side),
                crc32: Some(crc32fast::hash(&body)),
                md5: None,
            })
        })
        .await
    }

    async fn restore(&self, object: &str, _tier: RestoreTier, _days: u32) -> Result<(), ColdError> {
        let object = object.to_owned();
        self.blocking(move |d| {
            let (file, mut side) = d.read_sidecar(&object)?;
            if side.restore_requested_ms.is_none() {
                side.restore_requested_ms = Some(now_ms());
                let bytes =
                    serde_json::to_vec(&side).map_err(|e| ColdError::Backend(e.to_string()))?;
                write_durably(&Dir::sidecar_path(&file), &bytes).map_err(io)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_range(&self, object: &str, offset: u64, len: u64) -> Result<Bytes, ColdError> {
        let object = object.to_owned();
        self.blocking(move |d| {
            use std::os::unix::fs::FileExt;
            let (file, side) = d.read_sidecar(&object)?;
            if matches!(
                d.status(&side),
                RestoreStatus::NotRequested | RestoreStatus::InProgress
            ) {
                return Err(ColdError::NotRestored(object));
            }
            let f = std::fs::File::open(file).map_err(io)?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, offset).map_err(io)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, i64)>, ColdError> {
        let prefix = prefix.to_owned();
        self.blocking(move |d| d.list(&prefix, limit)).await
    }

    async fn delete(&self, object: &str) -> Result<(), ColdError> {
        let object = object.to_owned();
        self.blocking(move |d| {
            let file = d.path(&object)?;
            for p in [Dir::sidecar_path(&file), file] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(e)),
                }
            }
            Ok(())
        })
        .await
    }
}
