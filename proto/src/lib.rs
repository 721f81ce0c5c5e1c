//! Generated gRPC types for Strata. These types stay at the edge: the node converts them to
//! domain types (strata-cluster) in one place per message.

pub mod v1 {
    tonic::include_proto!("strata.v1");
}

/// The encoded file descriptor set, served by gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strata_descriptor");

/// Metadata key carrying the bearer token on every call ("authorization: Bearer <token>").
pub const AUTHORIZATION: &str = "authorization";
