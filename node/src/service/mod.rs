//! gRPC services: the client Storage service and the operator Admin service.

pub mod admin;
pub mod convert;
mod observe;
pub mod storage;
