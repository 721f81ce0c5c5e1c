//! The local content-addressed chunk store. A chunk's file name is its id (BLAKE3 of its bytes).
//!
//! Writes are atomic and durable: temp file, write, fsync, rename into place, fsync the
//! directory. Every read re-hashes the bytes and refuses a mismatch (counted, and the file is
//! moved to chunks/.quarantine/), so a corrupt byte is never served. Layout:
//! `chunks/<first two hex digits>/<id hex>`, with `chunks/.tmp/` for writes in progress, so the
//! whole store is one directory that can live on its own disk. All methods block: call them
//! from spawn_blocking.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use strata_cluster::ChunkId;

use crate::metrics as m;

#[derive(Debug, thiserror::Error)]
pub enum ChunkStoreError {
    #[error("chunk {0} is corrupt on disk (BLAKE3 mismatch); it was quarantined")]
    Corrupt(ChunkId),
    #[error("chunk {0} is missing from the store")]
    Missing(ChunkId),
    #[error("the disk holding {0} is full")]
    DiskFull(PathBuf),
    #[error("the data directory {0} is read-only")]
    ReadOnly(PathBuf),
    #[error("chunk store {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> ChunkStoreError {
    let err = match source.kind() {
        io::ErrorKind::StorageFull => ChunkStoreError::DiskFull(path.to_owned()),
        io::ErrorKind::ReadOnlyFilesystem => ChunkStoreError::ReadOnly(path.to_owned()),
        io::ErrorKind::PermissionDenied if op != "read" => {
            ChunkStoreError::ReadOnly(path.to_owned())
        }
        _ => ChunkStoreError::Io {
            op,
            path: path.to_owned(),
            source,
        },
    };
    metrics::counter!(m::CHUNK_STORE_ERRORS, "op" => op).increment(1);
    err
}

pub struct ChunkStore {
    root: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    count: AtomicU64,
    bytes: AtomicU64,
    /// Whether the filesystem takes O_DIRECT writes (tmpfs, for one, may not).
    direct: AtomicBool,
}

/// O_DIRECT needs buffers, offsets and lengths aligned to the device's block size; 4 KiB covers
/// the devices we run on.
const ALIGN: usize = 4096;

/// Size of one staging buffer; larger chunks are written through it in pieces.
const STAGE: usize = 4 << 20;
/// Staging buffers kept for reuse; more may exist while more writes run at once.
const STAGING_KEPT: usize = 8;

/// Page-aligned staging buffers for O_DIRECT writes, shared by all writer threads so resident
/// memory follows the number of concurrent writes, not the number of threads.
static STAGING: Mutex<Vec<memmap2::MmapMut>> = Mutex::new(Vec::new());

impl ChunkStore {
    /// Opens (creating if needed) the store under `dir`, counting what it holds.
    pub fn open(dir: &Path) -> Result<ChunkStore, ChunkStoreError> {
        let root = dir.join("chunks");
        let tmp = root.join(".tmp");
        let quarantine = root.join(".quarantine");
        for d in [&root, &tmp, &quarantine] {
            fs::create_dir_all(d).map_err(|e| io_err("create", d, e))?;
        }
        // Leftovers of writes interrupted by a crash: never renamed, so never acknowledged.
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let store = ChunkStore {
            root,
            tmp,
            quarantine,
            count: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            direct: AtomicBool::new(true),
        };
        let (count, bytes) = store.scan_usage();
        store.count.store(count, Ordering::Relaxed);
        store.bytes.store(bytes, Ordering::Relaxed);
        Ok(store)
    }

    fn scan_usage(&self) -> (u64, u64) {
        let (mut count, mut bytes) = (0, 0);
        for sub in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            if sub.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                if let Ok(md) = f.metadata() {
                    count += 1;
                    bytes += md.len();
                }
            }
        }
        (count, bytes)
    }

    /// Chunks held and their total bytes.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_of(&self, id: &ChunkId) -> PathBuf {
        self.root.join(&id.to_hex()[..2])
    }

    pub fn path_of(&self, id: &ChunkId) -> PathBuf {
        self.dir_of(id).join(id.to_hex())
    }

    /// How long ago the chunk's file was written (None if it is missing).
    pub fn age(&self, id: &ChunkId) -> Option<std::time::Duration> {
        let modified = fs::metadata(self.path_of(id)).ok()?.modified().ok()?;
        Some(modified.elapsed().unwrap_or_default())
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.path_of(id).exists()
    }

    /// Stores `data` under `id` durably. The caller has verified that `id` is the BLAKE3 of
    /// `data`. Returns false when the chunk was already there (nothing written).
    pub fn put(&self, id: &ChunkId, data: &[u8]) -> Result<bool, ChunkStoreError> {
        let path = self.path_of(id);
        if path.exists() {
            return Ok(false);
        }
        let dir = self.dir_of(id);
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
            sync_dir(&self.root).map_err(|e| io_err("fsync", &self.root, e))?;
        }
        let tmp = self
            .tmp
            .join(format!("{}.{:016x}", id.to_hex(), rand::random::<u64>()));
        let result = (|| {
            let f = self.write_file(&tmp, data)?;
            f.sync_data().map_err(|e| io_err("fsync", &tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| io_err("rename", &path, e))?;
            sync_dir(&dir).map_err(|e| io_err("fsync", &dir, e))
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        metrics::counter!(m::CHUNK_STORE_OPS, "op" => "put").increment(1);
        metrics::counter!(m::CHUNK_STORE_WRITTEN_BYTES).increment(data.len() as u64);
        Ok(true)
    }

    /// Writes `data` to a new file. The block-aligned bulk goes with O_DIRECT from a
    /// page-aligned buffer, skipping the page cache (the kernel's copy into it costs more CPU
    /// than the copy into our buffer); the unaligned tail, and filesystems without O_DIRECT,
    /// use ordinary writes. The caller fsyncs the returned file.
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<File, ChunkStoreError> {
        let aligned = data.len() / ALIGN * ALIGN;
        if aligned > 0 && self.direct.load(Ordering::Relaxed) {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => {
                    direct_write(&f, &data[..aligned]).map_err(|e| io_err("write", path, e))?;
                    drop(f);
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| io_err("open", path, e))?;
                    f.write_all_at(&data[aligned..], aligned as u64)
                        .map_err(|e| io_err("write", path, e))?;
                    return Ok(f);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(path = %path.display(), "filesystem refuses O_DIRECT; using buffered writes");
                    self.direct.store(false, Ordering::Relaxed);
                    let _ = fs::remove_file(path);
                }
                Err(e) => return Err(io_err("create", path, e)),
            }
        }
        let mut f = File::create(path).map_err(|e| io_err("create", path, e))?;
        f.write_all(data).map_err(|e| io_err("write", path, e))?;
        Ok(f)
    }

    /// Reads a whole chunk and verifies it. A mismatch quarantines the file and is an error.
    pub fn get(&self, id: &ChunkId) -> Result<Bytes, ChunkStoreError> {
        let path = self.path_of(id);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ChunkStoreError::Missing(*id));
            }
            Err(e) => return Err(io_err("read", &path, e)),
        };
        metrics::counter!(m::CHUNK_STORE_OPS, "op" => "get").increment(1);
        if ChunkId::of(&data) != *id {
            metrics::counter!(m::CHUNK_CORRUPT).increment(1);
            tracing::error!(chunk = %id, path = %path.display(), "corrupt chunk: BLAKE3 mismatch, quarantining");
            let _ = fs::rename(&path, self.quarantine.join(id.to_hex()));
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(data.len() as u64, Ordering::Relaxed);
            return Err(ChunkStoreError::Corrupt(*id));
        }
        Ok(Bytes::from(data))
    }

    /// Every chunk id held, in no particular order (a walk of the directories).
    pub fn ids(&self) -> Vec<ChunkId> {
        let mut out = Vec::new();
        for sub in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            if sub.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                if let Some(id) = f.file_name().to_str().and_then(ChunkId::from_hex) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// Removes a chunk's file (no error if it is already gone).
    pub fn delete(&self, id: &ChunkId) -> Result<(), ChunkStoreError> {
        let path = self.path_of(id);
        let len = match fs::metadata(&path) {
            Ok(md) => md.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("stat", &path, e)),
        };
        fs::remove_file(&path).map_err(|e| io_err("delete", &path, e))?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(len, Ordering::Relaxed);
        metrics::counter!(m::CHUNK_STORE_OPS, "op" => "delete").increment(1);
        Ok(())
    }
}

/// Writes block-aligned `data` at offset 0 of an O_DIRECT file through the thread's staging
/// buffer, in pieces of at most the buffer's size.
fn direct_write(f: &File, data: &[u8]) -> io::Result<()> {
    let pooled = STAGING.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut buf = match pooled {
        Some(b) => b,
        None => memmap2::MmapMut::map_anon(STAGE)?,
    };
    let mut result = Ok(());
    let mut done = 0;
    while done < data.len() {
        let n = (data.len() - done).min(STAGE);
        buf[..n].copy_from_slice(&data[done..done + n]);
        if let Err(e) = f.write_all_at(&buf[..n], done as u64) {
            result = Err(e);
            break;
        }
        done += n;
    }
    let mut pool = STAGING.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < STAGING_KEPT {
        pool.push(buf);
    }
    result
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(dir.path()).expect("open");
        let data = b"hello chunk".to_vec();
        let id = ChunkId::of(&data);
        assert!(store.put(&id, &data).expect("put"));
        assert!(
            !store.put(&id, &data).expect("second put"),
            "second put writes nothing"
        );
        assert_eq!(store.get(&id).expect("get"), Bytes::from(data.clone()));
        assert_eq!(store.usage(), (1, data.len() as u64));
        store.delete(&id).expect("delete");
        assert!(matches!(store.get(&id), Err(ChunkStoreError::Missing(_))));
        assert_eq!(store.usage(), (0, 0));
    }

    #[test]
    fn corrupt_chunk_is_refused_and_quarantined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(dir.path()).expect("open");
        let data = vec![42u8; 10_000];
        let id = ChunkId::of(&data);
        store.put(&id, &data).expect("put");
        let mut bytes = fs::read(store.path_of(&id)).expect("read");
        bytes[5000] ^= 1;
        fs::write(store.path_of(&id), &bytes).expect("corrupt");
        assert!(matches!(store.get(&id), Err(ChunkStoreError::Corrupt(_))));
        assert!(
            dir.path()
                .join("chunks/.quarantine")
                .join(id.to_hex())
                .exists()
        );
        assert!(matches!(store.get(&id), Err(ChunkStoreError::Missing(_))));
    }

    #[test]
    fn reopen_counts_usage_and_clears_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = ChunkStore::open(dir.path()).expect("open");
            for i in 0..5u8 {
                let data = vec![i; 100];
                store.put(&ChunkId::of(&data), &data).expect("put");
            }
            fs::write(dir.path().join("chunks/.tmp/half-written"), b"x").expect("tmp");
        }
        let store = ChunkStore::open(dir.path()).expect("reopen");
        assert_eq!(store.usage(), (5, 500));
        assert_eq!(
            fs::read_dir(dir.path().join("chunks/.tmp"))
                .expect("ls")
                .count(),
            0
        );
    }
}
