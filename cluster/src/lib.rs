//! strata-cluster: Strata's metadata. Every change is a [`Command`] applied by the sled-backed
//! [`StateMachine`]; ids, validated names and the stored records live here too.
//!
//! Invariant: `StateMachine::apply` is deterministic and does no I/O besides sled, so the Raft
//! layer can replicate the same commands. Boundary: knows nothing of gRPC, disks or chunks'
//! bytes.

pub mod codec;
pub mod command;
pub mod error;
pub mod file_hash;
pub mod ids;
mod keys;
pub mod layout;
pub mod names;
pub mod peer_frame;
pub mod placement;
pub mod plans;
pub mod query;
pub mod raft;
pub mod records;
pub mod state_machine;
pub mod tier;

pub use command::{Command, Response};
pub use error::{ApplyError, Gap, Invalid, Rejection, StoreError};
pub use ids::{ChunkId, SessionId, TenantId, TokenHash};
pub use layout::{Layout, LayoutChange, LayoutState, NodeState};
pub use names::{BucketName, ObjectKey};
pub use query::{ListCursor, ListPage, ListQuery};
pub use state_machine::StateMachine;
