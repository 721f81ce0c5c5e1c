//! moto's standalone S3 server on loopback, for the cold-tier tests: a real S3 protocol server
//! that models Glacier classes, RestoreObject and x-amz-restore. tests/run.sh installs it (pip);
//! if it is missing the test fails with how to install it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

pub struct Moto {
    pub port: u16,
    pub endpoint: String,
    child: Option<Child>,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn command(port: u16) -> Command {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("moto_server").is_file()));
    let mut cmd = if on_path {
        Command::new("moto_server")
    } else {
        let mut c = Command::new("python3");
        c.args(["-m", "moto.server"]);
        c
    };
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    cmd
}

impl Moto {
    pub async fn start() -> Moto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let mut m = Moto {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            child: None,
            log: dir.path().join("moto.log"),
            _dir: dir,
        };
        m.spawn().await;
        m
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("moto log");
        let child = command(self.port)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start moto's S3 server ({e}): install it with `pip install 'moto[server]'` (tests/run.sh does)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "moto_server exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if self.client().list_buckets().send().await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {} within 30 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server (its state is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A real aws-sdk-s3 client for the server.
    pub fn client(&self) -> Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .build();
        Client::from_conf(conf)
    }

    pub async fn create_bucket(&self, bucket: &str) {
        self.client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create bucket");
    }

    /// Object keys in a bucket with their storage class (None: STANDARD).
    pub async fn objects(&self, bucket: &str) -> Vec<(String, Option<String>)> {
        let out = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .expect("list objects");
        out.contents()
            .iter()
            .map(|o| {
                (
                    o.key().unwrap_or_default().to_owned(),
                    o.storage_class().map(|c| c.as_str().to_owned()),
                )
            })
            .collect()
    }

    /// Holds every restore "in progress" until it has been looked at `times` times (moto's
    /// state manager; each HeadObject or GetObject advances it).
    pub async fn hold_restores(&self, times: u32) {
        let body = format!(
            r#"{{"model_name": "s3::keyrestore", "transition": {{"progression": "manual", "times": {times}}}}}"#
        );
        let (status, text) = crate::http_post(
            &format!("{}/moto-api/state-manager/set-transition", self.endpoint),
            &body,
        )
        .await;
        assert_eq!(status, 201, "moto set-transition: {text}");
    }

    /// A node config file section for a backend on this server.
    pub fn backend_toml(&self, name: &str, kind: &str, bucket: &str, class: &str) -> String {
        format!(
            "[[tier.backends]]\nname = \"{name}\"\nkind = \"{kind}\"\nendpoint = \"{}\"\nbucket = \"{bucket}\"\npath_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\nstorage_class = \"{class}\"\n",
            self.endpoint
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}
