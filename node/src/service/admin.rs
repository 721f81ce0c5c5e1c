//! The Admin service: node status and tenant management, for the admin token only.

use std::sync::Arc;
use std::time::Instant;

use strata_cluster::records::TokenScope;
use strata_cluster::{Command, Response as SmResponse, StateMachine, TokenHash};
use strata_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::layout::{self, NodeReport};
use super::observe::audited;
use super::plans;
use super::tier;
use super::workers;
use crate::actors::supervisor::SupervisorMsg;
use crate::auth;
use crate::clock::now_ms;
use crate::error::{NodeError, NodeResult};
use crate::raft::Cluster;
use crate::tiering::Tiering;

/// A join token lives one hour unless asked otherwise, at most a week.
const DEFAULT_JOIN_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
const MAX_JOIN_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Longest lifetime of a tenant token with an expiry (tokens without one never expire).
const MAX_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86400);
/// Nodes one join token may admit.
const MAX_JOIN_TOKEN_USES: u32 = 100;

pub struct AdminService {
    sm: Arc<StateMachine>,
    cluster: Arc<Cluster>,
    tiering: Arc<Tiering>,
    report: Arc<NodeReport>,
    sup: ractor::ActorRef<SupervisorMsg>,
    grpc_address: String,
    data_dir: String,
    started: Instant,
}

/// What the Admin service works with (built by the server).
pub struct AdminDeps {
    pub sm: Arc<StateMachine>,
    pub cluster: Arc<Cluster>,
    pub tiering: Arc<Tiering>,
    pub report: Arc<NodeReport>,
    pub sup: ractor::ActorRef<SupervisorMsg>,
    pub grpc_address: String,
    pub data_dir: String,
    pub started: Instant,
}

impl AdminService {
    /// Raft state of this node and the member table as the leader sees it (asked of the
    /// leader when this node is not it; left partial if the leader cannot be reached).
    async fn raft_status(&self) -> NodeResult<pb::StatusResponse> {
        let c = &self.cluster;
        let mine = c.raft.metrics().borrow().clone();
        let leader_view =
            if mine.state.is_leader() {
                Some(mine.clone())
            } else if let Some((_, addr)) = c.leader() {
                match c.peers.client(&addr) {
                    Ok(mut client) => match client.metrics(pb::MetricsRequest {}).await {
                        Ok(r) => crate::codec::decode::<
                            openraft::RaftMetrics<u64, openraft::BasicNode>,
                        >("raft metrics", &r.into_inner().data)
                        .ok(),
                        Err(_) => None,
                    },
                    Err(_) => None,
                }
            } else {
                None
            };
        let view = leader_view.as_ref().unwrap_or(&mine);
        let layout = self.sm.layout()?;
        let infos = layout::node_infos(c, &self.report).await;
        let membership = view.membership_config.membership();
        let last = view.last_log_index.unwrap_or(0);
        let nodes = membership
            .nodes()
            .map(|(id, node)| {
                let voter = membership.voter_ids().any(|v| v == *id);
                let matched = view
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index)
                    .or(if Some(*id) == view.current_leader {
                        view.last_log_index
                    } else {
                        None
                    })
                    .unwrap_or(0);
                let role = if Some(*id) == view.current_leader {
                    "leader"
                } else if voter {
                    "follower"
                } else {
                    "learner"
                };
                let role_in_layout = layout.current.nodes.get(id);
                let info = infos.get(id).cloned().flatten();
                pb::ClusterNode {
                    zone: role_in_layout.map(|r| r.zone.clone()).unwrap_or_default(),
                    capacity: role_in_layout.map_or(0, |r| r.capacity),
                    state: role_in_layout.map_or("-", |r| r.state.as_str()).into(),
                    reachable: info.is_some(),
                    name: info
                        .as_ref()
                        .map(|i| i.node_name.clone())
                        .unwrap_or_default(),
                    chunk_count: info.as_ref().map_or(0, |i| i.chunk_count),
                    chunk_bytes: info.as_ref().map_or(0, |i| i.chunk_bytes),
                    disk_total_bytes: info.as_ref().map_or(0, |i| i.disk_total_bytes),
                    disk_free_bytes: info.as_ref().map_or(0, |i| i.disk_free_bytes),
                    replication_queue: info.as_ref().map_or(0, |i| i.replication_queue),
                    rebalance: info.and_then(|i| i.rebalance),
                    raft_id: *id,
                    address: node.addr.clone(),
                    role: role.into(),
                    voter,
                    matched_index: matched,
                    lag: if leader_view.is_some() {
                        last.saturating_sub(matched)
                    } else {
                        0
                    },
                }
            })
            .collect();
        Ok(pb::StatusResponse {
            layout_version: layout.current.version,
            replication: layout.current.replication.into(),
            write_quorum: layout.current.write_quorum.into(),
            raft_id: c.id,
            raft_role: format!("{:?}", mine.state).to_lowercase(),
            term: mine.current_term,
            leader_id: mine.current_leader.unwrap_or(0),
            last_log_index: mine.last_log_index.unwrap_or(0),
            applied_index: mine.last_applied.map_or(0, |l| l.index),
            nodes,
            ..Default::default()
        })
    }

    pub fn new(d: AdminDeps) -> Self {
        AdminService {
            sm: d.sm,
            cluster: d.cluster,
            tiering: d.tiering,
            report: d.report,
            sup: d.sup,
            grpc_address: d.grpc_address,
            data_dir: d.data_dir,
            started: d.started,
        }
    }
}

/// Tenant names: 1 to 64 characters of lowercase letters, digits, '-' and '_'.
pub(super) fn check_tenant_name(name: &str) -> NodeResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(NodeError::InvalidArgument(format!(
            "tenant name {name:?} must be 1 to 64 lowercase letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// Creates a tenant and returns its new token (only the hash is stored).
pub async fn create_tenant(cluster: &Cluster, name: &str) -> NodeResult<(u64, String)> {
    check_tenant_name(name)?;
    let token = auth::new_token();
    let cmd = Command::CreateTenant {
        name: name.to_owned(),
        token: TokenHash::of(&token),
        now_ms: now_ms(),
    };
    match cluster.propose(cmd).await? {
        SmResponse::TenantCreated(id) => Ok((id.0, token)),
        other => Err(NodeError::Internal(format!(
            "unexpected response to CreateTenant: {other:?}"
        ))),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("Status", caller, async {
            let me = self.report.local();
            let counts = self.sm.counts()?;
            Ok(pb::StatusResponse {
                node_id: me.node_name,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                uptime_seconds: self.started.elapsed().as_secs(),
                grpc_address: self.grpc_address.clone(),
                data_dir: self.data_dir.clone(),
                disk_total_bytes: me.disk_total_bytes,
                disk_free_bytes: me.disk_free_bytes,
                chunk_count: me.chunk_count,
                chunk_bytes: me.chunk_bytes,
                open_sessions: counts.sessions,
                object_count: counts.objects,
                tenant_count: counts.tenants,
                ..self.raft_status().await?
            })
        })
        .await
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("CreateToken", caller, async {
            let r = req.get_ref();
            let name = r.tenant.clone();
            check_tenant_name(&name)?;
            let scope = match r.scope.as_str() {
                "" | "read-write" | "rw" => TokenScope::ReadWrite,
                "read" | "ro" => TokenScope::Read,
                other => {
                    return Err(NodeError::InvalidArgument(format!(
                        "scope {other:?} is not one of read, read-write"
                    )));
                }
            };
            let bucket = match r.bucket.as_str() {
                "" => None,
                b => Some(super::convert::bucket(b)?),
            };
            if r.expires_seconds > MAX_TOKEN_LIFETIME.as_secs() {
                return Err(NodeError::InvalidArgument(format!(
                    "a token expires at most {} days after it is made",
                    MAX_TOKEN_LIFETIME.as_secs() / 86400
                )));
            }
            let now = now_ms();
            let expires_ms = (r.expires_seconds > 0).then(|| now + r.expires_seconds as i64 * 1000);
            let token = auth::new_token();
            let cmd = Command::CreateToken {
                tenant_name: name.clone(),
                token: TokenHash::of(&token),
                now_ms: now,
                scope,
                bucket,
                expires_ms,
            };
            match self.cluster.propose(cmd).await? {
                SmResponse::TokenCreated(id) => Ok(pb::CreateTenantResponse {
                    tenant_id: id.0,
                    name,
                    token,
                }),
                other => Err(NodeError::Internal(format!(
                    "unexpected response to CreateToken: {other:?}"
                ))),
            }
        })
        .await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("ListTokens", caller, async {
            self.cluster.linearize().await?;
            let tokens = self
                .sm
                .tokens()?
                .into_iter()
                .map(|t| {
                    let admin = t.principal == strata_cluster::records::Principal::Admin;
                    pb::TokenInfo {
                        id: hex::encode(&t.hash.0[..8]),
                        tenant: t.tenant_name.unwrap_or_default(),
                        admin,
                        created_at_ms: t.created_at_ms,
                        scope: match (admin, t.scope) {
                            (true, _) => "admin",
                            (false, TokenScope::Read) => "read",
                            (false, TokenScope::ReadWrite) => "read-write",
                        }
                        .into(),
                        bucket: t.bucket.map(|b| b.to_string()).unwrap_or_default(),
                        expires_ms: t.expires_ms.unwrap_or(0),
                    }
                })
                .collect();
            Ok(pb::ListTokensResponse { tokens })
        })
        .await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("RevokeToken", caller, async {
            let id = req.get_ref().id.trim().to_lowercase();
            if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(NodeError::InvalidArgument(format!(
                    "token id {id:?} must be hex digits from `strata token list`"
                )));
            }
            self.cluster.linearize().await?;
            let matches: Vec<_> = self
                .sm
                .tokens()?
                .into_iter()
                .filter(|t| hex::encode(t.hash.0).starts_with(&id))
                .collect();
            let token = match matches.as_slice() {
                [one] => one.clone(),
                [] => return Err(NodeError::NotFound(format!("no token with id {id}"))),
                _ => {
                    return Err(NodeError::InvalidArgument(format!(
                        "token id {id} is ambiguous: give more digits"
                    )));
                }
            };
            let admins = self
                .sm
                .tokens()?
                .iter()
                .filter(|t| t.principal == strata_cluster::records::Principal::Admin)
                .count();
            if token.principal == strata_cluster::records::Principal::Admin && admins == 1 {
                return Err(NodeError::FailedPrecondition(
                    "this is the last admin token: revoking it would lock every operator out"
                        .into(),
                ));
            }
            self.cluster
                .propose(Command::RevokeToken { token: token.hash })
                .await?;
            Ok(pb::RevokeTokenResponse {})
        })
        .await
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("CreateJoinToken", caller, async {
            let r = req.get_ref();
            let ttl = match r.ttl_seconds {
                0 => DEFAULT_JOIN_TOKEN_TTL,
                s if s > MAX_JOIN_TOKEN_TTL.as_secs() => {
                    return Err(NodeError::InvalidArgument(format!(
                        "a join token lives at most {} hours",
                        MAX_JOIN_TOKEN_TTL.as_secs() / 3600
                    )));
                }
                s => std::time::Duration::from_secs(s),
            };
            let uses = match r.uses {
                0 => 1,
                u if u > MAX_JOIN_TOKEN_USES => {
                    return Err(NodeError::InvalidArgument(format!(
                        "a join token admits at most {MAX_JOIN_TOKEN_USES} nodes"
                    )));
                }
                u => u,
            };
            let ca_pem = self.sm.cluster_ca()?.ok_or_else(|| {
                NodeError::Unavailable("the cluster CA is not recorded yet; retry".into())
            })?;
            let ca_hash = crate::tls::pki::ca_hash_pem(&ca_pem)
                .map_err(|e| NodeError::Internal(e.to_string()))?;
            let token = format!("sjt_{}", hex::encode(rand::random::<[u8; 24]>()));
            let now = now_ms();
            let expires_ms = now + ttl.as_millis() as i64;
            self.cluster
                .propose(Command::CreateJoinToken {
                    token: TokenHash::of(&token),
                    expires_ms,
                    uses,
                    now_ms: now,
                })
                .await?;
            Ok(pb::CreateJoinTokenResponse {
                token,
                ca_hash,
                expires_ms,
                ca_pem,
            })
        })
        .await
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("RemoveNode", caller, async {
            let id = req.get_ref().raft_id;
            // Unknown nodes and the last voter get their own refusals from the leader.
            let members = self.cluster.members();
            if members.contains_key(&id) && members.len() > 1 {
                self.cluster.linearize().await?;
                layout::check_removable(&self.sm.layout()?, id)?;
            }
            let c = &self.cluster;
            c.on_leader(c.remove_node(id), async move |mut leader| {
                leader
                    .remove(pb::RemoveRequest { raft_id: id })
                    .await
                    .map(|_| ())
            })
            .await?;
            Ok(pb::RemoveNodeResponse {})
        })
        .await
    }

    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("CreateTenant", caller, async {
            let name = req.get_ref().name.clone();
            let (tenant_id, token) = create_tenant(&self.cluster, &name).await?;
            Ok(pb::CreateTenantResponse {
                tenant_id,
                name,
                token,
            })
        })
        .await
    }

    async fn get_layout(
        &self,
        req: Request<pb::GetLayoutRequest>,
    ) -> Result<Response<pb::LayoutResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("GetLayout", caller, async {
            self.cluster.linearize().await?;
            layout::layout_response(&self.sm, &self.cluster, &self.report).await
        })
        .await
    }

    async fn stage_layout(
        &self,
        req: Request<pb::StageLayoutRequest>,
    ) -> Result<Response<pb::LayoutResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("StageLayout", caller, async {
            let change =
                layout::change_of(&self.sm, &self.cluster, &self.report, req.into_inner()).await?;
            layout::stage(&self.cluster, change).await?;
            layout::layout_response(&self.sm, &self.cluster, &self.report).await
        })
        .await
    }

    async fn apply_layout(
        &self,
        req: Request<pb::ApplyLayoutRequest>,
    ) -> Result<Response<pb::LayoutResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("ApplyLayout", caller, async {
            layout::apply(&self.cluster, req.get_ref().version).await?;
            layout::layout_response(&self.sm, &self.cluster, &self.report).await
        })
        .await
    }

    async fn revert_layout(
        &self,
        req: Request<pb::RevertLayoutRequest>,
    ) -> Result<Response<pb::LayoutResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("RevertLayout", caller, async {
            layout::revert(&self.cluster).await?;
            layout::layout_response(&self.sm, &self.cluster, &self.report).await
        })
        .await
    }

    async fn set_plan(&self, req: Request<pb::Plan>) -> Result<Response<pb::Plan>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("SetPlan", caller, async {
            plans::set_plan(&self.sm, &self.cluster, req.get_ref()).await
        })
        .await
    }

    async fn list_plans(
        &self,
        req: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("ListPlans", caller, async {
            self.cluster.linearize().await?;
            plans::list_plans(&self.sm)
        })
        .await
    }

    async fn delete_plan(
        &self,
        req: Request<pb::PlanName>,
    ) -> Result<Response<pb::DeletePlanResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("DeletePlan", caller, async {
            plans::delete_plan(&self.cluster, &req.get_ref().name).await?;
            Ok(pb::DeletePlanResponse {})
        })
        .await
    }

    async fn set_tenant_plan(
        &self,
        req: Request<pb::SetTenantPlanRequest>,
    ) -> Result<Response<pb::TenantInfo>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("SetTenantPlan", caller, async {
            plans::set_tenant_plan(&self.sm, &self.cluster, req.get_ref()).await
        })
        .await
    }

    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::TenantInfo>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("GetTenant", caller, async {
            self.cluster.linearize().await?;
            plans::tenant_info(&self.sm, &req.get_ref().tenant)
        })
        .await
    }

    async fn set_tier_policy(
        &self,
        req: Request<pb::TierPolicy>,
    ) -> Result<Response<pb::TierPolicy>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("SetTierPolicy", caller, async {
            tier::set_policy(&self.sm, &self.cluster, &self.tiering, req.get_ref()).await
        })
        .await
    }

    async fn get_tier_policy(
        &self,
        req: Request<pb::TierPolicyName>,
    ) -> Result<Response<pb::TierPolicy>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("GetTierPolicy", caller, async {
            self.cluster.linearize().await?;
            tier::get_policy(&self.sm, &req.get_ref().name)
        })
        .await
    }

    async fn list_tier_policies(
        &self,
        req: Request<pb::ListTierPoliciesRequest>,
    ) -> Result<Response<pb::ListTierPoliciesResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("ListTierPolicies", caller, async {
            self.cluster.linearize().await?;
            tier::list_policies(&self.sm)
        })
        .await
    }

    async fn delete_tier_policy(
        &self,
        req: Request<pb::TierPolicyName>,
    ) -> Result<Response<pb::DeleteTierPolicyResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("DeleteTierPolicy", caller, async {
            tier::delete_policy(&self.cluster, &req.get_ref().name).await?;
            Ok(pb::DeleteTierPolicyResponse {})
        })
        .await
    }

    async fn tier_status(
        &self,
        req: Request<pb::TierStatusRequest>,
    ) -> Result<Response<pb::TierStatusResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("TierStatus", caller, async {
            self.cluster.linearize().await?;
            tier::status(&self.sm, &self.cluster, &self.tiering, &self.report).await
        })
        .await
    }

    async fn run_tiering(
        &self,
        req: Request<pb::RunTieringRequest>,
    ) -> Result<Response<pb::TierPass>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("RunTiering", caller, async {
            tier::run_now(&self.cluster, &self.sup).await
        })
        .await
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("ListWorkers", caller, async {
            Ok(workers::list(&self.cluster, &self.report).await)
        })
        .await
    }

    async fn control_workers(
        &self,
        req: Request<pb::AdminControlWorkersRequest>,
    ) -> Result<Response<pb::AdminControlWorkersResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("ControlWorkers", caller, async {
            let r = req.into_inner();
            let inner = r.request.ok_or_else(|| {
                NodeError::InvalidArgument("request is required (the action to carry out)".into())
            })?;
            workers::control(&self.cluster, &self.report, &r.node, inner).await
        })
        .await
    }

    async fn repair_status(
        &self,
        req: Request<pb::RepairStatusRequest>,
    ) -> Result<Response<pb::RepairStatusResponse>, Status> {
        let caller = auth::admin(&self.sm, req.metadata());
        audited("RepairStatus", caller, async {
            workers::repair_status(&self.sm, &self.cluster, &self.report).await
        })
        .await
    }
}
