//! Every bad input gets a precise gRPC code and a human message, and leaves no trace.

use strata_proto::v1 as pb;
use strata_tests::*;
use tonic::Code;

async fn chunk_count(node: &Node) -> u64 {
    node.status().await.chunk_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_chunk_hash_stores_nothing() {
    let node = Node::start();
    let mut s = node.storage().await;
    let bytes = data(100_000, 1);
    let up = create(&mut s, "bad", "hash", bytes.len() as u64, vec![])
        .await
        .expect("create");
    let wrong = *blake3::hash(b"something else").as_bytes();
    let err = put_raw(&mut s, &up.session_id, vec![(0, wrong, bytes.clone())])
        .await
        .expect_err("must fail");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hashes to"), "{}", err.message());
    assert_eq!(
        chunk_count(&node).await,
        0,
        "a chunk with a wrong hash was stored"
    );
    let progress = s
        .get_upload(pb::GetUploadRequest {
            session_id: up.session_id.clone(),
        })
        .await
        .expect("progress")
        .into_inner();
    assert_eq!(progress.bytes_present, 0);

    // A manifest names the chunk expected at each offset.
    let chunks = chunks_of(&bytes, 50_000);
    let up = create(
        &mut s,
        "bad",
        "manifest",
        bytes.len() as u64,
        manifest_of(&chunks),
    )
    .await
    .expect("create");
    let swapped = vec![(0, chunks[1].1, chunks[1].2.clone())];
    assert_eq!(
        put_raw(&mut s, &up.session_id, swapped)
            .await
            .expect_err("swapped")
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(chunk_count(&node).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_chunk_is_refused() {
    let node = Node::start_with(&[("STRATA_MAX_CHUNK_BYTES", "1048576")]);
    let mut s = node.storage().await;
    let bytes = data((1 << 20) + 1, 2);
    let up = create(&mut s, "bad", "big", bytes.len() as u64, vec![])
        .await
        .expect("create");
    let err = put_raw(
        &mut s,
        &up.session_id,
        vec![(0, *blake3::hash(&bytes).as_bytes(), bytes)],
    )
    .await
    .expect_err("oversize");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit"), "{}", err.message());
    assert_eq!(chunk_count(&node).await, 0);
    // The manifest is checked too.
    let m = vec![pb::ChunkRef {
        id: vec![0; 32].into(),
        len: (1 << 20) + 1,
    }];
    assert_eq!(
        code(create(&mut s, "bad", "big2", (1 << 20) + 1, m).await),
        Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_expired_sessions_are_not_found() {
    let node = Node::start_with(&[
        ("STRATA_SESSION_IDLE_TIMEOUT", "1s"),
        ("STRATA_JANITOR_INTERVAL", "200ms"),
        ("STRATA_GC_GRACE", "1s"),
    ]);
    let mut s = node.storage().await;
    let unknown = "00112233445566778899aabbccddeeff";
    assert_eq!(
        code(
            s.get_upload(pb::GetUploadRequest {
                session_id: unknown.into()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(code(complete(&mut s, unknown, b"").await), Code::NotFound);
    assert_eq!(
        code(
            s.abort_upload(pb::AbortUploadRequest {
                session_id: unknown.into()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        put_raw(
            &mut s,
            unknown,
            vec![(0, *blake3::hash(b"x").as_bytes(), b"x".to_vec())]
        )
        .await
        .expect_err("put")
        .code(),
        Code::NotFound
    );
    assert_eq!(
        code(
            s.get_upload(pb::GetUploadRequest {
                session_id: "not-hex".into()
            })
            .await
        ),
        Code::NotFound
    );

    // An idle session expires and its chunks are collected.
    let bytes = data(300_000, 3);
    let chunks = chunks_of(&bytes, 100_000);
    let up = create(&mut s, "exp", "k", bytes.len() as u64, manifest_of(&chunks))
        .await
        .expect("create");
    put_raw(&mut s, &up.session_id, chunks[..2].to_vec())
        .await
        .expect("put");
    assert_eq!(chunk_count(&node).await, 2);
    let id = up.session_id.clone();
    wait_until(15, "the idle session to expire", || {
        let mut s = s.clone();
        let id = id.clone();
        async move {
            s.get_upload(pb::GetUploadRequest { session_id: id })
                .await
                .is_err()
        }
    })
    .await;
    assert_eq!(
        code(
            s.get_upload(pb::GetUploadRequest {
                session_id: up.session_id.clone()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        put_raw(&mut s, &up.session_id, chunks[2..].to_vec())
            .await
            .expect_err("expired")
            .code(),
        Code::NotFound
    );
    wait_until(
        15,
        "the expired session's chunks to be collected",
        || async { chunk_count(&node).await == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_and_mismatched_uploads_create_no_version() {
    let node = Node::start();
    let mut s = node.storage().await;
    let bytes = data(300_000, 4);
    let chunks = chunks_of(&bytes, 100_000);
    let up = create(
        &mut s,
        "bad",
        "partial",
        bytes.len() as u64,
        manifest_of(&chunks),
    )
    .await
    .expect("create");
    put_raw(&mut s, &up.session_id, vec![chunks[0].clone()])
        .await
        .expect("put");
    let err = complete(&mut s, &up.session_id, &bytes)
        .await
        .expect_err("incomplete");
    assert_eq!(err.code(), Code::FailedPrecondition);
    for missing in &chunks[1..] {
        assert!(
            err.message().contains(&hex::encode(missing.1)),
            "missing chunk not named: {}",
            err.message()
        );
    }
    assert_eq!(code(stat(&mut s, "bad", "partial").await), Code::NotFound);

    put_raw(&mut s, &up.session_id, chunks[1..].to_vec())
        .await
        .expect("put rest");
    let err = complete(&mut s, &up.session_id, b"not the content")
        .await
        .expect_err("hash mismatch");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("BLAKE3"), "{}", err.message());
    assert_eq!(code(stat(&mut s, "bad", "partial").await), Code::NotFound);
    // The session stays usable: the right hash completes it.
    complete(&mut s, &up.session_id, &bytes)
        .await
        .expect("complete");
    assert!(get(&mut s, "bad", "partial", 0, 0, 0).await.expect("get") == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_buckets_are_invalid_arguments() {
    let node = Node::start();
    let mut s = node.storage().await;
    let long = "k".repeat(1025);
    for key in [
        "a/../b",
        "..",
        "a\0b",
        "a//b",
        "/a",
        "a/",
        "",
        long.as_str(),
    ] {
        let err = create(&mut s, "bucket", key, 0, vec![])
            .await
            .expect_err("bad key");
        assert_eq!(err.code(), Code::InvalidArgument, "key {key:?}");
        assert!(!err.message().is_empty());
        assert_eq!(
            code(stat(&mut s, "bucket", key).await),
            Code::InvalidArgument
        );
    }
    for bucket in ["A", "ab", "bad_bucket", "-x-"] {
        assert_eq!(
            code(create(&mut s, bucket, "k", 0, vec![]).await),
            Code::InvalidArgument,
            "bucket {bucket:?}"
        );
    }
    assert_eq!(
        node.status().await.open_sessions,
        0,
        "a refused CreateUpload left a session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_tenants_are_enforced() {
    let node = Node::start();
    let mut alice = node.storage().await;
    let bytes = data(5000, 5);
    put(
        &mut alice,
        node.root.path(),
        "shared-name",
        "secret",
        &bytes,
    )
    .await;

    let mut anon = strata_proto::v1::storage_client::StorageClient::new(
        strata_admin::client::connect(&node.endpoint)
            .await
            .expect("connect"),
    );
    let err = anon
        .stat(pb::StatRequest {
            bucket: "shared-name".into(),
            key: "secret".into(),
            version: 0,
        })
        .await
        .expect_err("anon");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut forged = node.storage_as("stk_0000").await;
    assert_eq!(
        code(stat(&mut forged, "shared-name", "secret").await),
        Code::Unauthenticated
    );

    let bob_token = node.new_tenant("bob").await;
    let mut bob = node.storage_as(&bob_token).await;
    assert_eq!(
        code(stat(&mut bob, "shared-name", "secret").await),
        Code::NotFound
    );
    assert!(
        get(&mut bob, "shared-name", "secret", 0, 0, 0)
            .await
            .is_err()
    );
    assert_eq!(
        code(
            bob.list_versions(pb::ListVersionsRequest {
                bucket: "shared-name".into(),
                key: "secret".into()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            bob.delete(pb::DeleteRequest {
                bucket: "shared-name".into(),
                key: "secret".into()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            bob.list(pb::ListRequest {
                bucket: "shared-name".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound,
        "bob sees alice's bucket"
    );
    // Bob cannot touch Alice's open session either.
    let up = create(&mut alice, "shared-name", "open", 10, vec![])
        .await
        .expect("create");
    assert_eq!(
        code(
            bob.get_upload(pb::GetUploadRequest {
                session_id: up.session_id.clone()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(complete(&mut bob, &up.session_id, b"").await),
        Code::NotFound
    );
    assert_eq!(
        put_raw(
            &mut bob,
            &up.session_id,
            vec![(
                0,
                *blake3::hash(b"0123456789").as_bytes(),
                b"0123456789".to_vec()
            )]
        )
        .await
        .expect_err("bob put")
        .code(),
        Code::NotFound
    );
    // Alice's object is untouched.
    assert!(
        get(&mut alice, "shared-name", "secret", 0, 0, 0)
            .await
            .expect("get")
            == bytes
    );

    // Admin and tenant tokens are not interchangeable.
    let mut as_admin = node.storage_as(&node.admin_token).await;
    assert_eq!(
        code(stat(&mut as_admin, "shared-name", "secret").await),
        Code::PermissionDenied
    );
    let mut admin_as_tenant = strata_admin::client::admin(
        strata_admin::client::connect(&node.endpoint)
            .await
            .expect("c"),
        &node.tenant_token,
    )
    .expect("admin");
    assert_eq!(
        code(admin_as_tenant.status(pb::StatusRequest {}).await),
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_past_the_end_are_out_of_range() {
    let node = Node::start();
    let mut s = node.storage().await;
    put(&mut s, node.root.path(), "bucket", "ten", b"0123456789").await;
    let get_req = |offset, length| pb::GetRequest {
        bucket: "bucket".into(),
        key: "ten".into(),
        version: 0,
        offset,
        length,
    };
    assert_eq!(code(s.get(get_req(11, 0)).await), Code::OutOfRange);
    assert_eq!(code(s.get(get_req(5, 6)).await), Code::OutOfRange);
    assert_eq!(code(s.get(get_req(0, u64::MAX)).await), Code::OutOfRange);
    assert_eq!(
        get(&mut s, "bucket", "ten", 0, 5, 5).await.expect("tail"),
        b"56789"
    );
    assert_eq!(
        code(
            s.stat(pb::StatRequest {
                bucket: "bucket".into(),
                key: "ten".into(),
                version: 42
            })
            .await
        ),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_sizes_and_offsets_are_refused() {
    let node = Node::start();
    let mut s = node.storage().await;
    assert_eq!(
        code(create(&mut s, "bucket", "huge", u64::MAX, vec![]).await),
        Code::InvalidArgument
    );
    let up = create(&mut s, "bucket", "ok", 1 << 40, vec![])
        .await
        .expect("create 1 TiB session");
    let d = b"abc".to_vec();
    let id = *blake3::hash(&d).as_bytes();
    for offset in [u64::MAX - 1, (1 << 40) - 2] {
        let err = put_raw(&mut s, &up.session_id, vec![(offset, id, d.clone())])
            .await
            .expect_err("past the end");
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "offset {offset}: {err:?}"
        );
    }
    assert_eq!(node.status().await.chunk_count, 0);
    // A manifest that does not add up to the size.
    let m = vec![pb::ChunkRef {
        id: id.to_vec().into(),
        len: 3,
    }];
    assert_eq!(
        code(create(&mut s, "bucket", "sum", 4, m).await),
        Code::InvalidArgument
    );
}

/// CreateUploadRequest with `key` (a string in the protocol) as raw bytes, to send a key that
/// is not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreateUpload {
    #[prost(string, tag = "1")]
    bucket: String,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(uint64, tag = "3")]
    size: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_decode_is_invalid_argument_and_stores_nothing() {
    let node = Node::start();
    let mut grpc = tonic::client::Grpc::new(node.channel().await);
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(RawCreateUpload {
        bucket: "photos".into(),
        key: vec![b'a', 0xff, 0xfe],
        size: 1,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", node.tenant_token)
            .parse()
            .expect("header"),
    );
    let r: Result<tonic::Response<pb::CreateUploadResponse>, tonic::Status> = grpc
        .unary(
            req,
            http::uri::PathAndQuery::from_static("/strata.v1.Storage/CreateUpload"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let err = r.expect_err("a key that is not UTF-8 must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("does not decode"), "{err:?}");
    assert!(err.message().contains("UTF-8"), "{err:?}");
    // Nothing was created: no bucket, no open upload.
    let status = node.status().await;
    assert_eq!(status.open_sessions, 0);
    let out = node.cli(&["bucket", "list"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("photos"));
}

/// Opens an upload session for `key` (1 byte, no manifest) as the given client.
async fn open_upload(
    s: &mut strata_admin::client::Storage,
    key: &str,
) -> Result<String, tonic::Status> {
    s.create_upload(pb::CreateUploadRequest {
        bucket: "sessions".into(),
        key: key.into(),
        size: 1,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().session_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_upload_sessions_per_tenant_are_bounded_exactly_under_concurrency() {
    // 2,000 sessions asked for by one tenant, 16 at a time, never completed: exactly the
    // default limit (1,000) open, the rest RESOURCE_EXHAUSTED naming it.
    let node = Node::start();
    let s = node.storage().await;
    let rss = || proc_status_kib(node.pid(), "VmRSS").expect("the node's VmRSS");
    let rss_before = rss();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (mut s, next) = (s.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0, 0);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 2_000 {
                    return (ok, refused);
                }
                match open_upload(&mut s, &format!("k{i}")).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                        assert!(e.message().contains("max_open_uploads"), "{e:?}");
                        refused += 1;
                    }
                }
            }
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.expect("task");
        ok += o;
        refused += r;
    }
    assert_eq!((ok, refused), (1_000, 1_000));
    assert_eq!(node.status().await.open_sessions, 1_000);
    // Open sessions live in the metadata, not in memory: 2,000 opens grow the node by far less
    // than the 64 MiB allowed here (each open session is a few hundred bytes of records).
    let grown_kib = rss().saturating_sub(rss_before);
    println!("node RSS grew {grown_kib} KiB for 2,000 session opens");
    assert!(
        grown_kib < 64 * 1024,
        "the node grew by {grown_kib} KiB for 2,000 session opens"
    );

    // At the limit: resuming an open session still works, a new one does not.
    let mut s = node.storage().await;
    let (mut resumable, mut tried) = (None, 0);
    while resumable.is_none() && tried < 2_000 {
        if let Ok(id) = open_upload(&mut s, &format!("k{tried}")).await {
            resumable = Some(id);
        }
        tried += 1;
    }
    let id = resumable.expect("an open session resumes at the limit");

    // Another tenant is unaffected.
    let other = node.new_tenant("other").await;
    let mut o = node.storage_as(&other).await;
    open_upload(&mut o, "mine")
        .await
        .expect("another tenant opens a session");

    // Aborting one makes room for exactly one more.
    s.abort_upload(pb::AbortUploadRequest { session_id: id })
        .await
        .expect("abort");
    open_upload(&mut s, "fresh-1").await.expect("room for one");
    let e = open_upload(&mut s, "fresh-2")
        .await
        .expect_err("full again");
    assert_eq!(e.code(), Code::ResourceExhausted);
}
