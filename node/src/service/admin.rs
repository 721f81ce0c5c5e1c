//! The Admin service: node status and tenant management, for the admin token only.

use std::sync::Arc;

use strata_cluster::{Command, Response as SmResponse, TokenHash};
use strata_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::observe::observe;
use crate::auth;
use crate::context::{Context, now_ms};
use crate::error::{NodeError, NodeResult};

pub struct AdminService {
    ctx: Arc<Context>,
    grpc_address: String,
}

impl AdminService {
    pub fn new(ctx: Arc<Context>, grpc_address: String) -> Self {
        AdminService { ctx, grpc_address }
    }
}

/// Tenant names: 1 to 64 characters of lowercase letters, digits, '-' and '_'.
fn check_tenant_name(name: &str) -> NodeResult<()> {
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
pub async fn create_tenant(ctx: &Context, name: &str) -> NodeResult<(u64, String)> {
    check_tenant_name(name)?;
    let token = auth::new_token();
    let cmd = Command::CreateTenant {
        name: name.to_owned(),
        token: TokenHash::of(&token),
        now_ms: now_ms(),
    };
    match ctx.propose(cmd).await? {
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
        observe("Status", async {
            auth::admin(&self.ctx.sm, req.metadata())?;
            let dir = &self.ctx.config.data_dir;
            let (chunk_count, chunk_bytes) = self.ctx.store.usage();
            let counts = self.ctx.sm.counts()?;
            Ok(pb::StatusResponse {
                node_id: self.ctx.config.node_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                uptime_seconds: self.ctx.started.elapsed().as_secs(),
                grpc_address: self.grpc_address.clone(),
                data_dir: dir.display().to_string(),
                disk_total_bytes: fs4::total_space(dir).unwrap_or(0),
                disk_free_bytes: fs4::available_space(dir).unwrap_or(0),
                chunk_count,
                chunk_bytes,
                open_sessions: counts.sessions,
                object_count: counts.objects,
                tenant_count: counts.tenants,
            })
        })
        .await
    }

    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        observe("CreateTenant", async {
            auth::admin(&self.ctx.sm, req.metadata())?;
            let name = req.get_ref().name.clone();
            let (tenant_id, token) = create_tenant(&self.ctx, &name).await?;
            Ok(pb::CreateTenantResponse {
                tenant_id,
                name,
                token,
            })
        })
        .await
    }
}
