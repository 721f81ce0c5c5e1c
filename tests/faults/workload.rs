//! The clients: concurrent tasks doing puts of unique values, overwrites, deletes, reads and
//! lists over a small key set, through random nodes, recording each operation's invocation,
//! completion and outcome (ok / fail / unknown).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use strata_proto::v1 as pb;
use tonic::Code;

use crate::cluster::Cluster;

pub const BUCKET: &str = "faults";
/// Chunk size of the clients' uploads: values above it take several chunks (and homes).
const CHUNK: usize = 256 * 1024;
/// An operation that has not finished after this long is given up: unknown for a commit in
/// flight, a failure before it.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub enum Kind {
    /// A put of a value unique to this operation (its id), `len` bytes.
    Put {
        value: u64,
        len: usize,
    },
    Get,
    Delete,
    List,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Res {
    /// The version a put committed.
    Version(u64),
    /// A read: the value (by the id of the put that wrote it) or none.
    Value(Option<u64>),
    /// A read returned bytes that are no value any put wrote: what they were.
    Corrupt(String),
    Trashed,
    Absent,
    /// A listing: the key indexes seen.
    Keys(Vec<usize>),
}

#[derive(Debug, Clone, Serialize)]
pub enum Outcome {
    Ok(Res),
    /// Definitely did not happen.
    Fail(String),
    /// May or may not have happened.
    Unknown(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub id: u64,
    pub client: usize,
    pub node: usize,
    /// Index into the run's key set (none for listings).
    pub key: Option<usize>,
    pub kind: Kind,
    /// Milliseconds since the run began.
    pub invoke_ms: f64,
    pub done_ms: f64,
    pub outcome: Outcome,
}

/// What one run's clients share: where to go, the key names, the op counter.
pub struct Workload {
    pub run: u64,
    pub keys: usize,
    pub start: Instant,
    next_op: AtomicU64,
}

impl Workload {
    pub fn new(run: u64, keys: usize) -> Workload {
        Workload {
            run,
            keys,
            start: Instant::now(),
            next_op: AtomicU64::new(1),
        }
    }

    pub fn key(&self, k: usize) -> String {
        format!("run-{}/key-{k}", self.run)
    }

    pub fn prefix(&self) -> String {
        format!("run-{}/", self.run)
    }

    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    pub fn next_id(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }
}

/// The bytes of value `id` for key `k` of run `run`: a header naming them, then bytes derived
/// from the id, `len` in all. Any other bytes read back are corruption or a foreign value.
pub fn value_bytes(run: u64, k: usize, id: u64, len: usize) -> Vec<u8> {
    let mut out = format!("strata-faults run={run} key={k} value={id} len={len}\n").into_bytes();
    out.extend(strata_tests::data(len.saturating_sub(out.len()), id));
    out.truncate(len);
    out
}

/// Which value `bytes` are (its id), when they are exactly a value of key `k` in run `run`.
pub fn identify(run: u64, k: usize, bytes: &[u8]) -> Result<u64, String> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len())
        .min(200);
    let header = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut id = None;
    let mut len = None;
    for field in header.split(' ') {
        if let Some(v) = field.strip_prefix("value=") {
            id = v.parse::<u64>().ok();
        }
        if let Some(v) = field.strip_prefix("len=") {
            len = v.parse::<usize>().ok();
        }
    }
    let (Some(id), Some(len)) = (id, len) else {
        return Err(format!(
            "{} bytes with no value header: {header:?}",
            bytes.len()
        ));
    };
    let expected = value_bytes(run, k, id, len);
    if bytes == expected.as_slice() {
        Ok(id)
    } else if bytes.len() != expected.len() {
        Err(format!(
            "value {id}: {} bytes where {} were written",
            bytes.len(),
            len
        ))
    } else {
        let at = bytes
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        Err(format!(
            "value {id}: bytes differ from what was written at offset {at} ({header:?})"
        ))
    }
}

/// A value's length: mostly small, some of a few chunks.
fn value_len(rng: &mut StdRng) -> usize {
    match rng.random_range(0..100) {
        0..70 => rng.random_range(100..8 * 1024),
        70..95 => rng.random_range(16 * 1024..200 * 1024),
        _ => rng.random_range(CHUNK + 1..3 * CHUNK),
    }
}

/// Runs `clients` clients until `until`, `stop` or `max_ops` operations invoked; returns
/// every operation recorded.
pub async fn run_clients(
    cluster: Arc<Cluster>,
    w: Arc<Workload>,
    clients: usize,
    seed: u64,
    until: Instant,
    max_ops: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Op> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let cluster = cluster.clone();
        let w = w.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (c as u64 + 1).wrapping_mul(0x51_7C_C1_B7));
            let mut ops = Vec::new();
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                let id = w.next_id();
                if id > max_ops {
                    break;
                }
                let node = rng.random_range(0..cluster.nodes.len());
                let key = rng.random_range(0..w.keys);
                let op = match rng.random_range(0..100) {
                    0..40 => {
                        let len = value_len(&mut rng);
                        put(&cluster, &w, c, node, key, id, len).await
                    }
                    40..75 => get(&cluster, &w, c, node, key, id, 0).await,
                    75..88 => delete(&cluster, &w, c, node, key, id).await,
                    _ => list(&cluster, &w, c, node, id, false).await,
                };
                ops.push(op);
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
            }
            ops
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        match t.await {
            Ok(ops) => all.extend(ops),
            Err(e) => panic!("a client task failed: {e}"),
        }
    }
    all.sort_by(|a, b| a.invoke_ms.total_cmp(&b.invoke_ms));
    all
}

fn finish(w: &Workload, base: Op, outcome: Outcome) -> Op {
    Op {
        done_ms: w.now_ms(),
        outcome,
        ..base
    }
}

fn started(
    w: &Workload,
    id: u64,
    client: usize,
    node: usize,
    key: Option<usize>,
    kind: Kind,
) -> Op {
    Op {
        id,
        client,
        node,
        key,
        kind,
        invoke_ms: w.now_ms(),
        done_ms: f64::INFINITY,
        outcome: Outcome::Unknown(String::new()),
    }
}

/// A refusal that means the call changed nothing: a refusal by the node, or a connection that
/// was never made (the request never left).
fn definite(s: &tonic::Status) -> bool {
    let code = s.code();
    // Connection refused, or the node's own word that the write was not committed (held to
    // it: the checker then requires that the write never shows).
    if code == Code::Unavailable
        && (s.message().contains("tcp connect error")
            || s.message().contains("the write was not committed"))
    {
        return true;
    }
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::AlreadyExists
            | Code::OutOfRange
    )
}

fn describe(s: &tonic::Status) -> String {
    let mut m = s.message().to_owned();
    m.truncate(160);
    format!("{:?}: {m}", s.code())
}

pub async fn put(
    cluster: &Cluster,
    w: &Workload,
    client: usize,
    node: usize,
    key: usize,
    id: u64,
    len: usize,
) -> Op {
    let base = started(w, id, client, node, Some(key), Kind::Put { value: id, len });
    let bytes = value_bytes(w.run, key, id, len);
    // Phase 1 (create, chunks) cannot commit anything; phase 2 (complete) can.
    let committing = std::sync::atomic::AtomicBool::new(false);
    let attempt = async {
        let mut s = cluster
            .storage(node)
            .await
            .map_err(|e| Outcome::Fail(e.to_string()))?;
        let session = s
            .create_upload(pb::CreateUploadRequest {
                bucket: BUCKET.into(),
                key: w.key(key),
                size: len as u64,
                manifest: Vec::new(),
                content_type: "application/octet-stream".into(),
            })
            .await
            .map_err(|e| Outcome::Fail(format!("create: {}", describe(&e))))?
            .into_inner()
            .session_id;
        let msgs: Vec<pb::PutChunkRequest> = bytes
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, c)| pb::PutChunkRequest {
                session_id: session.clone(),
                offset: (i * CHUNK) as u64,
                id: blake3::hash(c).as_bytes().to_vec().into(),
                data: c.to_vec().into(),
            })
            .collect();
        let chunks = msgs.len();
        let chunk_result = async {
            let mut acks = s
                .put_chunks(futures::stream::iter(msgs))
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(a) = acks.next().await {
                a?;
                n += 1;
            }
            Ok::<usize, tonic::Status>(n)
        }
        .await;
        match chunk_result {
            Ok(n) if n == chunks => {}
            Ok(n) => {
                abort(&mut s, &session).await;
                return Err(Outcome::Fail(format!(
                    "{n} of {chunks} chunks acknowledged"
                )));
            }
            Err(e) => {
                abort(&mut s, &session).await;
                return Err(Outcome::Fail(format!("chunks: {}", describe(&e))));
            }
        }
        committing.store(true, Ordering::Relaxed);
        let info = s
            .complete_upload(pb::CompleteUploadRequest {
                session_id: session.clone(),
                file_hash: blake3::hash(&bytes).as_bytes().to_vec().into(),
            })
            .await
            .map_err(|e| {
                if definite(&e) {
                    Outcome::Fail(format!("complete: {}", describe(&e)))
                } else {
                    Outcome::Unknown(format!("complete: {}", describe(&e)))
                }
            })?
            .into_inner();
        Ok(info.version)
    };
    let outcome = match tokio::time::timeout(OP_TIMEOUT, attempt).await {
        Ok(Ok(v)) => Outcome::Ok(Res::Version(v)),
        Ok(Err(o)) => o,
        Err(_) if committing.load(Ordering::Relaxed) => {
            Outcome::Unknown("complete: no answer within 10 s".into())
        }
        Err(_) => Outcome::Fail("no answer within 10 s before the commit".into()),
    };
    finish(w, base, outcome)
}

async fn abort(s: &mut strata_admin::client::Storage, session: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        s.abort_upload(pb::AbortUploadRequest {
            session_id: session.into(),
        }),
    )
    .await;
}

/// Reads the current version (`version` 0) or a given one; records what was read.
pub async fn get(
    cluster: &Cluster,
    w: &Workload,
    client: usize,
    node: usize,
    key: usize,
    id: u64,
    version: u64,
) -> Op {
    let base = started(w, id, client, node, Some(key), Kind::Get);
    let outcome = match read_bytes(cluster, node, &w.key(key), version).await {
        Ok(Some(bytes)) => match identify(w.run, key, &bytes) {
            Ok(v) => Outcome::Ok(Res::Value(Some(v))),
            Err(why) => Outcome::Ok(Res::Corrupt(why)),
        },
        Ok(None) => Outcome::Ok(Res::Value(None)),
        Err(why) => Outcome::Fail(why),
    };
    finish(w, base, outcome)
}

/// The bytes of a key's version (0: current); None when there is no such key or version.
pub async fn read_bytes(
    cluster: &Cluster,
    node: usize,
    key: &str,
    version: u64,
) -> Result<Option<Vec<u8>>, String> {
    let attempt = async {
        let mut s = cluster.storage(node).await.map_err(|e| e.to_string())?;
        let req = pb::GetRequest {
            bucket: BUCKET.into(),
            key: key.into(),
            version,
            offset: 0,
            length: 0,
        };
        let mut stream = match s.get(req).await {
            Ok(r) => r.into_inner(),
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(describe(&e)),
        };
        let mut out = Vec::new();
        while let Some(m) = stream.next().await {
            match m {
                Ok(m) => out.extend_from_slice(&m.data),
                Err(e) if e.code() == Code::NotFound && out.is_empty() => return Ok(None),
                Err(e) => return Err(describe(&e)),
            }
        }
        Ok(Some(out))
    };
    match tokio::time::timeout(OP_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 10 s".into()),
    }
}

pub async fn delete(
    cluster: &Cluster,
    w: &Workload,
    client: usize,
    node: usize,
    key: usize,
    id: u64,
) -> Op {
    let base = started(w, id, client, node, Some(key), Kind::Delete);
    let attempt = async {
        let mut s = cluster
            .storage(node)
            .await
            .map_err(|e| Outcome::Fail(e.to_string()))?;
        match s
            .delete(pb::DeleteRequest {
                bucket: BUCKET.into(),
                key: w.key(key),
            })
            .await
        {
            Ok(_) => Ok(Res::Trashed),
            Err(e) if e.code() == Code::NotFound => Ok(Res::Absent),
            Err(e) if definite(&e) => Err(Outcome::Fail(describe(&e))),
            Err(e) => Err(Outcome::Unknown(describe(&e))),
        }
    };
    let outcome = match tokio::time::timeout(OP_TIMEOUT, attempt).await {
        Ok(Ok(r)) => Outcome::Ok(r),
        Ok(Err(o)) => o,
        Err(_) => Outcome::Unknown("no answer within 10 s".into()),
    };
    finish(w, base, outcome)
}

/// Lists the run's keys (linearizable, or `stale` from the node's own replica).
pub async fn list(
    cluster: &Cluster,
    w: &Workload,
    client: usize,
    node: usize,
    id: u64,
    stale: bool,
) -> Op {
    let base = started(w, id, client, node, None, Kind::List);
    let attempt = async {
        let mut s = cluster.storage(node).await.map_err(|e| e.to_string())?;
        let r = s
            .list(pb::ListRequest {
                bucket: BUCKET.into(),
                prefix: w.prefix(),
                delimiter: String::new(),
                page_size: 1000,
                page_token: String::new(),
                trash: false,
                stale,
            })
            .await
            .map_err(|e| describe(&e))?
            .into_inner();
        let mut keys: Vec<usize> = r
            .objects
            .iter()
            .filter_map(|o| o.key.rsplit_once("key-").and_then(|(_, k)| k.parse().ok()))
            .collect();
        keys.sort_unstable();
        Ok::<_, String>(keys)
    };
    let outcome = match tokio::time::timeout(OP_TIMEOUT, attempt).await {
        Ok(Ok(keys)) => Outcome::Ok(Res::Keys(keys)),
        Ok(Err(why)) => Outcome::Fail(why),
        Err(_) => Outcome::Fail("no answer within 10 s".into()),
    };
    finish(w, base, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_identify_themselves_and_corruption_is_caught() {
        for len in [100, 5000, 300_000] {
            let v = value_bytes(7, 2, 42, len);
            assert_eq!(v.len(), len);
            assert_eq!(identify(7, 2, &v), Ok(42));
            let mut bad = v.clone();
            let at = bad.len() - 1;
            bad[at] ^= 1;
            assert!(
                identify(7, 2, &bad).is_err(),
                "a flipped last byte goes unnoticed"
            );
            assert!(
                identify(7, 3, &v).is_err(),
                "another key's value is taken for this key's"
            );
        }
    }
}
