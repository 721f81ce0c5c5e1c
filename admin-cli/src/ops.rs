//! Operator output: the status and layout tables (text and JSON), and size parsing for
//! `--capacity`.

use std::time::Duration;

use serde_json::{Value, json};
use strata_proto::v1 as pb;

/// Bytes for people: 1.5 GiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A size such as `2TB`, `500GiB`, `1.5T` or `1048576` (bytes). Decimal units (KB, MB, GB, TB,
/// PB) are powers of 1000, binary ones (KiB.. or K, M, G, T, P) powers of 1024.
/// Like [`parse_size`], but 0 is allowed (a lower bound that lets everything through).
pub fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(0);
    }
    parse_size(s)
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 2TB, 500GiB or a number of bytes)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "pb" => 1e15,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "p" | "pib" => 1024f64.powi(5),
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let v = n * mult;
    if !(1.0..1.8e19).contains(&v) {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(v as u64)
}

fn rebalance_json(r: &Option<pb::Rebalance>) -> Value {
    match r {
        Some(r) => {
            json!({ "layout_version": r.layout_version, "finished_version": r.finished_version,
            "running": r.running, "to_move_chunks": r.to_move_chunks, "to_move_bytes": r.to_move_bytes,
            "done_chunks": r.done_chunks, "done_bytes": r.done_bytes, "copied_bytes": r.copied_bytes,
            "bytes_per_second": r.bytes_per_second, "pending_chunks": r.pending_chunks })
        }
        None => Value::Null,
    }
}

/// What a node's rebalance is doing, in a few words.
fn rebalance_text(n: &pb::ClusterNode, layout_version: u64) -> String {
    let Some(r) = &n.rebalance else {
        return "?".into();
    };
    if r.running {
        format!(
            "v{}: {}/{} chunks, {}/{} at {}/s",
            r.layout_version,
            r.done_chunks,
            r.to_move_chunks,
            human(r.done_bytes),
            human(r.to_move_bytes),
            human(r.bytes_per_second as u64)
        )
    } else if r.finished_version >= layout_version && r.pending_chunks == 0 {
        "done".into()
    } else if r.pending_chunks > 0 {
        format!(
            "v{}: {} chunk(s) waiting",
            r.layout_version, r.pending_chunks
        )
    } else {
        "starting".into()
    }
}

pub fn status_json(s: &pb::StatusResponse) -> Value {
    json!({ "node_id": s.node_id, "version": s.version, "uptime_seconds": s.uptime_seconds,
        "grpc_address": s.grpc_address, "data_dir": s.data_dir, "disk_total_bytes": s.disk_total_bytes,
        "disk_free_bytes": s.disk_free_bytes, "chunk_count": s.chunk_count, "chunk_bytes": s.chunk_bytes,
        "open_sessions": s.open_sessions, "object_count": s.object_count, "tenant_count": s.tenant_count,
        "layout_version": s.layout_version, "replication": s.replication, "write_quorum": s.write_quorum,
        "raft": { "id": s.raft_id, "role": s.raft_role, "term": s.term, "leader_id": s.leader_id,
            "last_log_index": s.last_log_index, "applied_index": s.applied_index },
        "nodes": s.nodes.iter().map(|n| json!({ "raft_id": n.raft_id, "name": n.name, "address": n.address,
            "role": n.role, "voter": n.voter, "matched_index": n.matched_index, "lag": n.lag,
            "zone": n.zone, "capacity": n.capacity, "state": n.state, "reachable": n.reachable,
            "chunk_count": n.chunk_count, "chunk_bytes": n.chunk_bytes,
            "disk_total_bytes": n.disk_total_bytes, "disk_free_bytes": n.disk_free_bytes,
            "replication_queue": n.replication_queue, "rebalance": rebalance_json(&n.rebalance) }))
            .collect::<Vec<_>>() })
}

pub fn print_status(s: &pb::StatusResponse) {
    let used = s.disk_total_bytes.saturating_sub(s.disk_free_bytes);
    println!("node        {} (strata {})", s.node_id, s.version);
    println!("address     {}", s.grpc_address);
    println!(
        "uptime      {}",
        humantime::format_duration(Duration::from_secs(s.uptime_seconds))
    );
    println!("data dir    {}", s.data_dir);
    println!(
        "disk        {} used of {} ({} free)",
        human(used),
        human(s.disk_total_bytes),
        human(s.disk_free_bytes)
    );
    println!("chunks      {} ({})", s.chunk_count, human(s.chunk_bytes));
    println!(
        "objects     {} in {} tenant(s); {} upload(s) open",
        s.object_count, s.tenant_count, s.open_sessions
    );
    println!(
        "raft        id {} {}, term {}, log {} applied {}",
        s.raft_id, s.raft_role, s.term, s.last_log_index, s.applied_index
    );
    println!(
        "layout      v{}, {} copies per chunk, uploads wait for {}",
        s.layout_version, s.replication, s.write_quorum
    );
    println!();
    println!(
        "{:<20}  {:<8}  {:<22}  {:<8}  {:>6}  {:<10}  {:>10}  {:<8}  {:>10}  {:>9}  {:>5}  REBALANCE",
        "RAFT ID",
        "NAME",
        "ADDRESS",
        "ROLE",
        "LAG",
        "ZONE",
        "CAPACITY",
        "STATE",
        "USED",
        "CHUNKS",
        "QUEUE"
    );
    for n in &s.nodes {
        let (used, chunks, queue, rebalance) = if n.reachable {
            (
                human(n.chunk_bytes),
                n.chunk_count.to_string(),
                n.replication_queue.to_string(),
                rebalance_text(n, s.layout_version),
            )
        } else {
            ("?".into(), "?".into(), "?".into(), "unreachable".into())
        };
        println!(
            "{:<20}  {:<8}  {:<22}  {:<8}  {:>6}  {:<10}  {:>10}  {:<8}  {:>10}  {:>9}  {:>5}  {}",
            n.raft_id,
            if n.name.is_empty() { "?" } else { &n.name },
            n.address.trim_start_matches("http://"),
            n.role,
            n.lag,
            if n.zone.is_empty() { "-" } else { &n.zone },
            if n.capacity == 0 {
                "-".into()
            } else {
                human(n.capacity)
            },
            n.state,
            used,
            chunks,
            queue,
            rebalance
        );
    }
}

fn layout_json(l: &pb::Layout) -> Value {
    json!({ "version": l.version, "replication": l.replication, "write_quorum": l.write_quorum,
        "effective_replication": l.effective_replication,
        "nodes": l.nodes.iter().map(|n| json!({ "raft_id": n.raft_id, "name": n.name, "address": n.address,
            "zone": n.zone, "capacity": n.capacity, "state": n.state })).collect::<Vec<_>>() })
}

pub fn layout_response_json(r: &pb::LayoutResponse) -> Value {
    json!({ "current": r.current.as_ref().map(layout_json), "staged": r.staged.as_ref().map(layout_json),
        "warnings": r.warnings,
        "unassigned": r.unassigned.iter().map(|n| json!({ "raft_id": n.raft_id, "name": n.name,
            "address": n.address })).collect::<Vec<_>>() })
}

fn print_layout_table(title: &str, l: &pb::Layout) {
    println!(
        "{title} v{}: {} copies per chunk ({} with these nodes), uploads wait for {}",
        l.version, l.replication, l.effective_replication, l.write_quorum
    );
    let total: u64 = l
        .nodes
        .iter()
        .filter(|n| n.state == "active")
        .map(|n| n.capacity)
        .sum();
    println!(
        "  {:<20}  {:<8}  {:<22}  {:<10}  {:>10}  {:>6}  STATE",
        "RAFT ID", "NAME", "ADDRESS", "ZONE", "CAPACITY", "SHARE"
    );
    for n in &l.nodes {
        let share = if n.state == "active" && total > 0 {
            format!("{:.1}%", 100.0 * n.capacity as f64 / total as f64)
        } else {
            "-".into()
        };
        println!(
            "  {:<20}  {:<8}  {:<22}  {:<10}  {:>10}  {:>6}  {}",
            n.raft_id,
            if n.name.is_empty() { "?" } else { &n.name },
            n.address.trim_start_matches("http://"),
            n.zone,
            human(n.capacity),
            share,
            n.state
        );
    }
}

pub fn print_layout(r: &pb::LayoutResponse) {
    if let Some(c) = &r.current {
        print_layout_table("current layout", c);
    }
    if !r.unassigned.is_empty() {
        println!();
        println!("members not in the layout (they hold no chunks):");
        for n in &r.unassigned {
            println!(
                "  {:<20}  {:<8}  {}",
                n.raft_id,
                if n.name.is_empty() { "?" } else { &n.name },
                n.address.trim_start_matches("http://")
            );
        }
    }
    match &r.staged {
        Some(s) => {
            println!();
            print_layout_table("STAGED layout", s);
            println!();
            println!(
                "apply it with `strata layout apply {}` or drop it with `strata layout revert`",
                s.version
            );
        }
        None => {
            println!();
            println!("no staged changes");
        }
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_size("500GiB"), Ok(500 << 30));
        assert_eq!(parse_size("1.5T"), Ok(1024u64.pow(4) * 3 / 2));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }
}
