//! Raft's network: openraft RPCs carried by the internal gRPC `Cluster` service, bincode-encoded,
//! over mutual TLS (each member proves who it is with its node certificate; no shared secret
//! travels). Channels to peers are cached and connect lazily.

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
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::tls::NodeTls;

pub type PeerClient = ClusterClient<Channel>;

/// HTTP/2 PINGs on every peer connection, and how long an answer may take before the
/// connection is dropped (the channel then connects anew). Without them, a connection whose
/// packets were dropped for a while (a partition, a cut-off node) stays open but stalled in
/// TCP's retransmission backoff after the network heals: every Raft message to that peer timed
/// out for seconds more, and the healed node, hearing no leader, started elections.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Cached, lazily connected clients to peers, keyed by address. Every channel is mutual TLS
/// with this node's current certificate; a renewal drops the cache, so new channels present
/// the new certificate (calls already running finish on the old ones).
#[derive(Clone)]
pub struct Peers {
    tls: Arc<NodeTls>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Members call each other at `https://` URLs; an `http://` address (given by hand, or
/// recorded by a node of an older version) is reached over TLS all the same.
pub fn tls_url(addr: &str) -> String {
    match addr.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => addr.to_owned(),
    }
}

impl Peers {
    pub fn new(tls: Arc<NodeTls>) -> Peers {
        Peers {
            tls,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn tls(&self) -> &Arc<NodeTls> {
        &self.tls
    }

    /// Forgets every cached channel (after a certificate renewal).
    pub fn reset(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// A client for the peer at `addr`.
    pub fn client(&self, addr: &str) -> Result<PeerClient, tonic::Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let bad = |e: tonic::transport::Error| {
                    tonic::Status::invalid_argument(format!("bad peer address {addr:?}: {e}"))
                };
                let ep = Endpoint::from_shared(tls_url(addr))
                    .map_err(bad)?
                    .tls_config(self.tls.grpc_client_config())
                    .map_err(bad)?
                    .connect_timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true)
                    .initial_stream_window_size(Some(16 * 1024 * 1024))
                    .initial_connection_window_size(Some(64 * 1024 * 1024));
                let c = ep.connect_lazy();
                channels.insert(addr.to_owned(), c.clone());
                c
            }
        };
        Ok(ClusterClient::new(channel)
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
