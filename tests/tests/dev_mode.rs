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
