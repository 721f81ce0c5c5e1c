//! deploy/compose.yaml runs for real: images from local parts (deploy/images/build.sh: a
//! debootstrapped base and this build's binaries), `up` with one command, a put and a get
//! through each node's published port, Prometheus scraping all three nodes, then `down`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use strata_admin::client;
use strata_tests::{bin, get, put};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `docker compose` (v2) where it exists, else `docker-compose` (v1).
fn compose_cmd() -> Command {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    }
}

/// The compose project, taken down (volumes too) however the test ends.
struct Project {
    name: String,
    ports: [u16; 4],
}

impl Project {
    fn cmd(&self) -> Command {
        let mut c = compose_cmd();
        c.current_dir(repo())
            .args(["-p", &self.name, "-f", "deploy/compose.yaml"])
            .env("STRATA_PORT_1", self.ports[0].to_string())
            .env("STRATA_PORT_2", self.ports[1].to_string())
            .env("STRATA_PORT_3", self.ports[2].to_string())
            .env("STRATA_PROMETHEUS_PORT", self.ports[3].to_string());
        c
    }

    fn service_state(&self, service: &str) -> String {
        let id = run(self.cmd().args(["ps", "-q", service]));
        if id.is_empty() {
            return String::new();
        }
        run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &id,
        ]))
    }

    fn logs(&self) -> String {
        let out = self
            .cmd()
            .args(["logs", "--no-color", "--tail", "40"])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["down", "-v", "--remove-orphans", "-t", "5"])
            .output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_starts_a_working_three_node_cluster() {
    // The images, from this build's binaries.
    let binaries = bin("strata-node").parent().expect("target dir").to_owned();
    run(Command::new("bash")
        .current_dir(repo())
        .arg("deploy/images/build.sh")
        .arg("--binaries")
        .arg(&binaries));

    let project = Project {
        name: format!("strata-compose-test-{}", std::process::id()),
        ports: [free_port(), free_port(), free_port(), free_port()],
    };
    run(project.cmd().args(["up", "-d", "--no-build"]));

    // `setup` puts the nodes in the layout and makes the tenant and bucket, then exits 0.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let state = project.service_state("setup");
        if state == "exited 0" {
            break;
        }
        assert!(
            !state.starts_with("exited") && Instant::now() < deadline,
            "setup did not finish ({state:?}):\n{}",
            project.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ca = run(project
        .cmd()
        .args(["exec", "-T", "strata-1", "cat", "/ca/ca.crt"]));
    let token = run(project
        .cmd()
        .args(["exec", "-T", "strata-1", "cat", "/ca/tenant.token"]));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca).expect("write CA");

    // A put through each node's published port, read back through the next node.
    let mut stores = Vec::new();
    for port in &project.ports[..3] {
        let ch = client::connect_ca(&format!("https://localhost:{port}"), Some(&ca_file))
            .await
            .unwrap_or_else(|e| panic!("port {port}: {e:#}\n{}", project.logs()));
        stores.push(client::storage(ch, &token).expect("storage client"));
    }
    for i in 0..3 {
        let bytes = strata_tests::data(3 << 20, i as u64 + 1);
        let key = format!("through-node-{}", i + 1);
        let r = put(&mut stores[i], dir.path(), "demo", &key, &bytes).await;
        assert_eq!(r.info.size, bytes.len() as u64);
        let back = get(&mut stores[(i + 1) % 3], "demo", &key, 0, 0, 0)
            .await
            .unwrap_or_else(|e| panic!("get {key} through node {}: {e:#}", (i + 1) % 3 + 1));
        assert!(
            back == bytes,
            "{key} read back through another node differs"
        );
    }

    // All three nodes in the layout, each holding chunks (3 copies of each).
    let status = run(Command::new(bin("strata"))
        .args([
            "--endpoint",
            &format!("https://localhost:{}", project.ports[1]),
        ])
        .arg("--ca-file")
        .arg(&ca_file)
        .args(["--token", &token, "--json", "ls", "demo"]));
    for i in 1..=3 {
        assert!(
            status.contains(&format!("through-node-{i}")),
            "listing misses a key: {status}"
        );
    }

    // Prometheus (Debian's package, built locally) scrapes all three nodes.
    let url = format!("http://127.0.0.1:{}/api/v1/targets", project.ports[3]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, body) = strata_tests::http_get(&url).await;
        if code == 200 && body.matches("\"health\":\"up\"").count() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus does not report 3 healthy targets within 90 s ({code}): {body}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
