//! The rate limits of a tenant's plan, enforced by this node on the traffic it serves (quotas
//! are the state machine's: see `strata_cluster::plans`).
//!
//! - Requests per second: every Storage call counts one (a PutChunks or Get stream counts once,
//!   when it opens). Past the rate the call is refused with RESOURCE_EXHAUSTED, a message naming
//!   the limit and a `google.rpc.RetryInfo` saying when a retry would pass.
//! - Bandwidth: chunk bytes up and down are paced, not refused: a stream over the rate waits
//!   (HTTP/2 flow control slows the sender), so no byte already sent is wasted.
//!
//! Both are token buckets (governor's GCRA) holding one second of the rate. Each node keeps its
//! own, so a tenant spreading calls over N nodes gets up to N times the rate: the plan's rates
//! are per node, as `strata plan set` says.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use strata_cluster::plans::Plan;
use strata_cluster::{StateMachine, TenantId};

use crate::error::{NodeError, NodeResult};
use crate::metrics as m;

/// How long a tenant's plan is trusted before it is read again (a plan change takes effect on
/// every node within this).
const REFRESH: Duration = Duration::from_secs(2);

/// Tenants whose buckets are kept. Past it the stale ones are dropped, then all (their buckets
/// start full again: a bounded leniency, never a refusal of anyone else).
const MAX_TENANTS: usize = 100_000;

/// Bandwidth is counted in cells of this many bytes (a bucket counts in u32).
const CELL: u64 = 1024;

/// One tenant's buckets and where they came from.
struct Limiter {
    plan: String,
    requests_per_sec: Option<u32>,
    bandwidth_bytes_per_sec: Option<u64>,
    requests: Option<DefaultDirectRateLimiter>,
    bandwidth: Option<(DefaultDirectRateLimiter, u32)>,
    /// What `metrics` labels this tenant's refusals with.
    label: String,
    read_at: Mutex<Instant>,
}

impl Limiter {
    fn new(plan: &Plan, label: String) -> Limiter {
        let per_sec = |n: u32| Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        let cells = plan
            .bandwidth_bytes_per_sec
            .map(|b| (b / CELL).clamp(1, u32::MAX as u64) as u32);
        Limiter {
            plan: plan.name.clone(),
            requests_per_sec: plan.requests_per_sec,
            bandwidth_bytes_per_sec: plan.bandwidth_bytes_per_sec,
            requests: plan
                .requests_per_sec
                .map(|r| RateLimiter::direct(per_sec(r))),
            bandwidth: cells.map(|c| (RateLimiter::direct(per_sec(c)), c)),
            label,
            read_at: Mutex::new(Instant::now()),
        }
    }

    fn fresh(&self) -> bool {
        self.read_at
            .lock()
            .map(|t| t.elapsed() < REFRESH)
            .unwrap_or(false)
    }

    fn same_rates(&self, plan: &Plan, label: &str) -> bool {
        self.plan == plan.name
            && self.requests_per_sec == plan.requests_per_sec
            && self.bandwidth_bytes_per_sec == plan.bandwidth_bytes_per_sec
            && self.label == label
    }
}

/// Every tenant's rate limits on this node.
pub struct TenantLimits {
    sm: Arc<StateMachine>,
    /// Tenants whose metrics carry their name (`metrics_tenants`); the rest are "other".
    named: Vec<String>,
    tenants: Mutex<HashMap<TenantId, Arc<Limiter>>>,
}

impl TenantLimits {
    pub fn new(sm: Arc<StateMachine>, metrics_tenants: &[String]) -> TenantLimits {
        TenantLimits {
            sm,
            named: metrics_tenants.to_vec(),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `tenant`; refuses it past its plan's rate.
    pub fn admit(&self, tenant: TenantId) -> NodeResult<()> {
        let l = self.limiter(tenant)?;
        let (Some(bucket), Some(rate)) = (&l.requests, l.requests_per_sec) else {
            return Ok(());
        };
        match bucket.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(DefaultClock::default().now())
                    .max(Duration::from_millis(1));
                metrics::counter!(m::PLAN_REFUSALS, "tenant" => l.label.clone(), "limit" => "requests")
                    .increment(1);
                Err(NodeError::RateLimited {
                    message: format!(
                        "over the request rate of the tenant's plan {:?} (requests {rate}/s on this node): retry in {} ms",
                        l.plan,
                        wait.as_millis()
                    ),
                    retry_after: wait,
                })
            }
        }
    }

    /// Waits until `bytes` of chunk data fit `tenant`'s bandwidth. Call it with no lock held.
    pub async fn pace(&self, tenant: TenantId, bytes: u64) -> NodeResult<()> {
        let l = self.limiter(tenant)?;
        let Some((bucket, burst)) = &l.bandwidth else {
            return Ok(());
        };
        let mut cells = bytes.div_ceil(CELL);
        let mut waited = Duration::ZERO;
        while cells > 0 {
            let n = cells.min(*burst as u64) as u32;
            let Some(n) = NonZeroU32::new(n) else { break };
            // `n` never passes the burst, so the bucket always lets it through in time; each
            // wait is exactly until then.
            match bucket.check_n(n) {
                Ok(Ok(())) => cells -= n.get() as u64,
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    waited += wait;
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
                Err(_) => {
                    return Err(NodeError::Internal(format!(
                        "bandwidth bucket refused {n} cells of a {burst}-cell burst"
                    )));
                }
            }
        }
        if !waited.is_zero() {
            metrics::counter!(m::PLAN_PACED_BYTES, "tenant" => l.label.clone()).increment(bytes);
        }
        Ok(())
    }

    /// A plan refusal from the state machine, counted like the rate limits'.
    pub fn refused(&self, tenant: TenantId, limit: &'static str) {
        let label = match self.limiter(tenant) {
            Ok(l) => l.label.clone(),
            Err(_) => "other".to_owned(),
        };
        metrics::counter!(m::PLAN_REFUSALS, "tenant" => label, "limit" => limit).increment(1);
    }

    /// The tenant's buckets, read again from its plan when stale (outside the map's lock).
    fn limiter(&self, tenant: TenantId) -> NodeResult<Arc<Limiter>> {
        if let Some(l) = self.lock().get(&tenant) {
            if l.fresh() {
                return Ok(l.clone());
            }
        }
        let plan = self.sm.plan_of(tenant)?;
        let label = self.label(tenant)?;
        let mut map = self.lock();
        if let Some(l) = map.get(&tenant) {
            if l.same_rates(&plan, &label) {
                if let Ok(mut t) = l.read_at.lock() {
                    *t = Instant::now();
                }
                return Ok(l.clone());
            }
        }
        if map.len() >= MAX_TENANTS {
            map.retain(|_, l| l.fresh());
            if map.len() >= MAX_TENANTS {
                map.clear();
            }
        }
        let l = Arc::new(Limiter::new(&plan, label));
        map.insert(tenant, l.clone());
        Ok(l)
    }

    fn label(&self, tenant: TenantId) -> NodeResult<String> {
        if self.named.is_empty() {
            return Ok("other".to_owned());
        }
        let name = self.sm.tenant(tenant)?.map(|t| t.name);
        Ok(match name {
            Some(n) if self.named.contains(&n) => n,
            _ => "other".to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Arc<Limiter>>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every `every`, sets the usage gauges of the tenants `metrics_tenants` names (a tenant not
/// created yet is skipped until it is).
pub async fn publish_usage(sm: Arc<StateMachine>, named: Vec<String>, every: Duration) {
    if named.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for name in &named {
            let usage = match sm.tenant_id(name) {
                Ok(Some(id)) => sm.tenant_usage(id),
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            match usage {
                Ok(u) => {
                    let t = name.clone();
                    metrics::gauge!(m::TENANT_STORED_BYTES, "tenant" => t.clone())
                        .set(u.usage.stored_bytes as f64);
                    metrics::gauge!(m::TENANT_OBJECTS, "tenant" => t.clone())
                        .set(u.usage.objects as f64);
                    metrics::gauge!(m::TENANT_OPEN_UPLOADS, "tenant" => t)
                        .set(u.open_uploads as f64);
                }
                Err(e) => tracing::warn!(tenant = %name, error = %e, "cannot read tenant usage"),
            }
        }
    }
}
