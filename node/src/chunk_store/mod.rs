//! The local content-addressed chunk store. A chunk's file name is its id (BLAKE3 of its bytes).
//!
//! Writes are atomic and durable: temporary file, write, fsync, rename into place, fsync the
//! directory. Every read re-hashes the bytes and refuses a mismatch (counted, and the file is
//! moved to chunks/.quarantine/), so a corrupt byte is never served. Layout:
//! `chunks/<first two hex digits>/<id hex>`, with `chunks/.tmp/` for writes in progress, so the
//! whole store is one directory that can live on its own disk.
//!
//! The async methods are the one place the node does chunk file I/O: each runs its work on a
//! blocking thread (`spawn_blocking`), never on a tokio worker. The blocking core and the lock
//! guard that alone changes files are in [`files`].

mod files;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_cluster::ChunkId;

pub use files::{ChunkGuard, FileInfo, Files, Verified};

#[derive(Debug, thiserror::Error)]
pub enum ChunkStoreError {
    #[error("chunk {0} is corrupt on disk (BLAKE3 mismatch); it was quarantined")]
    Corrupt(ChunkId),
    #[error("chunk {0} is missing from the store")]
    Missing(ChunkId),
    #[error(
        "the disk holding {path} is full ({free} bytes free, {reserve} kept free for metadata)",
        path = path.display()
    )]
    DiskFull {
        path: PathBuf,
        free: u64,
        reserve: u64,
    },
    #[error("the data directory {} is read-only", .0.display())]
    ReadOnly(PathBuf),
    #[error("chunk store {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("chunk store task failed: {0}")]
    Task(String),
}

/// What a conditional delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Deleted,
    /// The check said keep.
    Kept,
    /// There was no file.
    Absent,
}

/// How long a chunk file replaced by a put waits before it is deleted.
const REPLACED_DELETE_DELAY: Duration = Duration::from_secs(2);

/// The chunk store: cheap to clone.
#[derive(Clone)]
pub struct ChunkStore {
    files: Arc<Files>,
}

impl ChunkStore {
    /// Opens (creating if needed) the store under `dir`; writes leave free on its filesystem
    /// `min_free` bytes, or when that is 0, a share of the filesystem (see
    /// `config::reserve_for`).
    pub async fn open(dir: &Path, min_free: u64) -> Result<ChunkStore, ChunkStoreError> {
        let dir = dir.to_owned();
        let files = tokio::task::spawn_blocking(move || Files::open(&dir, min_free))
            .await
            .map_err(|e| ChunkStoreError::Task(e.to_string()))??;
        Ok(ChunkStore {
            files: Arc::new(files),
        })
    }

    /// Runs blocking store work on a blocking thread: the one spawn_blocking layer.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Files) -> Result<T, ChunkStoreError> + Send + 'static,
    ) -> Result<T, ChunkStoreError> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || f(&files))
            .await
            .map_err(|e| ChunkStoreError::Task(e.to_string()))?
    }

    pub fn root(&self) -> &Path {
        self.files.root()
    }

    /// Chunks held and their total bytes.
    pub fn usage(&self) -> (u64, u64) {
        self.files.usage()
    }

    /// Stores verified bytes durably; false when the chunk was already there (its file is
    /// replaced by the new one, so the collector's grace period starts again). The same work
    /// either way (`Files::put`); the replaced file is deleted `REPLACED_DELETE_DELAY` later,
    /// off the caller's path, since a fresh chunk has nothing to delete.
    pub async fn put(&self, id: ChunkId, data: Bytes) -> Result<bool, ChunkStoreError> {
        let (new, replaced) = self.blocking(move |f| f.put(&id, &data)).await?;
        if let Some(old) = replaced {
            // Later, not now: freeing its blocks goes into the filesystem journal's next
            // commit, which the caller's own next fsync (its Raft log entry) would wait for.
            tokio::spawn(async move {
                tokio::time::sleep(REPLACED_DELETE_DELAY).await;
                let _ = tokio::task::spawn_blocking(move || old.remove()).await;
            });
        }
        Ok(new)
    }

    /// The whole chunk, verified (a mismatch quarantines the file and is `Corrupt`).
    pub async fn get(&self, id: ChunkId) -> Result<Bytes, ChunkStoreError> {
        self.blocking(move |f| f.get(&id)).await
    }

    /// Which of `ids` have a file here.
    pub async fn has(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>, ChunkStoreError> {
        self.blocking(move |f| Ok(ids.iter().map(|id| f.contains(id)).collect()))
            .await
    }

    /// The file sizes of `ids` (None where there is no file).
    pub async fn sizes(&self, ids: Vec<ChunkId>) -> Result<Vec<Option<u64>>, ChunkStoreError> {
        self.blocking(move |f| Ok(ids.iter().map(|id| f.len_of(id)).collect()))
            .await
    }

    /// Re-hashes the chunk's file (a mismatch quarantines it).
    pub async fn verify(&self, id: ChunkId) -> Result<Verified, ChunkStoreError> {
        self.blocking(move |f| f.verify(&id)).await
    }

    /// The chunks whose id starts with byte `prefix`, sorted.
    pub async fn ids_with_prefix(&self, prefix: u8) -> Result<Vec<ChunkId>, ChunkStoreError> {
        self.blocking(move |f| Ok(f.ids_with_prefix(prefix))).await
    }

    /// Every chunk id held.
    pub async fn ids(&self) -> Result<Vec<ChunkId>, ChunkStoreError> {
        self.blocking(|f| Ok(f.ids())).await
    }

    /// Deletes the chunk's file if `keep` says so not, deciding under the chunk's lock: no
    /// write of the same chunk can land between the check and the delete. `keep` runs on a
    /// blocking thread and should only look at local state (the metadata replica, the file).
    pub async fn remove_unless(
        &self,
        id: ChunkId,
        keep: impl FnOnce(&FileInfo) -> bool + Send + 'static,
    ) -> Result<Removal, ChunkStoreError> {
        self.blocking(move |f| {
            let guard = f.lock(&id);
            let Some(info) = guard.info()? else {
                return Ok(Removal::Absent);
            };
            if keep(&info) {
                return Ok(Removal::Kept);
            }
            Ok(if guard.remove()? {
                Removal::Deleted
            } else {
                Removal::Absent
            })
        })
        .await
    }

    /// Deletes the chunk's file (no error if it is gone): a copy the caller knows is not
    /// needed here (every home holds the chunk, and this node is not one).
    pub async fn remove(&self, id: ChunkId) -> Result<bool, ChunkStoreError> {
        self.blocking(move |f| f.lock(&id).remove()).await
    }
}

/// How long a chunk file must sit unchanged before the collector may delete it: covers the time
/// between a chunk's write and the commit of the reference that keeps it.
pub fn old_enough(info: &FileInfo, grace: Duration) -> bool {
    info.age >= grace
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, ChunkStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(dir.path(), 1).await.expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let (_dir, store) = store().await;
        let data = Bytes::from_static(b"hello chunk");
        let id = ChunkId::of(&data);
        assert!(store.put(id, data.clone()).await.expect("put"));
        assert!(
            !store.put(id, data.clone()).await.expect("second put"),
            "a second put reports the chunk as already here"
        );
        assert_eq!(store.get(id).await.expect("get"), data);
        assert_eq!(store.usage(), (1, data.len() as u64));
        assert!(store.remove(id).await.expect("delete"));
        assert!(matches!(
            store.get(id).await,
            Err(ChunkStoreError::Missing(_))
        ));
        assert_eq!(store.usage(), (0, 0));
    }

    #[tokio::test]
    async fn corrupt_chunk_is_refused_and_quarantined() {
        let (dir, store) = store().await;
        let data = Bytes::from(vec![42u8; 10_000]);
        let id = ChunkId::of(&data);
        store.put(id, data).await.expect("put");
        let path = dir
            .path()
            .join("chunks")
            .join(&id.to_hex()[..2])
            .join(id.to_hex());
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[5000] ^= 1;
        std::fs::write(&path, &bytes).expect("corrupt");
        assert!(matches!(
            store.get(id).await,
            Err(ChunkStoreError::Corrupt(_))
        ));
        assert!(
            dir.path()
                .join("chunks/.quarantine")
                .join(id.to_hex())
                .exists()
        );
        assert!(matches!(
            store.get(id).await,
            Err(ChunkStoreError::Missing(_))
        ));
    }

    #[tokio::test]
    async fn verify_finds_rot_and_a_put_over_a_rotten_copy_replaces_it() {
        let (dir, store) = store().await;
        let data = Bytes::from((0..3_000_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let id = ChunkId::of(&data);
        store.put(id, data.clone()).await.expect("put");
        let len = data.len() as u64;
        assert_eq!(
            store.verify(id).await.expect("verify"),
            Verified::Good { len }
        );
        let path = dir
            .path()
            .join("chunks")
            .join(&id.to_hex()[..2])
            .join(id.to_hex());
        let flip = |at: usize| {
            let mut bytes = std::fs::read(&path).expect("read");
            bytes[at] ^= 0x40;
            std::fs::write(&path, &bytes).expect("corrupt");
        };
        // A put always writes the verified bytes, over whatever is there: a rotten copy is
        // replaced (and the chunk was here, so the put reports it as not new).
        flip(2_500_000);
        assert!(!store.put(id, data.clone()).await.expect("put over rot"));
        assert_eq!(std::fs::read(&path).expect("read"), data.to_vec());
        // The scrub's verify finds rot, quarantines the file, and then finds nothing.
        flip(10);
        assert_eq!(
            store.verify(id).await.expect("verify"),
            Verified::Corrupt { len }
        );
        assert!(
            dir.path()
                .join("chunks/.quarantine")
                .join(id.to_hex())
                .exists()
        );
        assert_eq!(store.verify(id).await.expect("verify"), Verified::Missing);
        assert_eq!(store.usage(), (0, 0));
        assert_eq!(
            store.ids_with_prefix(id.as_bytes()[0]).await.expect("ids"),
            vec![]
        );
    }

    #[tokio::test]
    async fn ids_with_prefix_are_sorted() {
        let (_dir, store) = store().await;
        let mut want = Vec::new();
        for i in 0..2000u32 {
            let data = Bytes::from(i.to_le_bytes().to_vec());
            let id = ChunkId::of(&data);
            store.put(id, data).await.expect("put");
            if id.as_bytes()[0] == 7 {
                want.push(id);
            }
        }
        want.sort();
        assert!(!want.is_empty());
        assert_eq!(store.ids_with_prefix(7).await.expect("ids"), want);
    }

    #[tokio::test]
    async fn reopen_counts_usage_and_clears_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = ChunkStore::open(dir.path(), 1).await.expect("open");
            for i in 0..5u8 {
                let data = Bytes::from(vec![i; 100]);
                store.put(ChunkId::of(&data), data).await.expect("put");
            }
            std::fs::write(dir.path().join("chunks/.tmp/half-written"), b"x").expect("tmp");
        }
        let store = ChunkStore::open(dir.path(), 1).await.expect("reopen");
        assert_eq!(store.usage(), (5, 500));
        assert_eq!(
            std::fs::read_dir(dir.path().join("chunks/.tmp"))
                .expect("ls")
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn removal_is_decided_under_the_lock_and_a_rewrite_restarts_the_grace() {
        let (dir, store) = store().await;
        let data = Bytes::from(vec![7u8; 5000]);
        let id = ChunkId::of(&data);
        store.put(id, data.clone()).await.expect("put");
        let grace = Duration::from_secs(600);
        // Young: kept.
        let r = store
            .remove_unless(id, move |i| !old_enough(i, grace))
            .await
            .expect("check");
        assert_eq!(r, Removal::Kept);
        // Age it, then store it again: the new reference re-stamps it, so it is young again.
        let path = dir
            .path()
            .join("chunks")
            .join(&id.to_hex()[..2])
            .join(id.to_hex());
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .expect("age the file");
        assert!(!store.put(id, data).await.expect("put again"));
        let r = store
            .remove_unless(id, move |i| !old_enough(i, grace))
            .await
            .expect("check");
        assert_eq!(r, Removal::Kept, "a re-stored chunk must not be collected");
        let r = store.remove_unless(id, |_| false).await.expect("delete");
        assert_eq!(r, Removal::Deleted);
        let r = store.remove_unless(id, |_| false).await.expect("absent");
        assert_eq!(r, Removal::Absent);
    }

    #[tokio::test]
    async fn a_write_that_would_eat_the_reserve_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(dir.path(), u64::MAX / 2)
            .await
            .expect("open");
        let data = Bytes::from(vec![1u8; 100]);
        let e = store
            .put(ChunkId::of(&data), data)
            .await
            .expect_err("reserve");
        assert!(matches!(e, ChunkStoreError::DiskFull { .. }), "{e}");
        assert!(e.to_string().contains("kept free"), "{e}");
    }

    /// The guard cannot cross an `.await`: it is not Send (see also the compile_fail example
    /// in `files`).
    #[test]
    fn the_lock_guard_is_not_send() {
        trait AmbiguousIfSend<A> {
            fn some_item() {}
        }
        impl<T: ?Sized> AmbiguousIfSend<()> for T {}
        #[allow(dead_code)]
        struct Invalid;
        impl<T: ?Sized + Send> AmbiguousIfSend<Invalid> for T {}
        // Compiles only if exactly one impl applies, i.e. ChunkGuard is not Send.
        <ChunkGuard<'static> as AmbiguousIfSend<_>>::some_item();
    }
}
