//! A real Prometheus (Debian's package, installed by tests/run.sh) scrapes a local 3-node
//! cluster; promtool checks every node's metrics and the deploy/ configuration and rules.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use strata_tests::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

fn require(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{tool} is not installed: run tests/run.sh (it installs Debian's prometheus package)"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn deploy_config_and_rules_pass_promtool() {
    let promtool = require("promtool");
    let dir = repo_root().join("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn query(api: &str, q: &str) -> f64 {
    let encoded: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (_, body) = http_get(&format!("{api}/api/v1/query?query={encoded}")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_cluster_and_sees_uploads() {
    let promtool = require("promtool");
    let prometheus = require("prometheus");
    let cluster = TestCluster::start(3, &[]);

    // Every node's output passes promtool's metrics lint, and /health says it serves.
    for node in &cluster.nodes {
        let (code, body) = http_get(&node.metrics).await;
        assert_eq!(code, 200);
        let mut lint = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        use std::io::Write;
        lint.stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("feed promtool");
        let out = lint.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics on {}: {}{}",
            node.metrics,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, health) = http_get(&format!("{}/health", http_base(node))).await;
        assert_eq!(code, 200, "{health}");
        assert!(health.contains("\"serving\":true"), "{health}");
    }

    // A real Prometheus on loopback scrapes all three every second.
    let dir = tempfile::tempdir().expect("tmp");
    let targets: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("\"{}\"", http_base(n).trim_start_matches("http://")))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: strata\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let port = free_port();
    let child = Command::new(&prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
        .spawn()
        .expect("start prometheus");
    let _prom = Prometheus(child);
    let api = format!("http://127.0.0.1:{port}");
    wait_until(60, "Prometheus to report all three targets up", || {
        let api = api.clone();
        async move { query(&api, "sum(up{job=\"strata\"})").await == 3.0 }
    })
    .await;
    wait_until(30, "Raft gauges to show one leader", || {
        let api = api.clone();
        async move { query(&api, "sum(strata_raft_is_leader)").await == 1.0 }
    })
    .await;

    let before = query(&api, "sum(strata_upload_bytes_total)").await;
    assert!(
        before.is_finite(),
        "strata_upload_bytes_total is not scraped"
    );
    let node = &cluster.nodes[1];
    let mut s = node.storage().await;
    put(
        &mut s,
        node.root.path(),
        "metrics",
        "file",
        &data(3 * 1024 * 1024, 1),
    )
    .await;
    wait_until(30, "an upload to move strata_upload_bytes_total", || {
        let api = api.clone();
        async move {
            query(&api, "sum(strata_upload_bytes_total)").await >= before + 3.0 * 1024.0 * 1024.0
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// The dashboard and the alert rules only use metrics the node defines.
#[test]
fn dashboard_and_alerts_use_existing_metrics() {
    let root = repo_root();
    // Metric names are defined in the node's metrics.rs and, for the cold backends, in the
    // strata-cold crate.
    let source = ["node/src/metrics.rs", "cold/src/lib.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).expect("metric definitions"))
        .collect::<Vec<_>>()
        .join("\n");
    let names = |text: &str| -> Vec<String> {
        let mut out = Vec::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while let Some(at) = text[i..].find("strata_") {
            let start = i + at;
            let end = start
                + bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
                    .count();
            out.push(text[start..end].to_owned());
            i = end;
        }
        out
    };
    let defined: Vec<String> = names(&source);
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/strata-dashboard.json"))
        .expect("dashboard");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let alerts =
        std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("alerts");
    for used in names(&dashboard).into_iter().chain(names(&alerts)) {
        let base = used
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            defined.iter().any(|d| d == base),
            "{used} is not a metric the node defines"
        );
    }
}
