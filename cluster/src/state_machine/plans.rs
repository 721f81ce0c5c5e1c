//! Applying plan commands and holding tenants to their plan's quotas. Invariants kept here:
//! - `usage.reserved_bytes` is the sum of the declared sizes of the tenant's open sessions;
//! - `usage.stored_bytes` is the sum of the sizes of the tenant's versions (live or trashed);
//! - `usage.objects` is the number of the tenant's object heads;
//! - `usage.reserved_objects` is the number of the tenant's open sessions marked with
//!   `keys::session_new_key` (opened for a key without a head);
//! - `open_sessions` is the number of the tenant's open sessions.
//!
//! A quota check happens where usage would grow (OpenSession, and CompleteSession for a key
//! whose head went away while its session was open), inside the command's transaction:
//! concurrent uploads cannot overshoot.

use super::{ApplyError, Response, Txn};
use crate::error::{Rejection, StoreError};
use crate::ids::{SessionId, TenantId};
use crate::keys;
use crate::plans::{DEFAULT_PLAN, Plan, Usage};

/// The name of the plan the tenant is on.
pub(super) fn plan_name(tx: &Txn, tenant: TenantId) -> Result<String, StoreError> {
    Ok(tx
        .get::<String>("tenant plan", &keys::tenant_plan(tenant))?
        .unwrap_or_else(|| DEFAULT_PLAN.to_owned()))
}

/// A plan by name (`default` always exists: stored, or built in).
pub(super) fn plan(tx: &Txn, name: &str) -> Result<Option<Plan>, StoreError> {
    let stored = tx.get::<Plan>("plan", &keys::plan(name))?;
    Ok(stored.or_else(|| (name == DEFAULT_PLAN).then(Plan::builtin_default)))
}

/// The plan the tenant is on (the default one if its plan went missing).
pub(super) fn plan_of(tx: &Txn, tenant: TenantId) -> Result<Plan, StoreError> {
    let name = plan_name(tx, tenant)?;
    match plan(tx, &name)? {
        Some(p) => Ok(p),
        None => Ok(plan(tx, DEFAULT_PLAN)?.unwrap_or_else(Plan::builtin_default)),
    }
}

pub(super) fn usage(tx: &Txn, tenant: TenantId) -> Result<Usage, StoreError> {
    Ok(tx.get("usage", &keys::usage(tenant))?.unwrap_or_default())
}

pub(super) fn update_usage(
    tx: &mut Txn,
    tenant: TenantId,
    change: impl FnOnce(&mut Usage),
) -> Result<(), StoreError> {
    let mut u = usage(tx, tenant)?;
    change(&mut u);
    tx.put(keys::usage(tenant), &u)
}

/// Admits a new upload session of `size` bytes (for a key without a head if `new_key`), or
/// names the limit it would break. Reserves its bytes (and, for a new key, an object slot)
/// and counts it as open.
pub(super) fn admit_session(
    tx: &mut Txn,
    tenant: TenantId,
    session: &SessionId,
    size: u64,
    new_key: bool,
) -> Result<(), ApplyError> {
    let plan = plan_of(tx, tenant)?;
    let used = usage(tx, tenant)?;
    if let Some(limit) = plan.max_object_bytes
        && size > limit
    {
        return Err(Rejection::ObjectTooLarge {
            size,
            limit,
            plan: plan.name,
        }
        .into());
    }
    let open = tx.get_u64(&keys::open_sessions(tenant))?;
    if open >= u64::from(plan.max_open_uploads) {
        return Err(Rejection::TooManyOpenUploads {
            limit: plan.max_open_uploads,
            plan: plan.name,
        }
        .into());
    }
    let committed = used.stored_bytes.saturating_add(used.reserved_bytes);
    if let Some(limit) = plan.max_bytes
        && committed.saturating_add(size) > limit
    {
        return Err(Rejection::BytesQuota {
            used: committed,
            size,
            limit,
            plan: plan.name,
        }
        .into());
    }
    if new_key {
        check_objects(&plan, &used)?;
    }
    tx.put_u64(keys::open_sessions(tenant), open + 1);
    if new_key {
        tx.put_raw(keys::session_new_key(session), Vec::new());
    }
    update_usage(tx, tenant, |u| {
        u.reserved_bytes = u.reserved_bytes.saturating_add(size);
        u.reserved_objects += u64::from(new_key);
    })?;
    Ok(())
}

/// Refuses one more object past the plan's `max_objects` (object slots held by open
/// sessions count).
pub(super) fn check_objects(plan: &Plan, used: &Usage) -> Result<(), ApplyError> {
    let held = used.objects.saturating_add(used.reserved_objects);
    match plan.max_objects {
        Some(limit) if held >= limit => Err(Rejection::ObjectsQuota {
            used: held,
            limit,
            plan: plan.name.clone(),
        }
        .into()),
        _ => Ok(()),
    }
}

/// A session of `size` bytes ends (completed, aborted or expired): its bytes and object slot
/// are given back. Returns whether it held an object slot.
pub(super) fn release_session(
    tx: &mut Txn,
    tenant: TenantId,
    session: &SessionId,
    size: u64,
) -> Result<bool, StoreError> {
    let open = tx.get_u64(&keys::open_sessions(tenant))?;
    tx.put_u64(keys::open_sessions(tenant), open.saturating_sub(1));
    let marker = keys::session_new_key(session);
    let held_slot = tx.get_raw(&marker)?.is_some();
    tx.del(marker);
    update_usage(tx, tenant, |u| {
        u.reserved_bytes = u.reserved_bytes.saturating_sub(size);
        u.reserved_objects = u.reserved_objects.saturating_sub(u64::from(held_slot));
    })?;
    Ok(held_slot)
}

/// A completed session of `size` bytes becomes a version: its bytes are stored, and a key
/// without a head becomes an object. The object slot the session held (`held_slot`, already
/// given back by `release_session` in the same transaction) is what it takes; a session
/// without one (its key had a head that was purged meanwhile) is checked against
/// `max_objects` now.
pub(super) fn commit_version(
    tx: &mut Txn,
    tenant: TenantId,
    size: u64,
    new_key: bool,
    held_slot: bool,
) -> Result<(), ApplyError> {
    if new_key && !held_slot {
        check_objects(&plan_of(tx, tenant)?, &usage(tx, tenant)?)?;
    }
    update_usage(tx, tenant, |u| {
        u.stored_bytes = u.stored_bytes.saturating_add(size);
        u.objects += u64::from(new_key);
    })?;
    Ok(())
}

/// A key and its versions (`bytes` in all) are gone.
pub(super) fn forget_object(tx: &mut Txn, tenant: TenantId, bytes: u64) -> Result<(), StoreError> {
    update_usage(tx, tenant, |u| {
        u.stored_bytes = u.stored_bytes.saturating_sub(bytes);
        u.objects = u.objects.saturating_sub(1);
    })
}

pub(super) fn set_plan(tx: &mut Txn, p: &Plan) -> Result<Response, ApplyError> {
    tx.put(keys::plan(&p.name), p)?;
    Ok(Response::Done)
}

/// Tenants on the plan of that name (the default plan's count includes tenants without one).
pub(super) fn tenants_on(tx: &Txn, name: &str) -> Result<u64, StoreError> {
    let mut n = 0;
    for k in tx.scan_keys(&keys::tenant_plan_prefix())? {
        if tx.get::<String>("tenant plan", &k)?.as_deref() == Some(name) {
            n += 1;
        }
    }
    Ok(n)
}

pub(super) fn delete_plan(tx: &mut Txn, name: &str) -> Result<Response, ApplyError> {
    if tx.get_raw(&keys::plan(name))?.is_none() {
        return Err(Rejection::PlanNotFound(name.to_owned()).into());
    }
    // Deleting `default` brings back the built-in one; other plans must be unused.
    if name != DEFAULT_PLAN {
        let tenants = tenants_on(tx, name)?;
        if tenants > 0 {
            return Err(Rejection::PlanInUse {
                name: name.to_owned(),
                tenants,
            }
            .into());
        }
    }
    tx.del(keys::plan(name));
    Ok(Response::Done)
}

pub(super) fn set_tenant_plan(
    tx: &mut Txn,
    tenant_name: &str,
    plan_name: &str,
) -> Result<Response, ApplyError> {
    let name_key = keys::meta(&format!("tenant-name/{tenant_name}"));
    let Some(id) = tx.get_raw(&name_key)?.and_then(|v| keys::be_u64(&v, 0)) else {
        return Err(Rejection::TenantNotFound(tenant_name.to_owned()).into());
    };
    if plan(tx, plan_name)?.is_none() {
        return Err(Rejection::PlanNotFound(plan_name.to_owned()).into());
    }
    let key = keys::tenant_plan(TenantId(id));
    if plan_name == DEFAULT_PLAN {
        tx.del(key);
    } else {
        tx.put(key, &plan_name.to_owned())?;
    }
    Ok(Response::Done)
}
