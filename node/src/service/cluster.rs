//! The internal `Cluster` gRPC service: Raft RPCs, forwarded writes, read index, join, and
//! what each node reports about itself. Every call must carry the cluster secret.

use std::sync::Arc;

use serde::Serialize;
use strata_cluster::raft::NodeId;
use strata_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::layout::NodeReport;
use crate::codec;
use crate::raft::network::SECRET_HEADER;
use crate::raft::{Cluster, WireError};

pub struct ClusterService {
    cluster: Arc<Cluster>,
    report: Arc<NodeReport>,
}

fn payload<T: Serialize>(what: &'static str, v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    let data = codec::encode(what, v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftPayload { data: data.into() }))
}

impl ClusterService {
    pub fn new(cluster: Arc<Cluster>, report: Arc<NodeReport>) -> Self {
        ClusterService { cluster, report }
    }

    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let expected = self.cluster.peers.secret();
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

fn bad(e: codec::CodecError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let rpc = codec::decode("append entries request", &req.get_ref().data).map_err(bad)?;
        let result = self.cluster.raft.append_entries(rpc).await;
        payload("append entries reply", &result)
    }

    async fn vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let rpc = codec::decode("vote request", &req.get_ref().data).map_err(bad)?;
        let result = self.cluster.raft.vote(rpc).await;
        payload("vote reply", &result)
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let rpc = codec::decode("install snapshot request", &req.get_ref().data).map_err(bad)?;
        let result = self.cluster.raft.install_snapshot(rpc).await;
        payload("install snapshot reply", &result)
    }

    async fn propose(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let cmd = codec::decode("forwarded command", &req.get_ref().data).map_err(bad)?;
        let result = self
            .cluster
            .write(cmd)
            .await
            .map_err(|e| WireError::from(&e));
        payload("forwarded write result", &result)
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.check(&req)?;
        match self.cluster.raft.ensure_linearizable().await {
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
        let c = &self.cluster;
        Ok(Response::new(pb::IdentifyResponse {
            raft_id: c.id,
            address: c.addr.clone(),
            node_name: self.report.name.clone(),
            initialized: c.is_initialized().await,
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        self.check(&req)?;
        let c = &self.cluster;
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
            .map_err(|e| Status::from(crate::error::NodeError::from(e)))?;
        Ok(Response::new(pb::JoinResponse { leader_id: c.id }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        self.check(&req)?;
        let id = req.get_ref().raft_id;
        let c = &self.cluster;
        c.on_leader(c.remove_node(id), async move |mut client| {
            client
                .remove(pb::RemoveRequest { raft_id: id })
                .await
                .map(|r| r.into_inner())
                .map(|_| ())
        })
        .await
        .map_err(|e| Status::from(crate::error::NodeError::from(e)))?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn metrics(
        &self,
        req: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(&req)?;
        let m = self.cluster.raft.metrics().borrow().clone();
        payload("raft metrics", &m)
    }

    async fn control_workers(
        &self,
        req: Request<pb::ControlWorkersRequest>,
    ) -> Result<Response<pb::ControlWorkersReply>, Status> {
        self.check(&req)?;
        let message = super::workers::control_local(&self.report, req.get_ref())?;
        Ok(Response::new(pb::ControlWorkersReply { message }))
    }

    async fn node_info(
        &self,
        req: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(self.report.local()))
    }
}
