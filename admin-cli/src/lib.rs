//! The client side of Strata: a gRPC client with token auth and streamed file transfers. The
//! `strata` binary is built on it; end-to-end tests and `strata-bench` use it too.
//!
//! Boundary: depends on strata-proto only (never on the node or cluster crates).

pub mod client;
pub mod ops;
pub mod plans;
pub mod tier;
pub mod transfer;
pub mod workers;
