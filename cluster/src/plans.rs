//! Tenant plans: the limits a tenant's usage is held to, and the usage itself.
//!
//! Quota limits (object size, stored bytes, objects, open uploads) are checked by the state
//! machine when a command applies, so they are exact under any concurrency: every replica
//! counts the same commands in the same order. Rate limits (requests and bandwidth per second)
//! are enforced by each node on the traffic it serves; the state machine only stores them.

use serde::{Deserialize, Serialize};

/// The plan a tenant is on until an operator sets another.
pub const DEFAULT_PLAN: &str = "default";

/// Open upload sessions the built-in default plan allows a tenant.
pub const DEFAULT_MAX_OPEN_UPLOADS: u32 = 1000;

/// Longest plan name.
pub const MAX_PLAN_NAME: usize = 64;

/// A named set of limits. `None` means unlimited; `max_open_uploads` is always bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    /// Largest object (declared size of an upload), in bytes.
    pub max_object_bytes: Option<u64>,
    /// Stored bytes: every version kept (live or in the trash) plus the declared size of every
    /// open upload.
    pub max_bytes: Option<u64>,
    /// Keys (live or in the trash).
    pub max_objects: Option<u64>,
    /// Upload sessions open at once (resuming one does not count again).
    pub max_open_uploads: u32,
    /// Requests per second, per node serving them.
    pub requests_per_sec: Option<u32>,
    /// Bytes per second of chunk data, up and down, per node serving them.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

impl Plan {
    /// The default plan when the operator has not set one named `default`: bounded open
    /// uploads, everything else unlimited (the node bounds a manifest to 65,536 chunks for
    /// every tenant).
    pub fn builtin_default() -> Plan {
        Plan {
            name: DEFAULT_PLAN.to_owned(),
            max_object_bytes: None,
            max_bytes: None,
            max_objects: None,
            max_open_uploads: DEFAULT_MAX_OPEN_UPLOADS,
            requests_per_sec: None,
            bandwidth_bytes_per_sec: None,
        }
    }
}

/// What a tenant uses, kept exact by the state machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of every version kept (live or in the trash), by declared size.
    pub stored_bytes: u64,
    /// Declared bytes of the tenant's open upload sessions.
    pub reserved_bytes: u64,
    /// Keys with at least one version (live or in the trash).
    pub objects: u64,
    /// Open sessions for keys without a version: each holds an object slot, so that
    /// `objects + reserved_objects` never passes `max_objects` and a refusal comes at
    /// CreateUpload, before any byte is sent.
    pub reserved_objects: u64,
}

/// Which limit a refusal names, as metrics label it.
pub fn limit_label(r: &crate::error::Rejection) -> Option<&'static str> {
    use crate::error::Rejection as R;
    Some(match r {
        R::ObjectTooLarge { .. } => "max_object_size",
        R::BytesQuota { .. } => "max_bytes",
        R::ObjectsQuota { .. } => "max_objects",
        R::TooManyOpenUploads { .. } => "max_open_uploads",
        _ => return None,
    })
}
