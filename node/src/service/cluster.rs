//! The internal `Cluster` gRPC service: Raft RPCs, forwarded writes, read index, enrollment,
//! join, and what each node reports about itself. Every call but `Enroll` must come over mutual
//! TLS from a member whose certificate is not revoked (checked at the handshake, and again
//! per call, so a node's open connections stop working the moment its revocation commits).

use std::sync::Arc;

use serde::Serialize;
use strata_cluster::raft::NodeId;
use strata_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::identity::{self, Signer};
use super::layout::NodeReport;
use crate::codec;
use crate::raft::{Cluster, WireError};
use crate::tls::listener::ConnInfo;
use crate::tls::pki;

pub struct ClusterService {
    cluster: Arc<Cluster>,
    report: Arc<NodeReport>,
    signer: Arc<Signer>,
}

fn payload<T: Serialize>(what: &'static str, v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    let data = codec::encode(what, v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftPayload { data: data.into() }))
}

impl ClusterService {
    pub fn new(cluster: Arc<Cluster>, report: Arc<NodeReport>, signer: Arc<Signer>) -> Self {
        ClusterService {
            cluster,
            report,
            signer,
        }
    }

    /// The member that made this call (its certificate was verified in the handshake).
    fn check<T>(&self, req: &Request<T>) -> Result<NodeId, Status> {
        let node = req
            .extensions()
            .get::<ConnInfo>()
            .and_then(|i| i.node)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "internal calls need mutual TLS with a certificate from this cluster's CA",
                )
            })?;
        if self.cluster.peers.tls().is_revoked(node) {
            return Err(Status::permission_denied(format!(
                "node {node} was removed from the cluster: its certificates are revoked"
            )));
        }
        Ok(node)
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
        // Bounded by the cluster's quorum timeout (the asking follower's own deadline is shorter).
        let until = std::time::Instant::now() + crate::raft::QUORUM_TIMEOUT;
        match self.cluster.read_index_here(until).await {
            Ok(Ok(index)) => Ok(Response::new(pb::ReadIndexResponse { index })),
            Ok(Err(_)) => Err(Status::unavailable(
                "not able to serve a read index: this node is not the leader",
            )),
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

    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        // The token must never travel in plaintext: a dev node's plaintext API port does not
        // take it.
        if !req.extensions().get::<ConnInfo>().is_some_and(|i| i.tls) {
            return Err(Status::unauthenticated("enrollment needs TLS"));
        }
        let r = req.into_inner();
        if r.raft_id == 0 || r.token.is_empty() || r.token.len() > 128 {
            return Err(Status::invalid_argument(
                "enrollment needs the node's raft id and a join token",
            ));
        }
        identity::check_request(&r.csr_pem, &r.names).map_err(Status::invalid_argument)?;
        let c = &self.cluster;
        if !self.signer.holds_key() {
            let (id, addr) = c
                .signer()
                .ok_or_else(|| Status::unavailable("no certificate signer is known yet; retry"))?;
            if id == c.id {
                return Err(Status::failed_precondition(
                    "this node is the recorded certificate signer but does not hold the CA key: restore it with tls.ca_key",
                ));
            }
            let mut client = c.peers.client(&addr)?;
            return client.enroll(r).await;
        }
        // A request that cannot be signed must not spend the token.
        pki::check_csr(&r.csr_pem).map_err(|e| Status::invalid_argument(e.to_string()))?;
        c.propose(strata_cluster::Command::UseJoinToken {
            token: strata_cluster::TokenHash::of(&r.token),
            node: r.raft_id,
            now_ms: crate::clock::now_ms(),
        })
        .await
        .map_err(|e| Status::from(crate::error::NodeError::from(e)))?;
        let cert_pem = self
            .signer
            .sign(&r.csr_pem, r.raft_id, &r.names)
            .map_err(Status::invalid_argument)?;
        tracing::info!(target: "audit", node = r.raft_id, "enrolled a new node with a join token");
        Ok(Response::new(pb::EnrollResponse {
            cert_pem,
            ca_pem: self.signer.ca_pem().unwrap_or_default().to_owned(),
        }))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let node = self.check(&req)?;
        let r = req.into_inner();
        identity::check_request(&r.csr_pem, &r.names).map_err(Status::invalid_argument)?;
        if !self.signer.holds_key() {
            return Err(Status::failed_precondition(
                "this node does not hold the CA key; renew with the signer",
            ));
        }
        let cert_pem = self
            .signer
            .sign(&r.csr_pem, node, &r.names)
            .map_err(Status::invalid_argument)?;
        tracing::info!(node, "renewed a member's certificate");
        Ok(Response::new(pb::EnrollResponse {
            cert_pem,
            ca_pem: self.signer.ca_pem().unwrap_or_default().to_owned(),
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let caller = self.check(&req)?;
        let c = &self.cluster;
        let r = req.into_inner();
        if r.raft_id == 0 || r.address.is_empty() {
            return Err(Status::invalid_argument(
                "join needs the node's raft id and address",
            ));
        }
        // A node adds itself (its certificate names it), or a member forwards its join.
        if caller != r.raft_id && !c.members().contains_key(&caller) {
            return Err(Status::permission_denied(format!(
                "the caller's certificate names node {caller}, not node {}",
                r.raft_id
            )));
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
