//! TLS for every connection a node makes or accepts: node identity (a certificate signed by
//! the cluster CA, see `pki`), the rustls configurations built from it for the gRPC port and
//! for QUIC, and the gRPC listener (`listener`). The identity is swapped in place when the
//! certificate is renewed: every new handshake uses the new certificate, connections already
//! open keep the one they started with.

pub mod listener;
pub mod pki;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use pki::{CertFacts, PEER_NAME};

/// Whether a node's certificates are revoked (it was removed from the cluster).
pub type Revoked = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// A certificate with its key and the CA that signed it, ready for rustls and tonic.
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    key_pem: String,
    pub ca: CertificateDer<'static>,
    pub facts: CertFacts,
    /// The chain sent in handshakes: this certificate, then the CA (so a joining node can
    /// pin the CA by its hash).
    certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("facts", &self.facts)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// ring's suites with AES-128-GCM first: as sound for this use as AES-256-GCM and cheaper per
/// byte (10 AES rounds instead of 14), which matters when one core both encrypts and hashes a
/// stream. Servers pick by their own order (`ignore_client_order`).
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    Arc::new(p)
}

impl Identity {
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<Identity> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("cluster CA certificate: {e}"))?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("node certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("node key: {e}"))?;
        let facts = CertFacts::of(&cert)?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| anyhow::anyhow!("node key: {e}"))?;
        let certified = CertifiedKey::new(vec![cert, ca.clone()], signing);
        certified
            .keys_match()
            .map_err(|e| anyhow::anyhow!("the node key does not match its certificate: {e}"))?;
        Ok(Identity {
            ca_pem: ca_pem.to_owned(),
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            ca,
            facts,
            certified: Arc::new(certified),
        })
    }

    /// The node this certificate was issued to.
    pub fn node(&self) -> Option<u64> {
        self.facts.node
    }

    /// Files under `<data_dir>/tls/`: CA certificate, node certificate, node key.
    pub fn paths(data_dir: &Path) -> [PathBuf; 3] {
        let d = data_dir.join("tls");
        [d.join("ca.crt"), d.join("node.crt"), d.join("node.key")]
    }

    /// The identity saved in `data_dir`, if there is one. Blocking.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Identity>> {
        let [ca, cert, key] = Self::paths(data_dir);
        if !key.exists() {
            return Ok(None);
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        Identity::from_pem(&read(&ca)?, &read(&cert)?, &read(&key)?).map(Some)
    }

    /// Saves the identity in `data_dir` (the key with mode 0600). Blocking. Each file is
    /// written whole under a temporary name and renamed into place, the key last.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let [ca, cert, key] = Self::paths(data_dir);
        std::fs::create_dir_all(data_dir.join("tls"))?;
        write_atomically(&ca, self.ca_pem.as_bytes(), 0o644)?;
        write_atomically(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_atomically(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok(())
    }

    /// For tonic clients: the certificate chain and key.
    pub fn tonic_identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(
            format!("{}{}", self.cert_pem, self.ca_pem),
            &self.key_pem,
        )
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename, with `mode`.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A node's TLS state: its current identity (replaced on renewal), the certificate clients of
/// the API see when one is configured (`tls.cert`), and the revocation check.
pub struct NodeTls {
    current: RwLock<Arc<Identity>>,
    client_api: Option<Arc<CertifiedKey>>,
    revoked: Revoked,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("identity", &self.identity())
            .finish()
    }
}

impl NodeTls {
    /// `client_api`: certificate chain and key (PEM) shown to API clients instead of the node
    /// certificate (`tls.cert`, `tls.key`).
    pub fn new(
        identity: Identity,
        client_api: Option<(String, String)>,
        revoked: Revoked,
    ) -> anyhow::Result<Arc<NodeTls>> {
        let client_api = match client_api {
            None => None,
            Some((chain, key)) => {
                let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("tls.cert: {e}"))?;
                if chain.is_empty() {
                    anyhow::bail!("tls.cert holds no certificate");
                }
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| anyhow::anyhow!("tls.key: {e}"))?;
                let signing = provider()
                    .key_provider
                    .load_private_key(key)
                    .map_err(|e| anyhow::anyhow!("tls.key: {e}"))?;
                let ck = CertifiedKey::new(chain, signing);
                ck.keys_match()
                    .map_err(|e| anyhow::anyhow!("tls.key does not match tls.cert: {e}"))?;
                Some(Arc::new(ck))
            }
        };
        Ok(Arc::new(NodeTls {
            current: RwLock::new(Arc::new(identity)),
            client_api,
            revoked,
        }))
    }

    pub fn identity(&self) -> Arc<Identity> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a renewed certificate in place (same CA, same node).
    pub fn replace(&self, next: Identity) -> anyhow::Result<()> {
        let now = self.identity();
        if next.ca != now.ca || next.node() != now.node() {
            anyhow::bail!("a renewed certificate must come from the same CA for the same node");
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    pub fn is_revoked(&self, node: u64) -> bool {
        (self.revoked)(node)
    }

    fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.identity().ca.clone())?;
        Ok(Arc::new(roots))
    }

    fn member_verifier(
        self: &Arc<Self>,
        mandatory: bool,
    ) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
        let builder =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider());
        let inner = if mandatory {
            builder.build()?
        } else {
            builder.allow_unauthenticated().build()?
        };
        Ok(Arc::new(MemberVerifier {
            inner,
            tls: self.clone(),
            mandatory,
        }))
    }

    /// The gRPC port: a client certificate is asked for but optional (API clients have none;
    /// the internal service requires one, see `listener::ConnInfo`). HTTP/2 only.
    pub fn grpc_server_config(self: &Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(self.member_verifier(false)?)
            .with_cert_resolver(Arc::new(ServerResolver(self.clone())));
        c.alpn_protocols = vec![b"h2".to_vec()];
        c.ignore_client_order = true;
        Ok(Arc::new(c))
    }

    /// QUIC server side: a member certificate is required.
    pub fn quic_server_config(
        self: &Arc<Self>,
        alpn: &[u8],
    ) -> anyhow::Result<rustls::ServerConfig> {
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(self.member_verifier(true)?)
            .with_cert_resolver(Arc::new(ServerResolver(self.clone())));
        c.alpn_protocols = vec![alpn.to_vec()];
        c.ignore_client_order = true;
        Ok(c)
    }

    /// QUIC client side: trust only the cluster CA, present the current node certificate.
    pub fn quic_client_config(
        self: &Arc<Self>,
        alpn: &[u8],
    ) -> anyhow::Result<rustls::ClientConfig> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_cert_resolver(Arc::new(ClientResolver(self.clone())));
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(c)
    }

    /// For a gRPC call to another member: trust only the cluster CA, verify the shared peer
    /// name, present the current node certificate.
    pub fn grpc_client_config(&self) -> tonic::transport::ClientTlsConfig {
        let id = self.identity();
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&id.ca_pem))
            .identity(id.tonic_identity())
            .domain_name(PEER_NAME)
    }
}

#[derive(Debug)]
struct ServerResolver(Arc<NodeTls>);

impl ResolvesServerCert for ServerResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.server_name() != Some(PEER_NAME)
            && let Some(api) = &self.0.client_api
        {
            return Some(api.clone());
        }
        Some(self.0.identity().certified.clone())
    }
}

#[derive(Debug)]
struct ClientResolver(Arc<NodeTls>);

impl ResolvesClientCert for ClientResolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.identity().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts a client certificate only if it chains to the cluster CA (webpki, including its
/// validity dates), names a node, and that node is not revoked.
#[derive(Debug)]
struct MemberVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    tls: Arc<NodeTls>,
    mandatory: bool,
}

impl ClientCertVerifier for MemberVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let facts = CertFacts::of(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        let Some(node) = facts.node else {
            return Err(rustls::Error::General(
                "the client certificate does not name a node".into(),
            ));
        };
        if self.tls.is_revoked(node) {
            return Err(rustls::Error::General(format!(
                "node {node} was removed from the cluster: its certificates are revoked"
            )));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
