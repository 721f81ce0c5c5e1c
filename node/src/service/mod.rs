//! gRPC services: the client Storage service, the operator Admin service, the internal
//! node-to-node Cluster service, and the ingress layer in front of them.

pub mod admin;
pub mod cluster;
pub mod convert;
pub mod identity;
pub mod ingress;
pub mod layout;
pub mod limits;
mod observe;
pub mod plans;
pub mod storage;
pub mod tier;
pub mod workers;
