//! Free space on the data directory's filesystem, sampled off the tokio workers so request
//! paths and metrics read a recent figure without a system call.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct DiskSpace {
    path: PathBuf,
    free: AtomicU64,
    total: AtomicU64,
}

impl DiskSpace {
    /// Samples `path` once (blocking: call at startup or from a blocking thread).
    pub fn new(path: PathBuf) -> Arc<DiskSpace> {
        let d = Arc::new(DiskSpace {
            path,
            free: AtomicU64::new(u64::MAX),
            total: AtomicU64::new(0),
        });
        d.refresh();
        d
    }

    /// Samples again (blocking).
    pub fn refresh(&self) {
        if let Ok(free) = fs4::available_space(&self.path) {
            self.free.store(free, Ordering::Relaxed);
        }
        if let Ok(total) = fs4::total_space(&self.path) {
            self.total.store(total, Ordering::Relaxed);
        }
    }

    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Samples every `every` on a blocking thread until the process ends.
    pub fn follow(self: &Arc<Self>, every: std::time::Duration) {
        let d = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let s = d.clone();
                let _ = tokio::task::spawn_blocking(move || s.refresh()).await;
            }
        });
    }
}
