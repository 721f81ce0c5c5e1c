//! Tenant plans in the Admin service: setting, listing and deleting plans, putting a tenant on
//! one, and showing a tenant's usage against its plan.

use strata_cluster::plans::{DEFAULT_MAX_OPEN_UPLOADS, Plan};
use strata_cluster::{Command, StateMachine, TenantId};
use strata_proto::v1 as pb;

use super::admin::check_tenant_name;
use super::convert::simple_name;
use crate::error::{NodeError, NodeResult};
use crate::raft::Cluster;

/// The smallest bandwidth a plan may set: below it one 4 MiB chunk takes minutes.
const MIN_BANDWIDTH: u64 = 64 * 1024;

pub fn plan_to_pb(p: &Plan, tenants: u64) -> pb::Plan {
    pb::Plan {
        name: p.name.clone(),
        max_object_bytes: p.max_object_bytes,
        max_bytes: p.max_bytes,
        max_objects: p.max_objects,
        max_open_uploads: Some(p.max_open_uploads),
        requests_per_sec: p.requests_per_sec,
        bandwidth_bytes_per_sec: p.bandwidth_bytes_per_sec,
        tenants,
    }
}

fn plan_from_pb(r: &pb::Plan) -> NodeResult<Plan> {
    simple_name("plan", &r.name)?;
    if r.requests_per_sec == Some(0) {
        return Err(NodeError::InvalidArgument(
            "requests_per_sec must be at least 1 (leave it out for no limit)".into(),
        ));
    }
    if let Some(b) = r.bandwidth_bytes_per_sec
        && b < MIN_BANDWIDTH
    {
        return Err(NodeError::InvalidArgument(format!(
            "bandwidth_bytes_per_sec {b} is under the {MIN_BANDWIDTH}-byte (64 KiB/s) minimum \
             (leave it out for no limit)"
        )));
    }
    Ok(Plan {
        name: r.name.clone(),
        max_object_bytes: r.max_object_bytes,
        max_bytes: r.max_bytes,
        max_objects: r.max_objects,
        max_open_uploads: r.max_open_uploads.unwrap_or(DEFAULT_MAX_OPEN_UPLOADS),
        requests_per_sec: r.requests_per_sec,
        bandwidth_bytes_per_sec: r.bandwidth_bytes_per_sec,
    })
}

fn tenants_on(sm: &StateMachine, name: &str) -> NodeResult<u64> {
    Ok(sm
        .plans()?
        .into_iter()
        .find(|(p, _)| p.name == name)
        .map_or(0, |(_, n)| n))
}

pub async fn set_plan(sm: &StateMachine, cluster: &Cluster, r: &pb::Plan) -> NodeResult<pb::Plan> {
    let plan = plan_from_pb(r)?;
    cluster.propose(Command::SetPlan(plan.clone())).await?;
    Ok(plan_to_pb(&plan, tenants_on(sm, &plan.name)?))
}

pub fn list_plans(sm: &StateMachine) -> NodeResult<pb::ListPlansResponse> {
    Ok(pb::ListPlansResponse {
        plans: sm.plans()?.iter().map(|(p, n)| plan_to_pb(p, *n)).collect(),
    })
}

pub async fn delete_plan(cluster: &Cluster, name: &str) -> NodeResult<()> {
    simple_name("plan", name)?;
    cluster
        .propose(Command::DeletePlan {
            name: name.to_owned(),
        })
        .await?;
    Ok(())
}

fn tenant_id(sm: &StateMachine, name: &str) -> NodeResult<TenantId> {
    check_tenant_name(name)?;
    sm.tenant_id(name)?
        .ok_or_else(|| NodeError::NotFound(format!("tenant {name:?} not found")))
}

pub async fn set_tenant_plan(
    sm: &StateMachine,
    cluster: &Cluster,
    r: &pb::SetTenantPlanRequest,
) -> NodeResult<pb::TenantInfo> {
    check_tenant_name(&r.tenant)?;
    simple_name("plan", &r.plan)?;
    cluster
        .propose(Command::SetTenantPlan {
            tenant_name: r.tenant.clone(),
            plan: r.plan.clone(),
        })
        .await?;
    tenant_info(sm, &r.tenant)
}

/// The tenant's plan and usage, as this node's state machine has them.
pub fn tenant_info(sm: &StateMachine, name: &str) -> NodeResult<pb::TenantInfo> {
    let id = tenant_id(sm, name)?;
    let u = sm.tenant_usage(id)?;
    Ok(pb::TenantInfo {
        name: name.to_owned(),
        tenant_id: id.0,
        plan: Some(plan_to_pb(&u.plan, tenants_on(sm, &u.plan.name)?)),
        stored_bytes: u.usage.stored_bytes,
        reserved_bytes: u.usage.reserved_bytes,
        objects: u.usage.objects,
        open_uploads: u.open_uploads,
        reserved_objects: u.usage.reserved_objects,
    })
}
