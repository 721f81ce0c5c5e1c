//! The supervisor restarts a session actor that dies mid-upload, and the new actor recovers the
//! session from the state machine.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::Actor;
use strata_cluster::records::ManifestEntry;
use strata_cluster::{ChunkId, Command, SessionId, TenantId};
use strata_node::actors::supervisor::{NodeSupervisor, call, session_actor};
use strata_node::actors::upload_session::SessionMsg;
use strata_node::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_session_actor_is_restarted_with_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let node = strata_node::server::open_single_node(config)
        .await
        .expect("single node");
    let (sup, _handle) = Actor::spawn(None, NodeSupervisor, node.actor_deps())
        .await
        .expect("supervisor");

    let parts: Vec<Vec<u8>> = vec![vec![1u8; 2048], vec![2u8; 1000]];
    let whole: Vec<u8> = parts.concat();
    let manifest: Vec<ManifestEntry> = parts
        .iter()
        .map(|p| ManifestEntry {
            id: ChunkId::of(p),
            len: p.len() as u32,
        })
        .collect();
    let session = SessionId::from_bytes([7; 16]);
    let tenant = TenantId(1);
    node.cluster
        .propose(Command::OpenSession {
            session,
            tenant,
            bucket: strata_cluster::BucketName::new("bucket").expect("bucket"),
            key: strata_cluster::ObjectKey::new("k").expect("key"),
            size: whole.len() as u64,
            manifest: Some(manifest),
            content_type: String::new(),
            now_ms: strata_node::clock::now_ms(),
        })
        .await
        .expect("open");

    let first = session_actor(&sup, session).await.expect("actor");
    let ack = call(&first, |reply| SessionMsg::Put {
        tenant,
        offset: 0,
        id: ChunkId::of(&parts[0]),
        data: Bytes::from(parts[0].clone()),
        permit: None,
        reply,
    })
    .await
    .expect("call")
    .expect("put");
    assert!(ack.written);

    first.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let a = session_actor(&sup, session).await.expect("actor");
        if a.get_id() != first.get_id() {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the session actor was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The new actor knows the first chunk is durable, takes the second, and completes.
    let again = call(&second, |reply| SessionMsg::Put {
        tenant,
        offset: 0,
        id: ChunkId::of(&parts[0]),
        data: Bytes::from(parts[0].clone()),
        permit: None,
        reply,
    })
    .await
    .expect("call")
    .expect("put");
    assert!(
        !again.written,
        "the restarted actor forgot the durable chunk"
    );
    call(&second, |reply| SessionMsg::Put {
        tenant,
        offset: 2048,
        id: ChunkId::of(&parts[1]),
        data: Bytes::from(parts[1].clone()),
        permit: None,
        reply,
    })
    .await
    .expect("call")
    .expect("put");
    let view = call(&second, |reply| SessionMsg::Complete {
        tenant,
        file_hash: *blake3::hash(&whole).as_bytes(),
        reply,
    })
    .await
    .expect("call")
    .expect("complete");
    assert_eq!(view.info.size, whole.len() as u64);
    sup.stop(None);
}
