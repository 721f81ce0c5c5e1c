//! The cluster's certificate authority and the certificates it signs (rcgen, x509-parser).
//!
//! Every node certificate names its node (`CN=strata-node-<raft id>`), carries the shared
//! name `strata-peer` (what members verify each other against) plus the node's own host
//! names, and lives `tls.cert_lifetime` (7 days by default). The CA signs a certificate from a
//! certificate signing request: the node's private key never leaves the node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Digest;

/// The name every node certificate carries and every member expects when it calls another:
/// what matters is the signature by the cluster CA and the node id in the subject.
pub const PEER_NAME: &str = "strata-peer";
/// Subject common name of a node certificate: this prefix and the node's Raft id.
const NODE_CN_PREFIX: &str = "strata-node-";
/// A certificate is valid from a little before it was signed (clocks differ between nodes).
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// The CA lives ten years; node certificates are short-lived and renewed.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(what: impl Into<String>) -> PkiError {
    PkiError::Invalid(what.into())
}

fn offset(t: SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| invalid("clock before 1970"))?
        .as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| invalid(e.to_string()))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The cluster CA: its certificate, and its key (held by the signer only).
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
}

impl Ca {
    /// A new CA (ECDSA P-256), valid ten years.
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        let tag: [u8; 4] = rand::random();
        dn.push(
            DnType::CommonName,
            format!("Strata cluster CA {}", hex::encode(tag)),
        );
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        p.not_before = offset(now - CLOCK_SKEW)?;
        p.not_after = offset(now + CA_LIFETIME)?;
        p.serial_number = Some(random_serial());
        let cert = p.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA from its certificate and key (PEM); refuses a key that does not match.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(format!("CA certificate: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| invalid(format!("CA certificate: {e}")))?;
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                "the CA key does not belong to this cluster's CA certificate",
            ));
        }
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs the request `csr_pem` as the certificate of node `node`, valid for `lifetime`,
    /// for `PEER_NAME` and `names`. Only the request's public key is used (its signature is
    /// checked): the subject, names and lifetime are the CA's decision.
    pub fn sign(
        &self,
        csr_pem: &str,
        node: u64,
        names: &[String],
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| invalid(format!("bad certificate signing request: {e}")))?;
        let mut sans = vec![PEER_NAME.to_owned()];
        for n in names {
            if !n.is_empty() && !sans.contains(n) {
                sans.push(n.clone());
            }
        }
        let mut p = CertificateParams::new(sans)
            .map_err(|e| invalid(format!("bad name for a certificate: {e}")))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{NODE_CN_PREFIX}{node}"));
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        p.not_before = offset(now - CLOCK_SKEW)?;
        p.not_after = offset(now + lifetime)?;
        p.serial_number = Some(random_serial());
        csr.params = p;
        let key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &key)?;
        Ok(csr.signed_by(&issuer)?.pem())
    }
}

/// Checks that `csr_pem` is a well-formed request whose signature matches its key.
pub fn check_csr(csr_pem: &str) -> Result<(), PkiError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(|e| invalid(format!("bad certificate signing request: {e}")))
}

/// A new node key and a signing request for it: (key PEM, request PEM).
pub fn new_key_and_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// `sha256:<hex>` of a certificate's DER bytes (how a joining node pins the cluster CA).
pub fn ca_hash(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// The CA hash of a PEM certificate.
pub fn ca_hash_pem(pem: &str) -> Result<String, PkiError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| invalid(format!("CA certificate: {e}")))?;
    Ok(ca_hash(&der))
}

/// What a node certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The node it was issued to (None: not a node certificate).
    pub node: Option<u64>,
    /// Serial number, hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertFacts {
    pub fn of(der: &[u8]) -> Result<CertFacts, PkiError> {
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| invalid(format!("certificate: {e}")))?;
        let node = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .and_then(|cn| cn.strip_prefix(NODE_CN_PREFIX))
            .and_then(|id| id.parse().ok());
        let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        Ok(CertFacts {
            node,
            serial: hex::encode(x509.raw_serial()),
            not_before: at(x509.validity().not_before.timestamp()),
            not_after: at(x509.validity().not_after.timestamp()),
        })
    }

    /// When a certificate should be renewed: after two thirds of its life (counted from
    /// when it was signed, not from `not_before`, which is back-dated by the clock skew).
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before + CLOCK_SKEW)
            .unwrap_or_default();
        self.not_after - life / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_names_its_node_and_the_ca_pins_by_hash() {
        let ca = Ca::generate().unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let cert = ca
            .sign(
                &csr,
                42,
                &["127.0.0.1".into(), "node-a.example".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let facts = CertFacts::of(&der).unwrap();
        assert_eq!(facts.node, Some(42));
        let life = facts.not_after.duration_since(facts.not_before).unwrap();
        assert_eq!(life, Duration::from_secs(3600) + CLOCK_SKEW);
        assert!(facts.renew_at() > SystemTime::now());
        assert!(ca_hash_pem(&ca.cert_pem).unwrap().starts_with("sha256:"));
        assert_eq!(ca_hash_pem(&ca.cert_pem).unwrap().len(), 7 + 64);
        // The key must match the certificate.
        let other = Ca::generate().unwrap();
        assert!(Ca::load(&ca.cert_pem, other.key_pem()).is_err());
        assert!(Ca::load(&ca.cert_pem, ca.key_pem()).is_ok());
        assert!(
            ca.sign("not a csr", 1, &[], Duration::from_secs(60))
                .is_err()
        );
    }
}
