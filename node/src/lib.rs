//! strata-node: the Strata storage node. It serves the gRPC Storage and Admin services, keeps
//! chunks in a local content-addressed store, records metadata through the state machine in
//! strata-cluster, and runs its work as supervised ractor actors.
//!
//! Layers, bottom to top (a module imports only from layers below it; `tests/layers.rs`
//! checks this):
//! 1. leaves: `clock`, `codec`, `config`, `metrics`, `budget`, `disk`, `rate_limit`, `workers`,
//!    `tls`
//! 2. `chunk_store`, `raft`, `peer` (and the strata-cold crate)
//! 3. `blocks` (the block layer)
//! 4. `tiering`
//! 5. `reads`
//! 6. `service`, `actors`, `auth`, `error`
//! 7. `server`, `http` (startup builds the node's parts; nothing below imports it)
//!
//! Boundary: nothing depends on this crate; it depends on strata-proto, strata-cluster and
//! strata-cold.

pub mod actors;
pub mod auth;
pub mod blocks;
pub mod budget;
pub mod chunk_store;
pub mod clock;
pub mod codec;
pub mod config;
pub mod disk;
pub mod error;
pub mod http;
pub mod metrics;
pub mod peer;
pub mod raft;
pub mod rate_limit;
pub mod reads;
pub mod server;
pub mod service;
pub mod tiering;
pub mod tls;
pub mod workers;
