//! Raft's network: openraft RPCs carried by the internal gRPC `Cluster` service, bincode-encoded,
//! authenticated with the cluster secret. Channels to peers are cached and connect lazily.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata_cluster::raft::{NodeId, TypeConfig};
use strata_proto::v1::RaftPayload;
use strata_proto::v1::cluster_client::ClusterClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::codec;

/// Metadata key carrying the cluster secret on node-to-node calls.
pub const SECRET_HEADER: &str = "x-strata-cluster-secret";

pub type PeerClient = ClusterClient<InterceptedService<Channel, SecretAuth>>;

#[derive(Clone)]
pub struct SecretAuth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for SecretAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(SECRET_HEADER, self.0.clone());
        Ok(req)
    }
}

/// Cached, lazily connected clients to peers, keyed by address.
#[derive(Clone)]
pub struct Peers {
    secret: Arc<Mutex<String>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    pub fn new(secret: String) -> Peers {
        Peers {
            secret: Arc::new(Mutex::new(secret)),
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn set_secret(&self, secret: String) {
        *self.secret.lock().unwrap_or_else(|p| p.into_inner()) = secret;
    }

    pub fn secret(&self) -> String {
        self.secret
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A client for the peer at `addr` (an http:// URL).
    pub fn client(&self, addr: &str) -> Result<PeerClient, tonic::Status> {
        let channel = {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            match channels.get(addr) {
                Some(c) => c.clone(),
                None => {
                    let ep = Endpoint::from_shared(addr.to_owned())
                        .map_err(|e| {
                            tonic::Status::invalid_argument(format!(
                                "bad peer address {addr:?}: {e}"
                            ))
                        })?
                        .connect_timeout(Duration::from_secs(2))
                        .tcp_nodelay(true)
                        .initial_stream_window_size(Some(16 * 1024 * 1024))
                        .initial_connection_window_size(Some(64 * 1024 * 1024));
                    let c = ep.connect_lazy();
                    channels.insert(addr.to_owned(), c.clone());
                    c
                }
            }
        };
        let secret = self.secret();
        let value = secret
            .parse()
            .map_err(|_| tonic::Status::internal("cluster secret is not a valid header value"))?;
        Ok(ClusterClient::with_interceptor(channel, SecretAuth(value))
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024))
    }
}

pub struct NetworkFactory {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

pub struct Network {
    target: NodeId,
    addr: String,
    peers: Peers,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Network {
    async fn call<Req, Resp, E>(
        &self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .peers
            .client(&self.addr)
            .map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        let data = codec::encode("raft message", req)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data: data.into() });
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            // Only a peer that cannot be reached is `Unreachable` (openraft then backs off for
            // 500 ms); a slow answer (its deadline passed) is retried at once, so a busy but
            // live follower does not stall commits.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&s)));
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode("raft reply", &reply.data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call("vote", &rpc, &option).await
    }
}
