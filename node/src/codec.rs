//! The node's internal binary encoding: Raft messages on the wire and the peer protocol's
//! frames. It lives in `strata_cluster::codec` (beside the stored records' encoding) so the
//! fuzz targets in `fuzz/` reach it without building the node.

pub use strata_cluster::codec::*;
