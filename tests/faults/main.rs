//! strata-faults: a fault campaign against Strata nodes in Docker containers.
//!
//! Five nodes (R=3, W=2) on a network of their own; concurrent clients put unique values,
//! overwrite, delete, read and list a small key set through random nodes while a nemesis
//! partitions, pauses, kills, slows and fills nodes and flips bytes in their chunk files; a
//! checker then reads the history (see checker.rs). Every choice comes from the printed seed.
//! See tests/faults/README.md for the commands and the latest report.

mod checker;
mod cluster;
mod nemesis;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use strata_proto::v1 as pb;

use checker::{Anomaly, FinalKey};
use cluster::Cluster;
use nemesis::Fault;
use workload::{Op, Outcome, Res, Workload};

#[derive(Parser)]
#[command(about = "Fault campaign: Strata nodes in containers, a nemesis and a history checker")]
struct Args {
    /// Seed of every random choice (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Faults to run, comma-separated, or "all": partition, bridge, isolate-leader, pause,
    /// kill, link, disk-full, bitflip, rolling-restart.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Runs of each fault.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seconds of workload per run (the rolling restart runs until every node restarted).
    #[arg(long, default_value_t = 12)]
    seconds: u64,
    /// Most operations per run.
    #[arg(long, default_value_t = 2000)]
    ops: u64,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Keys per run (small, so operations on a key overlap).
    #[arg(long, default_value_t = 5)]
    keys: usize,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Image the nodes start from.
    #[arg(long, default_value = "strata:latest")]
    image: String,
    /// Image the rolling restart moves every node to (default: --image).
    #[arg(long)]
    next_image: Option<String>,
    /// Where histories, node logs and the report go.
    #[arg(long, default_value = "target/faults")]
    out: PathBuf,
    /// Leave the containers running at the end.
    #[arg(long)]
    keep: bool,
}

/// One run's figures.
#[derive(Default, Clone)]
struct Tally {
    runs: usize,
    ops: usize,
    ok: usize,
    fail: usize,
    unknown: usize,
    anomalies: usize,
    inconclusive: usize,
    longest_gap_ms: f64,
    failing_seeds: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes >= 3, "--nodes must be at least 3 (R=3)");
    anyhow::ensure!(
        args.clients >= 1 && args.keys >= 1,
        "--clients and --keys must be at least 1"
    );
    let faults: Vec<Fault> = if args.faults == "all" {
        nemesis::ALL.to_vec()
    } else {
        args.faults
            .split(',')
            .map(|f| Fault::parse(f.trim()).with_context(|| format!("unknown fault {f:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("strata-faults: seed {seed} (rerun with --seed {seed})");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(campaign(args, faults, seed))
}

async fn campaign(args: Args, faults: Vec<Fault>, seed: u64) -> anyhow::Result<()> {
    let out = args.out.join(format!("seed-{seed}"));
    let name = format!("strata-faults-{}", seed % 100_000);
    // Leftovers of an earlier campaign with the same name would collide.
    let stale = Cluster::leftovers(&name);
    anyhow::ensure!(
        stale.is_empty(),
        "containers of an earlier campaign remain: {stale:?} (docker rm -f them)"
    );
    println!(
        "starting {} nodes from {} ({})",
        args.nodes,
        args.image,
        out.display()
    );
    let t0 = Instant::now();
    let cluster = match Cluster::start(&name, &args.image, args.nodes, &out).await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            Cluster::destroy_named(&name, &out);
            return Err(e.context("starting the cluster"));
        }
    };
    println!("cluster up in {:.1} s", t0.elapsed().as_secs_f64());
    let result = run_all(&args, &faults, seed, &cluster, &out).await;
    cluster.save_logs();
    if !args.keep {
        cluster.destroy();
    }
    let tallies = result?;
    let report = render(&tallies, seed, &args);
    println!("\n{report}");
    std::fs::write(out.join("report.md"), &report)?;
    let bad: usize = tallies.values().map(|t| t.anomalies + t.inconclusive).sum();
    anyhow::ensure!(
        bad == 0,
        "{bad} anomalies or unchecked keys (seed {seed}); histories in {}",
        out.display()
    );
    Ok(())
}

async fn run_all(
    args: &Args,
    faults: &[Fault],
    seed: u64,
    cluster: &Arc<Cluster>,
    out: &std::path::Path,
) -> anyhow::Result<BTreeMap<Fault, Tally>> {
    let mut tallies: BTreeMap<Fault, Tally> = BTreeMap::new();
    let mut run_id = 0u64;
    for &fault in faults {
        for _ in 0..args.runs {
            run_id += 1;
            let run_seed = seed ^ run_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            println!("run {run_id}: {} (run seed {run_seed})", fault.name());
            let (ops, anomalies, inconclusive) =
                one_run(args, cluster, fault, run_id, run_seed, out).await?;
            let t = tallies.entry(fault).or_default();
            t.runs += 1;
            t.ops += ops.iter().filter(|o| o.client < args.clients).count();
            for o in ops.iter().filter(|o| o.client < args.clients) {
                match o.outcome {
                    Outcome::Ok(_) => t.ok += 1,
                    Outcome::Fail(_) => t.fail += 1,
                    Outcome::Unknown(_) => t.unknown += 1,
                }
            }
            let gap = longest_gap(&ops, args.clients);
            t.longest_gap_ms = t.longest_gap_ms.max(gap);
            t.anomalies += anomalies.len();
            t.inconclusive += inconclusive.len();
            if !anomalies.is_empty() || !inconclusive.is_empty() {
                t.failing_seeds.push(format!("{seed} (run {run_id})"));
                for a in &anomalies {
                    println!(
                        "    ANOMALY {}: key {:?}, ops {:?}: {}",
                        a.what, a.key, a.ops, a.detail
                    );
                    for id in &a.ops {
                        if let Some(o) = ops.iter().find(|o| o.id == *id) {
                            println!("      {}", serde_json::to_string(o)?);
                        }
                    }
                }
                for k in &inconclusive {
                    println!("    UNCHECKED key {k}: the linearizability search ran out of budget");
                }
            }
            println!(
                "    {} ops: {} ok, {} failed, {} unknown; longest gap {:.1} s; {} anomalies",
                ops.len(),
                ops.iter()
                    .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
                    .count(),
                ops.iter()
                    .filter(|o| matches!(o.outcome, Outcome::Fail(_)))
                    .count(),
                ops.iter()
                    .filter(|o| matches!(o.outcome, Outcome::Unknown(_)))
                    .count(),
                gap / 1000.0,
                anomalies.len()
            );
        }
    }
    Ok(tallies)
}

/// One run: workload and nemesis together, heal, the final reads, the check. Returns the
/// history, its anomalies and the keys left unchecked.
async fn one_run(
    args: &Args,
    cluster: &Arc<Cluster>,
    fault: Fault,
    run_id: u64,
    run_seed: u64,
    out: &std::path::Path,
) -> anyhow::Result<(Vec<Op>, Vec<Anomaly>, Vec<usize>)> {
    let w = Arc::new(Workload::new(run_id, args.keys));
    let start = w.start;
    let secs = if fault == Fault::RollingRestart {
        // Each node: stop (at most 10 s), start, serve again.
        args.seconds.max(25 * args.nodes as u64)
    } else {
        args.seconds
    };
    let until = start + Duration::from_secs(secs);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = tokio::spawn(workload::run_clients(
        cluster.clone(),
        w.clone(),
        args.clients,
        run_seed,
        until,
        args.ops,
        stop.clone(),
    ));
    let next_image = args
        .next_image
        .clone()
        .unwrap_or_else(|| args.image.clone());
    let mut rng = StdRng::seed_from_u64(run_seed);
    let events = nemesis::run(cluster, fault, &mut rng, start, until, &next_image).await;
    if fault == Fault::RollingRestart {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut history = clients.await.context("client tasks")?;
    let mut anomalies = Vec::new();
    // Nodes that exited on their own (not killed by the nemesis, which restarts its victims).
    for (i, up) in cluster.running().into_iter().enumerate() {
        if !up {
            anomalies.push(Anomaly {
                what: "node exited on its own".into(),
                key: None,
                ops: Vec::new(),
                detail: format!("{}: {}", cluster.nodes[i].alias(), cluster.log_tail(i, 15)),
            });
        }
    }
    nemesis::heal(cluster)?;
    let events = events?;
    for i in 0..cluster.nodes.len() {
        nemesis::wait_serving(cluster, i, 90).await?;
    }
    let (finals, final_ops, listing) = final_phase(cluster, &w, args.clients).await;
    history.extend(final_ops);
    if let Some(a) = listing {
        anomalies.push(a);
    }
    let verdict = checker::check(&history, &finals);
    anomalies.extend(verdict.anomalies);
    let lines: Vec<String> = history
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(
        out.join(format!("run-{run_id}-{}.jsonl", fault.name())),
        lines.join("\n"),
    )?;
    std::fs::write(
        out.join(format!("run-{run_id}-{}.nemesis.json", fault.name())),
        serde_json::to_string_pretty(&events)?,
    )?;
    Ok((history, anomalies, verdict.inconclusive))
}

/// After the faults healed: every node reads every key (recorded in the history), the
/// listings of every node must converge to the keys that exist, and every version of every
/// key is read back (keys in the trash are restored first).
async fn final_phase(
    cluster: &Cluster,
    w: &Workload,
    clients: usize,
) -> (BTreeMap<usize, FinalKey>, Vec<Op>, Option<Anomaly>) {
    let reader = clients; // the final reads' client number
    let mut ops = Vec::new();
    for k in 0..w.keys {
        for node in 0..cluster.nodes.len() {
            ops.push(workload::get(cluster, w, reader, node, k, w.next_id(), 0).await);
        }
    }
    let exists: Vec<usize> = (0..w.keys)
        .filter(|&k| {
            ops.iter()
                .any(|o| o.key == Some(k) && matches!(o.outcome, Outcome::Ok(Res::Value(Some(_)))))
        })
        .collect();
    // Listings converge: every node's own replica lists the same keys, those that exist.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listing = None;
    loop {
        let mut seen = Vec::new();
        for node in 0..cluster.nodes.len() {
            let o = workload::list(cluster, w, reader, node, w.next_id(), true).await;
            seen.push(match o.outcome {
                Outcome::Ok(Res::Keys(k)) => Ok(k),
                other => Err(format!("{other:?}")),
            });
        }
        if seen.iter().all(|s| s.as_ref() == Ok(&exists)) {
            break;
        }
        if Instant::now() > deadline {
            listing = Some(Anomaly {
                what: "listings did not converge".into(),
                key: None,
                ops: Vec::new(),
                detail: format!(
                    "30 s after healing, nodes list {seen:?}; the keys that exist are {exists:?}"
                ),
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut finals = BTreeMap::new();
    for k in 0..w.keys {
        finals.insert(k, final_versions(cluster, w, k).await);
    }
    (finals, ops, listing)
}

/// Every version of key `k` with what its bytes are, read through the nodes in turn.
async fn final_versions(cluster: &Cluster, w: &Workload, k: usize) -> FinalKey {
    let key = w.key(k);
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let attempt = async {
            let mut s = cluster.storage(0).await.map_err(|e| e.to_string())?;
            // A trashed key's versions are listed once it is restored.
            let _ = s
                .undelete(pb::UndeleteRequest {
                    bucket: workload::BUCKET.into(),
                    key: key.clone(),
                })
                .await;
            match s
                .list_versions(pb::ListVersionsRequest {
                    bucket: workload::BUCKET.into(),
                    key: key.clone(),
                })
                .await
            {
                Ok(r) => Ok(r.into_inner().versions),
                Err(e) if e.code() == tonic::Code::NotFound => Ok(Vec::new()),
                Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(v)) => break Ok(v),
            Ok(Err(e)) if Instant::now() > deadline => break Err(e),
            Err(_) if Instant::now() > deadline => break Err("no answer within 10 s".into()),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let versions = match listed {
        Ok(v) => v,
        Err(e) => {
            return FinalKey {
                versions: Vec::new(),
                error: Some(e),
            };
        }
    };
    let mut out = FinalKey::default();
    for (i, v) in versions.iter().enumerate() {
        let node = i % cluster.nodes.len();
        let r = match workload::read_bytes(cluster, node, &key, v.version).await {
            Ok(Some(bytes)) => workload::identify(w.run, k, &bytes),
            Ok(None) => Err("listed, but reading it says not found".into()),
            Err(e) => Err(format!(
                "reading it through {}: {e}",
                cluster.nodes[node].alias()
            )),
        };
        out.versions.push((v.version, r));
    }
    out
}

/// The longest time during the workload in which no client operation succeeded, in ms.
fn longest_gap(ops: &[Op], clients: usize) -> f64 {
    let mut done: Vec<f64> = ops
        .iter()
        .filter(|o| o.client < clients && matches!(o.outcome, Outcome::Ok(_)))
        .map(|o| o.done_ms)
        .collect();
    let end = ops
        .iter()
        .filter(|o| o.client < clients)
        .map(|o| {
            if o.done_ms.is_finite() {
                o.done_ms
            } else {
                o.invoke_ms
            }
        })
        .fold(0.0, f64::max);
    done.sort_by(f64::total_cmp);
    let mut last = 0.0;
    let mut gap: f64 = 0.0;
    for t in done.into_iter().chain(std::iter::once(end)) {
        gap = gap.max(t - last);
        last = t;
    }
    gap
}

fn render(tallies: &BTreeMap<Fault, Tally>, seed: u64, args: &Args) -> String {
    let mut s = format!(
        "Campaign seed {seed}: {} nodes (R=3, W=2), {} clients, {} keys per run, {} s per run, image {}\n\n",
        args.nodes, args.clients, args.keys, args.seconds, args.image
    );
    s.push_str("| fault | runs | ops | ok | failed | unknown | anomalies | unchecked keys | longest unavailability | failing seeds |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (f, t) in tallies {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s | {} |\n",
            f.name(),
            t.runs,
            t.ops,
            t.ok,
            t.fail,
            t.unknown,
            t.anomalies,
            t.inconclusive,
            t.longest_gap_ms / 1000.0,
            if t.failing_seeds.is_empty() {
                "-".into()
            } else {
                t.failing_seeds.join(", ")
            }
        ));
    }
    s
}
