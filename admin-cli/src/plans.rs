//! `strata plan ...` and `strata tenant show`: parsing limits and printing plans and a tenant's
//! usage against each limit.

use serde_json::{Value, json};
use strata_proto::v1 as pb;

use crate::ops::human;

/// A count such as `100k`, `2M` or `5000` (k = 1,000, M = 1,000,000, G = 1,000,000,000).
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000),
        Some((i, 'm' | 'M')) => (&t[..i], 1_000_000),
        Some((i, 'g' | 'G')) => (&t[..i], 1_000_000_000),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a count (try 5000, 100k or 2M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("count {s:?} is out of range"))
}

/// A request rate such as `50/s` or `50` (per second).
pub fn parse_requests(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let n = parse_count(t)?;
    u32::try_from(n).map_err(|_| format!("rate {s:?} is out of range"))
}

fn limit_json<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

pub fn plan_json(p: &pb::Plan) -> Value {
    json!({ "name": p.name,
        "max_object_bytes": limit_json(p.max_object_bytes),
        "max_bytes": limit_json(p.max_bytes),
        "max_objects": limit_json(p.max_objects),
        "max_open_uploads": limit_json(p.max_open_uploads),
        "requests_per_sec": limit_json(p.requests_per_sec),
        "bandwidth_bytes_per_sec": limit_json(p.bandwidth_bytes_per_sec),
        "tenants": p.tenants })
}

fn or_unlimited(v: Option<String>) -> String {
    v.unwrap_or_else(|| "unlimited".into())
}

/// The plan's limits as `name value` pairs, in the order `strata plan set` takes them.
fn limits(p: &pb::Plan) -> [(&'static str, String); 6] {
    [
        (
            "max object size",
            or_unlimited(p.max_object_bytes.map(human)),
        ),
        ("max bytes", or_unlimited(p.max_bytes.map(human))),
        (
            "max objects",
            or_unlimited(p.max_objects.map(|n| n.to_string())),
        ),
        (
            "max open uploads",
            or_unlimited(p.max_open_uploads.map(|n| n.to_string())),
        ),
        (
            "requests",
            or_unlimited(p.requests_per_sec.map(|n| format!("{n}/s per node"))),
        ),
        (
            "bandwidth",
            or_unlimited(
                p.bandwidth_bytes_per_sec
                    .map(|n| format!("{}/s per node", human(n))),
            ),
        ),
    ]
}

/// One line per plan for `strata plan list` and `strata plan set`.
pub fn plan_line(p: &pb::Plan) -> String {
    let limits: Vec<String> = limits(p).iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "{:16} {} tenant(s): {}",
        p.name,
        p.tenants,
        limits.join(", ")
    )
}

pub fn tenant_json(t: &pb::TenantInfo) -> Value {
    json!({ "name": t.name, "tenant_id": t.tenant_id,
        "plan": t.plan.as_ref().map(plan_json),
        "stored_bytes": t.stored_bytes, "reserved_bytes": t.reserved_bytes,
        "objects": t.objects, "reserved_objects": t.reserved_objects,
        "open_uploads": t.open_uploads })
}

fn percent(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(0) => String::new(),
        Some(l) => format!(" ({:.0}%)", used as f64 * 100.0 / l as f64),
        None => String::new(),
    }
}

/// `strata tenant show`: the plan and usage against each limit.
pub fn print_tenant(t: &pb::TenantInfo) {
    let default = pb::Plan::default();
    let p = t.plan.as_ref().unwrap_or(&default);
    println!("tenant {} (id {}) on plan {}", t.name, t.tenant_id, p.name);
    let bytes = t.stored_bytes.saturating_add(t.reserved_bytes);
    println!(
        "  bytes            {} stored + {} reserved by open uploads of {}{}",
        human(t.stored_bytes),
        human(t.reserved_bytes),
        or_unlimited(p.max_bytes.map(human)),
        percent(bytes, p.max_bytes)
    );
    let objects = t.objects.saturating_add(t.reserved_objects);
    println!(
        "  objects          {} + {} being uploaded of {}{}",
        t.objects,
        t.reserved_objects,
        or_unlimited(p.max_objects.map(|n| n.to_string())),
        percent(objects, p.max_objects)
    );
    println!(
        "  open uploads     {} of {}{}",
        t.open_uploads,
        or_unlimited(p.max_open_uploads.map(|n| n.to_string())),
        percent(t.open_uploads, p.max_open_uploads.map(u64::from))
    );
    for (k, v) in &limits(p)[..1] {
        println!("  {k:16} {v}");
    }
    for (k, v) in &limits(p)[4..] {
        println!("  {k:16} {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rates_parse_with_their_suffixes() {
        assert_eq!(parse_count("100k"), Ok(100_000));
        assert_eq!(parse_count("2M"), Ok(2_000_000));
        assert_eq!(parse_count("5000"), Ok(5000));
        assert!(parse_count("k").is_err());
        assert!(parse_count("-1").is_err());
        assert!(parse_count("20000000000G").is_err());
        assert_eq!(parse_requests("50/s"), Ok(50));
        assert_eq!(parse_requests("50"), Ok(50));
        assert!(parse_requests("5G/s").is_err());
    }
}
