//! `strata tier ...` and `strata restore`: printing tier state, policies and status.

use std::time::Duration;

use serde_json::{Value, json};
use strata_proto::v1 as pb;

use crate::ops::human;

/// "hot", "cold", "restoring" for a TierInfo (hot when unset: old nodes).
pub fn state_name(t: Option<&pb::TierInfo>) -> &'static str {
    use pb::tier_info::State;
    match t.and_then(|t| State::try_from(t.state).ok()) {
        Some(State::Cold) => "cold",
        Some(State::Restoring) => "restoring",
        _ => "hot",
    }
}

pub fn tier_json(t: Option<&pb::TierInfo>) -> Value {
    let Some(t) = t else {
        return json!({ "state": "hot" });
    };
    json!({ "state": state_name(Some(t)), "backend": t.backend, "storage_class": t.storage_class,
        "cold_since_ms": t.cold_since_ms, "restore_tier": t.restore_tier,
        "restore_started_ms": t.restore_started_ms })
}

/// One line for `strata stat`, e.g. "restoring from glacier (DEEP_ARCHIVE), standard tier,
/// started 2026-11-25 10:00:00".
pub fn tier_line(t: Option<&pb::TierInfo>, time: impl Fn(i64) -> String) -> String {
    let Some(t) = t else {
        return "hot".into();
    };
    match state_name(Some(t)) {
        "cold" => format!(
            "cold in {} ({}) since {}",
            t.backend,
            t.storage_class,
            time(t.cold_since_ms)
        ),
        "restoring" => format!(
            "restoring from {} ({}), {} tier, started {}",
            t.backend,
            t.storage_class,
            t.restore_tier,
            time(t.restore_started_ms)
        ),
        _ => "hot".into(),
    }
}

pub fn policy_json(p: &pb::TierPolicy) -> Value {
    json!({ "name": p.name, "tenant": p.tenant, "bucket": p.bucket, "backend": p.backend,
        "storage_class": p.storage_class, "min_idle_seconds": p.min_idle_seconds,
        "min_size": p.min_size, "created_at_ms": p.created_at_ms })
}

pub fn policy_line(p: &pb::TierPolicy) -> String {
    let scope = if p.bucket.is_empty() {
        "cluster-wide".to_owned()
    } else {
        format!("{}/{}", p.tenant, p.bucket)
    };
    let class = if p.storage_class.is_empty() {
        "backend default".to_owned()
    } else {
        p.storage_class.clone()
    };
    format!(
        "{:16} {:24} -> {} ({class}) when idle >= {} and size >= {}",
        p.name,
        scope,
        p.backend,
        humantime::format_duration(Duration::from_secs(p.min_idle_seconds)),
        human(p.min_size)
    )
}

pub fn pass_json(p: &pb::TierPass) -> Value {
    json!({ "finished_ms": p.finished_ms, "moved_versions": p.moved_versions,
        "failed_versions": p.failed_versions, "pending_versions": p.pending_versions,
        "archives": p.archives, "archive_bytes": p.archive_bytes,
        "backend_requests": p.backend_requests, "restores_done": p.restores_done,
        "restores_waiting": p.restores_waiting, "archives_deleted": p.archives_deleted,
        "orphans_deleted": p.orphans_deleted,
        "archives_checked": p.archives_checked, "bad_archives": p.bad_archives,
        "versions_made_hot": p.versions_made_hot,
        "errors": p.errors })
}

pub fn print_pass(p: &pb::TierPass) {
    println!(
        "moved {} version(s) in {} archive(s), {} ({} backend requests); {} failed; {} restore(s) finished, {} waiting; {} archive(s) deleted ({} orphans); {} archive(s) checked, {} bad",
        p.moved_versions,
        p.archives,
        human(p.archive_bytes),
        p.backend_requests,
        p.failed_versions,
        p.restores_done,
        p.restores_waiting,
        p.archives_deleted,
        p.orphans_deleted,
        p.archives_checked,
        p.bad_archives
    );
    for e in &p.errors {
        println!("  error: {e}");
    }
}

pub fn status_json(s: &pb::TierStatusResponse) -> Value {
    json!({
        "hot_bytes": s.hot_bytes,
        "backends": s.backends.iter().map(|b| json!({ "name": b.name, "kind": b.kind,
            "default_class": b.default_class, "bytes": b.bytes, "archives": b.archives,
            "archive_bytes": b.archive_bytes })).collect::<Vec<_>>(),
        "moves_pending": s.moves_pending,
        "cold_versions": s.cold_versions,
        "restores": s.restores.iter().map(|r| json!({ "tenant": r.tenant, "bucket": r.bucket,
            "key": r.key, "version": r.version, "tier": r.tier, "started_ms": r.started_ms,
            "rehydrating": r.rehydrating })).collect::<Vec<_>>(),
        "dead_archives": s.dead_archives,
        "last_pass": s.last_pass.as_ref().map(pass_json),
    })
}

pub fn print_status(s: &pb::TierStatusResponse, time: impl Fn(i64) -> String) {
    println!(
        "{:12} {:6} {:13} {:>10} {:>9} {:>12}",
        "TIER", "KIND", "CLASS", "BYTES", "ARCHIVES", "ARCHIVE SIZE"
    );
    println!(
        "{:12} {:6} {:13} {:>10} {:>9} {:>12}",
        "hot",
        "disk",
        "-",
        human(s.hot_bytes),
        "-",
        "-"
    );
    for b in &s.backends {
        println!(
            "{:12} {:6} {:13} {:>10} {:>9} {:>12}",
            b.name,
            b.kind,
            b.default_class,
            human(b.bytes),
            b.archives,
            human(b.archive_bytes)
        );
    }
    println!(
        "cold versions {}, moves pending {}, restores in flight {}, archives to delete {}",
        s.cold_versions,
        s.moves_pending,
        s.restores.len(),
        s.dead_archives
    );
    for r in &s.restores {
        println!(
            "  restoring {}/{}/{} v{} ({} tier, since {}{})",
            r.tenant,
            r.bucket,
            r.key,
            r.version,
            r.tier,
            time(r.started_ms),
            if r.rehydrating { ", copying back" } else { "" }
        );
    }
    if let Some(p) = s.last_pass.as_ref().filter(|p| p.finished_ms > 0) {
        print!("last pass at {}: ", time(p.finished_ms));
        print_pass(p);
    }
}
