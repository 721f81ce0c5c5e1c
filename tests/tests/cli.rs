//! The `strata` binary against a real node: happy paths with --json parsed, and its errors.

use strata_tests::*;

fn ok(out: std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "strata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn put_get_ls_stat_rm_undelete_versions_status() {
    let node = Node::start();
    let dir = node.root.path();
    let bytes = data(9 * 1024 * 1024 + 3, 1);
    let src = write_file(dir, "photo.raw", &bytes);
    let src = src.to_str().expect("path");

    let put = ok(node.cli(&["--json", "put", src, "pics/2024/photo.raw"]));
    assert_eq!(put["object"]["size"], bytes.len() as u64);
    assert_eq!(
        put["object"]["blake3"],
        blake3::hash(&bytes).to_hex().as_str()
    );
    assert_eq!(put["sent_bytes"], bytes.len() as u64);

    let out = dir.join("copy.raw");
    let got = ok(node.cli(&[
        "--json",
        "get",
        "pics/2024/photo.raw",
        "-o",
        out.to_str().expect("path"),
    ]));
    assert_eq!(got["verified"], true);
    assert!(std::fs::read(&out).expect("read") == bytes);

    let ls = ok(node.cli(&["--json", "ls", "pics"]));
    assert_eq!(ls["folders"], serde_json::json!(["2024/"]));
    let ls = ok(node.cli(&["--json", "ls", "pics/2024/"]));
    assert_eq!(ls["objects"][0]["key"], "2024/photo.raw");
    let ls = ok(node.cli(&["--json", "ls", "-r", "pics"]));
    assert_eq!(ls["objects"].as_array().expect("objects").len(), 1);

    let stat = ok(node.cli(&["--json", "stat", "pics/2024/photo.raw"]));
    assert_eq!(stat["chunk_count"], 3);

    // A second put of the same bytes is a new version that sends nothing.
    let again = ok(node.cli(&["--json", "put", src, "pics/2024/photo.raw"]));
    assert_eq!(again["sent_bytes"], 0);
    let versions = ok(node.cli(&["--json", "versions", "pics/2024/photo.raw"]));
    assert_eq!(versions.as_array().expect("versions").len(), 2);

    let rm = ok(node.cli(&["--json", "rm", "pics/2024/photo.raw"]));
    assert!(rm["purge_at_ms"].as_i64().expect("purge_at") > 0);
    assert!(!node.cli(&["stat", "pics/2024/photo.raw"]).status.success());
    let trash = ok(node.cli(&["--json", "ls", "--trash", "-r", "pics"]));
    assert_eq!(trash["objects"].as_array().expect("objects").len(), 1);
    ok(node.cli(&["--json", "undelete", "pics/2024/photo.raw"]));
    ok(node.cli(&["--json", "stat", "pics/2024/photo.raw"]));

    let status = ok(node.cli(&["--json", "status"]));
    assert_eq!(status["chunk_count"], 3);
    assert_eq!(status["object_count"], 1);
    assert!(status["disk_total_bytes"].as_u64().expect("disk") > 0);

    // Text output for people.
    let text = node.cli(&["ls", "pics/2024/"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("2024/photo.raw"));
    let tenant = ok(node.cli(&["--json", "tenant", "create", "carol"]));
    assert!(tenant["token"].as_str().expect("token").starts_with("stk_"));
    let completions = node.cli(&["completions", "bash"]);
    assert!(
        completions.status.success()
            && String::from_utf8_lossy(&completions.stdout).contains("strata")
    );
}

#[test]
fn errors_are_one_line_with_non_zero_exit() {
    let node = Node::start();
    let check = |out: std::process::Output, needle: &str| {
        assert!(!out.status.success(), "expected failure");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: ") && err.trim_end().lines().count() == 1,
            "not one line: {err}"
        );
        assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
    };
    check(
        node.cli(&["--token", "stk_wrong", "stat", "b/k"]),
        "Unauthenticated",
    );
    check(node.cli(&["stat", "bucket/missing"]), "NotFound");
    check(node.cli(&["stat", "no-key-here"]), "not BUCKET/KEY");
    check(
        node.cli(&["--endpoint", "http://127.0.0.1:1", "status"]),
        "cannot connect to http://127.0.0.1:1",
    );
    check(
        node.cli(&["put", "/nonexistent/file", "b/k"]),
        "/nonexistent/file",
    );
    check(
        node.cli(&["--admin-token", "stk_wrong", "status"]),
        "Unauthenticated",
    );
    let json = node.cli(&["--json", "stat", "bucket/missing"]);
    assert!(!json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json error");
    assert!(v["error"].as_str().expect("error").contains("not found"));
}

#[test]
fn get_to_a_device_writes_in_place() {
    let node = Node::start();
    let src = write_file(node.root.path(), "f", &data(100_000, 3));
    let put = node.cli(&["put", src.to_str().expect("path"), "devices/f"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let got = node.cli(&["get", "devices/f", "-o", "/dev/null"]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata("/dev/null")
            .expect("stat")
            .file_type()
            .is_char_device(),
        "/dev/null was replaced"
    );
    let stdout = node.cli(&["get", "devices/f", "-o", "-"]);
    assert!(stdout.status.success());
    assert_eq!(stdout.stdout.len(), 100_000);
}

#[test]
fn buckets_and_tokens() {
    let node = Node::start();
    let made = ok(node.cli(&["--json", "bucket", "create", "photos"]));
    assert_eq!(made["bucket"], "photos");
    let dup = node.cli(&["bucket", "create", "photos"]);
    assert!(
        !dup.status.success() && String::from_utf8_lossy(&dup.stderr).contains("AlreadyExists")
    );
    let src = write_file(node.root.path(), "f", b"hello");
    ok(node.cli(&[
        "--json",
        "put",
        src.to_str().expect("path"),
        "docs/hello.txt",
    ]));
    let list = ok(node.cli(&["--json", "bucket", "list"]));
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|b| b["bucket"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["docs", "photos"]);
    let busy = node.cli(&["bucket", "delete", "docs"]);
    assert!(
        !busy.status.success() && String::from_utf8_lossy(&busy.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    ok(node.cli(&["--json", "bucket", "delete", "photos"]));
    let missing = node.cli(&["bucket", "delete", "photos"]);
    assert!(
        !missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("NotFound")
    );

    // Tokens: a second token for the default tenant works, is listed, and stops working once revoked.
    let made = ok(node.cli(&["--json", "token", "create", "default"]));
    let token = made["token"].as_str().expect("token").to_owned();
    let with_new = |args: &[&str]| {
        std::process::Command::new(bin("strata"))
            .args(args)
            .env("STRATA_ENDPOINT", &node.endpoint)
            .env("STRATA_TOKEN", &token)
            .output()
            .expect("run")
    };
    assert!(with_new(&["stat", "docs/hello.txt"]).status.success());
    let tokens = ok(node.cli(&["--json", "token", "list"]));
    let all = tokens.as_array().expect("array");
    assert_eq!(all.len(), 3, "{tokens}");
    assert_eq!(all.iter().filter(|t| t["admin"] == true).count(), 1);
    let new_id = all
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .find(|id| {
            blake3::hash(token.as_bytes())
                .to_hex()
                .starts_with(id.as_str())
        })
        .expect("new token listed");
    ok(node.cli(&["--json", "token", "revoke", &new_id]));
    let refused = with_new(&["stat", "docs/hello.txt"]);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated")
    );
    assert!(!node.cli(&["token", "create", "nobody"]).status.success());
    // The last admin token cannot be revoked.
    let admin_id = all
        .iter()
        .find(|t| t["admin"] == true)
        .and_then(|t| t["id"].as_str())
        .expect("admin id")
        .to_owned();
    let last = node.cli(&["token", "revoke", &admin_id]);
    assert!(
        !last.status.success()
            && String::from_utf8_lossy(&last.stderr).contains("last admin token")
    );
    // Wrong admin token, unknown node, unreachable endpoint: one-line errors.
    assert!(
        !node
            .cli(&["--admin-token", "stk_x", "token", "list"])
            .status
            .success()
    );
    let unknown = node.cli(&["node", "remove", "12345"]);
    assert!(
        !unknown.status.success()
            && String::from_utf8_lossy(&unknown.stderr).contains("not a member")
    );
    assert!(
        !node
            .cli(&["--endpoint", "http://127.0.0.1:1", "bucket", "list"])
            .status
            .success()
    );
}

#[test]
fn layout_commands_stage_review_apply_and_refuse_bad_input() {
    let node = Node::start();
    // A dev node puts itself in layout v1 with one copy per chunk.
    let shown = ok(node.cli(&["--json", "layout", "show"]));
    assert_eq!(shown["current"]["version"], 1);
    assert_eq!(shown["current"]["replication"], 1);
    assert_eq!(
        shown["current"]["nodes"].as_array().expect("nodes").len(),
        1
    );
    assert!(shown["staged"].is_null());
    let me = shown["current"]["nodes"][0]["raft_id"]
        .as_u64()
        .expect("raft id");

    // Stage a zone/capacity change and a replication change; review; revert; stage; apply.
    let staged = ok(node.cli(&[
        "--json",
        "layout",
        "assign",
        "node-1",
        "--zone",
        "rack-a",
        "--capacity",
        "2TB",
    ]));
    assert_eq!(staged["staged"]["version"], 2);
    assert_eq!(staged["staged"]["nodes"][0]["zone"], "rack-a");
    assert_eq!(
        staged["staged"]["nodes"][0]["capacity"],
        2_000_000_000_000u64
    );
    assert_eq!(
        staged["current"]["nodes"][0]["zone"], "default",
        "nothing applied yet"
    );
    let text = node.cli(&["layout", "show"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("STAGED layout v2") && text.contains("rack-a"),
        "{text}"
    );
    ok(node.cli(&["--json", "layout", "revert"]));
    let reverted = node.cli(&["layout", "revert"]);
    assert!(
        !reverted.status.success()
            && String::from_utf8_lossy(&reverted.stderr).contains("no layout change is staged")
    );
    ok(node.cli(&[
        "--json",
        "layout",
        "assign",
        &me.to_string(),
        "--zone",
        "rack-a",
    ]));
    ok(node.cli(&["--json", "layout", "replication", "2"]));
    // The wrong version is refused with the right one named.
    let wrong = node.cli(&["layout", "apply", "7"]);
    assert!(
        !wrong.status.success()
            && String::from_utf8_lossy(&wrong.stderr).contains("version 2, not 7")
    );
    let applied = ok(node.cli(&["--json", "layout", "apply", "2"]));
    assert_eq!(applied["current"]["version"], 2);
    assert_eq!(applied["current"]["replication"], 2);
    assert_eq!(applied["current"]["write_quorum"], 2);
    assert_eq!(applied["current"]["effective_replication"], 1);
    assert!(
        applied["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w.as_str().unwrap_or("").contains("only 1 active node")),
        "{applied}"
    );

    // The status table carries the layout columns.
    let status = ok(node.cli(&["--json", "status"]));
    assert_eq!(status["layout_version"], 2);
    let row = &status["nodes"][0];
    assert_eq!(row["zone"], "rack-a");
    assert_eq!(row["state"], "active");
    assert_eq!(row["reachable"], true);
    assert!(row["rebalance"]["layout_version"].is_u64());

    // Bad input: unknown node, bad zone, bad capacity, bad replication, draining the only node.
    for (args, says) in [
        (
            vec!["layout", "assign", "nope", "--zone", "z"],
            "no member of the cluster",
        ),
        (
            vec!["layout", "assign", "node-1", "--zone", "bad zone"],
            "zone",
        ),
        (
            vec![
                "layout",
                "assign",
                "node-1",
                "--zone",
                "z",
                "--capacity",
                "12 parsecs",
            ],
            "unit",
        ),
        (
            vec!["layout", "replication", "9"],
            "replication factor must be 1..=5",
        ),
        (vec!["layout", "remove", "12345"], "no member"),
    ] {
        let out = node.cli(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        // The cause is on the first line (argument errors from clap add a hint after it).
        let first = err.lines().next().unwrap_or("");
        assert!(
            !out.status.success() && first.contains(says),
            "{args:?}: {err}"
        );
    }
    let drain = node.cli(&["node", "drain", "node-1"]);
    assert!(
        !drain.status.success()
            && String::from_utf8_lossy(&drain.stderr).contains("no active node"),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    // A refused apply leaves the drain staged; revert it.
    ok(node.cli(&["--json", "layout", "revert"]));
    assert!(ok(node.cli(&["--json", "layout", "show"]))["staged"].is_null());
}
