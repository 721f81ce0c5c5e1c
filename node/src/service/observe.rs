//! Request metrics: every handler runs inside `observe`, which counts the call by method and
//! status code and records its latency.

use std::future::Future;
use std::time::Instant;

use tonic::{Code, Response, Status};

use crate::error::{NodeError, NodeResult};
use crate::metrics as m;

pub async fn observe<T>(
    method: &'static str,
    fut: impl Future<Output = NodeResult<T>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    let result = fut.await;
    record(method, start, result.as_ref().err());
    result.map(Response::new).map_err(Status::from)
}

/// An Admin call: runs it if `caller` holds the admin token, then writes one audit line
/// (target `audit`: who, which call, its outcome; the log line carries the time) and records
/// it as `observe` does.
pub async fn audited<T>(
    method: &'static str,
    caller: NodeResult<String>,
    fut: impl Future<Output = NodeResult<T>>,
) -> Result<Response<T>, Status> {
    let start = Instant::now();
    let (who, result) = match caller {
        Ok(who) => (who, fut.await),
        Err(e) => ("a caller without the admin token".to_owned(), Err(e)),
    };
    let outcome = result.as_ref().err().map_or(Code::Ok, NodeError::code);
    tracing::info!(target: "audit", who = %who, call = method, outcome = ?outcome, "admin call");
    record(method, start, result.as_ref().err());
    result.map(Response::new).map_err(Status::from)
}

pub fn record(method: &'static str, start: Instant, err: Option<&NodeError>) {
    let code = err.map_or(Code::Ok, NodeError::code);
    if let Some(e) = err {
        if matches!(code, Code::Internal | Code::DataLoss | Code::Unavailable) {
            tracing::warn!(method, error = %e, "request failed");
        } else {
            tracing::debug!(method, error = %e, "request refused");
        }
    }
    metrics::counter!(m::GRPC_REQUESTS, "method" => method, "code" => format!("{code:?}"))
        .increment(1);
    metrics::histogram!(m::GRPC_DURATION, "method" => method).record(start.elapsed().as_secs_f64());
}
