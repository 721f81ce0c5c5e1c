//! `strata-node dev` on embedded defaults: ./data, 127.0.0.1:7400 or the first free port after
//! it, a tenant whose token is printed once and saved with mode 0600.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::bin;

#[test]
fn dev_uses_data_dir_free_port_and_prints_the_token_once() {
    let cwd = tempfile::tempdir().expect("tempdir");
    // Hold a port so the node has to take a later one.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let start = |cwd: &std::path::Path| {
        Command::new(bin("strata-node"))
            .args([
                "dev",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn")
    };
    let read_banner = |child: &mut std::process::Child| -> String {
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut text = String::new();
        while Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) => {
                    let done = l.starts_with("  strata put");
                    text.push_str(&l);
                    text.push('\n');
                    if done {
                        break;
                    }
                }
                _ => break,
            }
        }
        text
    };

    let mut child = start(cwd.path());
    let banner = read_banner(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        banner.contains("gRPC endpoint : http://127.0.0.1:"),
        "{banner}"
    );
    assert!(
        !banner.contains(&format!("127.0.0.1:{port}\n")),
        "took the busy port: {banner}"
    );
    let data = cwd.path().join("data");
    let token = std::fs::read_to_string(data.join("tenant.token"))
        .expect("tenant.token")
        .trim()
        .to_owned();
    assert!(
        token.starts_with("stk_") && banner.contains(&token),
        "the token is not printed: {banner}"
    );
    for f in ["tenant.token", "admin.token"] {
        let mode = std::fs::metadata(data.join(f))
            .expect("token file")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} has mode {mode:o}");
    }

    // Second start on the same data: the token is not shown again.
    let mut child = start(cwd.path());
    let banner = read_banner(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        banner.contains("tenant.token (created at first start)"),
        "{banner}"
    );
    assert!(!banner.contains(&token), "the token was printed twice");
    drop(busy);
}

#[test]
fn dev_nodes_3_forms_a_cluster_and_stops_with_its_children() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let port = strata_tests::free_port();
    let mut child = Command::new(bin("strata-node"))
        .args([
            "dev",
            "--nodes",
            "3",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut text = String::new();
    let mut members = 0;
    while Instant::now() < deadline {
        let Some(Ok(l)) = lines.next() else { break };
        if l.trim_start().starts_with("node-") {
            members += 1;
        }
        text.push_str(&l);
        text.push('\n');
        if members == 3 {
            break;
        }
    }
    assert!(text.contains("A 3-node cluster is running"), "{text}");
    let data = cwd.path().join("data");
    let pids: Vec<u64> = (1..=3)
        .map(|k| {
            let info: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(data.join(format!("node-{k}/node.json")))
                    .expect("node.json"),
            )
            .expect("json");
            info["pid"].as_u64().expect("pid")
        })
        .collect();
    // Every member is a voter, as the first node's status reports.
    let admin_token =
        std::fs::read_to_string(data.join("node-1/admin.token")).expect("admin token");
    let status = Command::new(bin("strata"))
        .args([
            "--json",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--admin-token",
            admin_token.trim(),
            "status",
        ])
        .output()
        .expect("status");
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let nodes = s["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{s}");
    assert!(nodes.iter().all(|n| n["voter"] == true), "{s}");

    // SIGTERM stops the first node, which stops the other two.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let stopped = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < stopped, "dev did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in &pids[1..] {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "child node {pid} outlived `strata-node dev`");
    }
}
