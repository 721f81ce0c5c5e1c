//! The internal `Cluster` gRPC service: Raft RPCs, forwarded writes, read index, join, and
//! chunk fetches between nodes. Every call must carry the cluster secret.

use std::sync::Arc;

use strata_cluster::raft::NodeId;
use strata_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::network::{SECRET_HEADER, decode, encode};
use crate::context::Context;

pub struct ClusterService {
    ctx: Arc<Context>,
}

impl ClusterService {
    pub fn new(ctx: Arc<Context>) -> Self {
        ClusterService { ctx }
    }

    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let expected = self.ctx.cluster.peers.secret();
        let given = req
            .metadata()
            .get(SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Compare hashes so the comparison takes the same time wherever the strings differ.
        if expected.is_empty()
            || blake3::hash(given.as_bytes()) != blake3::hash(expected.as_bytes())
        {
            return Err(Status::unauthenticated(
                "this node does not recognise the caller as a member of its cluster (wrong or missing cluster secret)",
            ));
        }
        Ok(())
    }
}

fn bad(e: String) -> Status {
    Status::invalid_argument(format!("cannot decode raft message: {e}"))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let rpc = decode(&req.get_ref().data).map_err(bad)?;
        let result = self.ctx.cluster.raft.append_entries(rpc).await;
        Ok(Response::new(pb::RaftPayload {
            data: encode(&result).into(),
        }))
    }

    async fn vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let rpc = decode(&req.get_ref().data).map_err(bad)?;
        let result = self.ctx.cluster.raft.vote(rpc).await;
        Ok(Response::new(pb::RaftPayload {
            data: encode(&result).into(),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let rpc = decode(&req.get_ref().data).map_err(bad)?;
        let result = self.ctx.cluster.raft.install_snapshot(rpc).await;
        Ok(Response::new(pb::RaftPayload {
            data: encode(&result).into(),
        }))
    }

    async fn propose(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let cmd = decode(&req.get_ref().data).map_err(bad)?;
        let result = self.ctx.cluster.write(cmd).await.map_err(|e| e.to_string());
        Ok(Response::new(pb::RaftPayload {
            data: encode(&result).into(),
        }))
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.check(&req)?;
        match self.ctx.cluster.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(Response::new(pb::ReadIndexResponse {
                index: log_id.map_or(0, |l| l.index),
            })),
            Err(e) => Err(Status::unavailable(format!(
                "not able to serve a read index: {e}"
            ))),
        }
    }

    async fn identify(
        &self,
        req: Request<pb::IdentifyRequest>,
    ) -> Result<Response<pb::IdentifyResponse>, Status> {
        self.check(&req)?;
        let c = &self.ctx.cluster;
        Ok(Response::new(pb::IdentifyResponse {
            raft_id: c.id,
            address: c.addr.clone(),
            node_name: self.ctx.config.node_id.clone(),
            initialized: c.is_initialized().await,
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        self.check(&req)?;
        let c = &self.ctx.cluster;
        let r = req.into_inner();
        if r.raft_id == 0 || r.address.is_empty() {
            return Err(Status::invalid_argument(
                "join needs the node's raft id and address",
            ));
        }
        if !c.is_leader() {
            let Some((leader, addr)) = c.leader() else {
                return Err(Status::unavailable("no leader is known yet; retry"));
            };
            if leader != c.id {
                let mut client = c.peers.client(&addr)?;
                return client.join(r).await;
            }
        }
        c.add_node(r.raft_id as NodeId, &r.address)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::JoinResponse { leader_id: c.id }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        self.check(&req)?;
        let id = req.get_ref().raft_id;
        let c = &self.ctx.cluster;
        c.on_leader(c.remove_node(id), async move |mut client| {
            client
                .remove(pb::RemoveRequest { raft_id: id })
                .await
                .map(|r| r.into_inner())
                .map(|_| ())
        })
        .await
        .map_err(Status::from)?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn metrics(
        &self,
        req: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let m = self.ctx.cluster.raft.metrics().borrow().clone();
        Ok(Response::new(pb::RaftPayload {
            data: encode(&m).into(),
        }))
    }

    async fn node_info(
        &self,
        req: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(crate::service::layout::local_info(&self.ctx)))
    }
}
