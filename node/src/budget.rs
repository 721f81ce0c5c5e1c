//! The node's memory budget for chunk bytes (`max_inflight_bytes`). Every chunk held in
//! memory takes a permit for its size before its bytes are buffered and keeps it until they
//! are written or sent: upload chunks (taken when a PutChunks message announces its length,
//! before the message is read), download read-ahead, and chunks moving between peers.
//!
//! Two pools, so two nodes replicating to each other can never wait on each other: `client`
//! (uploads and downloads) and `peer` (chunks received from or served to other nodes: their
//! holders only do local disk work, so this pool always drains). The peer pool is a quarter of
//! the budget and at least one largest chunk; the client pool is the rest.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits count in units of this many bytes (a semaphore counts in u32).
const UNIT: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "{bytes} bytes of chunk data cannot fit in the {pool} memory pool of {capacity} bytes (max_inflight_bytes)"
    )]
    TooLarge {
        pool: &'static str,
        bytes: u64,
        capacity: u64,
    },
    #[error("the node is shutting down")]
    Closed,
}

/// Bytes held by a request; returned to the pool when dropped, or, when the permit was told to
/// [`Permit::then_retain`], handed to that [`Retained`] instead.
#[derive(Debug)]
pub struct Permit {
    inner: Option<OwnedSemaphorePermit>,
    bytes: u64,
    then: Option<Arc<Retained>>,
}

impl Permit {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// When this permit is dropped, its memory goes to `retained` (which keeps the largest
    /// permit it is given) instead of back to the pool: for bytes that stay allocated after
    /// their user is done with them (a stream decoder keeps its buffer for the next message).
    pub fn then_retain(mut self, retained: Arc<Retained>) -> Permit {
        self.then = Some(retained);
        self
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let (Some(inner), Some(r)) = (self.inner.take(), self.then.take()) {
            r.offer(inner, self.bytes);
        }
    }
}

/// Memory that outlives the requests that used it (see [`Permit::then_retain`]): holds the
/// largest permit handed to it, until it is dropped.
#[derive(Debug, Default)]
pub struct Retained(std::sync::Mutex<Option<(OwnedSemaphorePermit, u64)>>);

impl Retained {
    fn offer(&self, permit: OwnedSemaphorePermit, bytes: u64) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if held.as_ref().is_none_or(|(_, b)| *b < bytes) {
            *held = Some((permit, bytes));
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.0
            .lock()
            .map(|h| h.as_ref().map_or(0, |(_, b)| *b))
            .unwrap_or(0)
    }
}

struct Pool {
    name: &'static str,
    sem: Arc<Semaphore>,
    capacity: u64,
}

impl Pool {
    fn new(name: &'static str, capacity: u64) -> Pool {
        let units = (capacity / UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        Pool {
            name,
            sem: Arc::new(Semaphore::new(units)),
            capacity: units as u64 * UNIT,
        }
    }

    fn units(&self, bytes: u64) -> Result<u32, BudgetError> {
        let units = bytes.div_ceil(UNIT).max(1);
        if units * UNIT > self.capacity {
            return Err(BudgetError::TooLarge {
                pool: self.name,
                bytes,
                capacity: self.capacity,
            });
        }
        Ok(units as u32)
    }

    async fn acquire(&self, bytes: u64) -> Result<Permit, BudgetError> {
        let units = self.units(bytes)?;
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| BudgetError::Closed)?;
        Ok(Permit {
            inner: Some(permit),
            bytes,
            then: None,
        })
    }

    fn in_use(&self) -> u64 {
        self.capacity - self.sem.available_permits() as u64 * UNIT
    }
}

pub struct MemoryBudget {
    client: Pool,
    peer: Pool,
}

impl MemoryBudget {
    /// Splits `total` bytes between the pools; `largest` is the largest chunk plus message
    /// overhead (the configuration guarantees `total >= 2 * largest`).
    pub fn new(total: u64, largest: u64) -> MemoryBudget {
        let peer = (total / 4).max(largest).min(total);
        MemoryBudget {
            client: Pool::new("client", total - peer),
            peer: Pool::new("peer", peer),
        }
    }

    /// Waits for `bytes` from the client pool (uploads, downloads).
    pub async fn client(&self, bytes: u64) -> Result<Permit, BudgetError> {
        self.client.acquire(bytes).await
    }

    /// Waits for `bytes` from the peer pool (chunks moving between nodes).
    pub async fn peer(&self, bytes: u64) -> Result<Permit, BudgetError> {
        self.peer.acquire(bytes).await
    }

    /// Bytes held now, per pool (for metrics).
    pub fn in_use(&self) -> [(&'static str, u64); 2] {
        [
            (self.client.name, self.client.in_use()),
            (self.peer.name, self.peer.in_use()),
        ]
    }

    pub fn close(&self) {
        self.client.sem.close();
        self.peer.sem.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pools_bound_and_refuse_what_never_fits() {
        let b = MemoryBudget::new(64 << 20, 16 << 20);
        let a = b.client(40 << 20).await.expect("fits");
        assert_eq!(b.in_use()[0].1, 40 << 20);
        // The client pool has 48 MiB: 16 more do not fit now.
        let more = tokio::time::timeout(std::time::Duration::from_millis(50), b.client(16 << 20));
        assert!(
            more.await.is_err(),
            "over the pool while the first permit is held"
        );
        drop(a);
        b.client(16 << 20).await.expect("fits once released");
        assert!(matches!(
            b.client(49 << 20).await,
            Err(BudgetError::TooLarge { .. })
        ));
        b.peer(16 << 20)
            .await
            .expect("the peer pool holds one largest chunk");
    }
}
