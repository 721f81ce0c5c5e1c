//! Uploads resume after the client goes away and after the node is SIGKILLed.

use strata_proto::v1 as pb;
use strata_tests::*;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_client_disconnect() {
    let node = Node::start();
    let mut s = node.storage().await;
    let bytes = data(30 * MIB + 3, 11);
    let path = write_file(node.root.path(), "file", &bytes);
    let plan = strata_admin::transfer::plan(
        &path,
        strata_admin::transfer::DEFAULT_CHUNK,
        &strata_admin::transfer::NoProgress,
    )
    .expect("plan");

    // A client sends 3 of 8 chunks and disconnects.
    let chunks = chunks_of(&bytes, 4 * MIB);
    let up = create(
        &mut s,
        "resume",
        "file",
        bytes.len() as u64,
        manifest_of(&chunks),
    )
    .await
    .expect("create");
    put_raw(&mut s, &up.session_id, chunks[..3].to_vec())
        .await
        .expect("partial put");
    drop(s);

    // Running the same upload again resumes the session and sends only the rest.
    let mut s = node.storage().await;
    let progress = s
        .get_upload(pb::GetUploadRequest {
            session_id: up.session_id.clone(),
        })
        .await
        .expect("progress")
        .into_inner();
    assert_eq!(progress.bytes_present, 3 * 4 * MIB as u64);
    assert_eq!(progress.missing.len(), 1);
    let r = strata_admin::transfer::upload_planned(
        &mut s,
        &path,
        "resume",
        "file",
        "application/octet-stream",
        &plan,
        std::sync::Arc::new(strata_admin::transfer::NoProgress),
    )
    .await
    .expect("resumed upload");
    assert!(r.resumed, "the open session was not resumed");
    assert_eq!(r.session_id, up.session_id);
    assert_eq!(r.sent_bytes, (bytes.len() - 3 * 4 * MIB) as u64);
    assert!(get(&mut s, "resume", "file", 0, 0, 0).await.expect("get") == bytes);
    assert_eq!(node.status().await.open_sessions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_node_sigkill_mid_upload() {
    let mut node = Node::start();
    let bytes = data(40 * MIB + 1, 12);
    let path = write_file(node.root.path(), "file", &bytes);
    let chunks = chunks_of(&bytes, 4 * MIB);
    let session = {
        let mut s = node.storage().await;
        let up = create(
            &mut s,
            "crash",
            "file",
            bytes.len() as u64,
            manifest_of(&chunks),
        )
        .await
        .expect("create");
        let acks = put_raw(&mut s, &up.session_id, chunks[..4].to_vec())
            .await
            .expect("first chunks");
        assert_eq!(acks.len(), 4);
        // More chunks are in flight when the node dies.
        let mut s2 = s.clone();
        let id = up.session_id.clone();
        let rest = chunks[4..].to_vec();
        let inflight = tokio::spawn(async move { put_raw(&mut s2, &id, rest).await });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        node.kill();
        let _ = inflight.await;
        up.session_id
    };

    node.restart();
    let mut s = node.storage().await;
    let progress = s
        .get_upload(pb::GetUploadRequest {
            session_id: session.clone(),
        })
        .await
        .expect("session survives")
        .into_inner();
    assert!(
        progress.bytes_present >= 4 * 4 * MIB as u64,
        "acknowledged chunks were lost: {}",
        progress.bytes_present
    );

    // The CLI, run again with the same file, resumes the session.
    let out = node.cli(&["--json", "put", path.to_str().expect("path"), "crash/file"]);
    assert!(
        out.status.success(),
        "strata put failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["resumed"], true, "{report}");
    assert_eq!(report["session_id"], session.as_str());
    assert!(
        report["skipped_bytes"].as_u64().expect("skipped") >= 16 * MIB as u64,
        "{report}"
    );
    assert!(get(&mut s, "crash", "file", 0, 0, 0).await.expect("get") == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_versions_survive_sigkill() {
    let mut node = Node::start();
    let mut s = node.storage().await;
    let mut files = Vec::new();
    for i in 0..5 {
        let bytes = data(1 + i * 777_777, 100 + i as u64);
        put(
            &mut s,
            node.root.path(),
            "durable",
            &format!("f{i}"),
            &bytes,
        )
        .await;
        files.push(bytes);
    }
    s.delete(pb::DeleteRequest {
        bucket: "durable".into(),
        key: "f0".into(),
    })
    .await
    .expect("delete");
    node.kill();
    node.restart();
    let mut s = node.storage().await;
    for (i, bytes) in files.iter().enumerate().skip(1) {
        assert!(
            get(&mut s, "durable", &format!("f{i}"), 0, 0, 0)
                .await
                .expect("get")
                == *bytes,
            "f{i} lost"
        );
    }
    assert_eq!(
        code(stat(&mut s, "durable", "f0").await),
        tonic::Code::NotFound
    );
}

/// A client whose CompleteUpload answer was lost (timeout, connection reset) sends it again:
/// the repeat answers with the version the first one committed, and creates nothing. A repeat
/// with another file hash is still refused as an unknown session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_complete_upload_answers_with_the_committed_version() {
    let node = Node::start();
    let mut s = node.storage().await;
    let bytes = data(5 * MIB + 7, 21);
    let chunks = chunks_of(&bytes, MIB);
    let up = create(
        &mut s,
        "again",
        "file",
        bytes.len() as u64,
        manifest_of(&chunks),
    )
    .await
    .expect("create");
    put_raw(&mut s, &up.session_id, chunks).await.expect("put");
    let first = complete(&mut s, &up.session_id, &bytes)
        .await
        .expect("complete");
    let again = complete(&mut s, &up.session_id, &bytes)
        .await
        .expect("the repeated complete");
    assert_eq!(again.version, first.version);
    assert_eq!(again.version_count, 1, "the repeat created a version");
    assert_eq!(again.size, bytes.len() as u64);
    let wrong = complete(&mut s, &up.session_id, b"other bytes")
        .await
        .expect_err("a repeat with another hash");
    assert_eq!(wrong.code(), tonic::Code::NotFound, "{wrong:?}");
    assert!(get(&mut s, "again", "file", 0, 0, 0).await.expect("get") == bytes);
    assert_eq!(node.status().await.open_sessions, 0);
}
