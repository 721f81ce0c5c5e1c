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
