//! Redundancy verification with real processes on loopback: the scrub finds and repairs rotten
//! chunk files, the anti-entropy check puts back deleted ones, and a chunk with no good copy
//! left is DATA_LOSS naming the object, never a wrong byte and never UNAVAILABLE.

use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_cluster::ChunkId;
use strata_tests::*;

const MIB: usize = 1 << 20;

/// A config file with the verifier's intervals (the rest from the defaults).
fn verify_config(dir: &Path, scrub_interval: &str, check_interval: &str) -> String {
    let file = dir.join("strata.toml");
    let toml = format!(
        "[verify]\nscrub_rate = 1000000000\nscrub_interval = \"{scrub_interval}\"\ncheck_interval = \"{check_interval}\"\n"
    );
    std::fs::write(&file, toml).expect("write config");
    file.to_string_lossy().into_owned()
}

fn chunk_path(data_dir: &Path, id: &ChunkId) -> PathBuf {
    let hex = id.to_hex();
    data_dir.join("chunks").join(&hex[..2]).join(hex.as_str())
}

/// Flips one byte of a chunk file in place (same inode, same size).
fn flip(path: &Path, at: usize) {
    let mut raw = std::fs::read(path).expect("read chunk file");
    let at = at % raw.len();
    raw[at] ^= 0x5a;
    std::fs::write(path, raw).expect("corrupt chunk file");
}

fn good(path: &Path, id: &ChunkId) -> bool {
    std::fs::read(path).is_ok_and(|b| ChunkId::of(&b) == *id)
}

/// Runs the CLI and parses its JSON output; a failed command fails the test.
fn json_of(node: &Node, args: &[&str]) -> serde_json::Value {
    let out = node.cli(args);
    assert!(
        out.status.success(),
        "strata {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// The scrub worker of the (first) node in `strata --json worker list` output.
fn scrub_of(list: &serde_json::Value) -> serde_json::Value {
    list[0]["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["name"] == "scrub")
        .cloned()
        .expect("a scrub worker")
}

/// Uploads `len` bytes in 1 MiB chunks through node 0 and waits until `holder` has every chunk.
async fn upload_and_settle(
    cluster: &TestCluster,
    holder: usize,
    key: &str,
    len: usize,
    seed: u64,
) -> (Vec<u8>, Vec<ChunkId>) {
    let mut s = cluster.nodes[0].storage().await;
    let bytes = data(len, seed);
    put_chunked(
        &mut s,
        cluster.nodes[0].root.path(),
        "verify",
        key,
        &bytes,
        MIB as u32,
    )
    .await;
    let ids = chunk_ids_of(&bytes, MIB);
    let dir = cluster.nodes[holder].data_dir.clone();
    wait_until(30, "every chunk to reach the node under test", || {
        let ids = ids.clone();
        let dir = dir.clone();
        async move { ids.iter().all(|id| good(&chunk_path(&dir, id), id)) }
    })
    .await;
    // And every copy still on its way has arrived (queued sends to slow homes, rebalance
    // passes for the layout the cluster started with): a late copy must not put back a file
    // the test deletes.
    wait_until(
        30,
        "every node's replication queue and rebalance to finish",
        || async {
            let s = cluster.nodes[0].status().await;
            let version = s.layout_version;
            s.nodes.len() == cluster.nodes.len()
                && s.nodes.iter().all(|n| {
                    n.reachable
                        && n.replication_queue == 0
                        && n.rebalance.as_ref().is_some_and(|r| {
                            !r.running && r.finished_version >= version && r.pending_chunks == 0
                        })
                })
        },
    )
    .await;
    (bytes, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_finds_flipped_bytes_and_repairs_them_from_peers() {
    let cfg = tempfile::tempdir().expect("tempdir");
    let config = verify_config(cfg.path(), "1s", "1h");
    let cluster = TestCluster::start(3, &[("STRATA_CONFIG", config.as_str())]);
    let victim = 2;
    let (bytes, ids) = upload_and_settle(&cluster, victim, "scrubbed", 30 * MIB, 11).await;
    let node = &cluster.nodes[victim];
    let dir = node.data_dir.clone();

    // Phase 1: nobody reads; the scrub alone must find and repair all 20.
    let before = metrics_of(node).await;
    let corrupt0 = series(&before, "strata_scrub_corruptions_total");
    let peer0 = series(&before, "strata_repairs_total{source=\"peer\"}");
    let victims: Vec<ChunkId> = ids.iter().take(20).copied().collect();
    for (i, id) in victims.iter().enumerate() {
        flip(&chunk_path(&dir, id), 4099 * (i + 1));
    }
    wait_until(60, "the scrub to find the 20 rotten files", || async {
        series(&metrics_of(node).await, "strata_scrub_corruptions_total") - corrupt0 >= 20.0
    })
    .await;
    wait_until(30, "the 20 files to be repaired from peers", || {
        let (victims, dir) = (victims.clone(), dir.clone());
        async move { victims.iter().all(|id| good(&chunk_path(&dir, id), id)) }
    })
    .await;
    let after = metrics_of(node).await;
    assert_eq!(
        series(&after, "strata_scrub_corruptions_total") - corrupt0,
        20.0,
        "exactly the 20 flipped files are corrupt"
    );
    assert_eq!(
        series(&after, "strata_repairs_total{source=\"peer\"}") - peer0,
        20.0
    );
    let quarantined = std::fs::read_dir(dir.join("chunks/.quarantine"))
        .expect("quarantine dir")
        .count();
    assert_eq!(quarantined, 20, "rotten copies are kept for inspection");

    // Phase 2: the same while clients read the object through the node under test: every
    // read returns the exact bytes (a read that meets a rotten copy repairs it itself).
    let before = metrics_of(node).await;
    let corrupt1 = series(&before, "strata_scrub_corruptions_total");
    let read1 = series(&before, "strata_repairs_total{source=\"read\"}");
    let peer1 = series(&before, "strata_repairs_total{source=\"peer\"}");
    for (i, id) in victims.iter().enumerate() {
        flip(&chunk_path(&dir, id), 7919 * (i + 3));
    }
    let mut s = node.storage().await;
    for round in 0..5 {
        let got = get(&mut s, "verify", "scrubbed", 0, 0, 0)
            .await
            .expect("read during the scrub");
        assert!(got == bytes, "read {round} returned wrong bytes");
    }
    wait_until(60, "every rotten file to be repaired", || {
        let (victims, dir) = (victims.clone(), dir.clone());
        async move { victims.iter().all(|id| good(&chunk_path(&dir, id), id)) }
    })
    .await;
    let after = metrics_of(node).await;
    let found = series(&after, "strata_scrub_corruptions_total") - corrupt1
        + series(&after, "strata_repairs_total{source=\"read\"}")
        - read1;
    let repaired = series(&after, "strata_repairs_total{source=\"peer\"}") - peer1
        + series(&after, "strata_repairs_total{source=\"read\"}")
        - read1;
    assert!(found >= 20.0, "found {found} of 20 rotten files");
    assert!(repaired >= 20.0, "repaired {repaired} of 20 rotten files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_puts_back_chunk_files_deleted_behind_the_nodes_back() {
    let cfg = tempfile::tempdir().expect("tempdir");
    let config = verify_config(cfg.path(), "30d", "1s");
    let cluster = TestCluster::start(3, &[("STRATA_CONFIG", config.as_str())]);
    let victim = 1;
    let (bytes, ids) = upload_and_settle(&cluster, victim, "deleted", 24 * MIB, 12).await;
    let node = &cluster.nodes[victim];
    let dir = node.data_dir.clone();
    let peer0 = series(
        &metrics_of(node).await,
        "strata_repairs_total{source=\"peer\"}",
    );
    let victims: Vec<ChunkId> = ids.iter().skip(2).take(20).copied().collect();
    for id in &victims {
        std::fs::remove_file(chunk_path(&dir, id)).expect("delete chunk file");
    }
    wait_until(60, "the check to put back the 20 deleted files", || {
        let (victims, dir) = (victims.clone(), dir.clone());
        async move { victims.iter().all(|id| good(&chunk_path(&dir, id), id)) }
    })
    .await;
    let text = metrics_of(node).await;
    assert_eq!(
        series(&text, "strata_repairs_total{source=\"peer\"}") - peer0,
        20.0
    );
    wait_until(30, "the under-replication gauge to return to 0", || async {
        let text = metrics_of(node).await;
        metric(&text, "strata_chunks_under_replicated") == 0.0
            && metric(&text, "strata_anti_entropy_passes_total") >= 2.0
    })
    .await;
    // Reading through the node uses its own copies again.
    let mut s = node.storage().await;
    let got = get(&mut s, "verify", "deleted", 0, 0, 0)
        .await
        .expect("read");
    assert!(got == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_copy_corrupt_is_data_loss_naming_the_object() {
    let cfg = tempfile::tempdir().expect("tempdir");
    let config = verify_config(cfg.path(), "30d", "1h");
    let cluster = TestCluster::start(3, &[("STRATA_CONFIG", config.as_str())]);
    let (_, ids) = upload_and_settle(&cluster, 2, "doomed", 3 * MIB, 13).await;
    let (other, _) = upload_and_settle(&cluster, 2, "fine", 2 * MIB, 14).await;
    for n in 0..3 {
        wait_until(30, "every node to hold the chunks", || {
            let dir = cluster.nodes[n].data_dir.clone();
            let ids = ids.clone();
            async move { ids.iter().all(|id| good(&chunk_path(&dir, id), id)) }
        })
        .await;
    }
    let doomed = ids[1];
    for (n, node) in cluster.nodes.iter().enumerate() {
        flip(&chunk_path(&node.data_dir, &doomed), 1000 + n);
    }
    // Every read, the first included and through every node, is DATA_LOSS naming the object.
    for n in [0, 1, 2, 0] {
        let mut s = cluster.nodes[n].storage().await;
        let err = get(&mut s, "verify", "doomed", 0, 0, 0)
            .await
            .expect_err("no good copy is left");
        let msg = format!("{err:#}");
        assert!(msg.contains("(DataLoss)"), "DATA_LOSS: {msg}");
        assert!(
            msg.contains("verify/doomed"),
            "the error names the object: {msg}"
        );
        // The other object is unaffected.
        assert!(get(&mut s, "verify", "fine", 0, 0, 0).await.expect("other") == other);
    }
    // The rotten copies are kept for inspection, and the chunk is recorded as unrecoverable.
    for node in &cluster.nodes {
        assert!(
            node.data_dir
                .join("chunks/.quarantine")
                .join(doomed.to_hex().as_str())
                .exists()
        );
    }
    wait_until(10, "the chunk to be counted unrecoverable", || async {
        metric(
            &metrics_of(&cluster.nodes[0]).await,
            "strata_unrecoverable_chunks",
        ) == 1.0
    })
    .await;
    // `strata repair status` lists it with the object that uses it.
    let report = json_of(&cluster.nodes[1], &["--json", "repair", "status"]);
    let lost = report["unrecoverable"]
        .as_array()
        .expect("unrecoverable list");
    assert_eq!(lost.len(), 1, "{report}");
    assert_eq!(lost[0]["chunk"], doomed.to_hex().as_str());
    assert_eq!(lost[0]["objects"][0]["bucket"], "verify");
    assert_eq!(lost[0]["objects"][0]["key"], "doomed");
    let text = cluster.nodes[1].cli(&["repair", "status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("verify/doomed version"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_and_worker_commands_control_the_running_node() {
    let cfg = tempfile::tempdir().expect("tempdir");
    let config = verify_config(cfg.path(), "30d", "1h");
    let node = Node::start_with(&[("STRATA_CONFIG", config.as_str())]);
    let mut s = node.storage().await;
    let bytes = data(6 * MIB, 21);
    put_chunked(
        &mut s,
        node.root.path(),
        "verify",
        "commands",
        &bytes,
        MIB as u32,
    )
    .await;

    // Every actor reports in one shape.
    let list = json_of(&node, &["--json", "worker", "list"]);
    let names: Vec<&str> = list[0]["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["janitor", "placement", "tiering", "scrub", "check"]);

    // The first pass ran at start (on an empty store); the next is due in 30 days.
    wait_until(20, "the first scrub pass to end", || async {
        scrub_of(&json_of(&node, &["--json", "scrub", "status"]))["last_done_ms"]
            .as_i64()
            .is_some_and(|t| t > 0)
    })
    .await;
    let first = scrub_of(&json_of(&node, &["--json", "scrub", "status"]));

    // Pause and change the rate; `scrub start` resumes and runs a pass at the new rate.
    json_of(&node, &["--json", "scrub", "pause"]);
    let set = json_of(&node, &["--json", "worker", "set", "scrub-rate", "200MB/s"]);
    assert_eq!(set[0]["ok"], true, "{set}");
    let paused = scrub_of(&json_of(&node, &["--json", "scrub", "status"]));
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["tunables"]["scrub-rate"], "200000000");
    json_of(&node, &["--json", "scrub", "start"]);
    wait_until(20, "a new scrub pass over the 6 chunks", || async {
        let w = scrub_of(&json_of(&node, &["--json", "scrub", "status"]));
        w["last_done_ms"].as_i64() > first["last_done_ms"].as_i64()
            && w["figures"]["pass chunks"] == "6"
            && w["figures"]["pass corrupt"] == "0"
    })
    .await;

    // Bad controls are refused with the reason, and change nothing.
    let out = node.cli(&["worker", "set", "scrub-speed", "1MB/s"]);
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown tunable"), "{err}");
    let out = node.cli(&["worker", "set", "scrub-rate", "fast"]);
    assert!(!out.status.success());
    assert_eq!(
        scrub_of(&json_of(&node, &["--json", "worker", "list"]))["tunables"]["scrub-rate"],
        "200000000"
    );
    let report = json_of(&node, &["--json", "repair", "status"]);
    assert_eq!(report["unrecoverable"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["nodes"][0]["unrecoverable"], 0);
}

/// Which nodes (by index) hold a good copy of `id`.
fn holders(cluster: &TestCluster, id: &ChunkId) -> Vec<usize> {
    (0..cluster.nodes.len())
        .filter(|&i| good(&chunk_path(&cluster.nodes[i].data_dir, id), id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_for_down_after_is_stood_in_for_and_copies_are_released_when_it_returns() {
    let cfg = tempfile::tempdir().expect("tempdir");
    let path = cfg.path().join("strata.toml");
    std::fs::write(
        &path,
        "[verify]\nscrub_interval = \"30d\"\ncheck_interval = \"1h\"\ndown_after = \"3s\"\n",
    )
    .expect("write config");
    let config = path.to_string_lossy().into_owned();
    // 4 nodes, 3 copies of each chunk, uploads wait for 2.
    let mut cluster = TestCluster::start(4, &[("STRATA_CONFIG", config.as_str())]);
    let ids_by_index = cluster.raft_ids().await;
    let leader = cluster.leader().await;
    let victim = (leader + 1) % 4;
    let victim_id = ids_by_index[victim];
    let mut s = cluster.nodes[leader].storage().await;
    let bytes = data(16 * MIB, 31);
    put_chunked(
        &mut s,
        cluster.nodes[leader].root.path(),
        "verify",
        "survivor",
        &bytes,
        MIB as u32,
    )
    .await;
    let ids = chunk_ids_of(&bytes, MIB);
    let homes_of = |layout: &strata_cluster::Layout, id: &ChunkId| -> Vec<usize> {
        let mut h: Vec<usize> = layout
            .homes(id)
            .iter()
            .filter_map(|r| ids_by_index.iter().position(|x| x == r))
            .collect();
        h.sort();
        h
    };
    let layout = current_layout(&cluster.nodes[leader]).await;
    wait_until(30, "every chunk at its 3 homes", || {
        let ok = ids
            .iter()
            .all(|id| holders(&cluster, id) == homes_of(&layout, id));
        async move { ok }
    })
    .await;
    let on_victim = ids
        .iter()
        .filter(|id| holders(&cluster, id).contains(&victim))
        .count();
    assert!(on_victim > 0, "the victim is a home of some chunks");

    cluster.nodes[victim].kill();
    let down_at = std::time::Instant::now();
    wait_until(60, "the dead node to be marked down", || async {
        current_layout(&cluster.nodes[leader]).await.nodes[&victim_id].state
            == strata_cluster::NodeState::Down
    })
    .await;
    let marked_after = down_at.elapsed();
    assert!(
        marked_after >= Duration::from_secs(3),
        "marked down before down_after: {marked_after:?}"
    );
    // Every chunk is back to 3 copies on live nodes, without an operator.
    wait_until(60, "3 live copies of every chunk", || {
        let ok = ids.iter().all(|id| {
            holders(&cluster, id)
                .iter()
                .filter(|&&i| i != victim)
                .count()
                >= 3
        });
        async move { ok }
    })
    .await;

    // It comes back: marked active, chunks return to their homes, the stand-in copies go,
    // and no chunk is ever below 3 copies meanwhile.
    cluster.nodes[victim].restart();
    wait_until(60, "the node to be marked active again", || async {
        current_layout(&cluster.nodes[leader]).await.nodes[&victim_id].state
            == strata_cluster::NodeState::Active
    })
    .await;
    let layout = current_layout(&cluster.nodes[leader]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut settled = true;
        for id in &ids {
            let h = holders(&cluster, id);
            assert!(h.len() >= 3, "chunk {id} fell to {} copies: {h:?}", h.len());
            settled &= h == homes_of(&layout, id);
        }
        if settled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chunks did not return to exactly their homes within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut s = cluster.nodes[victim].storage().await;
    assert!(
        get(&mut s, "verify", "survivor", 0, 0, 0)
            .await
            .expect("read")
            == bytes
    );
}
