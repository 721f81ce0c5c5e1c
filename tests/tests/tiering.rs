//! Cold tiering end to end: a real strata-node with the real aws-sdk-s3 talking to moto's S3
//! server on loopback. Covers transition to GLACIER (checked on the server), Get refused while
//! cold, restore (held in progress by moto's state manager), Get after restore byte for byte, a
//! B2-style backend read through without restore, packing of small files, and the backend
//! dying mid-transition.

use std::time::{Duration, Instant};

use strata_proto::v1 as pb;
use strata_tests::b2_proxy::B2Proxy;
use strata_tests::moto::Moto;
use strata_tests::{
    Node, chunk_ids, data, get, http_get, metric, put_chunked, series, stat, wait_until,
};

const MIB: usize = 1024 * 1024;
const CHUNK: u32 = MIB as u32;

/// A node whose config adds `backends` (TOML) and packs archives of `pack_bytes`.
fn node_with(backends: &str, pack_bytes: usize, extra_tier: &str) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("strata.toml");
    let toml = format!(
        "[tier]\ninterval = \"1h\"\npack_bytes = {pack_bytes}\nlocal_restore_delay = \"1s\"\n{extra_tier}\n{backends}"
    );
    std::fs::write(&file, toml).expect("write config");
    let config = file.to_string_lossy().into_owned();
    let node = Node::start_with(&[
        ("STRATA_CONFIG", config.as_str()),
        ("STRATA_JANITOR_INTERVAL", "1s"),
        ("STRATA_GC_GRACE", "1s"),
    ]);
    (dir, node)
}

async fn run_tiering(node: &Node) -> pb::TierPass {
    node.admin()
        .await
        .run_tiering(pb::RunTieringRequest {})
        .await
        .expect("run tiering")
        .into_inner()
}

fn tier_state(info: &pb::ObjectInfo) -> pb::tier_info::State {
    info.tier
        .as_ref()
        .and_then(|t| pb::tier_info::State::try_from(t.state).ok())
        .expect("Stat reports a tier")
}

/// The status of a Get that must be refused.
async fn get_refused(node: &Node, bucket: &str, key: &str) -> tonic::Status {
    let mut s = node.storage().await;
    let req = pb::GetRequest {
        bucket: bucket.into(),
        key: key.into(),
        version: 0,
        offset: 0,
        length: 0,
    };
    match s.get(req).await {
        Err(status) => status,
        Ok(resp) => match resp.into_inner().message().await {
            Err(status) => status,
            Ok(m) => panic!("Get of a cold object returned data: {m:?}"),
        },
    }
}

/// Runs the CLI against `node`; it must succeed.
fn cli_ok(node: &Node, args: &[&str]) -> std::process::Output {
    let out = node.cli(args);
    assert!(
        out.status.success(),
        "strata {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn metrics_text(node: &Node) -> String {
    http_get(&node.metrics).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glacier_transition_refuse_restore_and_read_back() {
    let moto = Moto::start().await;
    moto.create_bucket("cold").await;
    let backends = moto.backend_toml("glacier", "s3", "cold", "GLACIER");
    let (_cfg, node) = node_with(&backends, 2 * MIB, "");
    let mut s = node.storage().await;
    let big = data(5 * MIB + 123, 1);
    let small = data(1000, 2);
    put_chunked(&mut s, node.root.path(), "photos", "big.raw", &big, CHUNK).await;
    put_chunked(
        &mut s,
        node.root.path(),
        "photos",
        "small.txt",
        &small,
        CHUNK,
    )
    .await;
    assert!(!chunk_ids(&node.data_dir).is_empty());

    // A policy through the CLI: everything idle for 0 s goes to the Glacier backend.
    cli_ok(
        &node,
        &[
            "tier",
            "policy",
            "set",
            "archive-all",
            "--backend",
            "glacier",
            "--idle",
            "0s",
        ],
    );
    let pass = run_tiering(&node).await;
    assert_eq!(pass.moved_versions, 2, "{pass:?}");
    assert!(pass.errors.is_empty(), "{pass:?}");

    // On the server: archives in GLACIER, holding every byte (plus the index trailers).
    let objects = moto.objects("cold").await;
    assert!(!objects.is_empty());
    for (key, class) in &objects {
        assert_eq!(class.as_deref(), Some("GLACIER"), "{key}");
    }
    let info = stat(&mut s, "photos", "big.raw").await.expect("stat");
    assert_eq!(tier_state(&info), pb::tier_info::State::Cold);
    assert_eq!(info.tier.as_ref().expect("tier").storage_class, "GLACIER");

    // The hot copies go once the cold copy is verified and recorded.
    wait_until(30, "hot chunk files released", || async {
        chunk_ids(&node.data_dir).is_empty()
    })
    .await;

    let refused = get_refused(&node, "photos", "big.raw").await;
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("cold storage") && refused.message().contains("strata restore"),
        "{}",
        refused.message()
    );

    // Restore, held in progress by moto for a few looks.
    moto.hold_restores(3).await;
    cli_ok(&node, &["restore", "photos/big.raw", "--tier", "bulk"]);
    let pass = run_tiering(&node).await;
    assert_eq!(pass.restores_done, 0, "{pass:?}");
    let out = node.cli(&["stat", "photos/big.raw"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("restoring from glacier (GLACIER), bulk tier"),
        "{text}"
    );
    let info = stat(&mut s, "photos", "big.raw").await.expect("stat");
    assert_eq!(tier_state(&info), pb::tier_info::State::Restoring);
    assert!(info.tier.as_ref().expect("tier").restore_started_ms > 0);
    let refused = get_refused(&node, "photos", "big.raw").await;
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("being restored"),
        "{}",
        refused.message()
    );
    let text = metrics_text(&node).await;
    assert_eq!(metric(&text, "strata_restores_in_flight"), 1.0);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pass = run_tiering(&node).await;
        if pass.restores_done == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restore never finished: {pass:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = stat(&mut s, "photos", "big.raw").await.expect("stat");
    assert_eq!(tier_state(&info), pb::tier_info::State::Hot);
    assert_eq!(
        get(&mut s, "photos", "big.raw", 0, 0, 0)
            .await
            .expect("get"),
        big
    );
    // A range too, and the other object is still cold.
    assert_eq!(
        get(&mut s, "photos", "big.raw", 0, MIB as u64 - 7, 100)
            .await
            .expect("range"),
        big[MIB - 7..MIB + 93]
    );
    let refused = get_refused(&node, "photos", "small.txt").await;
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let text = metrics_text(&node).await;
    // Adjacent chunks come back in one ranged GET: big.raw's 6 chunks lie in 3 archives.
    let gets: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("strata_tier_backend_requests_total{") && l.contains("op=\"get\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(gets, 3.0, "{text}");
    assert!(metric(&text, "strata_tier_moves_total") >= 2.0);
    assert!(metric(&text, "strata_tier_rehydrated_bytes_total") >= big.len() as f64);
    assert!(metric(&text, "strata_tier_backend_requests_total") > 0.0);

    // `strata tier status` as JSON.
    let out = cli_ok(&node, &["--json", "tier", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let glacier = v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == "glacier")
        .expect("glacier backend")
        .clone();
    assert_eq!(glacier["bytes"], 1000, "{v}");
    assert_eq!(v["cold_versions"], 1, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_reads_through_and_small_files_are_packed() {
    let moto = Moto::start().await;
    moto.create_bucket("b2-bucket").await;
    // Through a proxy that refuses checksum headers as real B2 does.
    let proxy = B2Proxy::start(&moto.endpoint).await;
    let backends = moto
        .backend_toml("b2", "b2", "b2-bucket", "")
        .replace(&moto.endpoint, &proxy.endpoint);
    let (_cfg, node) = node_with(&backends, 4 * MIB, "orphan_archive_grace = \"0s\"\n");
    // An archive no metadata records (as a crashed leader would leave): the sweep deletes it.
    moto.client()
        .put_object()
        .bucket("b2-bucket")
        .key("archives/1/orphan.spk")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"left behind",
        ))
        .send()
        .await
        .expect("put orphan");
    let mut s = node.storage().await;
    let mut files = Vec::new();
    for i in 0..40u64 {
        let bytes = data(10_000 + i as usize * 10, 100 + i);
        put_chunked(
            &mut s,
            node.root.path(),
            "logs",
            &format!("day-{i:02}.log"),
            &bytes,
            CHUNK,
        )
        .await;
        files.push(bytes);
    }
    // Only the logs bucket of this tenant, and only files of at least 10 KB.
    let tenant = "default"; // the tenant dev mode creates
    cli_ok(
        &node,
        &[
            "tier",
            "policy",
            "set",
            "logs-to-b2",
            "--backend",
            "b2",
            "--idle",
            "0s",
            "--min-size",
            "10KB",
            "--bucket",
            &format!("{tenant}/logs"),
        ],
    );
    let out = node.cli(&["--json", "tier", "policy", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["bucket"], "logs", "{v}");

    let pass = run_tiering(&node).await;
    assert_eq!(pass.moved_versions, 40, "{pass:?}");
    assert_eq!(pass.orphans_deleted, 1, "{pass:?}");
    // 40 files of ~10 KB in one archive: 1 PutObject + 1 HeadObject, not 80 requests.
    assert_eq!(pass.archives, 1, "{pass:?}");
    let objects = moto.objects("b2-bucket").await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(!objects[0].0.contains("orphan"), "{objects:?}");
    assert!(
        objects[0].1.as_deref().is_none_or(|c| c == "STANDARD"),
        "{objects:?}"
    );
    wait_until(30, "hot chunk files released", || async {
        chunk_ids(&node.data_dir).is_empty()
    })
    .await;

    // Online class: reads go straight to the backend, verified, no restore needed.
    for (i, bytes) in files.iter().enumerate().step_by(7) {
        let key = format!("day-{i:02}.log");
        let info = stat(&mut s, "logs", &key).await.expect("stat");
        assert_eq!(tier_state(&info), pb::tier_info::State::Cold);
        assert_eq!(
            &get(&mut s, "logs", &key, 0, 0, 0).await.expect("get"),
            bytes
        );
    }
    let text = metrics_text(&node).await;
    assert!(metric(&text, "strata_tier_cold_read_bytes_total") >= 50_000.0);

    // A restore from B2 needs no RestoreObject: the next pass brings it back.
    cli_ok(&node, &["restore", "logs/day-03.log"]);
    let pass = run_tiering(&node).await;
    assert_eq!(pass.restores_done, 1, "{pass:?}");
    assert_eq!(
        tier_state(&stat(&mut s, "logs", "day-03.log").await.expect("stat")),
        pb::tier_info::State::Hot
    );
    assert_eq!(chunk_ids(&node.data_dir).len(), 1);

    // Purging every cold file leaves the archive dead; the next pass deletes it.
    for i in 0..40 {
        let _ = node.cli(&["rm", &format!("logs/day-{i:02}.log")]);
    }
    let out = node.cli(&["tier", "policy", "delete", "logs-to-b2"]);
    assert!(out.status.success());
    let out = node.cli(&["tier", "policy", "get", "logs-to-b2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // Every request went through, none with a header B2 refuses.
    assert_eq!(proxy.refused(), 0);
    assert!(proxy.passed() >= 4, "{} requests", proxy.passed());
}

/// The proxy the B2 test relies on does refuse what real B2 refuses: a default aws-sdk-s3
/// client (CRC32 checksums on by default) cannot write through it, and HeadObject with
/// checksum mode is refused with B2's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_b2_proxy_refuses_checksum_headers_like_b2() {
    let moto = Moto::start().await;
    moto.create_bucket("b2-check").await;
    let proxy = B2Proxy::start(&moto.endpoint).await;
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(&proxy.endpoint)
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    let put = client
        .put_object()
        .bucket("b2-check")
        .key("k")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"hello"))
        .send()
        .await;
    let e = put.expect_err("a default SDK client sends a CRC32 header");
    let text = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e));
    assert!(text.contains("Unsupported header"), "{text}");
    let head = client
        .head_object()
        .bucket("b2-check")
        .key("k")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await;
    assert!(head.is_err());
    assert!(proxy.refused() >= 2, "{}", proxy.refused());
    assert!(moto.objects("b2-check").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_outage_mid_transition_loses_nothing() {
    let mut moto = Moto::start().await;
    moto.create_bucket("cold").await;
    let backends = moto.backend_toml("glacier", "s3", "cold", "DEEP_ARCHIVE");
    // 256 KiB archives at 2 MiB/s: the 6 MiB move takes about 3 s.
    let (_cfg, node) = node_with(&backends, 256 * 1024, "rate_bytes = 2097152\n");
    let mut s = node.storage().await;
    let bytes = data(6 * MIB, 7);
    put_chunked(
        &mut s,
        node.root.path(),
        "vault",
        "db.dump",
        &bytes,
        256 * 1024,
    )
    .await;
    let hot = chunk_ids(&node.data_dir);
    cli_ok(
        &node,
        &[
            "tier",
            "policy",
            "set",
            "deep",
            "--backend",
            "glacier",
            "--idle",
            "0s",
        ],
    );

    // Start the move, and stop the server once the first archive has arrived.
    let endpoint = node.endpoint.clone();
    let admin_token = node.admin_token.clone();
    let pass = tokio::spawn(async move {
        let channel = strata_admin::client::connect(&endpoint)
            .await
            .expect("connect");
        let mut admin = strata_admin::client::admin(channel, &admin_token).expect("admin");
        admin
            .run_tiering(pb::RunTieringRequest {})
            .await
            .expect("run")
            .into_inner()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while moto.objects("cold").await.is_empty() {
        assert!(Instant::now() < deadline, "no archive reached the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    moto.kill();
    let pass = pass.await.expect("pass task");
    assert_eq!(pass.moved_versions, 0, "{pass:?}");
    assert_eq!(pass.failed_versions, 1, "{pass:?}");
    assert!(!pass.errors.is_empty());

    // Nothing changed: still hot, every chunk file still here, readable byte for byte.
    let info = stat(&mut s, "vault", "db.dump").await.expect("stat");
    assert_eq!(tier_state(&info), pb::tier_info::State::Hot);
    tokio::time::sleep(Duration::from_secs(2)).await; // two janitor sweeps
    assert_eq!(chunk_ids(&node.data_dir), hot);
    assert_eq!(
        get(&mut s, "vault", "db.dump", 0, 0, 0).await.expect("get"),
        bytes
    );
    let text = metrics_text(&node).await;
    assert!(metric(&text, "strata_tier_backend_errors_total") >= 1.0);

    // The server comes back (empty): the next pass moves the version.
    moto.restart().await;
    moto.create_bucket("cold").await;
    let pass = run_tiering(&node).await;
    assert_eq!(pass.moved_versions, 1, "{pass:?}");
    let objects = moto.objects("cold").await;
    assert_eq!(objects.len(), 24, "6 MiB in 256 KiB archives: {objects:?}");
    assert!(
        objects
            .iter()
            .all(|(_, c)| c.as_deref() == Some("DEEP_ARCHIVE"))
    );
    let refused = get_refused(&node, "vault", "db.dump").await;
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("DEEP_ARCHIVE"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_input_errors_are_precise() {
    let (_cfg, node) = node_with("", MIB, "");
    let mut s = node.storage().await;
    put_chunked(
        &mut s,
        node.root.path(),
        "photos",
        "a.jpg",
        &data(5000, 3),
        CHUNK,
    )
    .await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["tier", "policy", "set", "x", "--backend", "nowhere"],
            "not configured",
        ),
        (
            &["tier", "policy", "set", "bad name", "--backend", "local"],
            "policy name",
        ),
        (
            &[
                "tier",
                "policy",
                "set",
                "x",
                "--backend",
                "local",
                "--class",
                "ONEZONE",
            ],
            "storage class",
        ),
        (
            &[
                "tier",
                "policy",
                "set",
                "x",
                "--backend",
                "local",
                "--bucket",
                "ghost/photos",
            ],
            "not found",
        ),
        (&["tier", "policy", "get", "missing"], "not found"),
        (&["restore", "photos/a.jpg"], "nothing to restore"),
        (
            &["restore", "photos/a.jpg", "--tier", "instant"],
            "restore tier",
        ),
        (&["restore", "photos/none.jpg"], "not found"),
    ];
    for (args, want) in cases {
        let out = node.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one-line error: {err}"
        );
    }
    let out = node.cli(&["tier", "policy", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no tier policies"));

    // The embedded local backend: archived, with a (1 s) simulated restore.
    cli_ok(
        &node,
        &[
            "tier",
            "policy",
            "set",
            "all",
            "--backend",
            "local",
            "--idle",
            "0s",
        ],
    );
    assert_eq!(run_tiering(&node).await.moved_versions, 1);
    assert_eq!(
        get_refused(&node, "photos", "a.jpg").await.code(),
        tonic::Code::FailedPrecondition
    );
    cli_ok(&node, &["restore", "photos/a.jpg"]);
    for _ in 0..50 {
        run_tiering(&node).await;
        if tier_state(&stat(&mut s, "photos", "a.jpg").await.expect("stat"))
            == pb::tier_info::State::Hot
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&mut s, "photos", "a.jpg", 0, 0, 0).await.expect("get"),
        data(5000, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_release_everywhere_restore_to_homes_and_move_after_a_leader_change() {
    let cold = tempfile::tempdir().expect("tempdir");
    let cfg = tempfile::tempdir().expect("tempdir");
    let file = cfg.path().join("strata.toml");
    std::fs::write(
        &file,
        "[tier]\ninterval = \"1h\"\nlocal_restore_delay = \"1s\"\npack_bytes = 2097152\n",
    )
    .expect("config");
    let (file, cold_dir) = (
        file.to_string_lossy().into_owned(),
        cold.path().to_string_lossy().into_owned(),
    );
    let mut c = strata_tests::TestCluster::start(
        3,
        &[
            ("STRATA_CONFIG", file.as_str()),
            ("STRATA_COLD_DIR", cold_dir.as_str()),
            ("STRATA_JANITOR_INTERVAL", "1s"),
            ("STRATA_GC_GRACE", "1s"),
        ],
    );
    let bytes = data(6 * MIB + 5, 21);
    let mut s = c.nodes[1].storage().await;
    put_chunked(
        &mut s,
        c.nodes[1].root.path(),
        "media",
        "film.mkv",
        &bytes,
        CHUNK,
    )
    .await;
    // R=3 on three nodes: every node ends up with all 7 chunks.
    for n in &c.nodes {
        wait_until(30, "three copies of every chunk", || async {
            chunk_ids(&n.data_dir).len() == 7
        })
        .await;
    }
    cli_ok(
        &c.nodes[0],
        &[
            "tier",
            "policy",
            "set",
            "all",
            "--backend",
            "local",
            "--idle",
            "0s",
        ],
    );
    // `strata tier run` finds the leader itself, whichever node it asks.
    let l = c.leader().await;
    let other = (l + 1) % 3;
    let out = cli_ok(&c.nodes[other], &["--json", "tier", "run"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["moved_versions"], 1, "{v}");

    // Released on every node.
    for n in &c.nodes {
        wait_until(30, "hot copies released on every node", || async {
            chunk_ids(&n.data_dir).is_empty()
        })
        .await;
    }
    let refused = get_refused(&c.nodes[2], "media", "film.mkv").await;
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    // Restored through one node, driven by the leader: the chunks return to their homes.
    cli_ok(
        &c.nodes[2],
        &["restore", "media/film.mkv", "--tier", "expedited"],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while run_tiering(&c.nodes[l]).await.restores_done == 0 {
        assert!(Instant::now() < deadline, "restore never finished");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for n in &c.nodes {
        wait_until(30, "every home holds the restored chunks", || async {
            chunk_ids(&n.data_dir).len() == 7
        })
        .await;
        let mut s = n.storage().await;
        assert_eq!(
            get(&mut s, "media", "film.mkv", 0, 0, 0)
                .await
                .expect("get"),
            bytes
        );
    }

    // The leader dies; the new one runs the next moves (the restored file is idle again under
    // the 0 s policy, and a new file joins it).
    c.nodes[l].kill();
    let l2 = c.leader().await;
    assert_ne!(l2, l);
    let mut s = c.nodes[l2].storage().await;
    let second = data(MIB, 22);
    put_chunked(
        &mut s,
        c.nodes[l2].root.path(),
        "media",
        "clip.mkv",
        &second,
        CHUNK,
    )
    .await;
    let pass = run_tiering(&c.nodes[l2]).await;
    assert_eq!(pass.moved_versions, 2, "{pass:?}");
    for key in ["film.mkv", "clip.mkv"] {
        let info = stat(&mut s, "media", key).await.expect("stat");
        assert_eq!(tier_state(&info), pb::tier_info::State::Cold, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_archives_are_checked_and_missing_or_corrupt_ones_reported() {
    let moto = Moto::start().await;
    moto.create_bucket("checked").await;
    let backends = moto.backend_toml("s3std", "s3", "checked", "STANDARD")
        + "\n[verify]\ncold_requests_per_day = 1000000000\n";
    let (_cfg, node) = node_with(&backends, 4 * MIB, "");
    let mut s = node.storage().await;
    // Two single-chunk files, moved in two passes: two archives of one chunk each.
    let mut archives = Vec::new();
    let mut files = Vec::new();
    for (seed, name) in [(41, "one"), (42, "two")] {
        let bytes = data(300_000, seed);
        put_chunked(&mut s, node.root.path(), name, "file", &bytes, CHUNK).await;
        if name == "two" {
            // The same bytes in a bucket no policy moves: this chunk keeps its hot copies.
            put_chunked(&mut s, node.root.path(), "keep", "file", &bytes, CHUNK).await;
        }
        files.push(bytes);
        let tenant = "default";
        cli_ok(
            &node,
            &[
                "tier",
                "policy",
                "set",
                &format!("to-s3-{name}"),
                "--backend",
                "s3std",
                "--idle",
                "0s",
                "--bucket",
                &format!("{tenant}/{name}"),
            ],
        );
        let pass = run_tiering(&node).await;
        assert_eq!(pass.moved_versions, 1, "{pass:?}");
        let now: Vec<String> = moto
            .objects("checked")
            .await
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !archives.contains(k))
            .collect();
        assert_eq!(
            now.len(),
            1,
            "{name}: new objects {now:?}; all {:?}; known {archives:?}; pass {pass:?}",
            moto.objects("checked").await
        );
        archives.push(now[0].clone());
    }
    // A pass with nothing to move checks both archives: fine.
    let pass = run_tiering(&node).await;
    assert!(pass.archives_checked >= 2, "{pass:?}");
    assert_eq!(pass.bad_archives, 0, "{pass:?}");
    let text = metrics_text(&node).await;
    assert!(
        series(
            &text,
            "strata_cold_verify_total{backend=\"s3std\",result=\"ok\"}"
        ) >= 2.0,
        "{text}"
    );

    // Behind Strata's back: one archive deleted, one byte of the other's chunk flipped.
    let client = moto.client();
    client
        .delete_object()
        .bucket("checked")
        .key(&archives[0])
        .send()
        .await
        .expect("delete archive");
    let body = client
        .get_object()
        .bucket("checked")
        .key(&archives[1])
        .send()
        .await
        .expect("get archive")
        .body
        .collect()
        .await
        .expect("archive bytes")
        .into_bytes();
    let mut rotten = body.to_vec();
    rotten[1000] ^= 0x01;
    client
        .put_object()
        .bucket("checked")
        .key(&archives[1])
        .body(aws_sdk_s3::primitives::ByteStream::from(rotten))
        .send()
        .await
        .expect("put the rotten archive back");
    let pass = run_tiering(&node).await;
    assert_eq!(pass.bad_archives, 2, "{pass:?}");
    // "two/file" still had hot copies: it is hot again; "one/file"'s only copy was the
    // deleted archive.
    assert_eq!(pass.versions_made_hot, 1, "{pass:?}");
    assert_eq!(
        tier_state(&stat(&mut s, "two", "file").await.expect("stat")),
        pb::tier_info::State::Hot
    );
    assert!(
        get(&mut s, "two", "file", 0, 0, 0)
            .await
            .expect("read the hot copy")
            == files[1]
    );
    assert!(get(&mut s, "one", "file", 0, 0, 0).await.is_err());
    let text = metrics_text(&node).await;
    assert_eq!(
        series(
            &text,
            "strata_cold_verify_total{backend=\"s3std\",result=\"missing\"}"
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "strata_cold_verify_total{backend=\"s3std\",result=\"corrupt\"}"
        ),
        1.0
    );
    let out = cli_ok(&node, &["--json", "repair", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let bad = v["bad_archives"].as_array().expect("bad archives");
    assert_eq!(bad.len(), 2, "{v}");
    let result_of = |object: &str| {
        bad.iter()
            .find(|b| b["object"] == object)
            .map(|b| b["result"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(result_of(&archives[0]).as_deref(), Some("missing"), "{v}");
    assert_eq!(result_of(&archives[1]).as_deref(), Some("corrupt"), "{v}");

    // The next pass moves "two/file" again, into a new archive, and deletes the rotten one
    // (nothing points into it any more): only the missing archive is still reported.
    let pass = run_tiering(&node).await;
    assert_eq!(pass.moved_versions, 1, "{pass:?}");
    let pass = run_tiering(&node).await;
    assert!(
        pass.errors.iter().all(|e| !e.contains(&archives[1])),
        "{pass:?}"
    );
    let objects: Vec<String> = moto
        .objects("checked")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(!objects.contains(&archives[1]), "{objects:?}");
    assert_eq!(objects.len(), 1, "the new archive: {objects:?}");
    let out = cli_ok(&node, &["--json", "repair", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let bad = v["bad_archives"].as_array().expect("bad archives");
    assert_eq!(bad.len(), 1, "{v}");
    assert_eq!(bad[0]["object"], archives[0].as_str());
    assert!(get(&mut s, "two", "file", 0, 0, 0).await.expect("read") == files[1]);
}
