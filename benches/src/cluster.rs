//! Cluster benchmarks: the QUIC peer transport against raw loopback TCP (iperf3), and upload
//! throughput with R=3 on three nodes against R=1 on one node, then the rebalance rate when a
//! fourth node joins. Each compares figures measured in the same run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use strata_admin::client;
use strata_admin::transfer::{self, NoProgress};
use strata_node::peer::PeerClient;
use strata_node::tls::{Identity, NodeTls};
use strata_proto::v1 as pb;

use crate::{make_file, mbps};

/// Raw loopback TCP throughput (MB/s) with iperf3, 5 seconds, one stream.
fn iperf3() -> anyhow::Result<f64> {
    let port = free_port()?;
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 is needed for the TCP baseline: apt-get install iperf3")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", "5", "-J"])
        .output()
        .context("running the iperf3 client")?;
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no bits_per_second in iperf3's report")?;
    Ok(bps / 8.0 / 1e6)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Peer GetChunk throughput over QUIC against the node in `data_dir` (its own certificate
/// serves as the client's), compared with iperf3 on the same loopback.
pub async fn peer_get(
    data_dir: &Path,
    endpoint: &str,
    total: u64,
    streams: usize,
    json: bool,
) -> anyhow::Result<()> {
    let id = Identity::load(data_dir)?
        .with_context(|| format!("no node certificate in {}/tls", data_dir.display()))?;
    let tls = NodeTls::new(id, None, Arc::new(|_| false))?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(strata_node::peer::tls::client_config(&tls)?);
    let peer = Arc::new(PeerClient::new(ep));
    let addr: std::net::SocketAddr = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .parse()?;

    // 32 chunks of 4 MiB, stored through PutChunk (untimed), then read round-robin.
    let chunk = 4usize << 20;
    let mut ids = Vec::new();
    for i in 0..32u64 {
        let mut data = vec![0u8; chunk];
        let mut x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for w in data.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let data = Bytes::from(data);
        let cid = strata_cluster_id(&data);
        peer.put_chunk(addr, cid, data).await?;
        ids.push(cid);
    }
    let gets = (total / chunk as u64).max(1) as usize;
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..streams.max(1) {
        let (peer, ids, next) = (peer.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= gets {
                    return Ok::<_, anyhow::Error>(bytes);
                }
                bytes += peer.get_chunk(addr, ids[i % ids.len()]).await?.len() as u64;
            }
        }));
    }
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await??;
    }
    let quic = mbps(bytes, start.elapsed());
    let mtu = peer.path_mtu(addr).unwrap_or(0);
    let tcp = iperf3()?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "mode": "peer_get", "streams": streams, "bytes": bytes,
                "quic_get_mb_per_s": quic, "path_mtu": mtu, "iperf3_tcp_mb_per_s": tcp, "ratio": quic / tcp })
        );
    } else {
        println!(
            "peer GetChunk over QUIC ({streams} stream(s), 4 MiB chunks, BLAKE3 verified on both ends): {quic:.0} MB/s (path MTU {mtu})"
        );
        println!(
            "raw loopback TCP (iperf3, 1 stream, same run):                            {tcp:.0} MB/s"
        );
        println!(
            "ratio QUIC GetChunk / TCP:                                                {:.2}",
            quic / tcp
        );
    }
    Ok(())
}

fn strata_cluster_id(data: &[u8]) -> strata_cluster::ChunkId {
    strata_cluster::ChunkId::of(data)
}

/// A node process started by the benchmark (killed on drop).
pub(crate) struct Spawned {
    child: Child,
    dir: PathBuf,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    /// Starts `strata-node ARGS --data-dir DIR` and waits for `node.json` in `node_dir` (DIR
    /// itself, or DIR/node-1 for `dev --nodes N`).
    pub(crate) fn start(
        dir: &Path,
        node_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Spawned> {
        let exe = std::env::current_exe()?
            .parent()
            .context("no binary directory")?
            .join("strata-node");
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .arg("--data-dir")
            .arg(dir)
            .env("STRATA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let node = Spawned {
            child,
            dir: node_dir.to_owned(),
        };
        node.wait_ready(node_dir)?;
        Ok(node)
    }

    fn wait_ready(&self, dir: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !dir.join("node.json").exists() {
            if Instant::now() > deadline {
                bail!("node in {} did not start", dir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub(crate) fn endpoint(&self) -> anyhow::Result<String> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join("node.json"))?)?;
        Ok(v["grpc"].as_str().context("grpc in node.json")?.to_owned())
    }
}

pub(crate) fn token(dir: &Path, name: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(dir.join(name))
        .with_context(|| format!("{name} in {}", dir.display()))?
        .trim()
        .to_owned())
}

/// Uploads `files` (already planned) through `endpoint`; returns MB/s.
pub(crate) async fn upload(
    endpoint: &str,
    tok: &str,
    files: &[(PathBuf, transfer::FilePlan)],
    prefix: &str,
) -> anyhow::Result<f64> {
    let mut s = client::storage(crate::connect(endpoint).await?, tok)?;
    let start = Instant::now();
    let mut bytes = 0;
    for (i, (path, plan)) in files.iter().enumerate() {
        let r = transfer::upload_planned(
            &mut s,
            path,
            "bench",
            &format!("{prefix}/{i}"),
            "application/octet-stream",
            plan,
            Arc::new(NoProgress),
        )
        .await?;
        bytes += r.sent_bytes;
    }
    Ok(mbps(bytes, start.elapsed()))
}

/// R=3 on three nodes against R=1 on one node (same files, same disk, same run), then the
/// rate at which a fourth node's share moves to it.
pub async fn replication(work: &Path, size: u64, json: bool) -> anyhow::Result<()> {
    let files: Vec<(PathBuf, transfer::FilePlan)> = (0..2u64)
        .map(|i| {
            let p = work.join(format!("src-{i}"));
            make_file(&p, size / 2, 0xbe9c ^ i)?;
            let plan = transfer::plan(&p, transfer::DEFAULT_CHUNK, &NoProgress)?;
            Ok((p, plan))
        })
        .collect::<anyhow::Result<_>>()?;

    let single_dir = work.join("single");
    let single = Spawned::start(&single_dir, &single_dir, &["dev"], &[])?;
    let r1 = upload(
        &single.endpoint()?,
        &token(&single_dir, "tenant.token")?,
        &files,
        "r1",
    )
    .await?;
    drop(single);
    let _ = std::fs::remove_dir_all(&single_dir);

    let base = work.join("three");
    let first = base.join("node-1");
    let three = Spawned::start(
        &base,
        &first,
        &["dev", "--nodes", "3"],
        &[("STRATA_REBALANCE_RATE_BYTES", "4294967296")],
    )?;
    let endpoint = three.endpoint()?;
    let tenant = token(&first, "tenant.token")?;
    let admin_token = token(&first, "admin.token")?;
    // node-1 serves before the others have joined: wait for three voters in the layout.
    let mut admin = client::admin(crate::connect(&endpoint).await?, &admin_token)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = admin.status(pb::StatusRequest {}).await?.into_inner();
        if s.nodes
            .iter()
            .filter(|n| n.voter && n.state == "active")
            .count()
            == 3
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the 3-node cluster did not form in 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r3 = upload(&endpoint, &tenant, &files, "r3").await?;

    // A fourth node joins, goes into the layout, and receives its share.
    let join = admin
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl_seconds: 600,
            uses: 1,
        })
        .await?
        .into_inner();
    let fourth_dir = base.join("node-4");
    let fourth_port = free_port()?;
    let _fourth = Spawned::start(
        &fourth_dir,
        &fourth_dir,
        &[
            "run",
            "--listen",
            &format!("127.0.0.1:{fourth_port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{}", free_port()?),
            "--node-id",
            "node-4",
            "--join",
            &endpoint,
        ],
        &[
            ("STRATA_JOIN_TOKEN", &join.token),
            ("STRATA_CA_HASH", &join.ca_hash),
            ("STRATA_REBALANCE_RATE_BYTES", "4294967296"),
        ],
    )?;
    let staged = admin
        .stage_layout(pb::StageLayoutRequest {
            change: Some(pb::stage_layout_request::Change::Assign(pb::AssignNode {
                node: format!("http://127.0.0.1:{fourth_port}"),
                zone: "default".into(),
                capacity: 0,
            })),
        })
        .await?
        .into_inner();
    let version = staged.staged.context("staged layout")?.version;
    let start = Instant::now();
    admin
        .apply_layout(pb::ApplyLayoutRequest { version })
        .await?;
    let deadline = start + Duration::from_secs(600);
    let copied = loop {
        let s = admin.status(pb::StatusRequest {}).await?.into_inner();
        let done = s.nodes.iter().all(|n| {
            n.reachable
                && n.rebalance.as_ref().is_some_and(|r| {
                    r.finished_version >= version && !r.running && r.pending_chunks == 0
                })
        });
        if done {
            break s
                .nodes
                .iter()
                .filter_map(|n| n.rebalance.as_ref())
                .map(|r| r.copied_bytes)
                .sum::<u64>();
        }
        if Instant::now() > deadline {
            bail!("the rebalance did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = start.elapsed();
    let rate = mbps(copied, took);
    drop(three);
    if json {
        println!(
            "{}",
            serde_json::json!({ "mode": "replication", "bytes": size, "r1_single_mb_per_s": r1,
                "r3_three_nodes_mb_per_s": r3, "ratio": r3 / r1, "rebalance_copied_bytes": copied,
                "rebalance_seconds": took.as_secs_f64(), "rebalance_mb_per_s": rate })
        );
    } else {
        println!(
            "upload {} MB, one node, R=1:              {r1:.0} MB/s",
            size / 1_000_000
        );
        println!(
            "upload {} MB, three nodes, R=3 (W=2):     {r3:.0} MB/s",
            size / 1_000_000
        );
        println!("ratio R=3 / R=1:                          {:.2}", r3 / r1);
        println!(
            "rebalance after adding a 4th node:        {} MB copied in {:.1} s = {rate:.0} MB/s",
            copied / 1_000_000,
            took.as_secs_f64()
        );
    }
    Ok(())
}
