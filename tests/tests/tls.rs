//! Trust on the wire, with real processes on loopback: no token, secret or key crosses a
//! connection in plaintext; a certificate from another CA, an expired one, or a removed node's
//! is refused by every other node on gRPC and on QUIC; joining pins the CA before sending the
//! token; join tokens are spent once and expire; certificates renew under traffic with no
//! failed call.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use strata_cluster::ChunkId;
use strata_proto::v1 as pb;
use strata_tests::*;

/// Voting members, as `node` sees them.
async fn voters(node: &Node) -> usize {
    node.status().await.nodes.iter().filter(|n| n.voter).count()
}

fn raft_id(node: &Node) -> u64 {
    identities::of_node(&node.data_dir)
        .node()
        .expect("a node certificate names its node")
}

/// Whether a member's internal service accepts a call from `id`.
async fn grpc_accepts(node: &Node, id: &strata_node::tls::Identity) -> bool {
    let ca = std::fs::read_to_string(node.ca_file()).expect("ca");
    match identities::internal(&node.endpoint, id, &ca).await {
        Err(_) => false,
        Ok(mut c) => c.identify(pb::IdentifyRequest {}).await.is_ok(),
    }
}

/// Whether a member's QUIC endpoint serves `id`.
async fn quic_accepts(node: &Node, id: strata_node::tls::Identity) -> bool {
    identities::quic(id)
        .has_chunks(node_addr(node), vec![ChunkId::of(b"x")])
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_expired_and_removed_nodes_are_refused_on_grpc_and_quic() {
    let first = Node::start();
    let second = TestCluster::joiner(&first, &[]);
    let third = TestCluster::joiner(&first, &[]);
    let members = [&first, &second];

    // A member's own certificate is accepted by the others (the control).
    for node in members {
        assert!(grpc_accepts(node, &identities::of_node(&third.data_dir)).await);
        assert!(quic_accepts(node, identities::of_node(&third.data_dir)).await);
    }
    let third_id = raft_id(&third);

    // Another cluster's CA, naming a real member.
    for node in members {
        assert!(!grpc_accepts(node, &identities::foreign(third_id)).await);
        assert!(!quic_accepts(node, identities::foreign(third_id)).await);
    }

    // Signed by this cluster's CA, but expired.
    let mut expired: Vec<_> = (0..4)
        .map(|_| identities::signed_by_node_ca(&first.data_dir, third_id, Duration::ZERO))
        .collect();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for node in members {
        let (g, q) = (expired.pop().expect("cert"), expired.pop().expect("cert"));
        assert!(!grpc_accepts(node, &g).await, "expired accepted on gRPC");
        assert!(!quic_accepts(node, q).await, "expired accepted on QUIC");
    }

    // A QUIC connection opened before the removal stops serving once it commits.
    let open = identities::quic(identities::of_node(&third.data_dir));
    let addr = node_addr(&first);
    open.has_chunks(addr, vec![ChunkId::of(b"x")])
        .await
        .expect("served before the removal");

    // Removed: the third node's own, still valid, certificate is refused from then on.
    first
        .admin()
        .await
        .remove_node(pb::RemoveNodeRequest { raft_id: third_id })
        .await
        .expect("remove node");
    for node in members {
        assert!(
            !grpc_accepts(node, &identities::of_node(&third.data_dir)).await,
            "a removed node's certificate was accepted on gRPC by {}",
            node.endpoint
        );
        assert!(
            !quic_accepts(node, identities::of_node(&third.data_dir)).await,
            "a removed node's certificate was accepted on QUIC by {}",
            node.endpoint
        );
    }
    assert!(
        open.has_chunks(addr, vec![ChunkId::of(b"x")])
            .await
            .is_err(),
        "a removed node's open QUIC connection was still served"
    );
    // A new certificate for the removed node, signed by the CA, is refused too (revocation is
    // by node, covering every serial it ever had).
    let resigned =
        identities::signed_by_node_ca(&first.data_dir, third_id, Duration::from_secs(600));
    assert!(!grpc_accepts(&second, &resigned).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_pins_the_ca_and_spends_a_token_once() {
    let first = Node::start();
    let t = first.join_token();

    // A wrong CA hash: refused during the TLS handshake, before the token is sent.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = join_fails(&first, &t.token, &wrong);
    assert!(
        err.contains("pinned") && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(
        !first.log().contains("enrolled a new node"),
        "{}",
        first.log()
    );

    // A request that cannot be signed is refused without spending the token.
    let ca = std::fs::read_to_string(first.ca_file()).expect("ca");
    let mut raw = identities::internal(&first.endpoint, &identities::of_node(&first.data_dir), &ca)
        .await
        .expect("connect");
    let refused = raw
        .enroll(pb::EnrollRequest {
            token: t.token.clone(),
            raft_id: 77,
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            names: vec![],
        })
        .await
        .expect_err("a bad CSR");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // The same token with the right hash still works: it was never spent.
    let mut second = Node::start_with(&[
        ("STRATA_JOIN", &tls_url(&first.endpoint)),
        ("STRATA_JOIN_TOKEN", &t.token),
        ("STRATA_CA_HASH", &t.ca_hash),
    ]);
    second.admin_token = first.admin_token.clone();
    assert_eq!(voters(&first).await, 2);

    // Used once: refused.
    let err = join_fails(&first, &t.token, &t.ca_hash);
    assert!(err.contains("join token already used"), "{err}");
    // Never issued: refused.
    let err = join_fails(&first, "sjt_0123", &t.ca_hash);
    assert!(err.contains("join token not recognised"), "{err}");
    // Expired: refused.
    let out = first.cli(&["--json", "node", "token", "create", "--ttl", "1s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let short: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = join_fails(&first, short["token"].as_str().expect("token"), &t.ca_hash);
    assert!(err.contains("join token expired"), "{err}");
    // A malformed hash is refused before any connection.
    let err = join_fails(&first, &t.token, "md5:abc");
    assert!(err.contains("--ca-hash must be sha256:"), "{err}");

    // Every admin call leaves an audit line: who, which call, its outcome.
    let log = first.log();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("audit") && l.contains("CreateJoinToken"))
        .collect();
    assert!(audit.len() >= 2, "{log}");
    assert!(
        audit
            .iter()
            .all(|l| l.contains("who=admin token ") && l.contains("outcome=Ok")),
        "{audit:?}"
    );
    // A refused admin call is audited too.
    let out = std::process::Command::new(bin("strata"))
        .args(["node", "token", "create"])
        .env("STRATA_ENDPOINT", &first.endpoint)
        .env("STRATA_ADMIN_TOKEN", "stk_not_a_token")
        .output()
        .expect("cli");
    assert!(!out.status.success());
    assert!(
        first
            .log()
            .lines()
            .any(|l| l.contains("audit") && l.contains("without the admin token")),
        "{}",
        first.log()
    );
}

/// A TCP proxy on loopback that records every byte both ways. Connections wait until the
/// target is set (the node behind it starts after the proxy's address is known).
struct Tap {
    addr: SocketAddr,
    target: Arc<OnceLock<SocketAddr>>,
    bytes: Arc<Mutex<Vec<u8>>>,
    /// The first byte each client sent (0x16: a TLS handshake).
    firsts: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Tap {
    fn start() -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tap");
        listener.set_nonblocking(true).expect("nonblocking");
        let tap = Tap {
            addr: listener.local_addr().expect("addr"),
            target: Arc::new(OnceLock::new()),
            bytes: Arc::new(Mutex::new(Vec::new())),
            firsts: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (target, bytes, stop) = (tap.target.clone(), tap.bytes.clone(), tap.stop.clone());
        let firsts = tap.firsts.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (target, bytes, firsts) = (target.clone(), bytes.clone(), firsts.clone());
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(30);
                    let to = loop {
                        if let Some(t) = target.get() {
                            break *t;
                        }
                        if Instant::now() > until {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    };
                    let _ = client.set_nonblocking(false);
                    let Ok(server) = TcpStream::connect(to) else {
                        return;
                    };
                    let pump =
                        |mut from: TcpStream,
                         mut to: TcpStream,
                         bytes: Arc<Mutex<Vec<u8>>>,
                         firsts: Option<Arc<Mutex<Vec<u8>>>>| {
                            let mut buf = vec![0u8; 64 * 1024];
                            let mut first = true;
                            while let Ok(n) = from.read(&mut buf) {
                                if n == 0 || to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                if first && let Some(f) = &firsts {
                                    f.lock().expect("tap").push(buf[0]);
                                }
                                first = false;
                                bytes.lock().expect("tap").extend_from_slice(&buf[..n]);
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        };
                    let (c2, s2) = (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    );
                    let b2 = bytes.clone();
                    let up = std::thread::spawn(move || pump(c2, s2, b2, Some(firsts)));
                    pump(server, client, bytes, None);
                    let _ = up.join();
                });
            }
        });
        tap
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    fn forward_to_port(&self, port: u16) {
        let _ = self.target.set(SocketAddr::from(([127, 0, 0, 1], port)));
    }

    fn first_bytes(&self) -> Vec<u8> {
        self.firsts.lock().expect("tap").clone()
    }

    fn captured(&self) -> Vec<u8> {
        self.bytes.lock().expect("tap").clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The longest base64 line of a PEM file's body (what a leaked key would show).
fn pem_body(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .expect("pem")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .max_by_key(|l| l.len())
        .expect("pem body")
        .to_owned()
}

fn cli_via(
    endpoint: &str,
    ca: &std::path::Path,
    admin: &str,
    tenant: &str,
    args: &[&str],
) -> String {
    let out = std::process::Command::new(bin("strata"))
        .args(args)
        .env("STRATA_ENDPOINT", endpoint)
        .env("STRATA_CA_FILE", ca)
        .env("STRATA_ADMIN_TOKEN", admin)
        .env("STRATA_TOKEN", tenant)
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "strata {args:?}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An admin command through `endpoint` with `--json`; its output parsed.
fn cli_json(endpoint: &str, ca: &std::path::Path, admin: &str, args: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = ["--json"].iter().chain(args).copied().collect();
    serde_json::from_str(&cli_via(endpoint, ca, admin, "", &args)).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_secret_or_key_crosses_the_wire_in_plaintext() {
    // Two run-mode nodes, each reached by the other (and by the CLI) only through a tap.
    let tap1 = Tap::start();
    let tap2 = Tap::start();
    let (port1, port2) = (free_port(), free_port());
    tap1.forward_to_port(port1);
    tap2.forward_to_port(port2);
    let first = Node::start_run(
        port1,
        &[
            ("STRATA_INIT", "true"),
            ("STRATA_ADVERTISE", &tap1.url("https")),
        ],
    );
    assert!(first.endpoint.starts_with("https://"), "{}", first.endpoint);
    let ca = first.ca_file();
    let via = tap1.url("https");
    let admin = first.admin_token.clone();
    let join = cli_json(&via, &ca, &admin, &["node", "token", "create"]);
    let join_token = join["token"].as_str().expect("token").to_owned();
    let second = Node::start_run(
        port2,
        &[
            ("STRATA_JOIN", &via),
            ("STRATA_JOIN_TOKEN", &join_token),
            ("STRATA_CA_HASH", join["ca_hash"].as_str().expect("hash")),
            ("STRATA_ADVERTISE", &tap2.url("https")),
        ],
    );
    // Tenant, an upload and a download through the tap, over TLS.
    let tenant = cli_json(&via, &ca, &admin, &["tenant", "create", "alice"]);
    let tenant_token = tenant["token"].as_str().expect("token").to_owned();
    let dir = tempfile::tempdir().expect("tmp");
    let marker = "PLAINTEXT-MARKER-".repeat(4096);
    let file = write_file(dir.path(), "f", marker.as_bytes());
    let file_arg = file.to_str().expect("path");
    let back = dir.path().join("back");
    cli_via(
        &via,
        &ca,
        &admin,
        &tenant_token,
        &["put", file_arg, "photos/f"],
    );
    cli_via(
        &via,
        &ca,
        &admin,
        &tenant_token,
        &["get", "photos/f", "-o", back.to_str().expect("path")],
    );
    assert_eq!(std::fs::read(&back).expect("back"), marker.as_bytes());
    // Raft between the two: the second node is a voter (its traffic went through the taps).
    assert_eq!(voters(&first).await, 2);

    // Every connection through the taps (CLI to node, node to node) was TLS from its first
    // byte. (HTTP/2 may Huffman-code header values, so looking for a token's text alone would
    // not prove much; payload bytes are not coded, and the control below sees them.)
    let firsts: Vec<u8> = [tap1.first_bytes(), tap2.first_bytes()].concat();
    assert!(firsts.len() >= 4, "connections seen: {firsts:?}");
    assert!(
        firsts.iter().all(|b| *b == 0x16),
        "a non-TLS connection: {firsts:?}"
    );
    let mut captured = tap1.captured();
    captured.extend(tap2.captured());
    assert!(
        captured.len() > 100_000,
        "too little traffic captured ({} bytes)",
        captured.len()
    );
    let secrets = [
        ("admin token", admin.clone()),
        ("tenant token", tenant_token.clone()),
        ("join token", join_token.clone()),
        (
            "CA key",
            pem_body(&first.data_dir.join("tls").join("ca.key")),
        ),
        (
            "first node key",
            pem_body(&first.data_dir.join("tls").join("node.key")),
        ),
        (
            "second node key",
            pem_body(&second.data_dir.join("tls").join("node.key")),
        ),
        (
            "file contents",
            "PLAINTEXT-MARKER-PLAINTEXT-MARKER".to_owned(),
        ),
    ];
    for (what, secret) in &secrets {
        assert!(
            !contains(&captured, secret),
            "the {what} crossed the wire in plaintext"
        );
    }
    // Nor do the logs show tokens.
    for node in [&first, &second] {
        for (what, secret) in &secrets[..3] {
            assert!(
                !node.log().contains(secret.as_str()),
                "the {what} is in a log"
            );
        }
    }
    // The control: the same tap on a plaintext connection (a dev node on loopback) sees the
    // file's bytes and a plaintext first byte, so the checks above would catch a leak.
    let tap3 = Tap::start();
    let dev = Node::start();
    tap3.forward_to_port(node_addr(&dev).port());
    let out = std::process::Command::new(bin("strata"))
        .args(["put", file_arg, "photos/f"])
        .env("STRATA_ENDPOINT", tap3.url("http"))
        .env("STRATA_TOKEN", &dev.tenant_token)
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(contains(
        &tap3.captured(),
        "PLAINTEXT-MARKER-PLAINTEXT-MARKER"
    ));
    assert!(
        tap3.first_bytes().iter().all(|b| *b == b'P'),
        "{:?}",
        tap3.first_bytes()
    );
    // And a run-mode node refuses plaintext with a message saying why.
    let out = std::process::Command::new(bin("strata"))
        .args(["ls", "photos"])
        .env(
            "STRATA_ENDPOINT",
            first.endpoint.replacen("https://", "http://", 1),
        )
        .env("STRATA_TOKEN", &tenant_token)
        .output()
        .expect("cli");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this node accepts TLS only: use an https:// endpoint"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_traffic_without_a_failed_call() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("strata.toml");
    std::fs::write(&cfg, "[tls]\ncert_lifetime = \"12s\"\n").expect("config");
    let cfg = cfg.to_str().expect("path").to_owned();
    let cluster = TestCluster::start(3, &[("STRATA_CONFIG", &cfg)]);
    let serials = |c: &TestCluster| -> Vec<String> {
        c.nodes
            .iter()
            .map(|n| identities::of_node(&n.data_dir).facts.serial.clone())
            .collect()
    };
    let before = serials(&cluster);
    // 30 s of uploads and reads through every node: chunks cross QUIC (R = 3), metadata
    // crosses gRPC to the leader, while each node renews about every 8 s.
    let files = tempfile::tempdir().expect("tmp");
    let until = Instant::now() + Duration::from_secs(30);
    let mut calls = 0;
    let mut failed = Vec::new();
    let mut i = 0usize;
    while Instant::now() < until && i < 2_000 {
        let node = &cluster.nodes[i % 3];
        let bytes = data(300_000 + i * 17, i as u64);
        let path = write_file(files.path(), "f", &bytes);
        let mut s = node.storage().await;
        let key = format!("k{i}");
        let put = strata_admin::transfer::upload(
            &mut s,
            &path,
            "renew",
            &key,
            "",
            64 * 1024,
            Arc::new(strata_admin::transfer::NoProgress),
        )
        .await;
        calls += 1;
        match put {
            Err(e) => failed.push(format!("put {key} via {}: {e:#}", node.endpoint)),
            Ok(_) => {
                let mut r = cluster.nodes[(i + 1) % 3].storage().await;
                calls += 1;
                match get(&mut r, "renew", &key, 0, 0, 0).await {
                    Ok(got) if got == bytes => {}
                    Ok(_) => failed.push(format!("get {key}: wrong bytes")),
                    Err(e) => failed.push(format!("get {key}: {e:#}")),
                }
            }
        }
        i += 1;
    }
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed: {failed:?}",
        failed.len()
    );
    assert!(calls > 20, "too few calls: {calls}");
    let after = serials(&cluster);
    for (k, node) in cluster.nodes.iter().enumerate() {
        assert_ne!(before[k], after[k], "node {k} kept its certificate");
        let (_, text) = http_get(&node.metrics).await;
        let renewed: f64 = text
            .lines()
            .filter(|l| l.starts_with("strata_cert_renewals_total") && l.contains("outcome=\"ok\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(renewed >= 2.0, "node {k} renewed {renewed} times:\n{text}");
        assert!(
            !text.contains("outcome=\"failed\""),
            "node {k} had a failed renewal"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_api_certificate_is_shown_to_clients_and_members_keep_node_certificates() {
    // An API certificate from the operator's own CA (here made with the same tooling).
    let dir = tempfile::tempdir().expect("tmp");
    let own_ca = strata_node::tls::pki::Ca::generate().expect("CA");
    let (key, csr) = strata_node::tls::pki::new_key_and_csr().expect("csr");
    let cert = own_ca
        .sign(&csr, 0, &["127.0.0.1".into()], Duration::from_secs(3600))
        .expect("sign");
    let (cert_path, key_path, ca_path) = (
        dir.path().join("api.crt"),
        dir.path().join("api.key"),
        dir.path().join("own-ca.crt"),
    );
    std::fs::write(&cert_path, &cert).expect("cert");
    std::fs::write(&key_path, &key).expect("key");
    std::fs::write(&ca_path, &own_ca.cert_pem).expect("ca");
    let cfg = dir.path().join("strata.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    )
    .expect("config");
    let cfg = cfg.to_str().expect("path").to_owned();
    let first = Node::start_with(&[("STRATA_CONFIG", &cfg)]);
    let second = TestCluster::joiner(&first, &[("STRATA_CONFIG", &cfg)]);
    let https = tls_url(&first.endpoint);
    let status = |ca: &std::path::Path| {
        std::process::Command::new(bin("strata"))
            .args(["status"])
            .env("STRATA_ENDPOINT", &https)
            .env("STRATA_CA_FILE", ca)
            .env("STRATA_ADMIN_TOKEN", &first.admin_token)
            .output()
            .expect("cli")
    };
    // Clients verify the node with the operator's CA ...
    let out = status(&ca_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... not with the cluster CA, which the API certificate does not chain to.
    let out = status(&first.ca_file());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not signed by the CA in --ca-file"), "{err}");
    // Members still verify each other with node certificates: the second node joined, and
    // it serves reads of metadata committed through the first.
    assert_eq!(voters(&first).await, 2);
    assert!(grpc_accepts(&first, &identities::of_node(&second.data_dir)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_made_ahead_and_a_configured_join_token_bring_up_a_cluster_without_a_manual_step() {
    // What deploy/compose.yaml does: `strata-node ca create`, then every node started with the
    // same join token; the first creates the cluster with that CA and registers the token.
    let dir = tempfile::tempdir().expect("tmp");
    let ca_dir = dir.path().join("ca");
    let out = std::process::Command::new(bin("strata-node"))
        .args(["ca", "create"])
        .arg(&ca_dir)
        .output()
        .expect("ca create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin("strata-node"))
        .args(["ca", "hash"])
        .arg(ca_dir.join("ca.crt"))
        .output()
        .expect("ca hash");
    let ca_hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(ca_hash.starts_with("sha256:"), "{ca_hash}");
    let cfg = dir.path().join("first.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tls]\nca_key = {:?}\n",
            ca_dir.join("ca.key").display().to_string()
        ),
    )
    .expect("config");
    let token = "sjt_0123456789abcdef0123456789abcdef0123456789abcdef";
    let first = Node::start_run(
        0,
        &[
            ("STRATA_INIT", "true"),
            ("STRATA_CONFIG", cfg.to_str().expect("path")),
            ("STRATA_JOIN_TOKEN", token),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(first.ca_file()).expect("ca"),
        std::fs::read_to_string(ca_dir.join("ca.crt")).expect("ca"),
        "the cluster CA is the one made ahead"
    );
    let url = tls_url(&first.endpoint);
    let joiners: Vec<Node> = (0..2)
        .map(|_| {
            Node::start_run(
                0,
                &[
                    ("STRATA_JOIN", url.as_str()),
                    ("STRATA_JOIN_TOKEN", token),
                    ("STRATA_CA_HASH", ca_hash.as_str()),
                ],
            )
        })
        .collect();
    assert_eq!(voters(&first).await, 3);
    for j in &joiners {
        assert!(j.endpoint.starts_with("https://"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_its_certificate_gets_a_new_one_with_a_join_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("strata.toml");
    std::fs::write(&cfg, "[tls]\ncert_lifetime = \"10s\"\n").expect("config");
    let cfg = cfg.to_str().expect("path").to_owned();
    let first = Node::start_with(&[("STRATA_CONFIG", &cfg)]);
    let mut second = TestCluster::joiner(&first, &[("STRATA_CONFIG", &cfg)]);
    // A third voter keeps a quorum while the second is down.
    let _third = TestCluster::joiner(&first, &[("STRATA_CONFIG", &cfg)]);
    let before = identities::of_node(&second.data_dir).facts;
    second.kill();
    // Down until its certificate has expired (bounded: the lifetime is 10 s).
    let until = before.not_after + Duration::from_secs(1);
    while std::time::SystemTime::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its old token is spent: a new one gets it a new certificate, and it is a member again.
    let fresh = first.join_token();
    second.set_env("STRATA_JOIN_TOKEN", &fresh.token);
    second.restart();
    let after = identities::of_node(&second.data_dir).facts;
    assert_ne!(after.serial, before.serial);
    assert_eq!(after.node, before.node, "the same node, not a new one");
    assert!(after.not_after > std::time::SystemTime::now());
    assert_eq!(voters(&first).await, 3);
    assert!(grpc_accepts(&first, &identities::of_node(&second.data_dir)).await);
    let mut s = second.storage().await;
    s.list_buckets(pb::ListBucketsRequest {})
        .await
        .expect("the returned node serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_given_the_ca_key_backup_takes_over_signing_when_the_signer_is_lost() {
    let mut first = Node::start();
    let mut second = TestCluster::joiner(&first, &[]);
    let third = TestCluster::joiner(&first, &[]);
    // The operator's backup of the CA key, then the signer is lost for good.
    let dir = tempfile::tempdir().expect("tmp");
    let backup = dir.path().join("ca.key");
    std::fs::copy(first.data_dir.join("tls").join("ca.key"), &backup).expect("backup");
    first.kill();
    // The second node restarts with the backup and becomes the signer.
    let cfg = dir.path().join("takeover.toml");
    std::fs::write(
        &cfg,
        format!("[tls]\nca_key = {:?}\n", backup.display().to_string()),
    )
    .expect("config");
    second.set_env("STRATA_CONFIG", cfg.to_str().expect("path"));
    second.restart();
    assert!(second.data_dir.join("tls").join("ca.key").exists());
    // A new node joins through the third node: its enrollment reaches the new signer.
    let fourth = TestCluster::joiner(&third, &[]);
    assert_eq!(
        voters(&second).await,
        4,
        "three live voters and the lost one"
    );
    assert!(grpc_accepts(&second, &identities::of_node(&fourth.data_dir)).await);
    assert!(
        second
            .log()
            .contains("this node signs the cluster's certificates"),
        "{}",
        second.log()
    );
}
