//! Tiering in the Admin service (policies, status, running a pass) and the conversions that
//! Stat and Restore use to show where a version's bytes are.

use std::time::Duration;

use ractor::ActorRef;
use strata_cluster::tier::{PolicyScope, StorageClass, TierPolicy, VersionTier};
use strata_cluster::{BucketName, Command, ObjectKey, StateMachine};
use strata_proto::v1 as pb;

use super::layout::{NodeReport, node_infos};
use crate::actors::supervisor::{SupervisorMsg, call};
use crate::actors::tiering::TieringMsg;
use crate::clock::now_ms;
use crate::error::{NodeError, NodeResult};
use crate::raft::Cluster;
use crate::tiering::{PassReport, Tiering};

/// The longest a RunTiering call waits for its pass.
const RUN_TIMEOUT: Duration = Duration::from_secs(3600);

pub fn tier_info(t: &VersionTier) -> pb::TierInfo {
    use pb::tier_info::State;
    match t {
        VersionTier::Hot => pb::TierInfo {
            state: State::Hot as i32,
            ..Default::default()
        },
        VersionTier::Cold(c) => pb::TierInfo {
            state: State::Cold as i32,
            backend: c.backend.clone(),
            storage_class: c.class.to_string(),
            cold_since_ms: c.since_ms,
            ..Default::default()
        },
        VersionTier::Restoring(c, r) => pb::TierInfo {
            state: State::Restoring as i32,
            backend: c.backend.clone(),
            storage_class: c.class.to_string(),
            cold_since_ms: c.since_ms,
            restore_tier: r.tier.as_str().to_lowercase(),
            restore_started_ms: r.since_ms,
        },
    }
}

/// Why a Get of a version in an archived class is refused, or None if it can be read.
pub fn cold_read_refusal(bucket: &BucketName, key: &ObjectKey, t: &VersionTier) -> Option<String> {
    match t {
        VersionTier::Cold(c) if c.class.needs_restore() => Some(format!(
            "{bucket}/{key} is in cold storage (backend {}, class {}): restore it first with \
             `strata restore {bucket}/{key} --tier standard` (or the Restore call), then read it \
             once `strata stat {bucket}/{key}` shows it hot",
            c.backend, c.class
        )),
        VersionTier::Restoring(c, r) if c.class.needs_restore() => Some(format!(
            "{bucket}/{key} is being restored from backend {} ({}, {} tier, started {} ms since \
             the epoch): read it once `strata stat {bucket}/{key}` shows it hot",
            c.backend,
            c.class,
            r.tier.as_str().to_lowercase(),
            r.since_ms
        )),
        _ => None,
    }
}

fn policy_to_pb(sm: &StateMachine, p: &TierPolicy) -> NodeResult<pb::TierPolicy> {
    let (tenant, bucket) = match &p.scope {
        PolicyScope::Cluster => (String::new(), String::new()),
        PolicyScope::Bucket { tenant, bucket } => (
            sm.tenant(*tenant)?
                .map(|t| t.name)
                .unwrap_or_else(|| format!("#{}", tenant.0)),
            bucket.to_string(),
        ),
    };
    Ok(pb::TierPolicy {
        name: p.name.clone(),
        tenant,
        bucket,
        backend: p.backend.clone(),
        storage_class: p.storage_class.map(|c| c.to_string()).unwrap_or_default(),
        min_idle_seconds: p.min_idle_ms / 1000,
        min_size: p.min_size,
        created_at_ms: p.created_at_ms,
    })
}

fn check_policy_name(name: &str) -> NodeResult<()> {
    super::convert::simple_name("policy", name)
}

pub async fn set_policy(
    sm: &StateMachine,
    cluster: &Cluster,
    tiering: &Tiering,
    r: &pb::TierPolicy,
) -> NodeResult<pb::TierPolicy> {
    check_policy_name(&r.name)?;
    let store = tiering.backend(&r.backend).map_err(|e| {
        NodeError::InvalidArgument(format!("{e}; add it under [[tier.backends]] on every node"))
    })?;
    let class = if r.storage_class.is_empty() {
        None
    } else {
        Some(StorageClass::parse(&r.storage_class).ok_or_else(|| {
            NodeError::InvalidArgument(format!(
                "storage class {:?} is not STANDARD, GLACIER_IR, GLACIER or DEEP_ARCHIVE",
                r.storage_class
            ))
        })?)
    };
    if let Some(c) = class
        && !store.supports(c)
    {
        return Err(NodeError::InvalidArgument(format!(
            "backend {} ({}) cannot store class {c}",
            r.backend,
            store.kind()
        )));
    }
    let scope = match (r.tenant.is_empty(), r.bucket.is_empty()) {
        (true, true) => PolicyScope::Cluster,
        (false, false) => {
            let bucket = BucketName::new(&r.bucket)?;
            let tenant = sm
                .tenant_id(&r.tenant)?
                .ok_or_else(|| NodeError::NotFound(format!("tenant {:?} not found", r.tenant)))?;
            PolicyScope::Bucket { tenant, bucket }
        }
        _ => {
            return Err(NodeError::InvalidArgument(
                "give both tenant and bucket (one bucket), or neither (cluster-wide)".into(),
            ));
        }
    };
    let policy = TierPolicy {
        name: r.name.clone(),
        scope,
        backend: r.backend.clone(),
        storage_class: class,
        min_idle_ms: r.min_idle_seconds.saturating_mul(1000),
        min_size: r.min_size,
        created_at_ms: now_ms(),
    };
    cluster
        .propose(Command::SetTierPolicy(policy.clone()))
        .await?;
    policy_to_pb(sm, &policy)
}

pub fn get_policy(sm: &StateMachine, name: &str) -> NodeResult<pb::TierPolicy> {
    check_policy_name(name)?;
    let p = sm
        .tier_policy(name)?
        .ok_or_else(|| NodeError::NotFound(format!("tier policy {name:?} not found")))?;
    policy_to_pb(sm, &p)
}

pub fn list_policies(sm: &StateMachine) -> NodeResult<pb::ListTierPoliciesResponse> {
    let policies = sm
        .tier_policies()?
        .iter()
        .map(|p| policy_to_pb(sm, p))
        .collect::<NodeResult<_>>()?;
    Ok(pb::ListTierPoliciesResponse { policies })
}

pub async fn delete_policy(cluster: &Cluster, name: &str) -> NodeResult<()> {
    check_policy_name(name)?;
    cluster
        .propose(Command::DeleteTierPolicy { name: name.into() })
        .await?;
    Ok(())
}

pub fn pass_to_pb(r: &PassReport) -> pb::TierPass {
    pb::TierPass {
        finished_ms: r.finished_ms,
        moved_versions: r.moved_versions,
        failed_versions: r.failed_versions,
        pending_versions: r.pending_versions,
        archives: r.archives,
        archive_bytes: r.archive_bytes,
        backend_requests: r.backend_requests,
        restores_done: r.restores_done,
        restores_waiting: r.restores_waiting,
        archives_deleted: r.archives_deleted,
        orphans_deleted: r.orphans_deleted,
        archives_checked: r.archives_checked,
        bad_archives: r.bad_archives,
        versions_made_hot: r.versions_made_hot,
        errors: r.errors.clone(),
    }
}

pub async fn status(
    sm: &StateMachine,
    cluster: &Cluster,
    tiering: &Tiering,
    report: &NodeReport,
) -> NodeResult<pb::TierStatusResponse> {
    let totals = sm.tier_totals()?;
    let infos = node_infos(cluster, report).await;
    let hot_bytes = infos.values().flatten().map(|i| i.chunk_bytes).sum();
    let backends = tiering
        .backends()
        .values()
        .map(|s| {
            let (archives, archive_bytes) =
                totals.archives.get(s.name()).copied().unwrap_or_default();
            pb::TierBackend {
                name: s.name().to_owned(),
                kind: s.kind().to_owned(),
                default_class: s.default_class().to_string(),
                bytes: totals.bytes.get(s.name()).copied().unwrap_or(0),
                archives,
                archive_bytes,
            }
        })
        .collect();
    let mut restores = Vec::new();
    for r in sm.restores()? {
        let tenant = sm
            .tenant(r.tenant)?
            .map(|t| t.name)
            .unwrap_or_else(|| format!("#{}", r.tenant.0));
        restores.push(pb::TierRestore {
            tenant,
            bucket: r.bucket.to_string(),
            key: r.key.to_string(),
            version: r.version,
            tier: r.record.tier.as_str().to_lowercase(),
            started_ms: r.record.since_ms,
            rehydrating: r.record.rehydrating,
        });
    }
    let moves_pending = sm.tier_candidates(now_ms(), 100_000)?.len() as u64;
    Ok(pb::TierStatusResponse {
        hot_bytes,
        backends,
        moves_pending,
        cold_versions: totals.cold_versions,
        restores,
        dead_archives: totals.dead_archives,
        last_pass: Some(pass_to_pb(&tiering.last_pass())),
    })
}

pub async fn run_now(cluster: &Cluster, sup: &ActorRef<SupervisorMsg>) -> NodeResult<pb::TierPass> {
    if !cluster.is_leader() {
        let leader = cluster
            .leader()
            .map(|(_, addr)| addr)
            .unwrap_or_else(|| "unknown (no leader now)".into());
        return Err(NodeError::FailedPrecondition(format!(
            "this node is not the Raft leader, which runs tiering; ask the leader at {leader}"
        )));
    }
    let actor = call(sup, SupervisorMsg::Tiering)
        .await?
        .ok_or_else(|| NodeError::Unavailable("the tiering actor is restarting; retry".into()))?;
    match actor.call(TieringMsg::RunNow, Some(RUN_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(r)) => Ok(pass_to_pb(&r)),
        _ => Err(NodeError::Unavailable(
            "the tiering pass did not finish in time or its actor stopped".into(),
        )),
    }
}

/// Parses a Restore call's tier ("" is standard).
pub fn restore_tier(s: &str) -> NodeResult<strata_cluster::tier::RestoreTier> {
    if s.is_empty() {
        return Ok(strata_cluster::tier::RestoreTier::Standard);
    }
    strata_cluster::tier::RestoreTier::parse(s).ok_or_else(|| {
        NodeError::InvalidArgument(format!(
            "restore tier {s:?} is not expedited, standard or bulk"
        ))
    })
}
