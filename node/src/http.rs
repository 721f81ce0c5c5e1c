//! The node's HTTP endpoint (metrics_listen): `/metrics` in Prometheus text format and
//! `/health`, which answers 200 while the node serves (it is a member of a cluster that has a
//! leader) and 503 otherwise, with the reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use strata_cluster::raft::Raft;
use tokio::net::TcpListener;

use crate::blocks::BlockManager;
use crate::budget::MemoryBudget;
use crate::disk::DiskSpace;

/// What the endpoint reads.
#[derive(Clone)]
pub struct Probe {
    pub node_id: String,
    pub raft: Raft,
    pub disk: Arc<DiskSpace>,
    pub blocks: Arc<BlockManager>,
    pub budget: Arc<MemoryBudget>,
    pub started: Instant,
}

#[derive(Clone)]
struct Http {
    handle: PrometheusHandle,
    probe: Probe,
}

pub async fn serve(listener: TcpListener, handle: PrometheusHandle, probe: Probe) {
    // Histograms need periodic upkeep when the exporter does not run its own listener.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(Http { handle, probe });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}

async fn metrics(State(s): State<Http>) -> impl IntoResponse {
    let p = &s.probe;
    metrics::gauge!(crate::metrics::UPTIME).set(p.started.elapsed().as_secs_f64());
    metrics::gauge!(crate::metrics::DISK_TOTAL).set(p.disk.total() as f64);
    metrics::gauge!(crate::metrics::DISK_FREE).set(p.disk.free() as f64);
    for (pool, bytes) in p.budget.in_use() {
        metrics::gauge!(crate::metrics::MEMORY_IN_USE, "pool" => pool).set(bytes as f64);
    }
    let (chunks, bytes) = p.blocks.store().usage();
    metrics::gauge!(crate::metrics::CHUNK_STORE_CHUNKS).set(chunks as f64);
    metrics::gauge!(crate::metrics::CHUNK_STORE_BYTES).set(bytes as f64);
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.handle.render(),
    )
}

async fn health(State(s): State<Http>) -> impl IntoResponse {
    let m = s.probe.raft.metrics().borrow().clone();
    let role = format!("{:?}", m.state).to_lowercase();
    let (code, serving, why) = if m.running_state.is_err() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            false,
            "raft stopped".to_owned(),
        )
    } else if m.current_leader.is_none() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            false,
            "no raft leader known (not initialized, or no quorum)".to_owned(),
        )
    } else {
        (StatusCode::OK, true, "ok".to_owned())
    };
    let body = format!(
        "{{\"serving\":{serving},\"reason\":\"{why}\",\"node_id\":\"{}\",\"raft_role\":\"{role}\",\"leader\":{}}}\n",
        s.probe.node_id,
        m.current_leader
            .map_or("null".to_owned(), |l| l.to_string())
    );
    (code, [("content-type", "application/json")], body)
}
