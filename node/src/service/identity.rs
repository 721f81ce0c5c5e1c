//! Node identity, in the style of `kubeadm join`: a new node pins the cluster CA by its hash,
//! spends a join token and gets its certificate signing request signed (`enroll`); members
//! renew their certificates before they expire (`renew_loop`); the signer is the member that
//! holds the CA key (`Signer`).
//!
//! Where the CA key lives: only in `<data_dir>/tls/ca.key` (mode 0600) of the signer, the node
//! that created the cluster. It is never in the replicated metadata, a snapshot or a message.
//! If that node is lost, members keep working until their certificates expire
//! (`tls.cert_lifetime`, renewed after two thirds of it); the operator restores the key from
//! a backup onto any member (`tls.ca_key = "/path/ca.key"`, or the file in its `tls/`), which
//! becomes the signer when it starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use strata_cluster::StateMachine;
use strata_proto::v1 as pb;
use strata_proto::v1::cluster_client::ClusterClient;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::raft::Cluster;
use crate::raft::network::tls_url;
use crate::tls::pki::{self, Ca, PEER_NAME};
use crate::tls::{Identity, NodeTls, write_atomically};

/// The CA key file in a data directory.
pub fn ca_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tls").join("ca.key")
}

/// Signs certificates, on the member that holds the CA key.
pub struct Signer {
    ca: Option<Ca>,
    lifetime: Duration,
}

impl Signer {
    pub fn new(ca: Option<Ca>, lifetime: Duration) -> Signer {
        Signer { ca, lifetime }
    }

    /// The CA key saved in `data_dir`, or the backup at `backup` (copied into `data_dir`),
    /// checked against the cluster CA certificate `ca_pem`. Blocking.
    pub fn load(
        data_dir: &Path,
        backup: &Path,
        ca_pem: &str,
        lifetime: Duration,
    ) -> anyhow::Result<Signer> {
        let own = ca_key_path(data_dir);
        let key = if own.exists() {
            std::fs::read_to_string(&own)?
        } else if !backup.as_os_str().is_empty() {
            let key = std::fs::read_to_string(backup)
                .map_err(|e| anyhow::anyhow!("tls.ca_key {}: {e}", backup.display()))?;
            Ca::load(ca_pem, &key)?;
            write_atomically(&own, key.as_bytes(), 0o600)?;
            key
        } else {
            return Ok(Signer::new(None, lifetime));
        };
        Ok(Signer::new(Some(Ca::load(ca_pem, &key)?), lifetime))
    }

    pub fn holds_key(&self) -> bool {
        self.ca.is_some()
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    pub fn sign(&self, csr_pem: &str, node: u64, names: &[String]) -> Result<String, String> {
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| "this node does not hold the CA key".to_owned())?;
        ca.sign(csr_pem, node, names, self.lifetime)
            .map_err(|e| e.to_string())
    }

    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|c| c.cert_pem.as_str())
    }
}

/// Bounds on what a node may ask to be named (enrollment and renewal requests).
pub const MAX_NAMES: usize = 16;
pub const MAX_NAME_LEN: usize = 253;
pub const MAX_CSR_BYTES: usize = 8 * 1024;

pub fn check_request(csr_pem: &str, names: &[String]) -> Result<(), String> {
    if csr_pem.is_empty() || csr_pem.len() > MAX_CSR_BYTES {
        return Err(format!(
            "a certificate signing request of 1 to {MAX_CSR_BYTES} bytes is needed"
        ));
    }
    if names.len() > MAX_NAMES || names.iter().any(|n| n.len() > MAX_NAME_LEN) {
        return Err(format!(
            "at most {MAX_NAMES} names of at most {MAX_NAME_LEN} bytes each"
        ));
    }
    Ok(())
}

/// The names a node's certificate carries besides `strata-peer`: the host of its advertised
/// URL, its listen address when it is a specific one, and `tls.names`.
pub fn node_names(advertise: &str, listen: std::net::SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let host = advertise
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let host = match host.rsplit_once(':') {
        Some((h, _)) => h,
        None => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    for n in [host.to_owned(), listen.ip().to_string()]
        .into_iter()
        .chain(extra.iter().cloned())
    {
        let unspecified = n
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if !n.is_empty() && !unspecified && !names.contains(&n) {
            names.push(n);
        }
    }
    if listen.ip().is_loopback() && !names.iter().any(|n| n == "localhost") {
        names.push("localhost".into());
    }
    names
}

/// Checks a `--ca-hash` value: `sha256:` and 64 hex digits.
pub fn parse_ca_hash(hash: &str) -> anyhow::Result<String> {
    let h = hash.trim().to_ascii_lowercase();
    let ok = h
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        anyhow::bail!(
            "--ca-hash must be sha256:<64 hex digits>, as `strata node token create` prints it"
        );
    }
    Ok(h)
}

/// Accepts a server only if the chain it sends holds the CA pinned by hash and its
/// certificate chains to that CA for `strata-peer`. Until this passes, nothing is sent.
#[derive(Debug)]
struct PinnedCa {
    hash: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| pki::ca_hash(c) == self.hash) else {
            let seen = intermediates
                .last()
                .map(|c| pki::ca_hash(c))
                .unwrap_or_else(|| "no CA".into());
            return Err(rustls::Error::General(format!(
                "the server's CA is {seen}, not the pinned {}: nothing was sent to it",
                self.hash
            )));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The full cause of a transport error (TLS failures are a few sources deep).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// What a new node needs to enroll.
pub struct Enrollment<'a> {
    pub join: &'a str,
    pub token: &'a str,
    pub ca_hash: &'a str,
    pub raft_id: u64,
    pub names: Vec<String>,
}

/// Gets this node a certificate through the member at `join`: pins the CA by hash, sends a
/// signing request with the join token, and checks what comes back. Retries a member that
/// cannot be reached (or has no leader yet) until `deadline`; a refusal ends it at once.
pub async fn enroll(e: Enrollment<'_>, deadline: Duration) -> anyhow::Result<Identity> {
    let hash = parse_ca_hash(e.ca_hash)?;
    if e.token.is_empty() {
        anyhow::bail!(
            "joining {} needs a join token (--join-token; `strata node token create` on a member makes one)",
            e.join
        );
    }
    let (key_pem, csr_pem) = pki::new_key_and_csr()?;
    let verifier = Arc::new(PinnedCa {
        hash: hash.clone(),
        provider: Arc::new(rustls::crypto::ring::default_provider()),
    });
    let endpoint = Endpoint::from_shared(tls_url(e.join))
        .map_err(|err| anyhow::anyhow!("bad join URL {:?}: {err}", e.join))?
        .tls_config_with_verifier(ClientTlsConfig::new().domain_name(PEER_NAME), verifier)
        .map_err(|err| anyhow::anyhow!("join URL {:?}: {err}", e.join))?
        .connect_timeout(Duration::from_secs(5));
    let until = Instant::now() + deadline;
    let reply = loop {
        let attempt = async {
            let channel = endpoint.connect().await.map_err(|err| {
                let why = chain(&err);
                let pinned = why.contains("pinned");
                (pinned, format!("cannot reach {} over TLS: {why}", e.join))
            })?;
            ClusterClient::new(channel)
                .enroll(pb::EnrollRequest {
                    token: e.token.to_owned(),
                    raft_id: e.raft_id,
                    csr_pem: csr_pem.clone(),
                    names: e.names.clone(),
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| {
                    let fatal = !matches!(s.code(), tonic::Code::Unavailable);
                    (
                        fatal,
                        format!("{} refused to enroll this node: {}", e.join, s.message()),
                    )
                })
        }
        .await;
        match attempt {
            Ok(r) => break r,
            Err((true, why)) => anyhow::bail!(why),
            Err((false, why)) if Instant::now() >= until => anyhow::bail!(why),
            Err((false, why)) => {
                tracing::info!(error = %why, "enrollment not done yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    if pki::ca_hash_pem(&reply.ca_pem)? != hash {
        anyhow::bail!("{} answered with a CA other than the pinned one", e.join);
    }
    let identity = Identity::from_pem(&reply.ca_pem, &reply.cert_pem, &key_pem)?;
    if identity.node() != Some(e.raft_id) {
        anyhow::bail!("the certificate from {} names another node", e.join);
    }
    Ok(identity)
}

/// Renews this node's certificate after two thirds of its life, while it keeps serving: the
/// new certificate is saved, then used by every new handshake (gRPC server and clients, QUIC).
/// A failed attempt is retried every 10 s.
pub async fn renew_loop(
    tls: Arc<NodeTls>,
    cluster: Arc<Cluster>,
    sm: Arc<StateMachine>,
    signer: Arc<Signer>,
    data_dir: PathBuf,
    names: Vec<String>,
) {
    loop {
        let facts = tls.identity().facts.clone();
        let expiry = facts
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!(crate::metrics::CERT_EXPIRY).set(expiry.as_secs_f64());
        let renew_at = facts.renew_at();
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
            continue;
        }
        match renew_once(&tls, &cluster, &sm, &signer, &names).await {
            Ok(next) => {
                let dir = data_dir.clone();
                let saved = tokio::task::spawn_blocking(move || next.save(&dir).map(|()| next))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .and_then(|r| r);
                match saved.and_then(|next| {
                    let facts = next.facts.clone();
                    tls.replace(next).map(|()| facts)
                }) {
                    Ok(facts) => {
                        cluster.peers.reset();
                        metrics::counter!(crate::metrics::CERT_RENEWALS, "outcome" => "ok")
                            .increment(1);
                        tracing::info!(serial = %facts.serial, not_after = ?facts.not_after, "renewed this node's certificate");
                    }
                    Err(e) => {
                        metrics::counter!(crate::metrics::CERT_RENEWALS, "outcome" => "failed")
                            .increment(1);
                        tracing::warn!(error = %e, "could not install the renewed certificate");
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                }
            }
            Err(e) => {
                metrics::counter!(crate::metrics::CERT_RENEWALS, "outcome" => "failed")
                    .increment(1);
                tracing::warn!(error = %e, "certificate renewal failed; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

async fn renew_once(
    tls: &NodeTls,
    cluster: &Cluster,
    sm: &StateMachine,
    signer: &Signer,
    names: &[String],
) -> anyhow::Result<Identity> {
    let current = tls.identity();
    let node = cluster.id;
    let (key_pem, csr_pem) = pki::new_key_and_csr()?;
    let cert_pem = if signer.holds_key() {
        signer
            .sign(&csr_pem, node, names)
            .map_err(|e| anyhow::anyhow!(e))?
    } else {
        let id = sm
            .ca_signer()?
            .ok_or_else(|| anyhow::anyhow!("no signer is recorded in the metadata"))?;
        let addr = cluster
            .members()
            .get(&id)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the signer (node {id}) is not a member"))?;
        let mut client = cluster.peers.client(&addr)?;
        let mut req = tonic::Request::new(pb::RenewRequest {
            csr_pem,
            names: names.to_vec(),
        });
        req.set_timeout(Duration::from_secs(10));
        client
            .renew(req)
            .await
            .map_err(|s| anyhow::anyhow!("the signer (node {id}) refused: {}", s.message()))?
            .into_inner()
            .cert_pem
    };
    Identity::from_pem(&current.ca_pem, &cert_pem, &key_pem)
}
