//! Chunk placement and the QUIC peer transport, with real nodes on loopback: replicas reach
//! their homes (also a home that was down), adding a node moves chunks without any chunk
//! dropping below R copies, draining empties a node, a corrupt copy on a peer is skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use strata_tests::*;

/// Raft id of each node (by index), from the status table.
async fn raft_ids(c: &TestCluster) -> Vec<u64> {
    let s = c.nodes[0].status().await;
    c.nodes
        .iter()
        .map(|n| {
            s.nodes
                .iter()
                .find(|m| tls_url(&m.address) == tls_url(&n.endpoint))
                .unwrap_or_else(|| panic!("{} not in the status table", n.endpoint))
                .raft_id
        })
        .collect()
}

/// How many nodes hold each chunk id (over the given data directories).
fn copies(dirs: &[std::path::PathBuf]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in dirs {
        for id in chunk_ids(d) {
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

/// Every node of the cluster reports its rebalance for the current layout finished.
async fn rebalanced(node: &Node) -> bool {
    let s = node.status().await;
    s.nodes.iter().all(|n| {
        n.reachable
            && n.replication_queue == 0
            && n.rebalance.as_ref().is_some_and(|r| {
                r.finished_version >= s.layout_version && !r.running && r.pending_chunks == 0
            })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_reach_every_home_also_one_that_was_down() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.leader().await;
    let down = (leader + 1) % 3;
    let via = (leader + 2) % 3;
    c.nodes[down].kill();

    // R=3, W=2 with one home down: the upload succeeds on two copies.
    let bytes = data(6 * 1024 * 1024 + 77, 41);
    let mut s = c.nodes[via].storage().await;
    let dir = c.nodes[via].root.path().to_path_buf();
    put_chunked(&mut s, &dir, "placed", "down", &bytes, 1 << 20).await;
    let ids = chunk_ids(&c.nodes[via].data_dir);
    assert_eq!(ids.len(), 7, "chunks on the writing node");
    assert_eq!(chunk_ids(&c.nodes[leader].data_dir), ids, "second copy");
    let queued = c.nodes[via].status().await;
    assert!(
        queued.nodes.iter().any(|n| n.replication_queue > 0),
        "the missing copies wait in a replication queue"
    );

    // The node comes back and receives its copies from the queue.
    c.nodes[down].restart();
    let back = c.nodes[down].data_dir.clone();
    let want = ids.clone();
    wait_until(60, "the returning node to receive its copies", || {
        let (back, want) = (back.clone(), want.clone());
        async move { chunk_ids(&back) == want }
    })
    .await;
    let node = &c.nodes[via];
    wait_until(30, "the replication queues to empty", || async {
        node.status()
            .await
            .nodes
            .iter()
            .all(|n| n.replication_queue == 0)
    })
    .await;
    // Each node serves the file from its own copy (the others could be gone).
    for n in &c.nodes {
        let mut s = n.storage().await;
        assert!(get(&mut s, "placed", "down", 0, 0, 0).await.expect("get") == bytes);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_a_node_moves_chunks_and_draining_empties_one_never_below_r() {
    let mut c = TestCluster::start(3, &[]);
    let dir = c.nodes[0].root.path().to_path_buf();
    let mut files = Vec::new();
    let mut s = c.nodes[0].storage().await;
    for i in 0..8u64 {
        let bytes = data(3 * 1024 * 1024 + i as usize * 1000, 100 + i);
        put_chunked(&mut s, &dir, "moving", &format!("f{i}"), &bytes, 256 * 1024).await;
        files.push(bytes);
    }
    let dirs: Vec<_> = c.nodes.iter().map(|n| n.data_dir.clone()).collect();
    let before = copies(&dirs);
    assert!(before.len() >= 96, "{} chunks", before.len());
    assert!(
        before.values().all(|n| *n == 3),
        "three copies of each chunk"
    );

    // A fourth node joins and is added to the layout through the CLI.
    let fourth = TestCluster::joiner(&c.nodes[0], &[]);
    c.nodes.push(fourth);
    let all_dirs: Vec<_> = c.nodes.iter().map(|n| n.data_dir.clone()).collect();

    // Sample the copies of every chunk while chunks move: never fewer than R = 3.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, samples, dirs) = (stop.clone(), samples.clone(), all_dirs.clone());
        let ids: Vec<String> = before.keys().cloned().collect();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let now = copies(&dirs);
                for id in &ids {
                    let n = now.get(id).copied().unwrap_or(0);
                    if n < 3 {
                        return Err(format!("chunk {id} had {n} copies in a sample"));
                    }
                }
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };

    let fourth_endpoint = c.nodes[3].endpoint.clone();
    let out = c.nodes[0].cli(&[
        "layout",
        "assign",
        &fourth_endpoint,
        "--zone",
        "zone-3",
        "--capacity",
        "1TiB",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("STAGED layout v3"), "{shown}");
    let out = c.nodes[0].cli(&["layout", "apply", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let first = &c.nodes[0];
    wait_until(120, "the rebalance after adding a node", || async {
        rebalanced(first).await
    })
    .await;
    let after = copies(&all_dirs);
    let on_fourth = chunk_ids(&c.nodes[3].data_dir).len();
    assert!(
        on_fourth > before.len() / 2,
        "the new node took its share (3 of 4 homes per chunk): {on_fourth} of {}",
        before.len()
    );
    assert!(
        after.values().all(|n| *n == 3),
        "old copies released once the new homes held them: {:?}",
        after.values().filter(|n| **n != 3).count()
    );
    for n in &c.nodes {
        let mut s = n.storage().await;
        for (i, bytes) in files.iter().enumerate() {
            let got = get(&mut s, "moving", &format!("f{i}"), 0, 0, 0)
                .await
                .expect("get");
            assert!(&got == bytes, "f{i} differs on {}", n.endpoint);
        }
    }

    // Drain the second node: it ends empty and can then leave.
    let ids = raft_ids(&c).await;
    let drained = ids[1].to_string();
    let out = c.nodes[0].cli(&["node", "drain", &drained, "--wait", "--timeout", "2m"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(chunk_ids(&c.nodes[1].data_dir).is_empty());
    stop.store(true, Ordering::Relaxed);
    sampler
        .join()
        .expect("sampler thread")
        .expect("no chunk below R copies");
    assert!(samples.load(Ordering::Relaxed) > 5, "the sampler ran");

    // Still in the layout (draining): the node cannot leave the cluster yet.
    let refused = c.nodes[0].cli(&["node", "remove", &drained]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in layout"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    for args in [
        vec!["layout", "remove", drained.as_str()],
        vec!["layout", "apply", "5"],
        vec!["node", "remove", drained.as_str()],
    ] {
        let out = c.nodes[0].cli(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in [0, 2, 3] {
        let mut s = c.nodes[i].storage().await;
        for (k, bytes) in files.iter().enumerate() {
            let got = get(&mut s, "moving", &format!("f{k}"), 0, 0, 0)
                .await
                .expect("get after drain");
            assert!(&got == bytes);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_copy_on_a_peer_is_detected_and_another_home_used() {
    let c = TestCluster::start(4, &[]);
    let ids = raft_ids(&c).await;
    let bytes = data(2 * 1024 * 1024, 77);
    let mut s = c.nodes[0].storage().await;
    let dir = c.nodes[0].root.path().to_path_buf();
    put_chunked(&mut s, &dir, "corrupt", "peer", &bytes, 1 << 20).await;
    let first = &c.nodes[0];
    wait_until(30, "replication to finish", || async {
        rebalanced(first).await
    })
    .await;

    // Pick a chunk and a node that is not one of its homes; corrupt the copy on the home
    // that node asks first.
    let layout = current_layout(&c.nodes[0]).await;
    // Node 0 received the upload but keeps only the chunks it is a home of: look everywhere.
    let dirs: Vec<_> = c.nodes.iter().map(|n| n.data_dir.clone()).collect();
    let chunk = copies(&dirs).into_keys().next().expect("a chunk");
    let id = strata_cluster::ChunkId::from_hex(&chunk).expect("hex id");
    let homes = layout.homes(&id);
    assert_eq!(homes.len(), 3);
    let reader = (0..4)
        .find(|i| !homes.contains(&ids[*i]))
        .expect("a non-home");
    let bad = ids.iter().position(|r| *r == homes[0]).expect("first home");
    let path = c.nodes[bad]
        .data_dir
        .join("chunks")
        .join(&chunk[..2])
        .join(&chunk);
    let mut content = std::fs::read(&path).expect("chunk file");
    content[1000] ^= 0xff;
    std::fs::write(&path, &content).expect("corrupt it");

    let mut s = c.nodes[reader].storage().await;
    let got = get(&mut s, "corrupt", "peer", 0, 0, 0).await.expect("get");
    assert!(got == bytes, "the reader served the right bytes");
    let (_, text) = http_get(&c.nodes[reader].metrics).await;
    assert!(
        metric(&text, "strata_peer_corrupt_chunks_total") >= 1.0,
        "the reader counted the corrupt copy"
    );
    let (_, text) = http_get(&c.nodes[bad].metrics).await;
    assert!(metric(&text, "strata_chunk_corrupt_total") >= 1.0);
    assert!(
        !path.exists(),
        "the corrupt copy was quarantined on the home"
    );
}
