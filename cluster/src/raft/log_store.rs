//! The Raft log on sled: entries in tree `raft_log` (key: big-endian index), and the vote, the
//! committed log id and the last purged log id in tree `raft_meta`. `append` acknowledges
//! entries only after a sled flush, so an acknowledged entry survives SIGKILL.
//!
//! Group commit: openraft appends one client write at a time, and a flush per append would cap
//! throughput at one fsync per write. `append` therefore only inserts (the entries are readable
//! at once, as openraft requires) and hands its completion callback to a flusher task, which
//! makes one sled flush for every append that arrived meanwhile and then completes them all.

use std::fmt::Debug;
use std::ops::RangeBounds;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError, Vote};

use super::{LogId, NodeId, StorageError, TypeConfig, decode, encode};

type Entry = openraft::Entry<TypeConfig>;

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

/// Completes append callbacks in groups, one sled flush per group. A plain thread with a
/// blocking flush: sled's `flush_async` hands every flush to its thread pool, which costs more
/// in thread wake-ups than the flush itself.
fn flusher(db: sled::Db, rx: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let flushed = db.flush();
        for callback in group {
            let result = match &flushed {
                Ok(_) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(result);
        }
    }
}

fn io<E: std::error::Error + 'static>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &E,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

impl LogStore {
    pub fn new(db: &sled::Db) -> Result<LogStore, StorageError> {
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Read, &e))
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(flush_db, rx))
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        Ok(LogStore {
            db: db.clone(),
            log: open("raft_log")?,
            meta: open("raft_meta")?,
            flusher: tx,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        match self
            .meta
            .get(key)
            .map_err(|e| io(subject.clone(), ErrorVerb::Read, &e))?
        {
            Some(v) => decode(key_what(key), &v)
                .map(Some)
                .map_err(|e| io(subject, ErrorVerb::Read, &e)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(|e| io(subject.clone(), ErrorVerb::Write, &e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io(subject.clone(), ErrorVerb::Write, &e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| io(subject, ErrorVerb::Write, &e))?;
        Ok(())
    }

    /// Last entry's log id, if any entry is present.
    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        match self
            .log
            .last()
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, &e))?
        {
            Some((_, v)) => {
                let e: Entry = decode("raft entry", &v)
                    .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }
}

fn key_what(key: &str) -> &'static str {
    match key {
        "vote" => "raft vote",
        "committed" => "raft committed",
        _ => "raft purged",
    }
}

fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for kv in self.log.range(index_key(start)..) {
            let (k, v) = kv.map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            let idx = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xFF; 8]));
            if !range.contains(&idx) {
                break;
            }
            out.push(
                decode("raft entry", &v)
                    .map_err(|e| io(ErrorSubject::LogIndex(idx), ErrorVerb::Read, &e))?,
            );
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta("purged", ErrorSubject::Logs)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta("vote", vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta("vote", ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: a lost committed index is recomputed by the leader.
        let bytes =
            encode(&committed).map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        self.meta
            .insert("committed", bytes)
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>("committed", ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes = encode(&e).map_err(|err| io(ErrorSubject::Logs, ErrorVerb::Write, &err))?;
            batch.insert(&index_key(e.log_id.index), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        if let Err(e) = self.flusher.send(callback) {
            // The flusher is gone (shutting down): flush here instead.
            let flushed = self.db.flush_async().await;
            e.0.log_io_completed(flushed.map(|_| ()).map_err(std::io::Error::from));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for kv in self.log.range(index_key(log_id.index)..) {
            let (k, _) = kv.map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash after it but before the deletes leaves entries
        // that are simply purged again.
        self.put_meta("purged", &log_id, ErrorSubject::Logs).await?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=index_key(log_id.index)) {
            let (k, _) = kv.map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        Ok(())
    }
}
