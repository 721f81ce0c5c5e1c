//! strata-node: the Strata storage node. It serves the gRPC Storage and Admin services, keeps
//! chunks in a local content-addressed store, records metadata through the state machine in
//! strata-cluster, and runs its work as supervised ractor actors.
//!
//! Boundary: nothing depends on this crate; it depends on strata-proto and strata-cluster.

pub mod actors;
pub mod auth;
pub mod chunk_store;
pub mod cold;
pub mod config;
pub mod context;
pub mod error;
pub mod http;
pub mod metrics;
pub mod peer;
pub mod placement;
pub mod raft;
pub mod server;
pub mod service;
pub mod tiering;
