//! Raft (openraft 0.9, storage-v2) over sled: the replicated log of metadata commands.
#![allow(clippy::result_large_err)] // openraft's StorageError is large; it is what the traits return
//!
//! The log store (`log_store.rs`) and the state machine adapter (`sm_store.rs`) share the
//! node's sled database. Entries carry `Command`s; applying one gives a `CommandResult`, the
//! same on every replica.

pub mod log_store;
pub mod sm_store;

use std::io::Cursor;

use crate::command::{Command, Response};
use crate::error::Rejection;

/// A Raft node id.
pub type NodeId = u64;

/// What applying a command yields: the response, or the deterministic refusal.
pub type CommandResult = Result<Response, Rejection>;

openraft::declare_raft_types!(
    /// Strata's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

pub use log_store::LogStore;
pub use sm_store::SmStore;

/// Raft records (entries, votes, snapshots) use the same versioned encoding as every other
/// stored value: a format byte, then bincode.
pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, crate::error::StoreError> {
    crate::records::encode(v)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, crate::error::StoreError> {
    crate::records::decode(what, bytes)
}

#[cfg(test)]
mod tests;
