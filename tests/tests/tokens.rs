//! Token scopes, bucket limits and expiry, through the CLI against a real node: a read-only
//! token cannot write, a bucket-limited one sees and touches only its bucket, an expired one is
//! UNAUTHENTICATED "token expired"; refused calls store nothing.

use std::time::Duration;

use strata_tests::*;

fn cli_as(node: &Node, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("strata"))
        .args(args)
        .env("STRATA_ENDPOINT", &node.endpoint)
        .env("STRATA_TOKEN", token)
        .env("STRATA_ADMIN_TOKEN", &node.admin_token)
        .env_remove("STRATA_TOKEN_FILE")
        .output()
        .expect("run strata")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A new token for the "default" tenant with these `strata token create` flags.
fn token(node: &Node, flags: &[&str]) -> String {
    let mut args = vec!["--json", "token", "create", "default"];
    args.extend_from_slice(flags);
    let v: serde_json::Value = serde_json::from_str(&ok(node.cli(&args))).expect("json");
    v["token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_bucket_limits_and_expiry_are_enforced_and_refusals_store_nothing() {
    let node = Node::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = write_file(dir.path(), "f", &data(100_000, 1));
    let f = file.to_str().expect("path");
    ok(node.cli(&["put", f, "photos/a"]));
    ok(node.cli(&["put", f, "docs/a"]));

    // Read-only: reads work, every write is PERMISSION_DENIED and stores nothing.
    let ro = token(&node, &["--scope", "read"]);
    assert!(ok(cli_as(&node, &ro, &["ls", "photos"])).contains("a"));
    let back = dir.path().join("back");
    ok(cli_as(
        &node,
        &ro,
        &["get", "photos/a", "-o", back.to_str().expect("p")],
    ));
    for args in [
        vec!["put", f, "photos/b"],
        vec!["rm", "photos/a"],
        vec!["bucket", "create", "newbucket"],
    ] {
        let err = refused(cli_as(&node, &ro, &args));
        assert!(
            err.contains("read-only") && err.contains("PermissionDenied"),
            "{args:?}: {err}"
        );
    }
    let listing = ok(node.cli(&["ls", "photos"]));
    assert!(
        listing.contains("a") && !listing.contains(" b"),
        "{listing}"
    );
    assert!(!ok(node.cli(&["bucket", "list"])).contains("newbucket"));

    // Limited to one bucket: that bucket works, any other is refused, listings show only it.
    let one = token(&node, &["--bucket", "photos"]);
    ok(cli_as(&node, &one, &["put", f, "photos/c"]));
    let err = refused(cli_as(&node, &one, &["put", f, "docs/c"]));
    assert!(err.contains("limited to bucket photos"), "{err}");
    let err = refused(cli_as(&node, &one, &["ls", "docs"]));
    assert!(err.contains("limited to bucket photos"), "{err}");
    let buckets = ok(cli_as(&node, &one, &["bucket", "list"]));
    assert!(
        buckets.contains("photos") && !buckets.contains("docs"),
        "{buckets}"
    );
    assert!(!ok(node.cli(&["ls", "docs"])).contains(" c"));

    // Expiring: works until its time, then UNAUTHENTICATED "token expired".
    let brief = token(&node, &["--expires", "2s"]);
    ok(cli_as(&node, &brief, &["ls", "photos"]));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let err = refused(cli_as(&node, &brief, &["ls", "photos"]));
    assert!(
        err.contains("token expired") && err.contains("Unauthenticated"),
        "{err}"
    );

    // The list shows each token's limits; bad flags are refused with what is allowed.
    let list: serde_json::Value =
        serde_json::from_str(&ok(node.cli(&["--json", "token", "list"]))).expect("json");
    let scopes: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["scope"].as_str())
        .collect();
    assert!(
        scopes.contains(&"read") && scopes.contains(&"admin"),
        "{scopes:?}"
    );
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|t| t["bucket"] == "photos")
    );
    let err = refused(node.cli(&["token", "create", "default", "--scope", "everything"]));
    assert!(err.contains("not one of read, read-write"), "{err}");
    let err = refused(node.cli(&["token", "create", "default", "--bucket", "NO"]));
    assert!(err.contains("InvalidArgument"), "{err}");
}
