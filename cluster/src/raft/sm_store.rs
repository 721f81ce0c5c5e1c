//! The state machine side of Raft: applies committed entries to `StateMachine`, recording the
//! applied log id and membership in the same atomic batch as the command's changes, and builds
//! and installs snapshots (a full copy of the state tree). Applying, copying and installing
//! run on blocking threads (they take the state machine's std mutex and do sled work), never
//! on a tokio worker.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{CommandResult, LogId, NodeId, StorageError, TypeConfig, decode, encode};
use crate::error::ApplyError;
use crate::keys;
use crate::state_machine::StateMachine;

type Entry = openraft::Entry<TypeConfig>;
type Membership = StoredMembership<NodeId, BasicNode>;

const APPLIED: &str = "raft-applied";
const MEMBERSHIP: &str = "raft-membership";

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// Raft's handle on the state machine. Cheap to clone: the snapshot builder is a clone.
#[derive(Clone)]
pub struct SmStore {
    sm: Arc<StateMachine>,
    snapshots: sled::Tree,
}

fn io<E: std::error::Error + 'static>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &E,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

impl SmStore {
    pub fn new(sm: Arc<StateMachine>) -> Result<SmStore, StorageError> {
        let snapshots = sm
            .db()
            .open_tree("raft_snapshot")
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        Ok(SmStore { sm, snapshots })
    }

    pub fn state_machine(&self) -> &Arc<StateMachine> {
        &self.sm
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let sub = ErrorSubject::StateMachine;
        match self
            .sm
            .tree
            .get(keys::meta(key))
            .map_err(|e| io(sub.clone(), ErrorVerb::Read, &e))?
        {
            Some(v) => decode("raft state", &v)
                .map(Some)
                .map_err(|e| io(sub, ErrorVerb::Read, &e)),
            None => Ok(None),
        }
    }

    async fn store_snapshot(&self, snap: &StoredSnapshot) -> Result<(), StorageError> {
        let sub = ErrorSubject::Snapshot(Some(snap.meta.signature()));
        let bytes = encode(snap).map_err(|e| io(sub.clone(), ErrorVerb::Write, &e))?;
        self.snapshots
            .insert("current", bytes)
            .map_err(|e| io(sub.clone(), ErrorVerb::Write, &e))?;
        self.sm
            .db()
            .flush_async()
            .await
            .map_err(|e| io(sub, ErrorVerb::Write, &e))?;
        Ok(())
    }
}

/// Runs blocking state-machine work on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        io(
            ErrorSubject::StateMachine,
            ErrorVerb::Write,
            &std::io::Error::other(e.to_string()),
        )
    })?
}

/// Applies committed entries in order, each with its applied log id (and membership) in the
/// same atomic batch as its changes.
fn apply_entries(
    sm: &StateMachine,
    entries: Vec<Entry>,
) -> Result<Vec<CommandResult>, StorageError> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let log_id = entry.log_id;
        let sub = ErrorSubject::Apply(log_id);
        let enc = |r: Result<Vec<u8>, crate::error::StoreError>| {
            r.map_err(|e| io(sub.clone(), ErrorVerb::Write, &e))
        };
        let mut meta = vec![(keys::meta(APPLIED), enc(encode(&Some(log_id)))?)];
        let cmd = match &entry.payload {
            EntryPayload::Normal(cmd) => Some(cmd),
            EntryPayload::Membership(m) => {
                meta.push((
                    keys::meta(MEMBERSHIP),
                    enc(encode(&Membership::new(Some(log_id), m.clone())))?,
                ));
                None
            }
            EntryPayload::Blank => None,
        };
        let result = {
            let _writer = sm.write.lock().unwrap_or_else(|p| p.into_inner());
            sm.apply_locked(cmd, &meta)
        };
        out.push(match result {
            Ok(r) => Ok(r),
            Err(ApplyError::Rejected(r)) => Err(r),
            Err(ApplyError::Store(e)) => return Err(io(sub, ErrorVerb::Write, &e)),
        });
    }
    Ok(out)
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let sub = ErrorSubject::Snapshot(None);
        // The copy is taken under the write lock, so it is exactly the state at `applied`; on
        // a blocking thread, since it walks the whole tree.
        let this = self.clone();
        let copy_sub = sub.clone();
        let (data, count, applied, membership) = blocking(move || {
            let sub = copy_sub;
            let _writer = this.sm.write.lock().unwrap_or_else(|p| p.into_inner());
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for kv in this.sm.tree.iter() {
                let (k, v) = kv.map_err(|e| io(sub.clone(), ErrorVerb::Read, &e))?;
                pairs.push((k.to_vec(), v.to_vec()));
            }
            let applied: Option<LogId> = this.read_meta(APPLIED)?.flatten();
            let membership: Membership = this.read_meta(MEMBERSHIP)?.unwrap_or_default();
            let data = encode(&pairs).map_err(|e| io(sub.clone(), ErrorVerb::Write, &e))?;
            Ok((data, pairs.len(), applied, membership))
        })
        .await?;
        // The state machine itself must be on disk before Raft purges the log up to here.
        self.sm
            .db()
            .flush_async()
            .await
            .map_err(|e| io(sub, ErrorVerb::Write, &e))?;
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, count),
            None => format!("empty-{count}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.store_snapshot(&stored).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = SmStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let applied: Option<LogId> = self.read_meta(APPLIED)?.flatten();
        let membership: Membership = self.read_meta(MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let sm = self.sm.clone();
        blocking(move || apply_entries(&sm, entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> SmStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let sub = ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let (sm, m, bytes) = (self.sm.clone(), meta.clone(), data.clone());
        blocking(move || {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> =
                crate::records::decode_snapshot("raft snapshot", &bytes)
                    .map_err(|e| io(sub.clone(), ErrorVerb::Read, &e))?;
            let enc = |r: Result<Vec<u8>, crate::error::StoreError>| {
                r.map_err(|e| io(sub.clone(), ErrorVerb::Write, &e))
            };
            let applied = enc(encode(&m.last_log_id))?;
            let membership = enc(encode(&m.last_membership))?;
            let _writer = sm.write.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = sled::Batch::default();
            for kv in sm.tree.iter() {
                let (k, _) = kv.map_err(|e| io(sub.clone(), ErrorVerb::Read, &e))?;
                batch.remove(k);
            }
            for (k, v) in &pairs {
                batch.insert(k.as_slice(), v.as_slice());
            }
            batch.insert(keys::meta(APPLIED), applied);
            batch.insert(keys::meta(MEMBERSHIP), membership);
            sm.tree
                .apply_batch(batch)
                .map_err(|e| io(sub.clone(), ErrorVerb::Write, &e))
        })
        .await?;
        self.store_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let sub = ErrorSubject::Snapshot(None);
        match self
            .snapshots
            .get("current")
            .map_err(|e| io(sub.clone(), ErrorVerb::Read, &e))?
        {
            Some(v) => {
                let s: StoredSnapshot = crate::records::decode_snapshot("raft snapshot", &v)
                    .map_err(|e| io(sub, ErrorVerb::Read, &e))?;
                Ok(Some(Snapshot {
                    meta: s.meta,
                    snapshot: Box::new(Cursor::new(s.data)),
                }))
            }
            None => Ok(None),
        }
    }
}
