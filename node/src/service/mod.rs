//! gRPC services: the client Storage service and the operator Admin service.

pub mod admin;
pub mod convert;
pub mod layout;
mod observe;
pub mod storage;
pub mod tier;
