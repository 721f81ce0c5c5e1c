//! Five (or any number of) Strata nodes in Docker containers on a network of their own, each
//! with its data on a small ext4 filesystem of its own (a loop-mounted image file, so a "full
//! disk" is a real ENOSPC and survives container restarts). Faults act from the host: `docker
//! kill/pause/stop`, and `iptables`/`tc` run inside a container's network namespace through
//! `nsenter`, so the image needs no network tools.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strata_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Size of each node's data filesystem: big enough for a campaign, small enough to fill.
const DISK_BYTES: u64 = 1 << 30;

pub struct Cluster {
    /// Prefix of container names and the network's name (unique per campaign).
    pub name: String,
    pub image: String,
    pub nodes: Vec<NodeBox>,
    pub dir: PathBuf,
    pub ca_pem: String,
    pub admin_token: String,
    pub tenant_token: String,
    join_token: String,
}

pub struct NodeBox {
    /// 1-based, as in strata-1..strata-5.
    pub index: usize,
    pub container: String,
    pub ip: Ipv4Addr,
    /// The mounted data filesystem on the host.
    pub data: PathBuf,
    image_file: PathBuf,
}

impl NodeBox {
    pub fn alias(&self) -> String {
        format!("strata-{}", self.index)
    }
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("docker").args(args))
}

impl Cluster {
    /// Creates the network and `n` nodes (replication 3, uploads wait for 2), all in the
    /// layout, a tenant and its bucket `faults`. Fails loudly when Docker, the image, loop
    /// devices or iptables are missing.
    pub async fn start(name: &str, image: &str, n: usize, dir: &Path) -> anyhow::Result<Cluster> {
        docker(&["info", "--format", "{{.ServerVersion}}"])
            .context("the Docker engine is needed (docker info failed)")?;
        docker(&["image", "inspect", image]).with_context(|| {
            format!("image {image} is missing: build it with deploy/images/build.sh")
        })?;
        for tool in ["nsenter", "iptables", "tc", "ip", "mkfs.ext4", "mount"] {
            run(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
                .with_context(|| format!("{tool} is needed on the host"))?;
        }
        std::fs::create_dir_all(dir)?;
        // Docker takes only absolute paths as bind mounts.
        let dir = &std::fs::canonicalize(dir)?;
        // A /24 that no other network uses: try a few.
        let mut subnet = None;
        for attempt in 0..20u8 {
            let third = 100 + (std::process::id() as u8 % 100) + attempt;
            let s = format!("10.213.{third}.0/24");
            if docker(&["network", "create", "--subnet", &s, name]).is_ok() {
                subnet = Some(third);
                break;
            }
        }
        let third = subnet.context("no free 10.213.x.0/24 subnet for the campaign network")?;
        pin_bridge_mac(name).context("pinning the campaign bridge's MAC address")?;
        let ca_dir = dir.join("ca");
        std::fs::create_dir_all(&ca_dir)?;
        let ca_mount = format!("{}:/ca", ca_dir.display());
        docker(&[
            "run",
            "--rm",
            "-u",
            "0",
            "-v",
            &ca_mount,
            "--entrypoint",
            "strata-node",
            image,
            "ca",
            "create",
            "/ca",
        ])?;
        let ca_pem = std::fs::read_to_string(ca_dir.join("ca.crt"))?;
        let join_token = format!("sjt_{}", hex::encode(rand::random::<[u8; 24]>()));
        let mut cluster = Cluster {
            name: name.to_owned(),
            image: image.to_owned(),
            nodes: Vec::new(),
            dir: dir.to_owned(),
            ca_pem,
            admin_token: String::new(),
            tenant_token: String::new(),
            join_token,
        };
        for index in 1..=n {
            let data = dir.join(format!("n{index}"));
            let image_file = dir.join(format!("n{index}.ext4"));
            std::fs::create_dir_all(&data)?;
            std::fs::File::create(&image_file)?.set_len(DISK_BYTES)?;
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&image_file))?;
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image_file)
                .arg(&data))
            .context("mounting a loop device (the full-disk fault needs one per node)")?;
            cluster.nodes.push(NodeBox {
                index,
                container: format!("{name}-n{index}"),
                ip: Ipv4Addr::new(10, 213, third, 10 + index as u8),
                data,
                image_file,
            });
        }
        let image = cluster.image.clone();
        for i in 0..n {
            cluster.create_container(i, &image)?;
            if i == 0 {
                cluster.admin_token = wait_file(&cluster.nodes[0].data.join("admin.token"), 60)?;
            }
        }
        cluster.setup(n).await?;
        Ok(cluster)
    }

    /// `docker run`s node `i` from `image` (its data, address and name stay).
    pub fn create_container(&self, i: usize, image: &str) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let alias = node.alias();
        let config = "[tls]\nca_key = \"/ca/ca.key\"\n";
        let (config, args) = if i == 0 {
            (config.to_owned(), "run --init".to_owned())
        } else {
            (
                String::new(),
                "run --join https://strata-1:7400 --ca-hash $(strata-node ca hash /ca/ca.crt)"
                    .to_owned(),
            )
        };
        let script = format!(
            "printf '{}' > /tmp/strata.toml && exec strata-node --config /tmp/strata.toml {args} --advertise https://{alias}:7400 --node-id {alias}",
            config.replace('\n', "\\n")
        );
        let data = format!("{}:/var/lib/strata/data", node.data.display());
        let ca = format!("{}:/ca:ro", self.dir.join("ca").display());
        let ip = node.ip.to_string();
        let token = format!("STRATA_JOIN_TOKEN={}", self.join_token);
        docker(&[
            "run",
            "-d",
            "--name",
            &node.container,
            "--hostname",
            &alias,
            "--network",
            &self.name,
            "--ip",
            &ip,
            "--network-alias",
            &alias,
            "-u",
            "0",
            "-v",
            &data,
            "-v",
            &ca,
            "-e",
            &token,
            "-e",
            "STRATA_REPLICATION=3",
            "-e",
            "STRATA_WRITE_QUORUM=2",
            "-e",
            "STRATA_LOG=info",
            "-e",
            "STRATA_ZONE=zone-1",
            "--entrypoint",
            "sh",
            image,
            "-c",
            &script,
        ])?;
        Ok(())
    }

    /// Puts every node in the layout (a zone each), R=3 W=2, and makes the tenant and bucket.
    async fn setup(&mut self, n: usize) -> anyhow::Result<()> {
        let mut admin = self.admin(0).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        for i in 1..n {
            let addr = format!("https://{}:7400", self.nodes[i].alias());
            loop {
                let change = pb::stage_layout_request::Change::Assign(pb::AssignNode {
                    node: addr.clone(),
                    zone: format!("zone-{}", i + 1),
                    capacity: 1 << 30,
                });
                match admin
                    .stage_layout(pb::StageLayoutRequest {
                        change: Some(change),
                    })
                    .await
                {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing_note(&format!("waiting for {addr} to join: {}", e.message()));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => bail!("{addr} did not join within 120 s: {}", e.message()),
                }
            }
        }
        let staged = admin
            .stage_layout(pb::StageLayoutRequest {
                change: Some(pb::stage_layout_request::Change::Replication(
                    pb::Replication {
                        replication: 3,
                        write_quorum: 2,
                    },
                )),
            })
            .await?
            .into_inner();
        let version = staged.staged.map(|l| l.version).context("nothing staged")?;
        admin
            .apply_layout(pb::ApplyLayoutRequest { version })
            .await?;
        let t = admin
            .create_tenant(pb::CreateTenantRequest {
                name: "faults".into(),
            })
            .await?
            .into_inner();
        self.tenant_token = t.token;
        let mut s = self.storage(0).await?;
        s.create_bucket(pb::BucketRequest {
            bucket: "faults".into(),
        })
        .await?;
        Ok(())
    }

    /// A channel to node `i`'s container address, verified as `strata-<i+1>` by the cluster CA.
    pub fn channel(&self, i: usize) -> anyhow::Result<Channel> {
        let node = &self.nodes[i];
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(node.alias());
        Ok(Endpoint::from_shared(format!("https://{}:7400", node.ip))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .tls_config(tls)?
            .connect_lazy())
    }

    pub async fn admin(&self, i: usize) -> anyhow::Result<strata_admin::client::Admin> {
        strata_admin::client::admin(self.channel(i)?, &self.admin_token)
    }

    pub async fn storage(&self, i: usize) -> anyhow::Result<strata_admin::client::Storage> {
        strata_admin::client::storage(self.channel(i)?, &self.tenant_token)
    }

    /// The index of the node that says it leads, if one answers within a few seconds.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            let Ok(mut a) = self.admin(i).await else {
                continue;
            };
            let r =
                tokio::time::timeout(Duration::from_secs(2), a.status(pb::StatusRequest {})).await;
            if let Ok(Ok(s)) = r
                && s.get_ref().raft_role == "leader"
            {
                return Some(i);
            }
        }
        None
    }

    fn pid(&self, i: usize) -> anyhow::Result<u32> {
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &self.nodes[i].container])?;
        match pid.parse::<u32>() {
            Ok(p) if p > 0 => Ok(p),
            _ => bail!("{} is not running", self.nodes[i].container),
        }
    }

    /// Runs a command in node `i`'s network namespace (iptables, tc).
    pub fn in_netns(&self, i: usize, cmd: &[&str]) -> anyhow::Result<String> {
        let pid = self.pid(i)?.to_string();
        run(Command::new("nsenter")
            .args(["-t", &pid, "-n", "--"])
            .args(cmd))
    }

    /// Drops every packet between node `i` and each node in `others`, both ways (gRPC, Raft
    /// and QUIC alike); clients on the host still reach it.
    pub fn cut(&self, i: usize, others: &[usize]) -> anyhow::Result<()> {
        for &o in others {
            let ip = self.nodes[o].ip.to_string();
            self.in_netns(i, &["iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
            self.in_netns(i, &["iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Removes partitions and link faults from every running node.
    pub fn heal_network(&self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            if self.pid(i).is_err() {
                continue;
            }
            self.in_netns(i, &["iptables", "-F"])?;
            // No qdisc to delete is not an error worth stopping for.
            let _ = self.in_netns(i, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
        }
        Ok(())
    }

    /// Whether each node's container is running (false: exited or never started).
    pub fn running(&self) -> Vec<bool> {
        (0..self.nodes.len())
            .map(|i| {
                docker(&[
                    "inspect",
                    "-f",
                    "{{.State.Running}}",
                    &self.nodes[i].container,
                ])
                .is_ok_and(|s| s == "true")
            })
            .collect()
    }

    /// Unpauses and starts every node container that is not running.
    pub fn ensure_all_up(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            let state = docker(&["inspect", "-f", "{{.State.Status}}", &n.container])?;
            match state.as_str() {
                "paused" => {
                    docker(&["unpause", &n.container])?;
                }
                "running" => {}
                _ => {
                    docker(&["start", &n.container])?;
                }
            }
        }
        Ok(())
    }

    /// The last lines of node `i`'s log (for reports).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let n = lines.to_string();
        let out = Command::new("docker")
            .args(["logs", "--tail", &n, &self.nodes[i].container])
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("<docker logs: {e}>"),
        }
    }

    /// Appends node `i`'s container log to `<alias>.log` under the campaign directory (before
    /// the container is removed, and at the end).
    pub fn save_log(&self, i: usize) {
        use std::io::Write;
        let path = self.dir.join(format!("{}.log", self.nodes[i].alias()));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "==== container {} ====", self.nodes[i].container);
            let _ = f.write_all(self.log_tail(i, 1_000_000).as_bytes());
        }
    }

    /// Saves every node's log under the campaign directory.
    pub fn save_logs(&self) {
        for i in 0..self.nodes.len() {
            self.save_log(i);
        }
    }

    /// Containers left by an earlier campaign of this name.
    pub fn leftovers(name: &str) -> Vec<String> {
        let filter = format!("name=^{name}-n");
        docker(&["ps", "-aq", "--filter", &filter])
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Cleans up after a start that failed half way: containers, network, mounts.
    pub fn destroy_named(name: &str, dir: &Path) {
        for c in Cluster::leftovers(name) {
            let _ = docker(&["rm", "-f", &c]);
        }
        let _ = docker(&["network", "rm", name]);
        for i in 1..=9 {
            let data = dir.join(format!("n{i}"));
            let _ = run(Command::new("umount").arg(&data));
            let _ = std::fs::remove_file(dir.join(format!("n{i}.ext4")));
        }
    }

    /// Removes the containers, the network and the loop-mounted filesystems.
    pub fn destroy(&self) {
        for n in &self.nodes {
            let _ = docker(&["rm", "-f", &n.container]);
        }
        let _ = docker(&["network", "rm", &self.name]);
        for n in &self.nodes {
            let _ = run(Command::new("umount").arg(&n.data));
            let _ = std::fs::remove_file(&n.image_file);
        }
    }
}

/// Fixes the MAC address of the network's Linux bridge. Left to itself the kernel gives a
/// bridge the lowest MAC of its ports, and Docker derives container MACs from their addresses:
/// killing the container with the lowest address changed the bridge's MAC, so every container
/// kept answering the host (the clients) at a stale ARP entry and all client traffic stalled
/// until that container came back, which measured as seconds of unavailability that were the
/// test bed's, not Strata's. An address set explicitly is never recalculated.
fn pin_bridge_mac(network: &str) -> anyhow::Result<()> {
    let id = docker(&["network", "inspect", "-f", "{{.Id}}", network])?;
    let bridge = format!("br-{}", id.get(..12).context("short network id")?);
    let mac = std::fs::read_to_string(format!("/sys/class/net/{bridge}/address"))
        .with_context(|| format!("no bridge {bridge} for network {network}"))?;
    run(Command::new("ip").args(["link", "set", "dev", &bridge, "address", mac.trim()]))?;
    Ok(())
}

fn wait_file(path: &Path, secs: u64) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_owned());
        }
        if Instant::now() > deadline {
            bail!("{} did not appear within {secs} s", path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tracing_note(msg: &str) {
    eprintln!("    {msg}");
}
