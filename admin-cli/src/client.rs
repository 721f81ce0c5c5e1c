//! A small gRPC client for Strata: a channel with the bearer token attached to every call.

use std::path::Path;
use std::time::Duration;

use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::storage_client::StorageClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
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
/// An `https://` endpoint is verified against the system's trusted roots.
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    connect_ca(endpoint, None).await
}

/// Connects to a node; an `https://` endpoint is verified against the CA certificate in
/// `ca_file` (the cluster CA, or whichever CA signed the node's `tls.cert`), else against the
/// system's trusted roots.
pub async fn connect_ca(endpoint: &str, ca_file: Option<&Path>) -> anyhow::Result<Channel> {
    let mut ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| anyhow::anyhow!("invalid endpoint {endpoint:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(16 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024));
    if endpoint.starts_with("https://") {
        let tls = match ca_file {
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the CA file {}: {e}", path.display())
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        ep = ep
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("TLS for {endpoint}: {}", causes(&e)))?;
    } else if ca_file.is_some() {
        anyhow::bail!("--ca-file is given but the endpoint {endpoint} is not https://");
    }
    ep.connect().await.map_err(|e| {
        let why = causes(&e);
        anyhow::anyhow!(
            "cannot connect to {endpoint}: {why}{}",
            hint(endpoint, &why, ca_file)
        )
    })
}

/// Every cause of an error, outermost first (TLS failures are a few sources deep).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e;
    while let Some(next) = cur.source() {
        let text = next.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = next;
    }
    out
}

/// What to do about a failed connection, when the cause says it.
pub fn hint(endpoint: &str, why: &str, ca_file: Option<&Path>) -> &'static str {
    let tls_trust = why.contains("certificate") || why.contains("UnknownIssuer");
    if endpoint.starts_with("https://") && tls_trust {
        return if ca_file.is_some() {
            " (TLS: the node's certificate is not signed by the CA in --ca-file, or not for this address; the cluster CA is in a node's <data dir>/tls/ca.crt)"
        } else {
            " (TLS: the node's certificate is not trusted; pass the cluster CA with --ca-file or STRATA_CA_FILE: a node keeps it in <data dir>/tls/ca.crt)"
        };
    }
    if endpoint.starts_with("http://")
        && (why.contains("insufficient security") || why.contains("TLS only"))
    {
        return " (the node accepts TLS only: use an https:// endpoint, with --ca-file)";
    }
    ""
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

/// A call refused for a rate limit, with the delay the node's `google.rpc.RetryInfo` asked
/// for: `with_retry` waits that long and tries again.
#[derive(Debug)]
pub struct RetryAfter {
    pub delay: Duration,
    pub message: String,
}

impl std::fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RetryAfter {}

/// The delay a RESOURCE_EXHAUSTED status asks for (rate limits attach one; quotas do not, as
/// retrying them cannot pass).
pub fn retry_delay(s: &Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    if s.code() != tonic::Code::ResourceExhausted {
        return None;
    }
    s.get_details_retry_info()?.retry_delay
}

/// Retries of one call refused for a rate limit, at most.
pub const MAX_RETRIES: u32 = 1000;
/// Longest wait `with_retry` accepts from a node (a longer one fails the call at once).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How long `with_retry` keeps retrying one call.
pub const RETRY_FOR: Duration = Duration::from_secs(600);

/// Runs `op` until it succeeds, fails for another reason than a rate limit, or has been
/// retried `MAX_RETRIES` times or for `RETRY_FOR`. After a refusal it waits the delay the node
/// asked for plus up to a quarter more (so many clients refused at once do not come back at
/// once). `op` must be safe to repeat: a refused call did nothing.
pub async fn with_retry<T, F, Fut>(mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = std::time::Instant::now();
    let mut retries = 0u32;
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(delay) = err.downcast_ref::<RetryAfter>().map(|r| r.delay) else {
            return Err(err);
        };
        if retries >= MAX_RETRIES
            || delay > MAX_RETRY_DELAY
            || started.elapsed() + delay > RETRY_FOR
        {
            return Err(err.context(format!(
                "still refused for a rate limit after {retries} retries in {:.1?}",
                started.elapsed()
            )));
        }
        retries += 1;
        let jitter = delay.mul_f64(rand::random::<f64>() / 4.0);
        tokio::time::sleep(delay + jitter).await;
    }
}

/// A gRPC status as a one-line error: the node's message and the code's name. A rate-limit
/// refusal becomes a `RetryAfter` (same text), which `with_retry` honours.
pub fn status_error(what: &str, s: Status) -> anyhow::Error {
    if let Some(delay) = retry_delay(&s) {
        return anyhow::Error::new(RetryAfter {
            delay,
            message: format!("{what}: {} ({:?})", s.message(), s.code()),
        });
    }
    let why = format!("{} {:?}", s.message(), std::error::Error::source(&s));
    // A TLS-only node answers a plaintext client's first call with FAILED_PRECONDITION and a
    // message saying so; a call already in flight may see its GOAWAY instead.
    let hint = if why.contains("insufficient security") || why.contains("h2 protocol error") {
        " (if the node accepts TLS only, use an https:// endpoint, with --ca-file)"
    } else {
        ""
    };
    anyhow::anyhow!("{what}: {} ({:?}){hint}", s.message(), s.code())
}

/// `client.method(request)` for a unary call, its response's message, retried while refused
/// for a rate limit (`with_retry`); errors are `status_error(what, ..)`.
#[macro_export]
macro_rules! unary {
    ($client:expr, $method:ident, $request:expr, $what:expr) => {{
        let (client, request) = (&$client, $request);
        $crate::client::with_retry(|| {
            let (mut c, request) = (client.clone(), request.clone());
            async move {
                Ok(c.$method(request)
                    .await
                    .map_err(|s| $crate::client::status_error($what, s))?
                    .into_inner())
            }
        })
        .await
    }};
}
