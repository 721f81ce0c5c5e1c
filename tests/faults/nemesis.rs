//! The nemesis: injects one kind of fault on nodes chosen from the run's seed, holds it, and
//! heals it, until the run's workload ends.

use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::cluster::{Cluster, docker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Fault {
    /// A random minority of nodes is cut off from the majority (each side keeps its links).
    Partition,
    /// Two halves that cannot see each other, and one node that sees both.
    Bridge,
    /// The Raft leader is cut off from every other node.
    IsolateLeader,
    /// `docker pause` of one or two nodes (the leader half the time).
    Pause,
    /// `docker kill` (SIGKILL) of one or two nodes, started again after the hold.
    Kill,
    /// Slow, lossy links on one or two nodes: tc netem delay and loss when the kernel has it,
    /// else a tbf rate limit (queueing delay) and iptables' random drop.
    Link,
    /// One or two nodes' data filesystems filled to the last block.
    DiskFull,
    /// Bytes flipped in chunk files of one or two nodes (not healed: reads must verify).
    Bitflip,
    /// Every node stopped (SIGTERM) and recreated from the next image, one at a time.
    RollingRestart,
}

pub const ALL: [Fault; 9] = [
    Fault::Partition,
    Fault::Bridge,
    Fault::IsolateLeader,
    Fault::Pause,
    Fault::Kill,
    Fault::Link,
    Fault::DiskFull,
    Fault::Bitflip,
    Fault::RollingRestart,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Partition => "partition",
            Fault::Bridge => "bridge",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Pause => "pause",
            Fault::Kill => "kill",
            Fault::Link => "link",
            Fault::DiskFull => "disk-full",
            Fault::Bitflip => "bitflip",
            Fault::RollingRestart => "rolling-restart",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        ALL.into_iter().find(|f| f.name() == s)
    }
}

/// A fault's log line: when, and what was done to which nodes.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_ms: f64,
    pub what: String,
}

/// Injects `fault` every cycle (start at `start`, hold for 3 to 8 s, heal, pause 2 s) until
/// `until`; returns what it did. Rolling restarts go through every node once.
pub async fn run(
    cluster: &Cluster,
    fault: Fault,
    rng: &mut StdRng,
    start: Instant,
    until: Instant,
    next_image: &str,
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let log = |events: &mut Vec<Event>, what: String| {
        println!("    [{:>6.1}s] {what}", start.elapsed().as_secs_f64());
        events.push(Event {
            at_ms: start.elapsed().as_secs_f64() * 1000.0,
            what,
        });
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    if fault == Fault::RollingRestart {
        for i in 0..cluster.nodes.len() {
            let c = &cluster.nodes[i].container;
            docker(&["stop", "-t", "10", c])?;
            cluster.save_log(i);
            docker(&["rm", c])?;
            cluster.create_container(i, next_image)?;
            log(
                &mut events,
                format!("{} restarted from {next_image}", cluster.nodes[i].alias()),
            );
            wait_serving(cluster, i, 60).await?;
            log(&mut events, format!("{} serving", cluster.nodes[i].alias()));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        return Ok(events);
    }
    let n = cluster.nodes.len();
    while Instant::now() + Duration::from_secs(4) < until {
        let hold = Duration::from_millis(rng.random_range(3000..8000));
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let some = if rng.random_bool(0.5) { 1 } else { 2 };
        let names = |v: &[usize]| {
            v.iter()
                .map(|&i| cluster.nodes[i].alias())
                .collect::<Vec<_>>()
                .join(",")
        };
        match fault {
            Fault::Partition => {
                let minority = &order[..(n - 1) / 2];
                let majority = &order[(n - 1) / 2..];
                for &i in minority {
                    cluster.cut(i, majority)?;
                }
                for &i in majority {
                    cluster.cut(i, minority)?;
                }
                log(
                    &mut events,
                    format!("partition {} | {}", names(minority), names(majority)),
                );
            }
            Fault::Bridge => {
                let (bridge, rest) = order.split_first().expect("nodes");
                let (a, b) = rest.split_at(rest.len() / 2);
                for &i in a {
                    cluster.cut(i, b)?;
                }
                for &i in b {
                    cluster.cut(i, a)?;
                }
                log(
                    &mut events,
                    format!(
                        "bridge {} <- {} -> {}",
                        names(a),
                        names(&[*bridge]),
                        names(b)
                    ),
                );
            }
            Fault::IsolateLeader => {
                let leader = match cluster.leader().await {
                    Some(l) => l,
                    None => order[0],
                };
                let others: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
                cluster.cut(leader, &others)?;
                for &i in &others {
                    cluster.cut(i, &[leader])?;
                }
                log(
                    &mut events,
                    format!("isolated the leader {}", names(&[leader])),
                );
            }
            Fault::Pause => {
                let picked = victims(cluster, &order[..some], rng).await;
                for &i in &picked {
                    docker(&["pause", &cluster.nodes[i].container])?;
                }
                log(&mut events, format!("paused {}", names(&picked)));
            }
            Fault::Kill => {
                let picked = victims(cluster, &order[..some], rng).await;
                for &i in &picked {
                    docker(&["kill", "-s", "KILL", &cluster.nodes[i].container])?;
                }
                log(&mut events, format!("killed {}", names(&picked)));
            }
            Fault::Link => {
                let picked = &order[..some];
                let mut how = "";
                for &i in picked {
                    how = slow_lossy_link(cluster, i)?;
                }
                log(&mut events, format!("{how} on {}", names(picked)));
            }
            Fault::DiskFull => {
                let picked = &order[..some];
                for &i in picked {
                    fill_disk(cluster, i)?;
                }
                log(
                    &mut events,
                    format!("filled the disks of {}", names(picked)),
                );
            }
            Fault::Bitflip => {
                let picked = &order[..some];
                let mut flipped = 0;
                for &i in picked {
                    flipped += flip_bytes(cluster, i, rng, 5)?;
                }
                log(
                    &mut events,
                    format!(
                        "flipped a byte in {flipped} chunk files on {}",
                        names(picked)
                    ),
                );
            }
            Fault::RollingRestart => unreachable!("handled above"),
        }
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(hold.min(left)).await;
        heal(cluster)?;
        log(&mut events, "healed".into());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(events)
}

/// The nodes to pause or kill: `picked`, with the leader in first place half the time.
async fn victims(cluster: &Cluster, picked: &[usize], rng: &mut StdRng) -> Vec<usize> {
    let mut out = picked.to_vec();
    if rng.random_bool(0.5)
        && let Some(l) = cluster.leader().await
    {
        out.retain(|&i| i != l);
        out.insert(0, l);
        out.truncate(picked.len());
    }
    out
}

/// Undoes every fault that can be undone: links, pauses, stopped nodes, full disks.
pub fn heal(cluster: &Cluster) -> anyhow::Result<()> {
    cluster.ensure_all_up()?;
    cluster.heal_network()?;
    for n in &cluster.nodes {
        let ballast = n.data.join("faults-ballast");
        if ballast.exists() {
            std::fs::remove_file(&ballast)?;
        }
    }
    Ok(())
}

fn slow_lossy_link(cluster: &Cluster, i: usize) -> anyhow::Result<&'static str> {
    let netem = cluster.in_netns(
        i,
        &[
            "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "100ms", "50ms", "loss",
            "10%",
        ],
    );
    if netem.is_ok() {
        return Ok("netem delay 100ms±50ms, loss 10%");
    }
    // No sch_netem in this kernel: queueing delay from a slow link, and random drops.
    cluster.in_netns(
        i,
        &[
            "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "4mbit", "burst", "32kbit",
            "latency", "300ms",
        ],
    )?;
    for chain in ["INPUT", "OUTPUT"] {
        cluster.in_netns(
            i,
            &[
                "iptables",
                "-A",
                chain,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.1",
                "-j",
                "DROP",
            ],
        )?;
    }
    Ok("tbf 4 Mbit/s (300 ms queue), iptables random loss 10% each way")
}

/// Takes every free block of node `i`'s data filesystem with a ballast file.
fn fill_disk(cluster: &Cluster, i: usize) -> anyhow::Result<()> {
    let path = cluster.nodes[i].data.join("faults-ballast");
    let f = std::fs::File::create(&path)?;
    let stat = rustix::fs::statvfs(&cluster.nodes[i].data)?;
    let free = stat.f_bavail * stat.f_frsize;
    // fallocate takes the blocks at once; whatever is left after it is less than a block.
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, free).or_else(|_| {
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::empty(),
            0,
            free.saturating_sub(1 << 20),
        )
    })?;
    Ok(())
}

/// Flips one byte in up to `count` random chunk files of node `i`; returns how many.
fn flip_bytes(
    cluster: &Cluster,
    i: usize,
    rng: &mut StdRng,
    count: usize,
) -> anyhow::Result<usize> {
    use std::os::unix::fs::FileExt;
    let root = cluster.nodes[i].data.join("chunks");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&root)? {
        let dir = dir?;
        let name = dir.file_name();
        if name.len() != 2 || !dir.file_type()?.is_dir() {
            continue; // .tmp, .quarantine
        }
        for f in std::fs::read_dir(dir.path())? {
            let f = f?;
            if f.file_type()?.is_file() && f.metadata()?.len() > 0 {
                files.push(f.path());
            }
        }
    }
    files.sort();
    files.shuffle(rng);
    let mut flipped = 0;
    for path in files.iter().take(count) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let len = f.metadata()?.len();
        let at = rng.random_range(0..len);
        let mut b = [0u8];
        f.read_exact_at(&mut b, at)?;
        b[0] ^= 0x5a;
        f.write_all_at(&b, at)?;
        flipped += 1;
    }
    Ok(flipped)
}

/// Waits until node `i` answers a listing (at most `secs`).
pub async fn wait_serving(cluster: &Cluster, i: usize, secs: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(mut s) = cluster.storage(i).await {
            let r = tokio::time::timeout(
                Duration::from_secs(3),
                s.list_buckets(strata_proto::v1::ListBucketsRequest {}),
            )
            .await;
            if let Ok(Ok(_)) = r {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} does not serve {secs} s after it started; its log ends:\n{}",
                cluster.nodes[i].alias(),
                cluster.log_tail(i, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
