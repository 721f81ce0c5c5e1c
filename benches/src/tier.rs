//! `strata-bench --tier`: cold-tier transition throughput against a plain aws-sdk-s3
//! PutObject loop of the same bytes (same run, same loopback S3 server: moto), and backend
//! requests per GiB moved with packing (the default 32 MiB archives) and without (one object
//! per chunk), for one large file and for many small files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use strata_admin::client;
use strata_admin::transfer::{self, NoProgress};
use strata_proto::v1 as pb;

use crate::cluster::{Spawned, free_port, token, upload};
use crate::{make_file, mbps};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const PACK: u64 = 32 * 1024 * 1024;

struct MotoServer(Child);

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s3_client(endpoint: &str) -> Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

async fn start_moto(work: &Path) -> anyhow::Result<(MotoServer, String)> {
    let port = free_port()?;
    let log = std::fs::File::create(work.join("moto.log"))?;
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start moto_server: pip install 'moto[server]'")?;
    let server = MotoServer(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    let s3 = s3_client(&endpoint);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3.list_buckets().send().await.is_err() {
        if Instant::now() > deadline {
            bail!("moto_server did not answer in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for b in ["plain", "packed", "serial", "unpacked"] {
        s3.create_bucket().bucket(b).send().await?;
    }
    Ok((server, endpoint))
}

/// The plain loop: the file's bytes as PutObject calls of PACK bytes, one after another.
async fn plain_loop(s3: &Client, path: &Path) -> anyhow::Result<f64> {
    let size = std::fs::metadata(path)?.len();
    let start = Instant::now();
    let mut off = 0;
    let mut i = 0;
    while off < size {
        let len = PACK.min(size - off);
        let body = tokio::task::spawn_blocking({
            let path = path.to_owned();
            move || -> std::io::Result<Vec<u8>> {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; len as usize];
                std::fs::File::open(path)?.read_exact_at(&mut buf, off)?;
                Ok(buf)
            }
        })
        .await??;
        s3.put_object()
            .bucket("plain")
            .key(format!("piece-{i}"))
            .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
            .body(ByteStream::from(body))
            .send()
            .await?;
        off += len;
        i += 1;
    }
    Ok(mbps(size, start.elapsed()))
}

struct Moved {
    mbps: f64,
    requests_per_gib: f64,
    archives: u64,
}

/// Sets a policy moving one bucket and runs a pass; returns throughput and requests.
async fn move_bucket(admin: &mut client::Admin, bucket: &str, bytes: u64) -> anyhow::Result<Moved> {
    admin
        .set_tier_policy(pb::TierPolicy {
            name: format!("bench-{bucket}"),
            tenant: "default".into(),
            bucket: bucket.into(),
            backend: "s3".into(),
            storage_class: "GLACIER".into(),
            min_idle_seconds: 0,
            min_size: 0,
            created_at_ms: 0,
        })
        .await?;
    let start = Instant::now();
    let (mut requests, mut archives, mut moved) = (0, 0, 0);
    // A pass looks at a bounded number of versions: run passes until one moves nothing.
    for _ in 0..1000 {
        let pass = admin
            .run_tiering(pb::RunTieringRequest {})
            .await?
            .into_inner();
        if !pass.errors.is_empty() {
            bail!("tiering pass failed: {:?}", pass.errors);
        }
        if pass.moved_versions == 0 {
            break;
        }
        moved += pass.moved_versions;
        requests += pass.backend_requests;
        archives += pass.archives;
    }
    let elapsed = start.elapsed();
    if moved == 0 {
        bail!("no version of bucket {bucket} moved");
    }
    Ok(Moved {
        mbps: mbps(bytes, elapsed),
        requests_per_gib: requests as f64 / (bytes as f64 / GIB),
        archives,
    })
}

/// One node whose S3 backend packs archives of `pack` bytes (0: one object per chunk).
async fn run_node(
    work: &Path,
    moto: &str,
    bucket: &str,
    pack: u64,
    parallel: usize,
    big: &[(PathBuf, transfer::FilePlan)],
    small: &[(PathBuf, transfer::FilePlan)],
) -> anyhow::Result<(Moved, Moved)> {
    let dir = work.join(format!("node-{bucket}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[tier]\ninterval = \"1h\"\npack_bytes = {pack}\nparallel = {parallel}\n[[tier.backends]]\nname = \"s3\"\nkind = \"s3\"\nendpoint = \"{moto}\"\nbucket = \"{bucket}\"\npath_style = true\naccess_key_id = \"bench\"\nsecret_access_key = \"bench\"\n"
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let node = Spawned::start(
        &dir,
        &dir,
        &[
            "dev",
            "--listen",
            &format!("127.0.0.1:{}", free_port()?),
            "--metrics-listen",
            &format!("127.0.0.1:{}", free_port()?),
        ],
        &[("STRATA_CONFIG", config.as_str())],
    )?;
    let endpoint = node.endpoint()?;
    let tenant = token(&dir, "tenant.token")?;
    upload(&endpoint, &tenant, big, "big").await?;
    upload(&endpoint, &tenant, small, "small").await?;
    // upload() puts everything in bucket "bench": move the small files to their own bucket
    // by uploading them again there (dedup makes it cheap) so two policies can split them.
    let mut s = client::storage(crate::connect(&endpoint).await?, &tenant)?;
    for (i, (path, plan)) in small.iter().enumerate() {
        transfer::upload_planned(
            &mut s,
            path,
            "small",
            &format!("f{i}"),
            "application/octet-stream",
            plan,
            std::sync::Arc::new(NoProgress),
        )
        .await?;
    }
    for (i, (path, plan)) in big.iter().enumerate() {
        transfer::upload_planned(
            &mut s,
            path,
            "big",
            &format!("f{i}"),
            "application/octet-stream",
            plan,
            std::sync::Arc::new(NoProgress),
        )
        .await?;
    }
    let mut admin = client::admin(
        crate::connect(&endpoint).await?,
        &token(&dir, "admin.token")?,
    )?;
    let big_bytes = big.iter().map(|(_, p)| p.size).sum();
    let small_bytes = small.iter().map(|(_, p)| p.size).sum();
    let big_moved = move_bucket(&mut admin, "big", big_bytes).await?;
    let small_moved = move_bucket(&mut admin, "small", small_bytes).await?;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((big_moved, small_moved))
}

pub async fn tier(work: &Path, size: u64, small_files: usize, json: bool) -> anyhow::Result<()> {
    let (_moto, moto) = start_moto(work).await?;
    let big_path = work.join("big");
    make_file(&big_path, size, 0x7137)?;
    let big = vec![(
        big_path.clone(),
        transfer::plan(&big_path, transfer::DEFAULT_CHUNK, &NoProgress)?,
    )];
    let small: Vec<_> = (0..small_files)
        .map(|i| {
            let p = work.join(format!("small-{i}"));
            make_file(&p, 16 * 1024, 0x5000 + i as u64)?;
            let plan = transfer::plan(&p, transfer::DEFAULT_CHUNK, &NoProgress)?;
            Ok((p, plan))
        })
        .collect::<anyhow::Result<_>>()?;

    let plain = plain_loop(&s3_client(&moto), &big_path).await?;
    let (packed_big, packed_small) = run_node(work, &moto, "packed", PACK, 4, &big, &small).await?;
    let (serial_big, _) = run_node(work, &moto, "serial", PACK, 1, &big, &small).await?;
    let (unpacked_big, unpacked_small) =
        run_node(work, &moto, "unpacked", 0, 4, &big, &small).await?;
    let ratio = packed_big.mbps / plain;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bytes": size, "plain_put_mbps": plain, "transition_mbps": packed_big.mbps,
                "transition_over_plain": ratio,
                "transition_unpacked_mbps": unpacked_big.mbps,
                "transition_one_upload_at_a_time_mbps": serial_big.mbps,
                "one_at_a_time_over_plain": serial_big.mbps / plain,
                "large_requests_per_gib": { "packed": packed_big.requests_per_gib, "unpacked": unpacked_big.requests_per_gib },
                "small_files": small_files,
                "small_requests_per_gib": { "packed": packed_small.requests_per_gib, "unpacked": unpacked_small.requests_per_gib },
                "archives": { "large_packed": packed_big.archives, "large_unpacked": unpacked_big.archives,
                    "small_packed": packed_small.archives, "small_unpacked": unpacked_small.archives },
            })
        );
    } else {
        println!("cold-tier transition of {size} bytes to moto on loopback (same run)");
        println!(
            "  plain PutObject loop ({} MiB objects)  {plain:8.1} MB/s",
            PACK >> 20
        );
        println!(
            "  transition, packed (4 uploads at once) {:8.1} MB/s  = {ratio:.2} of the plain loop (target >= 0.80)",
            packed_big.mbps
        );
        println!(
            "  transition, packed, 1 upload at a time {:8.1} MB/s  = {:.2} of the plain loop",
            serial_big.mbps,
            serial_big.mbps / plain
        );
        println!(
            "  transition, one object per chunk   {:8.1} MB/s",
            unpacked_big.mbps
        );
        println!(
            "  requests per GiB, large file:  packed {:.0} ({} archives), unpacked {:.0} ({} objects)",
            packed_big.requests_per_gib,
            packed_big.archives,
            unpacked_big.requests_per_gib,
            unpacked_big.archives
        );
        println!(
            "  requests per GiB, {small_files} files of 16 KiB:  packed {:.0} ({} archives), unpacked {:.0} ({} objects)",
            packed_small.requests_per_gib,
            packed_small.archives,
            unpacked_small.requests_per_gib,
            unpacked_small.archives
        );
    }
    Ok(())
}
