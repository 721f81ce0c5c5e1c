//! Bearer tokens. A token is "stk_" followed by 64 hex digits of randomness; only its BLAKE3
//! hash is stored. Every Storage call must name a tenant, every Admin call the admin. A tenant
//! token may be read-only, limited to one bucket, and may expire.

use strata_cluster::records::{Principal, TokenRecord, TokenScope};
use strata_cluster::{BucketName, StateMachine, TenantId, TokenHash};
use tonic::metadata::MetadataMap;

use crate::error::{NodeError, NodeResult};

pub fn new_token() -> String {
    format!("stk_{}", hex::encode(rand::random::<[u8; 32]>()))
}

fn principal_and_hash(sm: &StateMachine, md: &MetadataMap) -> NodeResult<(Principal, TokenHash)> {
    token(sm, md).map(|(r, h)| (r.principal, h))
}

/// The caller's token record (refused when unknown, revoked or expired).
fn token(sm: &StateMachine, md: &MetadataMap) -> NodeResult<(TokenRecord, TokenHash)> {
    let Some(value) = md.get(strata_proto::AUTHORIZATION) else {
        return Err(NodeError::Unauthenticated(
            "missing bearer token: set \"authorization: Bearer <token>\"".into(),
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            NodeError::Unauthenticated("authorization must be \"Bearer <token>\"".into())
        })?;
    let hash = TokenHash::of(token);
    let rec = sm
        .token(&hash)?
        .ok_or_else(|| NodeError::Unauthenticated("unknown or revoked token".into()))?;
    if rec
        .expires_ms
        .is_some_and(|at| crate::clock::now_ms() >= at)
    {
        return Err(NodeError::Unauthenticated("token expired".into()));
    }
    Ok((rec, hash))
}

/// What a Storage call does with the tenant's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The tenant a Storage call acts for, if the caller's token allows `access` (to `bucket`,
/// when the call names one).
pub fn tenant(
    sm: &StateMachine,
    md: &MetadataMap,
    access: Access,
    bucket: Option<&BucketName>,
) -> NodeResult<TenantId> {
    let (rec, _) = token(sm, md)?;
    let Principal::Tenant(t) = rec.principal else {
        return Err(NodeError::PermissionDenied(
            "the admin token cannot read or write objects: use a tenant token".into(),
        ));
    };
    if access == Access::Write && rec.scope == TokenScope::Read {
        return Err(NodeError::PermissionDenied(
            "this token is read-only: writing needs a read-write token".into(),
        ));
    }
    if let (Some(only), Some(asked)) = (&rec.bucket, bucket)
        && only != asked
    {
        return Err(NodeError::PermissionDenied(format!(
            "this token is limited to bucket {only}"
        )));
    }
    Ok(t)
}

/// The bucket the caller's token is limited to, if any (for listings of buckets).
pub fn only_bucket(sm: &StateMachine, md: &MetadataMap) -> NodeResult<Option<BucketName>> {
    Ok(token(sm, md)?.0.bucket)
}

/// Checks that an Admin call carries the admin token; returns who called (the token's id, as
/// `strata token list` shows it) for the audit log.
pub fn admin(sm: &StateMachine, md: &MetadataMap) -> NodeResult<String> {
    match principal_and_hash(sm, md)? {
        (Principal::Admin, hash) => Ok(format!("admin token {}", hex::encode(&hash.0[..8]))),
        (Principal::Tenant(_), _) => Err(NodeError::PermissionDenied(
            "this call needs the admin token".into(),
        )),
    }
}
