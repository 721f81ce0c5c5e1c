//! The chunk store's blocking core: chunk files on disk and the per-chunk locks.
//!
//! Only a [`ChunkGuard`] creates, replaces, touches or deletes a chunk file, and a guard exists
//! only on a blocking thread, around local file changes and the metadata check that goes with
//! them: it is `!Send` (it holds a std `MutexGuard`), so no async code can keep it across an
//! `.await`, a network call, a Raft proposal or a sleep.
//!
//! ```
//! // The guard is taken and dropped around local work; the task awaits only after that.
//! fn lock_then_await(files: std::sync::Arc<strata_node::chunk_store::Files>, id: strata_cluster::ChunkId) {
//!     tokio::spawn(async move {
//!         {
//!             let guard = files.lock(&id);
//!             let _ = guard.info();
//!         }
//!         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
//!     });
//! }
//! ```
//!
//! ```compile_fail
//! // A guard cannot be held across an .await in a spawned task: the future would not be Send.
//! fn hold_across_await(files: std::sync::Arc<strata_node::chunk_store::Files>, id: strata_cluster::ChunkId) {
//!     tokio::spawn(async move {
//!         let guard = files.lock(&id);
//!         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
//!         drop(guard);
//!     });
//! }
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use strata_cluster::ChunkId;

use super::ChunkStoreError;
use crate::metrics as m;

/// Lock stripes: chunks whose ids share a first byte share a lock. Held for microseconds (a
/// rename, an unlink, a metadata lookup), so sharing costs nothing measurable.
const STRIPES: usize = 256;

/// O_DIRECT needs buffers, offsets and lengths aligned to the device's block size; 4 KiB covers
/// the devices we run on.
const ALIGN: usize = 4096;
/// Size of one staging buffer; larger chunks are written through it in pieces.
const STAGE: usize = 4 << 20;
/// Staging buffers kept for reuse; more may exist while more writes run at once.
const STAGING_KEPT: usize = 8;
/// Read size when a file is verified or compared in place (memory does not grow with the
/// chunk).
const VERIFY_BUF: usize = 128 << 10;

/// What re-hashing a chunk file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Good {
        len: u64,
    },
    /// The file did not hash to its id; it was quarantined.
    Corrupt {
        len: u64,
    },
    Missing,
}

/// Page-aligned staging buffers for O_DIRECT writes, shared by all writer threads so resident
/// memory follows the number of concurrent writes, not the number of threads.
static STAGING: Mutex<Vec<memmap2::MmapMut>> = Mutex::new(Vec::new());

pub(super) fn io_err(op: &'static str, path: &Path, source: io::Error) -> ChunkStoreError {
    let err = match source.kind() {
        io::ErrorKind::StorageFull => ChunkStoreError::DiskFull {
            path: path.to_owned(),
            free: 0,
            reserve: 0,
        },
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

/// What a delete check is told about the file.
#[derive(Debug, Clone, Copy)]
pub struct FileInfo {
    /// Time since the file was written or last re-stored (its mtime).
    pub age: Duration,
    pub len: u64,
}

pub struct Files {
    root: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    /// Free bytes a write must leave on the filesystem (room for the metadata).
    reserve: u64,
    count: AtomicU64,
    bytes: AtomicU64,
    /// Whether the filesystem takes O_DIRECT writes (tmpfs, for one, may not).
    direct: AtomicBool,
    stripes: Vec<Mutex<()>>,
}

/// The right to change one chunk's file. See the module documentation.
pub struct ChunkGuard<'a> {
    files: &'a Files,
    id: ChunkId,
    path: PathBuf,
    _lock: MutexGuard<'a, ()>,
}

impl Files {
    /// Opens (creating if needed) the store under `dir`, counting what it holds. Blocking.
    /// `min_free` is the configured reserve (0: a share of the store's own filesystem).
    pub fn open(dir: &Path, min_free: u64) -> Result<Files, ChunkStoreError> {
        let root = dir.join("chunks");
        let tmp = root.join(".tmp");
        let quarantine = root.join(".quarantine");
        for d in [&root, &tmp, &quarantine] {
            fs::create_dir_all(d).map_err(|e| io_err("create", d, e))?;
        }
        for b in 0..=255u8 {
            let d = root.join(hex::encode([b]));
            if !d.exists() {
                fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
            }
        }
        sync_dir(&root).map_err(|e| io_err("fsync", &root, e))?;
        // Leftovers of writes interrupted by a crash: never renamed, so never acknowledged.
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let total = fs4::total_space(&root).unwrap_or(0);
        let reserve = crate::config::reserve_for(min_free, total);
        let files = Files {
            root,
            tmp,
            quarantine,
            reserve,
            count: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            direct: AtomicBool::new(true),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        };
        let (count, bytes) = files.scan_usage();
        files.count.store(count, Ordering::Relaxed);
        files.bytes.store(bytes, Ordering::Relaxed);
        Ok(files)
    }

    fn scan_usage(&self) -> (u64, u64) {
        let (mut count, mut bytes) = (0, 0);
        for sub in self.subdirs() {
            for f in fs::read_dir(sub).into_iter().flatten().flatten() {
                if let Ok(md) = f.metadata() {
                    count += 1;
                    bytes += md.len();
                }
            }
        }
        (count, bytes)
    }

    fn subdirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn usage(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn dir_of(&self, id: &ChunkId) -> PathBuf {
        self.root.join(&id.to_hex()[..2])
    }

    pub fn path_of(&self, id: &ChunkId) -> PathBuf {
        self.dir_of(id).join(id.to_hex())
    }

    /// Takes the chunk's lock (blocking; held for local file work only).
    pub fn lock(&self, id: &ChunkId) -> ChunkGuard<'_> {
        let lock = self.stripes[id.as_bytes()[0] as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ChunkGuard {
            files: self,
            id: *id,
            path: self.path_of(id),
            _lock: lock,
        }
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.path_of(id).exists()
    }

    pub fn len_of(&self, id: &ChunkId) -> Option<u64> {
        fs::metadata(self.path_of(id)).ok().map(|m| m.len())
    }

    /// Stores `data` under `id` durably (the caller verified that `id` is its BLAKE3). The
    /// bytes go to a temporary file without any lock; the guard then renames it into place,
    /// over the chunk's file if there is one. Returns whether the chunk was not here before.
    ///
    /// The work is the same whether or not the chunk is already here (write, fsync, rename,
    /// directory fsync): another tenant's upload of the same bytes must not finish sooner, or
    /// fail differently on a full disk, than an upload of new bytes (the dedup side channel).
    /// Dedup saves space, not this write. Replacing an existing file also replaces a copy
    /// that rotted on disk with the verified bytes.
    pub fn put(
        &self,
        id: &ChunkId,
        data: &[u8],
    ) -> Result<(bool, Option<Replaced>), ChunkStoreError> {
        self.check_space(data.len() as u64)?;
        let tmp = self
            .tmp
            .join(format!("{}.{:016x}", id.to_hex(), rand::random::<u64>()));
        let written = (|| {
            let f = self.write_file(&tmp, data)?;
            f.sync_data().map_err(|e| io_err("fsync", &tmp, e))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let replaced = self.lock(id).install(&tmp, data.len() as u64)?;
        let dir = self.dir_of(id);
        sync_dir(&dir).map_err(|e| io_err("fsync", &dir, e))?;
        metrics::counter!(m::CHUNK_STORE_OPS, "op" => "put").increment(1);
        metrics::counter!(m::CHUNK_STORE_WRITTEN_BYTES).increment(data.len() as u64);
        Ok(match replaced {
            Installed::New => (true, None),
            Installed::Replaced(old) => (false, old),
        })
    }

    /// Refuses a write that would leave less than the reserve free.
    fn check_space(&self, len: u64) -> Result<(), ChunkStoreError> {
        let free = fs4::available_space(&self.root).unwrap_or(u64::MAX);
        if free < len.saturating_add(self.reserve) {
            metrics::counter!(m::CHUNK_STORE_ERRORS, "op" => "reserve").increment(1);
            return Err(ChunkStoreError::DiskFull {
                path: self.root.clone(),
                free,
                reserve: self.reserve,
            });
        }
        Ok(())
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
        let (data, ino) = match read_with_inode(&path) {
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
            self.lock(id).quarantine(ino);
            return Err(ChunkStoreError::Corrupt(*id));
        }
        Ok(Bytes::from(data))
    }

    /// Re-hashes a chunk's file without keeping it in memory (reads of `VERIFY_BUF`). A
    /// mismatch is counted and quarantines the file.
    pub fn verify(&self, id: &ChunkId) -> Result<Verified, ChunkStoreError> {
        let path = self.path_of(id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verified::Missing),
            Err(e) => return Err(io_err("read", &path, e)),
        };
        let md = f.metadata().map_err(|e| io_err("stat", &path, e))?;
        let len = md.len();
        let digest = hash_file(&f, len).map_err(|e| io_err("read", &path, e))?;
        metrics::counter!(m::CHUNK_STORE_OPS, "op" => "verify").increment(1);
        if ChunkId::from_bytes(digest) != *id {
            metrics::counter!(m::CHUNK_CORRUPT).increment(1);
            tracing::error!(chunk = %id, path = %path.display(), "corrupt chunk found by scrub: BLAKE3 mismatch, quarantining");
            self.lock(id).quarantine(md.ino());
            return Ok(Verified::Corrupt { len });
        }
        Ok(Verified::Good { len })
    }

    /// The ids of the chunks whose id starts with byte `prefix`, sorted (one directory).
    pub fn ids_with_prefix(&self, prefix: u8) -> Vec<ChunkId> {
        let dir = self.root.join(hex::encode([prefix]));
        let mut out: Vec<ChunkId> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| f.file_name().to_str().and_then(ChunkId::from_hex))
            .collect();
        out.sort();
        out
    }

    /// Every chunk id held, in no particular order (a walk of the directories).
    pub fn ids(&self) -> Vec<ChunkId> {
        let mut out = Vec::new();
        for sub in self.subdirs() {
            for f in fs::read_dir(sub).into_iter().flatten().flatten() {
                if let Some(id) = f.file_name().to_str().and_then(ChunkId::from_hex) {
                    out.push(id);
                }
            }
        }
        out
    }

    fn counted_removal(&self, len: u64) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

/// What `install` did.
enum Installed {
    New,
    Replaced(Option<Replaced>),
}

/// The file a put replaced, now under a temporary name. `remove` deletes it (freeing its
/// blocks); a caller that must not wait for that (an upload's ack) runs it elsewhere. Left
/// behind by a crash, the next open clears it with the other temporary files.
pub struct Replaced(PathBuf);

impl Replaced {
    pub fn remove(self) {
        if let Err(e) = fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot delete a replaced chunk file");
        }
    }
}

impl ChunkGuard<'_> {
    pub fn id(&self) -> &ChunkId {
        &self.id
    }

    /// The file's age and length, if it exists.
    pub fn info(&self) -> Result<Option<FileInfo>, ChunkStoreError> {
        match fs::metadata(&self.path) {
            Ok(md) => Ok(Some(FileInfo {
                age: md
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default(),
                len: md.len(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &self.path, e)),
        }
    }

    /// Renames a fully written and synced temporary file into place. When the chunk is
    /// already here (same id, so the same bytes unless the old copy rotted) the two files are
    /// swapped atomically (`RENAME_EXCHANGE`): readers see the old or the new file, never
    /// none, and the old one ends under the temporary name, for the caller to delete later.
    /// Creating an entry and swapping two cost the filesystem the same; freeing the old
    /// file's blocks would not, so it is left out of this path.
    fn install(&self, tmp: &Path, len: u64) -> Result<Installed, ChunkStoreError> {
        let old_len = match fs::metadata(&self.path) {
            Ok(md) => Some(md.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                let _ = fs::remove_file(tmp);
                return Err(io_err("stat", &self.path, e));
            }
        };
        let Some(old_len) = old_len else {
            if let Err(e) = fs::rename(tmp, &self.path) {
                let _ = fs::remove_file(tmp);
                return Err(io_err("rename", &self.path, e));
            }
            self.files.count.fetch_add(1, Ordering::Relaxed);
            self.files.bytes.fetch_add(len, Ordering::Relaxed);
            return Ok(Installed::New);
        };
        let swapped = rustix::fs::renameat_with(
            rustix::fs::CWD,
            tmp,
            rustix::fs::CWD,
            &self.path,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        let replaced = match swapped {
            Ok(()) => Some(Replaced(tmp.to_owned())),
            // A filesystem without RENAME_EXCHANGE: replace in one rename (the old file's
            // blocks are then freed here).
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => {
                if let Err(e) = fs::rename(tmp, &self.path) {
                    let _ = fs::remove_file(tmp);
                    return Err(io_err("rename", &self.path, e));
                }
                None
            }
            Err(e) => {
                let _ = fs::remove_file(tmp);
                return Err(io_err("rename", &self.path, e.into()));
            }
        };
        if old_len != len {
            self.files.bytes.fetch_add(len, Ordering::Relaxed);
            self.files.bytes.fetch_sub(old_len, Ordering::Relaxed);
        }
        Ok(Installed::Replaced(replaced))
    }

    /// Deletes the file. Returns whether there was one.
    pub fn remove(&self) -> Result<bool, ChunkStoreError> {
        let Some(info) = self.info()? else {
            return Ok(false);
        };
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("delete", &self.path, e)),
        }
        self.files.counted_removal(info.len);
        metrics::counter!(m::CHUNK_STORE_OPS, "op" => "delete").increment(1);
        Ok(true)
    }

    /// Moves a file that failed verification aside, if it is still the one that was read
    /// (same inode: a good copy put back meanwhile stays).
    fn quarantine(&self, ino: u64) {
        let Ok(md) = fs::metadata(&self.path) else {
            return;
        };
        if md.ino() != ino {
            return;
        }
        if fs::rename(&self.path, self.files.quarantine.join(self.id.to_hex())).is_ok() {
            self.files.counted_removal(md.len());
        }
    }
}

/// BLAKE3 of the first `len` bytes of `f`, read in pieces of `VERIFY_BUF`. A file of more than
/// one piece is read by a second thread while this one hashes, so reading (from the disk or
/// the page cache) and hashing overlap; at most three pieces are in memory.
fn hash_file(f: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    if len <= VERIFY_BUF as u64 {
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, 0)?;
        hasher.update(&buf);
        return Ok(*hasher.finalize().as_bytes());
    }
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(6);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut at = 0u64;
            while at < len {
                let mut buf = empty_rx
                    .try_recv()
                    .unwrap_or_else(|_| vec![0u8; VERIFY_BUF]);
                let n = VERIFY_BUF.min((len - at) as usize);
                buf.truncate(n);
                let r = f.read_exact_at(&mut buf, at).map(|()| buf);
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
                at += n as u64;
            }
        });
        let mut done = 0u64;
        while done < len {
            let buf = full_rx
                .recv()
                .map_err(|_| io::Error::other("chunk reader stopped"))??;
            hasher.update(&buf);
            done += buf.len() as u64;
            let mut buf = buf;
            buf.resize(VERIFY_BUF, 0);
            let _ = empty_tx.try_send(buf);
        }
        Ok(*hasher.finalize().as_bytes())
    })
}

fn read_with_inode(path: &Path) -> io::Result<(Vec<u8>, u64)> {
    let f = File::open(path)?;
    let md = f.metadata()?;
    let mut data = vec![0u8; md.len() as usize];
    f.read_exact_at(&mut data, 0)?;
    Ok((data, md.ino()))
}

/// Writes block-aligned `data` at offset 0 of an O_DIRECT file through a staging buffer, in
/// pieces of at most the buffer's size.
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
