//! The QUIC peer transport against a real node: mutual TLS refuses peers without a cluster
//! certificate, and each request checks its input (BLAKE3 on PutChunk, ranges on GetChunk,
//! references on DropChunk).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_cluster::ChunkId;
use strata_node::peer::tls;
use strata_node::peer::{ErrorCode, PeerClient, PeerError};
use strata_node::tls::Identity;
use strata_tests::*;

fn quic_addr(node: &Node) -> SocketAddr {
    node.addr()
}

fn client(config: quinn::ClientConfig) -> PeerClient {
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(config);
    PeerClient::new(endpoint)
}

/// A client using the node's own certificate (what another member would present).
fn member_client(node: &Node) -> PeerClient {
    identities::quic(identities::of_node(&node.data_dir))
}

async fn wait_for_tls(node: &Node) {
    let key = Identity::paths(&node.data_dir)[2].clone();
    wait_until(30, "the node's certificate", || {
        let key = key.clone();
        async move { key.exists() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_without_a_cluster_certificate_are_refused() {
    let node = Node::start();
    wait_for_tls(&node).await;
    let addr = quic_addr(&node);
    let some_id = ChunkId::of(b"x");

    // A member's certificate works.
    let member = member_client(&node);
    let has = member
        .has_chunks(addr, vec![some_id])
        .await
        .expect("a member is served");
    assert_eq!(has, vec![false]);

    // A certificate signed by another CA.
    let c = identities::quic(identities::foreign(7));
    let r = c.has_chunks(addr, vec![some_id]).await;
    assert!(
        matches!(
            r,
            Err(PeerError::Unreachable { .. }) | Err(PeerError::Protocol { .. })
        ),
        "a certificate from another CA was accepted: {r:?}"
    );

    // No client certificate at all (but trusting the cluster CA, so only the client side
    // is missing).
    let ca_pem = std::fs::read_to_string(&Identity::paths(&node.data_dir)[0]).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls_config.alpn_protocols = vec![tls::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls_config).expect("quic");
    let anonymous = client(quinn::ClientConfig::new(Arc::new(quic)));
    let r = anonymous.has_chunks(addr, vec![some_id]).await;
    assert!(
        matches!(
            r,
            Err(PeerError::Unreachable { .. }) | Err(PeerError::Protocol { .. })
        ),
        "a peer without a certificate was served: {r:?}"
    );

    // The node counts a refusal in its accept task, which may run after the client has seen
    // the failure.
    let metrics_url = node.metrics.clone();
    wait_until(10, "both refusals to be counted", || {
        let url = metrics_url.clone();
        async move {
            let (_, text) = http_get(&url).await;
            metric(&text, "strata_quic_errors_total") >= 2.0
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_requests_check_their_input() {
    let node = Node::start();
    wait_for_tls(&node).await;
    let addr = quic_addr(&node);
    let peer = member_client(&node);

    // PutChunk: bytes that do not hash to the id are refused and not stored.
    let good = Bytes::from(data(300_000, 5));
    let id = ChunkId::of(&good);
    let wrong = peer
        .put_chunk(addr, id, Bytes::from(data(300_000, 6)))
        .await
        .expect_err("wrong bytes accepted");
    assert!(
        matches!(
            wrong,
            PeerError::Remote {
                code: ErrorCode::Corrupt,
                ..
            }
        ),
        "{wrong:?}"
    );
    assert_eq!(
        peer.has_chunks(addr, vec![id]).await.expect("has"),
        vec![false]
    );

    // The right bytes are stored (durably: the node's store has the file).
    assert!(peer.put_chunk(addr, id, good.clone()).await.expect("put"));
    assert!(
        !peer
            .put_chunk(addr, id, good.clone())
            .await
            .expect("put again")
    );
    assert!(chunk_ids(&node.data_dir).contains(&id.to_hex()));

    // GetChunk: whole (verified by the client), a range, a range past the end.
    assert_eq!(peer.get_chunk(addr, id).await.expect("get"), good);
    let part = peer.get_range(addr, id, 1000, 500).await.expect("range");
    assert_eq!(part, good.slice(1000..1500));
    let past = peer
        .get_range(addr, id, 299_900, 500)
        .await
        .expect_err("range past the end");
    assert!(
        matches!(
            past,
            PeerError::Remote {
                code: ErrorCode::InvalidArgument,
                ..
            }
        ),
        "{past:?}"
    );
    let missing = peer
        .get_chunk(addr, ChunkId::of(b"nothing"))
        .await
        .expect_err("missing chunk");
    assert!(
        matches!(
            missing,
            PeerError::Remote {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{missing:?}"
    );

    // DropChunk: a referenced chunk stays; an unreferenced one goes.
    let mut s = node.storage().await;
    let stored = data(100_000, 9);
    put(&mut s, node.root.path(), "peer-input", "kept", &stored).await;
    let kept = ChunkId::of(&stored);
    let refused = peer
        .drop_chunk(addr, kept)
        .await
        .expect_err("dropped a referenced chunk");
    assert!(
        matches!(
            refused,
            PeerError::Remote {
                code: ErrorCode::Refused,
                ..
            }
        ),
        "{refused:?}"
    );
    // An unreferenced chunk written less than gc_grace (default 10 minutes) ago may be a
    // replica whose reference is still on its way: kept. Once old enough, it goes.
    let young = peer
        .drop_chunk(addr, id)
        .await
        .expect_err("dropped a chunk younger than gc_grace");
    assert!(
        matches!(&young, PeerError::Remote { code: ErrorCode::Young, message, .. } if message.contains("gc_grace")),
        "{young:?}"
    );
    let file = node
        .data_dir
        .join("chunks")
        .join(&id.to_hex()[..2])
        .join(id.to_hex());
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)))
        .expect("age the chunk file");
    assert!(peer.drop_chunk(addr, id).await.expect("drop"));
    assert!(!chunk_ids(&node.data_dir).contains(&id.to_hex()));
    assert!(
        get(&mut s, "peer-input", "kept", 0, 0, 0)
            .await
            .expect("get")
            == stored
    );

    // A request that names more ids than allowed.
    let too_many = vec![id; strata_node::peer::MAX_HAS_CHUNKS + 1];
    let r = tokio::time::timeout(Duration::from_secs(10), peer.has_chunks(addr, too_many))
        .await
        .expect("answered");
    assert!(r.is_err());
}
