//! The node's actors (ractor). Supervision tree:
//!
//! ```text
//! NodeSupervisor
//! ├── UploadSession   one per open upload, spawned on demand, state recovered from metadata
//! ├── Janitor         session expiry, trash purge, chunk garbage collection
//! ├── Placement       replication queue retries, rebalancing after layout changes, draining
//! ├── Tiering         records reads; on the leader, moves versions cold, restores, deletes archives
//! └── Verifier        scrub (re-hash local chunk files, repair corrupt ones), anti-entropy check
//! ```

pub mod janitor;
pub mod placement;
pub mod supervisor;
pub mod tiering;
pub mod upload_session;
pub mod verifier;
