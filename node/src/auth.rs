//! Bearer tokens. A token is "stk_" followed by 64 hex digits of randomness; only its BLAKE3
//! hash is stored. Every Storage call must name a tenant, every Admin call the admin.

use strata_cluster::records::Principal;
use strata_cluster::{StateMachine, TenantId, TokenHash};
use tonic::metadata::MetadataMap;

use crate::error::{NodeError, NodeResult};

pub fn new_token() -> String {
    format!("stk_{}", hex::encode(rand::random::<[u8; 32]>()))
}

fn principal(sm: &StateMachine, md: &MetadataMap) -> NodeResult<Principal> {
    principal_and_hash(sm, md).map(|(p, _)| p)
}

fn principal_and_hash(sm: &StateMachine, md: &MetadataMap) -> NodeResult<(Principal, TokenHash)> {
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
    let p = sm
        .principal(&hash)?
        .ok_or_else(|| NodeError::Unauthenticated("unknown or revoked token".into()))?;
    Ok((p, hash))
}

/// The tenant a Storage call acts for.
pub fn tenant(sm: &StateMachine, md: &MetadataMap) -> NodeResult<TenantId> {
    match principal(sm, md)? {
        Principal::Tenant(t) => Ok(t),
        Principal::Admin => Err(NodeError::PermissionDenied(
            "the admin token cannot read or write objects: use a tenant token".into(),
        )),
    }
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
