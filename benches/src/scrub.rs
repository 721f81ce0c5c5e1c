//! `--scrub`: what redundancy verification costs. Starts its own node under --work-dir with
//! --size bytes stored, then measures in the same run:
//! 1. raw BLAKE3 on one core (an in-memory buffer hashed with one thread);
//! 2. a scrub pass at full speed (rate set to 100 GB/s), first with the chunk files out of the
//!    page cache (uploads write them with O_DIRECT), then again with them cached;
//! 3. a --size upload with the scrub paused and with it running at its default rate, `rounds`
//!    alternating pairs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use strata_admin::client::{self, Admin};
use strata_admin::transfer;
use strata_proto::v1 as pb;

use crate::cluster::{Spawned, token, upload};
use crate::{make_file, mbps};

async fn scrub_worker(admin: &mut Admin) -> anyhow::Result<pb::Worker> {
    let r = admin
        .list_workers(pb::ListWorkersRequest {})
        .await?
        .into_inner();
    r.nodes
        .first()
        .and_then(|n| n.workers.iter().find(|w| w.name == "scrub").cloned())
        .context("no scrub worker in the list")
}

async fn control(
    admin: &mut Admin,
    action: &str,
    tunable: &str,
    value: &str,
) -> anyhow::Result<()> {
    let r = admin
        .control_workers(pb::AdminControlWorkersRequest {
            node: String::new(),
            request: Some(pb::ControlWorkersRequest {
                action: action.into(),
                tunable: tunable.into(),
                value: value.into(),
            }),
        })
        .await?
        .into_inner();
    if let Some(n) = r.nodes.iter().find(|n| !n.ok) {
        bail!("{action}: {}", n.message);
    }
    Ok(())
}

/// Runs one scrub pass now at `rate` and returns (bytes, its own rate from start to end).
/// The pass's own figure is used: the request waits up to a second for the verifier's tick.
async fn timed_pass(admin: &mut Admin, rate: u64) -> anyhow::Result<(u64, f64)> {
    let before = scrub_worker(admin).await?.last_done_ms;
    control(admin, "set", "scrub-rate", &rate.to_string()).await?;
    let start = Instant::now();
    control(admin, "scrub-start", "", "").await?;
    let deadline = start + Duration::from_secs(600);
    loop {
        let w = scrub_worker(admin).await?;
        if w.last_done_ms > before {
            let figure =
                |k: &str| -> u64 { w.figures.get(k).and_then(|v| v.parse().ok()).unwrap_or(0) };
            return Ok((
                figure("pass bytes"),
                figure("last pass bytes/s") as f64 / 1e6,
            ));
        }
        if Instant::now() > deadline {
            bail!("the scrub pass did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn blake3_one_core(size: u64) -> f64 {
    let buf: Vec<u8> = (0..64u64 << 20)
        .map(|i| ((i * 2_654_435_761) >> 13) as u8)
        .collect();
    let start = Instant::now();
    let mut done = 0u64;
    let mut h = blake3::Hasher::new();
    while done < size {
        let n = (size - done).min(buf.len() as u64) as usize;
        h.update(&buf[..n]);
        done += n as u64;
    }
    std::hint::black_box(h.finalize());
    mbps(done, start.elapsed())
}

pub async fn scrub(work: &Path, size: u64, rounds: usize, json: bool) -> anyhow::Result<()> {
    let config = work.join("strata.toml");
    std::fs::write(
        &config,
        "[verify]\nscrub_interval = \"30days\"\ncheck_interval = \"1h\"\n",
    )?;
    let dir = work.join("node");
    let cfg = config.to_string_lossy().into_owned();
    let node = Spawned::start(&dir, &dir, &["dev"], &[("STRATA_CONFIG", cfg.as_str())])?;
    let endpoint = node.endpoint()?;
    let tenant = token(&dir, "tenant.token")?;
    let mut admin = client::admin(
        crate::connect(&endpoint).await?,
        &token(&dir, "admin.token")?,
    )?;
    let default_rate: u64 = scrub_worker(&mut admin)
        .await?
        .tunables
        .get("scrub-rate")
        .and_then(|v| v.parse().ok())
        .context("scrub-rate tunable")?;

    // The data the scrub walks.
    let plan_of =
        |name: &str, seed: u64| -> anyhow::Result<(std::path::PathBuf, transfer::FilePlan)> {
            let p = work.join(name);
            make_file(&p, size, seed)?;
            let plan = transfer::plan(&p, transfer::DEFAULT_CHUNK, &transfer::NoProgress)?;
            Ok((p, plan))
        };
    let stored = plan_of("stored", 1)?;
    upload(&endpoint, &tenant, std::slice::from_ref(&stored), "stored").await?;
    std::fs::remove_file(&stored.0)?;

    // Raw sequential read of the same size from the same disk, page cache dropped (root).
    let drop = std::fs::metadata("/proc/sys/vm/drop_caches")
        .is_ok_and(|m| !m.permissions().readonly())
        && std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/vm/drop_caches")
            .is_ok();
    let (_, raw_read) = crate::raw_disk(work, size, drop)?;
    if drop {
        crate::drop_caches()?;
    }
    let blake3 = blake3_one_core(size);
    let (cold_bytes, scrub_cold) = timed_pass(&mut admin, 100_000_000_000).await?;
    let (warm_bytes, scrub_warm) = timed_pass(&mut admin, 100_000_000_000).await?;
    let blake3_after = blake3_one_core(size);
    let blake3 = (blake3 + blake3_after) / 2.0;

    // Foreground uploads, alternating: scrub paused, scrub running at its default rate.
    control(&mut admin, "set", "scrub-rate", &default_rate.to_string()).await?;
    let mut pairs = Vec::new();
    for round in 0..rounds {
        control(&mut admin, "scrub-pause", "", "").await?;
        let a = plan_of(&format!("paused-{round}"), 100 + round as u64)?;
        let paused = upload(
            &endpoint,
            &tenant,
            std::slice::from_ref(&a),
            &format!("p{round}"),
        )
        .await?;
        std::fs::remove_file(&a.0)?;
        let b = plan_of(&format!("running-{round}"), 200 + round as u64)?;
        control(&mut admin, "scrub-start", "", "").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while scrub_worker(&mut admin).await?.state == "idle" {
            if Instant::now() > deadline {
                bail!("the scrub did not start");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let running = upload(
            &endpoint,
            &tenant,
            std::slice::from_ref(&b),
            &format!("r{round}"),
        )
        .await?;
        let still = scrub_worker(&mut admin).await?.state;
        std::fs::remove_file(&b.0)?;
        pairs.push((paused, running, still));
    }
    control(&mut admin, "scrub-pause", "", "").await?;
    let mut ratios: Vec<f64> = pairs.iter().map(|(p, r, _)| r / p).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    if json {
        println!(
            "{}",
            serde_json::json!({
                "size": size, "blake3_one_core_mb_s": blake3,
                "scrub_cold_mb_s": scrub_cold, "scrub_warm_mb_s": scrub_warm,
                "scrub_cold_over_blake3": scrub_cold / blake3,
                "raw_read_mb_s": raw_read, "page_cache_dropped": drop,
                "scrub_cold_over_raw_read": scrub_cold / raw_read,
                "scrub_warm_over_blake3": scrub_warm / blake3,
                "scrub_default_rate": default_rate,
                "uploads": pairs.iter().map(|(p, r, s)| serde_json::json!({
                    "paused_mb_s": p, "scrubbing_mb_s": r, "scrub_state_after": s, "ratio": r / p })).collect::<Vec<_>>(),
                "upload_ratio_median": median,
            })
        );
    } else {
        println!("raw BLAKE3, one core:          {blake3:8.0} MB/s");
        println!(
            "raw sequential read:           {raw_read:8.0} MB/s  (page cache dropped: {drop})"
        );
        println!(
            "scrub at full speed, cold:     {scrub_cold:8.0} MB/s  ({:.2} of BLAKE3, {:.2} of raw read; {} MB)",
            scrub_cold / blake3,
            scrub_cold / raw_read,
            cold_bytes / 1_000_000
        );
        println!(
            "scrub at full speed, cached:   {scrub_warm:8.0} MB/s  ({:.2} of BLAKE3; {} MB)",
            scrub_warm / blake3,
            warm_bytes / 1_000_000
        );
        for (i, (p, r, s)) in pairs.iter().enumerate() {
            println!(
                "round {i}: upload {p:6.0} MB/s scrub paused, {r:6.0} MB/s scrub at {} MB/s ({s} after): {:.3}",
                default_rate / 1_000_000,
                r / p
            );
        }
        println!("upload with scrub / without (median): {median:.3}");
    }
    Ok(())
}
