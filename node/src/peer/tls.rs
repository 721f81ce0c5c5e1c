//! Certificates for the peer transport. The node that creates a cluster makes a cluster CA
//! (rcgen) and records it in the replicated metadata (`Command::SetClusterCa`); every member,
//! once it holds the metadata, signs its own node certificate with it and keeps the result in
//! `<data_dir>/tls/`. QUIC connections then use mutual TLS: both ends must present a certificate
//! signed by the cluster CA, so a process without one (or with one from another cluster) is
//! refused during the handshake.
//!
//! The CA key lives in the metadata on every member: anyone who can join (who has the cluster
//! secret) can get a certificate anyway, so the CA adds no weaker link than the secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strata_cluster::records::ClusterCa;

/// The name every node certificate carries and every client expects: what matters is the
/// signature by the cluster CA, not which member answers at an address.
pub const PEER_NAME: &str = "strata-peer";
/// ALPN of the peer protocol; bumped on incompatible changes.
pub const ALPN: &[u8] = b"strata-peer/1";

const CA_NAME: &str = "Strata cluster CA";

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// A new cluster CA (certificate and key, PEM).
pub fn new_ca() -> Result<ClusterCa, rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    Ok(ClusterCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A node certificate signed by `ca`: (certificate PEM, key PEM).
pub fn issue(ca: &ClusterCa, node: &str) -> Result<(String, String), rcgen::Error> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec![PEER_NAME.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A node's TLS identity: the cluster CA certificate, its own certificate and key.
#[derive(Clone)]
pub struct Identity {
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<Identity> {
        Ok(Identity {
            ca: CertificateDer::from_pem_slice(ca_pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("cluster CA certificate: {e}"))?,
            cert: CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("node certificate: {e}"))?,
            key: Arc::new(
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                    .map_err(|e| anyhow::anyhow!("node key: {e}"))?,
            ),
        })
    }

    /// Files under `<data_dir>/tls/`.
    pub fn paths(data_dir: &Path) -> [PathBuf; 3] {
        let d = data_dir.join("tls");
        [d.join("ca.crt"), d.join("node.crt"), d.join("node.key")]
    }

    /// Loads the identity saved in `data_dir`, if it was made by `ca_pem`.
    pub fn load(data_dir: &Path, ca_pem: &str) -> Option<Identity> {
        let [ca, cert, key] = Self::paths(data_dir);
        let saved_ca = std::fs::read_to_string(ca).ok()?;
        if saved_ca.trim() != ca_pem.trim() {
            return None;
        }
        let cert = std::fs::read_to_string(cert).ok()?;
        let key = std::fs::read_to_string(key).ok()?;
        Identity::from_pem(ca_pem, &cert, &key).ok()
    }

    /// Signs a node certificate with `ca` and saves it (the key with mode 0600). Blocking.
    /// Each file is written whole under a temporary name and renamed into place, the key last:
    /// whoever sees `node.key` finds all three complete.
    pub fn create(data_dir: &Path, ca: &ClusterCa, node: &str) -> anyhow::Result<Identity> {
        let (cert, key) = issue(ca, node)?;
        let [ca_path, cert_path, key_path] = Self::paths(data_dir);
        std::fs::create_dir_all(data_dir.join("tls"))?;
        write_atomically(&ca_path, ca.cert_pem.as_bytes(), 0o644)?;
        write_atomically(&cert_path, cert.as_bytes(), 0o644)?;
        write_atomically(&key_path, key.as_bytes(), 0o600)?;
        Identity::from_pem(&ca.cert_pem, &cert, &key)
    }

    fn roots(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(roots)
    }

    /// Server side: present our certificate, require one signed by the cluster CA.
    pub fn server_config(&self) -> anyhow::Result<quinn::ServerConfig> {
        let provider = provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport());
        Ok(config)
    }

    /// Client side: trust only the cluster CA, present our certificate.
    pub fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport());
        Ok(config)
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename, with `mode`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Flow-control windows sized for multi-MiB chunks on fast links. Keep-alives every 300 ms and
/// a 1.5 s idle timeout: a peer that died or stopped (SIGSTOP, a partition) is detected in
/// about a second, and requests to it fail instead of waiting on a dead connection.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t.max_concurrent_bidi_streams(256u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(std::time::Duration::from_millis(300)));
    t.max_idle_timeout(std::time::Duration::from_millis(1500).try_into().ok());
    Arc::new(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_chain_to_the_ca() {
        let ca = new_ca().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::create(dir.path(), &ca, "node-1").unwrap();
        assert!(Identity::load(dir.path(), &ca.cert_pem).is_some());
        let other = new_ca().unwrap();
        assert!(
            Identity::load(dir.path(), &other.cert_pem).is_none(),
            "an identity from another CA must not be reused"
        );
        id.server_config().unwrap();
        id.client_config().unwrap();
    }
}
