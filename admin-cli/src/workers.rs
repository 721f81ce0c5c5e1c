//! `strata worker ...`, `strata scrub ...` and `strata repair status`: printing the
//! background workers of every node and the repair report (text and JSON).

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use strata_proto::v1 as pb;

use crate::ops::human;

/// A rate such as `200MB/s`, `50MiB` or `1000000` (bytes per second).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    crate::ops::parse_size(t)
}

fn when(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

/// A node as tables show it: its name, or its raft id before it answered.
fn node_label(name: &str, raft_id: u64) -> String {
    if name.is_empty() {
        raft_id.to_string()
    } else {
        name.to_owned()
    }
}

fn rate(bps: f64) -> String {
    if bps <= 0.0 {
        "-".into()
    } else {
        format!("{}/s", human(bps as u64))
    }
}

fn progress(p: f64) -> String {
    if p < 0.0 {
        "-".into()
    } else {
        format!("{:.1}%", p * 100.0)
    }
}

pub fn worker_json(w: &pb::Worker) -> Value {
    json!({ "name": w.name, "state": w.state,
        "progress": if w.progress < 0.0 { Value::Null } else { json!(w.progress) },
        "bytes_per_second": w.bytes_per_second, "last_error": w.last_error,
        "last_done_ms": w.last_done_ms, "next_run_ms": w.next_run_ms,
        "tunables": w.tunables, "figures": w.figures })
}

pub fn workers_json(r: &pb::ListWorkersResponse, only: Option<&str>) -> Value {
    json!(
        r.nodes
            .iter()
            .map(
                |n| json!({ "raft_id": n.raft_id, "name": n.name, "address": n.address,
                "error": n.error,
                "workers": n.workers.iter().filter(|w| only.is_none_or(|o| w.name == o))
                    .map(worker_json).collect::<Vec<_>>() })
            )
            .collect::<Vec<_>>()
    )
}

/// The worker table: one line per worker per node, then its figures and tunables.
pub fn print_workers(r: &pb::ListWorkersResponse, only: Option<&str>) {
    println!(
        "{:<10} {:<10} {:<10} {:>8} {:>12} {:<20} {:<20} LAST ERROR",
        "NODE", "WORKER", "STATE", "PROGRESS", "RATE", "LAST DONE", "NEXT"
    );
    for n in &r.nodes {
        let node = node_label(&n.name, n.raft_id);
        if !n.error.is_empty() {
            println!("{node:<10} {:<10} {}", "-", n.error);
            continue;
        }
        for w in n
            .workers
            .iter()
            .filter(|w| only.is_none_or(|o| w.name == o))
        {
            println!(
                "{:<10} {:<10} {:<10} {:>8} {:>12} {:<20} {:<20} {}",
                node,
                w.name,
                w.state,
                progress(w.progress),
                rate(w.bytes_per_second),
                when(w.last_done_ms),
                when(w.next_run_ms),
                w.last_error
            );
            let mut extra: Vec<String> =
                w.figures.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let mut tunables: Vec<(&String, &String)> = w.tunables.iter().collect();
            tunables.sort();
            for (k, v) in tunables {
                let shown = v
                    .parse::<u64>()
                    .map(|b| format!("{}/s", human(b)))
                    .unwrap_or_else(|_| v.clone());
                extra.push(format!("{k} = {shown}"));
            }
            extra.sort();
            if !extra.is_empty() {
                println!("{:<10} {:<10} {}", "", "", extra.join(", "));
            }
        }
    }
}

pub fn control_json(r: &pb::AdminControlWorkersResponse) -> Value {
    json!(
        r.nodes
            .iter()
            .map(|n| json!({ "raft_id": n.raft_id, "name": n.name, "ok": n.ok, "message": n.message }))
            .collect::<Vec<_>>()
    )
}

pub fn print_control(r: &pb::AdminControlWorkersResponse) {
    for n in &r.nodes {
        let node = node_label(&n.name, n.raft_id);
        let mark = if n.ok { "ok" } else { "FAILED" };
        println!("{node}: {mark}: {}", n.message);
    }
}

pub fn repair_json(r: &pb::RepairStatusResponse) -> Value {
    json!({
        "nodes": r.nodes.iter().map(|n| json!({ "raft_id": n.raft_id, "name": n.name,
            "error": n.error, "under_replicated": n.under_replicated,
            "being_repaired": n.being_repaired, "unrecoverable": n.unrecoverable }))
            .collect::<Vec<_>>(),
        "bad_archives": r.bad_archives.iter().map(|b| json!({ "backend": b.backend,
            "object": b.object, "result": b.result, "detail": b.detail,
            "found_ms": b.found_ms, "live_chunks": b.live_chunks })).collect::<Vec<_>>(),
        "unrecoverable": r.unrecoverable.iter().map(|u| json!({
            "chunk": hex::encode(&u.chunk_id), "found_by": u.found_by,
            "first_seen_ms": u.first_seen_ms, "quarantined_copy": u.quarantined_copy,
            "objects": u.objects.iter().map(|o| json!({ "tenant": o.tenant, "bucket": o.bucket,
                "key": o.key, "version": o.version })).collect::<Vec<_>>() }))
            .collect::<Vec<_>>(),
    })
}

pub fn print_repair(r: &pb::RepairStatusResponse) {
    println!(
        "{:<10} {:>16} {:>14} {:>13}",
        "NODE", "UNDER-REPLICATED", "BEING REPAIRED", "UNRECOVERABLE"
    );
    for n in &r.nodes {
        let node = node_label(&n.name, n.raft_id);
        if !n.error.is_empty() {
            println!("{node:<10} {}", n.error);
            continue;
        }
        println!(
            "{node:<10} {:>16} {:>14} {:>13}",
            n.under_replicated, n.being_repaired, n.unrecoverable
        );
    }
    if !r.bad_archives.is_empty() {
        println!("\ncold archives that failed their check:");
        for b in &r.bad_archives {
            println!(
                "  {} in {}: {} ({}), found {}, holds the cold copy of {} chunk(s)",
                b.object,
                b.backend,
                b.result,
                b.detail,
                when(b.found_ms),
                b.live_chunks
            );
        }
    }
    if r.unrecoverable.is_empty() {
        println!("\nno unrecoverable chunks");
        return;
    }
    println!("\nunrecoverable chunks (no good copy on any node that answered):");
    for u in &r.unrecoverable {
        let kept = if u.quarantined_copy {
            "; a rotten copy is kept in chunks/.quarantine/ on the node that found it"
        } else {
            ""
        };
        println!(
            "  {} (found by node {} at {}{kept})",
            hex::encode(&u.chunk_id),
            u.found_by,
            when(u.first_seen_ms)
        );
        for o in &u.objects {
            println!(
                "    used by {}: {}/{} version {}",
                o.tenant, o.bucket, o.key, o.version
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_or_without_per_second() {
        assert_eq!(parse_rate("200MB/s"), Ok(200_000_000));
        assert_eq!(parse_rate("50MiB"), Ok(50 << 20));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }
}
