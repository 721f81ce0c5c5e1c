//! QUIC configuration of the peer transport: mutual TLS with node certificates signed by the
//! cluster CA (`crate::tls`), so a process without one, with one from another cluster, an
//! expired one, or one of a removed node is refused during the handshake. The certificate is
//! looked up at each handshake, so a renewed one is used without restarting the endpoint.

use std::sync::Arc;

use crate::tls::NodeTls;
pub use crate::tls::pki::PEER_NAME;

/// ALPN of the peer protocol; bumped on incompatible changes.
pub const ALPN: &[u8] = b"strata-peer/2";

/// Server side: present the node certificate, require a member's.
pub fn server_config(tls: &Arc<NodeTls>) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.quic_server_config(ALPN)?)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// Client side: trust only the cluster CA, present the node certificate.
pub fn client_config(tls: &Arc<NodeTls>) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.quic_client_config(ALPN)?)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
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
