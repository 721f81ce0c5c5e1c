//! A small gRPC client for Strata: a channel with the bearer token attached to every call.

use std::time::Duration;

use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::storage_client::StorageClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Largest message the client accepts (the node's largest chunk is 64 MiB).
pub const MAX_MESSAGE: usize = 65 * 1024 * 1024;

#[derive(Clone)]
pub struct Auth(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert(strata_proto::AUTHORIZATION, self.0.clone());
        Ok(req)
    }
}

pub type Storage = StorageClient<InterceptedService<Channel, Auth>>;
pub type Admin = AdminClient<InterceptedService<Channel, Auth>>;

/// Connects to a node. Fails fast (with the address in the message) when nothing listens.
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| anyhow::anyhow!("invalid endpoint {endpoint:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(16 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024));
    ep.connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {endpoint}: {}", root_cause(&e)))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn auth(token: &str) -> anyhow::Result<Auth> {
    let v = format!("Bearer {}", token.trim());
    Ok(Auth(v.parse().map_err(|_| {
        anyhow::anyhow!("the token contains characters not allowed in a header")
    })?))
}

pub fn storage(channel: Channel, token: &str) -> anyhow::Result<Storage> {
    Ok(StorageClient::with_interceptor(channel, auth(token)?)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

pub fn admin(channel: Channel, token: &str) -> anyhow::Result<Admin> {
    Ok(AdminClient::with_interceptor(channel, auth(token)?))
}

/// A gRPC status as a one-line error: the node's message and the code's name.
pub fn status_error(what: &str, s: Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {} ({:?})", s.message(), s.code())
}
