//! What the gRPC server lets in, before tonic reads a message (a tower layer over every call's
//! request body):
//!
//! - A message whose length prefix announces more than the message limit ends the call with
//!   RESOURCE_EXHAUSTED naming the limit, before any of its bytes are read.
//! - On PutChunks, each message first takes its size from the memory budget's client pool,
//!   waiting while the node is at its limit; the message's bytes are read only then (until
//!   they are, the client's data waits in HTTP/2 flow control, a small window per stream).
//!   The handler takes the permits, in message order, from the [`MessagePermits`] in the
//!   request's extensions and keeps each until its chunk is stored. tonic's decoder keeps its
//!   buffer (as large as the largest message so far) for the stream's life, so a released
//!   message permit goes to the stream's retained memory (the largest one is kept) until the
//!   stream ends. The same record says when the client last sent something and since when the
//!   stream waits for memory, so an idle stream and a stream the node cannot feed are told
//!   apart.
//!
//! A stream that waits for memory keeps what its client already sent (at most its HTTP/2
//! stream window) unread. The server's connection window is therefore at least the stream
//! window times the streams a connection may carry, so streams that wait can never use up the
//! connection window that streams being read need (a flow-control deadlock otherwise).
//!
//! It also bounds open upload and download streams, node-wide and per tenant
//! ([`StreamGate`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body::Frame;
use strata_cluster::TenantId;
use tonic::Status;
use tonic::body::Body;

use crate::budget::{BudgetError, MemoryBudget, Permit, Retained};
use crate::error::NodeError;
use crate::metrics as m;

/// The gRPC path whose messages take memory permits.
pub const PUT_CHUNKS_PATH: &str = "/strata.v1.Storage/PutChunks";
/// Paths of the internal node-to-node service, whose messages (Raft snapshots) may be larger.
const INTERNAL_PREFIX: &str = "/strata.v1.Cluster/";

/// gRPC's message prefix: a compression flag and a 4-byte big-endian length.
const PREFIX: usize = 5;

/// Permits taken for a call's messages, in message order, the memory the call's decoder
/// retains, and the call's activity.
pub struct MessagePermits {
    queue: Mutex<VecDeque<Permit>>,
    retained: Arc<Retained>,
    /// When the client last sent bytes (or the node last gave the stream memory).
    last_activity: Mutex<Instant>,
    /// Since when the stream waits for memory (None: it does not).
    waiting_since: Mutex<Option<Instant>>,
}

impl Default for MessagePermits {
    fn default() -> Self {
        MessagePermits {
            queue: Mutex::new(VecDeque::new()),
            retained: Arc::new(Retained::default()),
            last_activity: Mutex::new(Instant::now()),
            waiting_since: Mutex::new(None),
        }
    }
}

/// Why a stream has not moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stillness {
    /// The client sent nothing for this long.
    Idle(Duration),
    /// The node has had no memory for the stream's next message for this long.
    Starved(Duration),
}

impl MessagePermits {
    fn push(&self, p: Permit) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(p.then_retain(self.retained.clone()));
        }
    }

    fn set_waiting(&self, waiting: bool) {
        if let Ok(mut w) = self.waiting_since.lock() {
            match (waiting, w.is_some()) {
                (true, false) => *w = Some(Instant::now()),
                (false, true) => *w = None,
                _ => {}
            }
        }
    }

    /// How long the stream has not moved, and why.
    pub fn stillness(&self) -> Stillness {
        if let Some(since) = self.waiting_since.lock().ok().and_then(|w| *w) {
            return Stillness::Starved(since.elapsed());
        }
        Stillness::Idle(
            self.last_activity
                .lock()
                .map(|t| t.elapsed())
                .unwrap_or_default(),
        )
    }

    /// Records activity on the stream (bytes from the client, an ack to it).
    pub fn touch(&self) {
        if let Ok(mut t) = self.last_activity.lock() {
            *t = Instant::now();
        }
    }

    /// The permit of the next message the handler reads.
    pub fn next(&self) -> Option<Permit> {
        self.queue.lock().ok()?.pop_front()
    }
}

/// The tower layer; see the module documentation.
#[derive(Clone)]
pub struct IngressLayer {
    budget: Arc<MemoryBudget>,
    limit: usize,
    internal_limit: usize,
}

impl IngressLayer {
    /// `limit`: the largest message accepted from clients, in bytes; `internal_limit`: from
    /// other nodes on the internal service.
    pub fn new(budget: Arc<MemoryBudget>, limit: usize, internal_limit: usize) -> IngressLayer {
        IngressLayer {
            budget,
            limit,
            internal_limit,
        }
    }
}

impl<S> tower_layer::Layer<S> for IngressLayer {
    type Service = Ingress<S>;

    fn layer(&self, inner: S) -> Ingress<S> {
        Ingress {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Ingress<S> {
    inner: S,
    layer: IngressLayer,
}

impl<S> tower_service::Service<http::Request<Body>> for Ingress<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let gate = if parts.uri.path() == PUT_CHUNKS_PATH {
            let permits = Arc::new(MessagePermits::default());
            parts.extensions.insert(permits.clone());
            Some((self.layer.budget.clone(), permits))
        } else {
            None
        };
        let limit = if parts.uri.path().starts_with(INTERNAL_PREFIX) {
            self.layer.internal_limit
        } else {
            self.layer.limit
        };
        let body = Body::new(Gated {
            inner: body,
            limit,
            gate,
            prefix: [0; PREFIX],
            prefix_len: 0,
            remaining: 0,
            pending: None,
            acquiring: None,
        });
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<Permit, BudgetError>> + Send>>;

/// A request body that reads each message's prefix, checks it, takes its permit, and only
/// then passes the message's bytes on.
struct Gated {
    inner: Body,
    limit: usize,
    gate: Option<(Arc<MemoryBudget>, Arc<MessagePermits>)>,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Bytes of the current message still to pass through.
    remaining: usize,
    /// Data read from the inner body and not passed on yet.
    pending: Option<Bytes>,
    acquiring: Option<Acquire>,
}

impl Gated {
    fn too_large(&self, len: usize) -> Status {
        metrics::counter!(m::INGRESS_REFUSED, "limit" => "message_size").increment(1);
        Status::resource_exhausted(format!(
            "a message of {len} bytes is over the {}-byte message limit (for chunks: max_chunk_bytes plus 1 MiB)",
            self.limit
        ))
    }
}

impl http_body::Body for Gated {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            // A complete prefix: check it, wait for memory, then pass the prefix on.
            if this.prefix_len == PREFIX {
                let len = u32::from_be_bytes([
                    this.prefix[1],
                    this.prefix[2],
                    this.prefix[3],
                    this.prefix[4],
                ]) as usize;
                if len > this.limit {
                    return Poll::Ready(Some(Err(this.too_large(len))));
                }
                if let Some((budget, permits)) = &this.gate {
                    let acquiring = this.acquiring.get_or_insert_with(|| {
                        let budget = budget.clone();
                        Box::pin(async move { budget.client((len + PREFIX) as u64).await })
                    });
                    match acquiring.as_mut().poll(cx) {
                        Poll::Pending => {
                            permits.set_waiting(true);
                            return Poll::Pending;
                        }
                        Poll::Ready(Ok(p)) => permits.push(p),
                        Poll::Ready(Err(e)) => {
                            this.acquiring = None;
                            permits.set_waiting(false);
                            return Poll::Ready(Some(Err(Status::from(NodeError::from(e)))));
                        }
                    }
                    this.acquiring = None;
                    permits.set_waiting(false);
                    permits.touch();
                }
                this.prefix_len = 0;
                this.remaining = len;
                let prefix = Bytes::copy_from_slice(&this.prefix);
                return Poll::Ready(Some(Ok(Frame::data(prefix))));
            }
            let data = match this.pending.take() {
                Some(d) if !d.is_empty() => d,
                _ => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(d) => {
                            if let Some((_, permits)) = &this.gate {
                                permits.touch();
                            }
                            d
                        }
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    },
                },
            };
            let mut data = data;
            if this.remaining > 0 {
                // Inside a message: pass on up to its end.
                let n = this.remaining.min(data.len());
                let out = data.split_to(n);
                this.remaining -= n;
                if !data.is_empty() {
                    this.pending = Some(data);
                }
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            // At a message boundary: collect the next prefix (it may span frames).
            let n = (PREFIX - this.prefix_len).min(data.len());
            this.prefix[this.prefix_len..this.prefix_len + n].copy_from_slice(&data[..n]);
            this.prefix_len += n;
            data.advance(n);
            if !data.is_empty() {
                this.pending = Some(data);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.prefix_len == 0 && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Bounds on open streams (uploads and downloads), node-wide and per tenant.
pub struct StreamGate {
    max_total: usize,
    max_per_tenant: usize,
    total: AtomicUsize,
    per_tenant: Mutex<HashMap<TenantId, usize>>,
}

/// An open stream; counted until dropped.
pub struct StreamTicket {
    gate: Arc<StreamGate>,
    tenant: TenantId,
    kind: &'static str,
}

impl StreamGate {
    pub fn new(max_total: usize, max_per_tenant: usize) -> Arc<StreamGate> {
        Arc::new(StreamGate {
            max_total,
            max_per_tenant,
            total: AtomicUsize::new(0),
            per_tenant: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new stream of `kind` ("put" or "get") for `tenant`, or refuses it with
    /// RESOURCE_EXHAUSTED naming the limit.
    pub fn enter(
        self: &Arc<Self>,
        tenant: TenantId,
        kind: &'static str,
    ) -> Result<StreamTicket, NodeError> {
        let mut per = self.per_tenant.lock().unwrap_or_else(|p| p.into_inner());
        let mine = per.entry(tenant).or_insert(0);
        if *mine >= self.max_per_tenant {
            metrics::counter!(m::INGRESS_REFUSED, "limit" => "max_streams_per_tenant").increment(1);
            return Err(NodeError::ResourceExhausted(format!(
                "this tenant has {} upload and download streams open, the limit (max_streams_per_tenant); close one and retry",
                self.max_per_tenant
            )));
        }
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            metrics::counter!(m::INGRESS_REFUSED, "limit" => "max_streams").increment(1);
            return Err(NodeError::ResourceExhausted(format!(
                "the node has {} upload and download streams open, the limit (max_streams); retry later",
                self.max_total
            )));
        }
        *mine += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::STREAMS_OPEN, "kind" => kind).increment(1.0);
        Ok(StreamTicket {
            gate: self.clone(),
            tenant,
            kind,
        })
    }
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        let mut per = self
            .gate
            .per_tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.tenant);
            }
        }
        self.gate.total.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(m::STREAMS_OPEN, "kind" => self.kind).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    fn gated(
        frames: Vec<Vec<u8>>,
        limit: usize,
        budget: Option<Arc<MemoryBudget>>,
    ) -> (Gated, Arc<MessagePermits>) {
        let permits = Arc::new(MessagePermits::default());
        let stream = futures::stream::iter(
            frames
                .into_iter()
                .map(|f| Ok::<_, Status>(Frame::data(Bytes::from(f)))),
        );
        let inner = Body::new(http_body_util::StreamBody::new(stream));
        let g = Gated {
            inner,
            limit,
            gate: budget.map(|b| (b, permits.clone())),
            prefix: [0; PREFIX],
            prefix_len: 0,
            remaining: 0,
            pending: None,
            acquiring: None,
        };
        (g, permits)
    }

    #[tokio::test]
    async fn messages_pass_through_whatever_the_framing() {
        let mut wire = message(10);
        wire.extend(message(3));
        // Split at awkward places: inside a prefix, across two messages.
        let frames = vec![
            wire[..2].to_vec(),
            wire[2..12].to_vec(),
            wire[12..].to_vec(),
        ];
        let budget = Arc::new(MemoryBudget::new(1 << 20, 1 << 16));
        let (g, permits) = gated(frames, 100, Some(budget));
        let out = g.collect().await.expect("body").to_bytes();
        assert_eq!(out.as_ref(), wire.as_slice());
        assert_eq!(permits.next().map(|p| p.bytes()), Some(15));
        assert_eq!(permits.next().map(|p| p.bytes()), Some(8));
        assert!(permits.next().is_none());
    }

    #[tokio::test]
    async fn an_oversize_message_is_resource_exhausted_before_its_bytes() {
        let (g, _) = gated(vec![message(200)], 100, None);
        let err = g.collect().await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("100-byte message limit"),
            "{}",
            err.message()
        );
    }

    #[tokio::test]
    async fn a_message_waits_for_memory() {
        let budget = Arc::new(MemoryBudget::new(64 << 10, 16 << 10));
        let held = budget
            .client(48 << 10)
            .await
            .expect("all of the client pool");
        let (g, _) = gated(vec![message(1000)], 1 << 20, Some(budget));
        let collecting = tokio::spawn(g.collect());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !collecting.is_finished(),
            "the message was read without memory"
        );
        drop(held);
        let out = collecting.await.expect("task").expect("body");
        assert_eq!(out.to_bytes().len(), 1005);
    }

    #[test]
    fn streams_are_bounded_per_tenant_and_in_total() {
        let gate = StreamGate::new(3, 2);
        let a = TenantId(1);
        let b = TenantId(2);
        let t1 = gate.enter(a, "put").expect("1");
        let _t2 = gate.enter(a, "get").expect("2");
        let e = gate.enter(a, "put").err().expect("per tenant");
        assert!(e.to_string().contains("max_streams_per_tenant"), "{e}");
        let _t3 = gate.enter(b, "put").expect("3");
        let e = gate.enter(b, "put").err().expect("total");
        assert!(e.to_string().contains("max_streams"), "{e}");
        drop(t1);
        gate.enter(b, "put").expect("room again");
    }
}
