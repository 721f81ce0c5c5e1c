//! Raft-replicated metadata with real node processes on loopback: any node serves every call,
//! failover, quorum loss, catch-up by snapshot, membership errors.

use std::time::{Duration, Instant};

use strata_proto::v1 as pb;
use strata_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_every_call() {
    let cluster = TestCluster::start(3, &[]);
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let bytes = data(9 * 1024 * 1024 + 17, 1);
    // Upload through a follower: metadata writes reach the leader by forwarding.
    let mut sb = b.storage().await;
    put(&mut sb, b.root.path(), "shared", "dir/file", &bytes).await;
    // Read through the third node: metadata from its replica, chunks fetched from their holder.
    let mut sc = c.storage().await;
    assert!(
        get(&mut sc, "shared", "dir/file", 0, 0, 0)
            .await
            .expect("get on node 3")
            == bytes
    );
    let listed = sc
        .list(pb::ListRequest {
            bucket: "shared".into(),
            prefix: "dir/".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.objects.len(), 1);
    let stale = sc
        .list(pb::ListRequest {
            bucket: "shared".into(),
            delimiter: "/".into(),
            stale: true,
            ..Default::default()
        })
        .await
        .expect("stale list")
        .into_inner();
    assert_eq!(stale.folders, vec!["dir/"]);
    // Writes through any node, read back through another at once (linearizable reads).
    let mut sa = a.storage().await;
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut s = node.storage().await;
        put(
            &mut s,
            node.root.path(),
            "shared",
            &format!("from-{i}"),
            format!("node {i}").as_bytes(),
        )
        .await;
        let next = &cluster.nodes[(i + 1) % 3];
        let mut s2 = next.storage().await;
        let info = stat(&mut s2, "shared", &format!("from-{i}"))
            .await
            .expect("read your write elsewhere");
        assert_eq!(info.size, format!("node {i}").len() as u64);
    }
    // Status everywhere names the same three members and one leader.
    let status = b.status().await;
    assert_eq!(status.nodes.len(), 3, "{status:?}");
    assert_eq!(
        status.nodes.iter().filter(|n| n.role == "leader").count(),
        1
    );
    assert!(status.nodes.iter().all(|n| n.voter));
    drop(
        sa.delete(pb::DeleteRequest {
            bucket: "shared".into(),
            key: "from-0".into(),
        })
        .await
        .expect("delete via node 1"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_committed_writes() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.leader().await;
    let other = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    let bytes = data(5 * 1024 * 1024, 2);
    {
        let node = &cluster.nodes[other];
        let mut s = node.storage().await;
        put(&mut s, node.root.path(), "failover", "before", &bytes).await;
    }
    cluster.nodes[leader].kill();
    let killed_at = Instant::now();
    // The first write that succeeds after the kill marks the failover.
    let node = &cluster.nodes[other];
    let mut s = node.storage().await;
    let mut done = false;
    for _ in 0..200 {
        let r = create(&mut s, "failover", "after", 0, vec![]).await;
        if let Ok(up) = r {
            complete(&mut s, &up.session_id, b"")
                .await
                .expect("complete after failover");
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "no write succeeded after the leader was killed");
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let mut s3 = cluster.nodes[third].storage().await;
    assert!(
        get(&mut s3, "failover", "before", 0, 0, 0)
            .await
            .expect("committed before")
            == bytes
    );
    // The old leader comes back as a follower and sees the new write.
    cluster.nodes[leader].restart();
    let back = &cluster.nodes[leader];
    let mut sb = back.storage().await;
    wait_until(20, "the old leader to catch up", || {
        let mut sb = sb.clone();
        async move { stat(&mut sb, "failover", "after").await.is_ok() }
    })
    .await;
    assert!(
        get(&mut sb, "failover", "before", 0, 0, 0)
            .await
            .expect("read on old leader")
            == bytes
    );
}

/// A write and a consistent read sent through followers just as the leader freezes (SIGSTOP:
/// its connections stay open, nothing answers) are forwarded to it. They move to the new
/// leader once the followers elect one, instead of waiting on the frozen one until the 5 s
/// quorum timeout and failing. (The write is a CompleteUpload, which is safe to send again:
/// the frozen leader may hold the first copy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_forwarded_to_a_frozen_leader_move_to_the_new_one() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.leader().await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut sa = cluster.nodes[a].storage().await;
    let mut sb = cluster.nodes[b].storage().await;
    put(
        &mut sa,
        cluster.nodes[a].root.path(),
        "frozen",
        "before",
        b"before",
    )
    .await;
    let up = create(&mut sa, "frozen", "after", 0, vec![])
        .await
        .expect("create");
    // Both followers have just heard from the leader: they forward to it.
    stat(&mut sb, "frozen", "before")
        .await
        .expect("stat before");
    let frozen = cluster.nodes[leader].pause();
    let t = Instant::now();
    let (write, read) = tokio::join!(
        complete(&mut sa, &up.session_id, b""),
        stat(&mut sb, "frozen", "before"),
    );
    let took = t.elapsed();
    let done = write.unwrap_or_else(|e| panic!("write through a follower after {took:?}: {e:?}"));
    let info = read.unwrap_or_else(|e| panic!("read through a follower after {took:?}: {e:?}"));
    assert_eq!(info.size, 6);
    assert_eq!(done.version_count, 1);
    // Each follower left its forwarded call when it saw the new leader (not when the
    // connection's keepalive gave up on the frozen one, seconds later).
    let left = |text: &str, kind: &str| {
        series(
            text,
            &format!("strata_raft_forwards_left_total{{kind=\"{kind}\"}}"),
        )
    };
    let (ta, tb) = (
        metrics_of(&cluster.nodes[a]).await,
        metrics_of(&cluster.nodes[b]).await,
    );
    let moved = |text: &str| left(text, "write") + left(text, "read");
    assert!(
        moved(&ta) + moved(&tb) >= 1.0,
        "no forwarded call was left for the new leader (took {took:?})"
    );
    frozen.resume();
    // The old leader comes back as a follower and serves the new version, once.
    let mut sl = cluster.nodes[leader].storage().await;
    wait_until(20, "the old leader to see the new write", || {
        let mut sl = sl.clone();
        async move { stat(&mut sl, "frozen", "after").await.is_ok() }
    })
    .await;
    let after = stat(&mut sl, "frozen", "after").await.expect("stat after");
    assert_eq!((after.version, after.version_count), (done.version, 1));
    assert_eq!(
        get(&mut sl, "frozen", "before", 0, 0, 0)
            .await
            .expect("get"),
        b"before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_quorum_fails_fast_and_recovers() {
    let mut cluster = TestCluster::start(3, &[]);
    {
        let n = &cluster.nodes[0];
        let mut s = n.storage().await;
        put(&mut s, n.root.path(), "quorum", "kept", b"kept bytes").await;
    }
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let mut s = cluster.nodes[0].storage().await;
    let t = Instant::now();
    let err = create(&mut s, "quorum", "new", 0, vec![])
        .await
        .expect_err("no quorum");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("quorum"), "{}", err.message());
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "write took {:?} to fail",
        t.elapsed()
    );
    let err = stat(&mut s, "quorum", "kept")
        .await
        .expect_err("no linearizable read");
    assert_eq!(err.code(), Code::Unavailable);
    // An explicit stale read still works.
    let stale = s
        .list(pb::ListRequest {
            bucket: "quorum".into(),
            stale: true,
            ..Default::default()
        })
        .await
        .expect("stale list")
        .into_inner();
    assert_eq!(stale.objects.len(), 1);

    cluster.nodes[1].restart();
    wait_until(30, "writes to resume with two of three nodes", || {
        let mut s = s.clone();
        async move { create(&mut s, "quorum", "new", 0, vec![]).await.is_ok() }
    })
    .await;
    assert_eq!(
        get(&mut s, "quorum", "kept", 0, 0, 0)
            .await
            .expect("nothing lost"),
        b"kept bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_after_missing_10000_commits() {
    let mut cluster = TestCluster::start(3, &[("STRATA_RAFT_SNAPSHOT_LOGS", "1000")]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    {
        let n = &cluster.nodes[leader];
        let mut s = n.storage().await;
        put(&mut s, n.root.path(), "catchup", "toggled", b"x").await;
    }
    cluster.nodes[follower].kill();
    // 10,016 commits: trash/untrash toggles from 16 concurrent clients.
    let n = &cluster.nodes[leader];
    let s = n.storage().await;
    let mut tasks = Vec::new();
    for w in 0..16u32 {
        let mut s = s.clone();
        let dir = n.root.path().to_owned();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{w}");
            put(&mut s, &dir, "catchup", &key, key.as_bytes()).await;
            for _ in 0..313 {
                s.delete(pb::DeleteRequest {
                    bucket: "catchup".into(),
                    key: key.clone(),
                })
                .await
                .expect("delete");
                s.undelete(pb::UndeleteRequest {
                    bucket: "catchup".into(),
                    key: key.clone(),
                })
                .await
                .expect("undelete");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    // 16 x 313 x 2 = 10,016 committed commands (batched into fewer log entries); with a snapshot
    // every 1,000 entries the leader's log was compacted well past the follower's position.
    let leader_status = cluster.nodes[leader].status().await;
    assert!(
        leader_status.last_log_index > 3_000,
        "{}",
        leader_status.last_log_index
    );

    cluster.nodes[follower].restart();
    let target = leader_status.applied_index;
    let f = &cluster.nodes[follower];
    wait_until(60, "the follower to catch up", || async {
        f.status().await.applied_index >= target
    })
    .await;
    let list = |node: &Node| {
        let endpoint = node.endpoint.clone();
        let token = node.tenant_token.clone();
        async move {
            let mut s = strata_admin::client::storage(
                strata_admin::client::connect(&endpoint).await.expect("c"),
                &token,
            )
            .expect("s");
            s.list(pb::ListRequest {
                bucket: "catchup".into(),
                stale: true,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
        }
    };
    let (l, r) = (list(&cluster.nodes[leader]).await, list(f).await);
    assert_eq!(l.objects.len(), 17);
    assert_eq!(l, r, "the follower lists differently from the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_errors_are_clear() {
    let node = Node::start();
    // Removing the only voter is refused.
    let status = node.status().await;
    let err = node
        .admin()
        .await
        .remove_node(pb::RemoveNodeRequest {
            raft_id: status.raft_id,
        })
        .await
        .expect_err("last voter");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("last voter"), "{}", err.message());
    assert_eq!(
        code(
            node.admin()
                .await
                .remove_node(pb::RemoveNodeRequest { raft_id: 42 })
                .await
        ),
        Code::NotFound
    );

    // A node with an unknown join token cannot join: it exits with a clear error.
    let err = join_fails(&node, "sjt_wrong", &node.join_token().ca_hash);
    assert!(
        err.contains("refused") && err.contains("join token not recognised"),
        "{err}"
    );
    // A bare gRPC call to the internal service without a member certificate is refused.
    let channel = strata_admin::client::connect(&node.endpoint)
        .await
        .expect("connect");
    let mut raw = pb::cluster_client::ClusterClient::new(channel);
    assert_eq!(
        code(raw.identify(pb::IdentifyRequest {}).await),
        Code::Unauthenticated
    );
}

/// Keys whose upload committed, with their bytes.
type Committed = Vec<(String, Vec<u8>)>;

/// Uploads small files in a loop through the given endpoints until told to stop; returns the
/// keys whose CompleteUpload returned OK, with their bytes, and the number of failed attempts.
fn writer(
    endpoints: Vec<String>,
    token: String,
    tag: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Committed, usize)> {
    tokio::spawn(async move {
        let dir = tempfile::tempdir().expect("tmp");
        let mut ok = Vec::new();
        let mut failed = 0;
        let mut i = 0usize;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 10_000 {
            let endpoint = &endpoints[i % endpoints.len()];
            let key = format!("w{tag}/f{i}");
            let bytes = data(1000 + (i * 37) % 50_000, (tag * 100_000 + i) as u64);
            let path = write_file(dir.path(), "f", &bytes);
            let result = async {
                let mut s = strata_admin::client::storage(
                    strata_admin::client::connect(endpoint).await?,
                    &token,
                )?;
                strata_admin::transfer::upload(
                    &mut s,
                    &path,
                    "load",
                    &key,
                    "",
                    1 << 20,
                    std::sync::Arc::new(strata_admin::transfer::NoProgress),
                )
                .await
            }
            .await;
            match result {
                Ok(_) => ok.push((key, bytes)),
                Err(_) => failed += 1,
            }
            i += 1;
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_to_five_and_shrinks_back_under_load() {
    let cluster = TestCluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint.clone()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            writer(
                endpoints.clone(),
                cluster.nodes[0].tenant_token.clone(),
                t,
                stop.clone(),
            )
        })
        .collect();

    // Each joins through a different member: its enrollment and join reach the signer and
    // the leader by forwarding.
    let extra: Vec<Node> = (0..2)
        .map(|i| TestCluster::joiner(&cluster.nodes[i + 1], &[]))
        .collect();
    let admin = |n: &Node| {
        let (e, t) = (n.endpoint.clone(), n.admin_token.clone());
        async move {
            strata_admin::client::admin(strata_admin::client::connect(&e).await.expect("c"), &t)
                .expect("a")
        }
    };
    let mut ids = Vec::new();
    for node in &extra {
        let status = cluster.nodes[0].status().await;
        let port = node.endpoint.rsplit(':').next().expect("port").to_owned();
        let id = status
            .nodes
            .iter()
            .find(|n| n.address.ends_with(&format!(":{port}")))
            .unwrap_or_else(|| panic!("{} is not a member: {:?}", node.endpoint, status.nodes))
            .raft_id;
        ids.push(id);
    }
    let status = cluster.nodes[0].status().await;
    assert_eq!(
        status.nodes.iter().filter(|n| n.voter).count(),
        5,
        "{:?}",
        status.nodes
    );
    // The new members serve reads of data written before they joined.
    let s5 = extra[1].storage().await;
    wait_until(20, "a new member to serve linearizable reads", || {
        let mut s5 = s5.clone();
        async move {
            s5.list(pb::ListRequest {
                bucket: "load".into(),
                ..Default::default()
            })
            .await
            .is_ok()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        admin(&cluster.nodes[2])
            .await
            .remove_node(pb::RemoveNodeRequest { raft_id: *id })
            .await
            .expect("remove node");
    }
    let status = cluster.nodes[1].status().await;
    assert_eq!(status.nodes.len(), 3, "{:?}", status.nodes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut committed = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (ok, f) = w.await.expect("writer");
        committed.extend(ok);
        failed += f;
    }
    assert!(
        committed.len() > 20,
        "too little load: {} writes",
        committed.len()
    );
    assert_eq!(
        failed, 0,
        "{failed} writes failed during the membership changes"
    );
    for node in &cluster.nodes {
        let mut s = node.storage().await;
        for (key, bytes) in committed.iter().step_by(7) {
            assert!(
                get(&mut s, "load", key, 0, 0, 0)
                    .await
                    .expect("committed write readable")
                    == *bytes,
                "{key} differs"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_50_uploaders_loses_no_committed_upload() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.leader().await;
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint.clone()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let token = cluster.nodes[0].tenant_token.clone();
    let writers: Vec<_> = (0..50)
        .map(|t| writer(endpoints.clone(), token.clone(), t, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[leader].kill();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut committed = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (ok, f) = w.await.expect("writer");
        committed.extend(ok);
        failed += f;
    }
    assert!(
        committed.len() >= 50,
        "too little load: {}",
        committed.len()
    );
    eprintln!(
        "{} uploads committed, {failed} attempts failed (node down or no quorum during the election)",
        committed.len()
    );
    // Afterwards (the old leader back), every committed upload reads back from every node.
    cluster.nodes[leader].restart();
    for node in &cluster.nodes {
        let mut s = node.storage().await;
        wait_until(20, "the node to serve reads", || {
            let mut s = s.clone();
            async move {
                s.list(pb::ListRequest {
                    bucket: "load".into(),
                    page_size: 1,
                    ..Default::default()
                })
                .await
                .is_ok()
            }
        })
        .await;
        for (key, bytes) in &committed {
            let got = get(&mut s, "load", key, 0, 0, 0)
                .await
                .unwrap_or_else(|e| panic!("{key} on {}: {e:#}", node.endpoint));
            assert!(got == *bytes, "{key} differs on {}", node.endpoint);
        }
    }
}
