//! 200 PutChunks streams that each send one 16 MiB chunk and then stall.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use strata_proto::v1 as pb;
use strata_tests::*;

use super::MIB;

const STREAMS: usize = 200;
const TENANTS: usize = 4;
const CHUNK: usize = 16 * MIB;
const MAX_INFLIGHT: u64 = 64 * MIB as u64;
/// HTTP/2 receive buffers the node may hold for streams that wait for memory: each can have its
/// stream window (2 MiB, server.rs STREAM_WINDOW) of data sent and unread: 200 x 2 MiB.
const H2_WINDOWS: u64 = STREAMS as u64 * 2 * MIB as u64;
/// Allocator and runtime overhead on top (fragmentation of 200 buffers of 2 MiB, task stacks).
const OVERHEAD: u64 = 48 * MIB as u64;
/// Every stream must be closed by the server within this long after it was opened.
const CLOSE_WITHIN: Duration = Duration::from_secs(120);

#[derive(Debug)]
enum End {
    /// The call was refused before a response stream existed.
    Refused(tonic::Code, String),
    /// The response stream ended with an error status (what a stalled stream should get).
    Error(tonic::Code, String),
    /// The response stream ended OK (wrong: the upload is not finished).
    Ok,
    /// Still open at the deadline.
    Open,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_stalled_16_mib_streams_bounded_memory_and_closed() {
    let test_start = Instant::now();
    let node = Node::start_with(&[
        ("STRATA_MAX_INFLIGHT_BYTES", "67108864"),
        // Keys the refactor adds; today's node ignores unknown STRATA_ variables.
        ("STRATA_STREAM_IDLE_TIMEOUT", "5s"),
        ("STRATA_MAX_STREAMS_PER_TENANT", "64"),
    ]);
    // One client (one HTTP/2 connection) per tenant.
    let mut clients = Vec::new();
    for t in 0..TENANTS {
        let token = within(
            Duration::from_secs(30),
            "create tenant",
            node.new_tenant(&format!("stall{t}")),
        )
        .await;
        clients.push(node.storage_as(&token).await);
    }
    let chunk = Bytes::from(data(CHUNK, 4242));
    let id = Bytes::copy_from_slice(blake3::hash(&chunk).as_bytes());
    let mut sessions = Vec::new();
    for i in 0..STREAMS {
        let t = i % TENANTS;
        let up = within(
            Duration::from_secs(30),
            "create upload",
            create(
                &mut clients[t],
                "stall",
                &format!("s{i}"),
                CHUNK as u64,
                vec![],
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("create upload {i}: {e:?}"));
        sessions.push((t, up.session_id));
    }
    let distinct: std::collections::BTreeSet<_> = sessions.iter().map(|s| &s.1).collect();
    assert_eq!(
        distinct.len(),
        STREAMS,
        "every CreateUpload opened its own session"
    );

    // Node memory, sampled every 50 ms from here on.
    let pid = node.pid();
    let baseline = node.rss_kib();
    let client_baseline = proc_status_kib(std::process::id(), "VmRSS").expect("own VmRSS");
    let stop = Arc::new(AtomicBool::new(false));
    let max_sampled = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (stop, max_sampled) = (stop.clone(), max_sampled.clone());
        std::thread::spawn(move || {
            let mut samples = 0usize;
            let mut peak_at = Duration::ZERO;
            let t = Instant::now();
            // Bounded: the streams end within CLOSE_WITHIN; a margin on top.
            while !stop.load(Ordering::Relaxed) && t.elapsed() < CLOSE_WITHIN * 2 {
                if let Some(rss) = proc_status_kib(pid, "VmRSS") {
                    if rss > max_sampled.load(Ordering::Relaxed) {
                        max_sampled.store(rss, Ordering::Relaxed);
                        peak_at = t.elapsed();
                    }
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (samples, peak_at)
        })
    };

    // All 200 streams at once: one 16 MiB chunk, then nothing (the request stream stays open).
    let opened = Instant::now();
    let deadline = tokio::time::Instant::from_std(opened + CLOSE_WITHIN);
    let tasks: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, (t, session))| {
            let mut s = clients[*t].clone();
            let msg = pb::PutChunkRequest {
                session_id: session.clone(),
                offset: 0,
                id: id.clone(),
                data: chunk.clone(),
            };
            tokio::spawn(async move {
                let outbound = futures::stream::iter([msg]).chain(futures::stream::pending());
                let mut acks = 0usize;
                let mut first_ack = None;
                let end = tokio::time::timeout_at(deadline, async {
                    let mut inbound = match s.put_chunks(outbound).await {
                        Ok(r) => r.into_inner(),
                        Err(e) => return End::Refused(e.code(), e.message().to_owned()),
                    };
                    loop {
                        match inbound.next().await {
                            Some(Ok(_)) => {
                                acks += 1;
                                first_ack.get_or_insert(opened.elapsed());
                            }
                            Some(Err(e)) => return End::Error(e.code(), e.message().to_owned()),
                            None => return End::Ok,
                        }
                    }
                })
                .await
                .unwrap_or(End::Open);
                (i, end, acks, opened.elapsed(), first_ack)
            })
        })
        .collect();
    let mut ends = Vec::new();
    for t in tasks {
        ends.push(
            within(CLOSE_WITHIN + Duration::from_secs(30), "a stream task", t)
                .await
                .expect("stream task"),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (samples, peak_at) = sampler.join().expect("sampler");
    let alive = proc_state(pid).is_some_and(|s| s != 'Z');
    let hwm = if alive { node.hwm_kib() } else { 0 };
    let rss_end = if alive { node.rss_kib() } else { 0 };
    let max_rss = max_sampled.load(Ordering::Relaxed);
    let client_hwm = proc_status_kib(std::process::id(), "VmHWM").expect("own VmHWM");
    // Information for the report: does the node give the memory back once the streams are
    // gone (closed by the server, or cancelled by this client at the deadline)? Polled for at
    // most 10 s.
    let gone = Instant::now();
    let mut rss_after = rss_end;
    while alive && gone.elapsed() < Duration::from_secs(10) {
        rss_after = node.rss_kib();
        if rss_after.saturating_sub(baseline) <= (MAX_INFLIGHT + H2_WINDOWS + OVERHEAD) / 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_streams = format!(
        "VmRSS {:.0} MiB {:.1?} after the last stream ended",
        mib(rss_after),
        gone.elapsed()
    );

    // What happened, all of it, before any assertion.
    let growth = hwm.max(max_rss).saturating_sub(baseline);
    let bound = (MAX_INFLIGHT + H2_WINDOWS + OVERHEAD) / 1024;
    println!(
        "node memory: baseline VmRSS {:.0} MiB, peak VmHWM {:.0} MiB, max sampled VmRSS {:.0} \
         MiB at {peak_at:.1?} ({samples} samples every 50ms), VmRSS {:.0} MiB at the end: growth \
         {:.0} MiB, bound {:.0} MiB",
        mib(baseline),
        mib(hwm),
        mib(max_rss),
        mib(rss_end),
        mib(growth),
        mib(bound)
    );
    println!("node memory: {after_streams}");
    println!(
        "client (this test process): VmRSS {:.0} MiB before the streams, VmHWM {:.0} MiB",
        mib(client_baseline),
        mib(client_hwm)
    );
    let mut kinds: BTreeMap<String, (usize, Duration, Duration)> = BTreeMap::new();
    let mut acked = 0usize;
    let mut last_first_ack = Duration::ZERO;
    for (_, end, acks, at, first_ack) in &ends {
        acked += usize::from(*acks > 0);
        if let Some(a) = first_ack {
            last_first_ack = last_first_ack.max(*a);
        }
        let label = match end {
            End::Refused(c, m) => format!("refused {c:?}: {m}"),
            End::Error(c, m) => format!("error {c:?}: {m}"),
            End::Ok => "ended OK".into(),
            End::Open => format!("still open after {CLOSE_WITHIN:?}"),
        };
        let e = kinds
            .entry(label)
            .or_insert((0, Duration::MAX, Duration::ZERO));
        e.0 += 1;
        e.1 = e.1.min(*at);
        e.2 = e.2.max(*at);
    }
    println!(
        "{acked} of {STREAMS} streams got an ack for their chunk (the last at {last_first_ack:.1?}); \
         how the streams ended:"
    );
    for (label, (n, first, last)) in &kinds {
        println!("  {n:>3} x {label} (at {first:.1?}..{last:.1?} after opening)");
    }
    println!("total {:.1?}", test_start.elapsed());

    let mut problems = Vec::new();
    if !alive {
        problems.push(format!("the node process (pid {pid}) died during the test"));
    }
    if growth > bound {
        problems.push(format!(
            "node memory grew by {:.0} MiB over its {:.0} MiB baseline (peak {:.0} MiB), over the \
             bound of {:.0} MiB = max_inflight_bytes 64 MiB + {:.0} MiB of HTTP/2 receive windows \
             ({STREAMS} streams x 2 MiB) + 48 MiB of overhead: chunk bytes of waiting streams are \
             not bounded",
            mib(growth),
            mib(baseline),
            mib(hwm.max(max_rss)),
            mib(bound),
            mib(H2_WINDOWS / 1024)
        ));
    }
    let not_closed: Vec<String> = kinds
        .iter()
        .filter(|(label, _)| !label.starts_with("error ") && !label.starts_with("refused "))
        .map(|(label, (n, _, _))| format!("{n} {label}"))
        .collect();
    if !not_closed.is_empty() {
        problems.push(format!(
            "expected every stalled stream to be closed by the server with an error status \
             within {CLOSE_WITHIN:?}; got: {}",
            not_closed.join(", ")
        ));
    }
    // The client holds at most one encoded copy of each stream's message (tonic encodes the
    // whole message before HTTP/2 flow control sends it): a sanity bound for this process.
    let client_bound = client_baseline + (STREAMS * CHUNK / 1024) as u64 + 1024 * 1024;
    if client_hwm > client_bound {
        problems.push(format!(
            "this test process peaked at {:.0} MiB, over its sanity bound of {:.0} MiB",
            mib(client_hwm),
            mib(client_bound)
        ));
    }
    assert!(
        problems.is_empty(),
        "{STREAMS} stalled PutChunks streams of one 16 MiB chunk ({TENANTS} tenants):\n{}",
        problems.join("\n")
    );
}
