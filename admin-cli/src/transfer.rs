//! Uploads and downloads of whole files, streamed: memory stays bounded by a few chunks,
//! whatever the file size.
//!
//! An upload first hashes the file (chunk ids and the whole-file BLAKE3, on two threads), then
//! opens a session with the manifest. The node answers with the chunks it already holds for
//! this tenant, and resumes an open session for the same file, so running the same upload
//! again after an interruption only sends what is missing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use strata_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Storage, status_error, with_retry};

/// Default chunk size: 4 MiB (a power of two, so the node checks the whole-file hash without
/// re-reading the data).
pub const DEFAULT_CHUNK: u32 = 4 * 1024 * 1024;

/// Chunks sent ahead of their acknowledgements.
const SEND_AHEAD: usize = 8;

/// Progress callbacks: total bytes, then bytes done so far.
pub trait Progress: Send + Sync {
    fn start(&self, _total: u64) {}
    fn advance(&self, _done: u64) {}
    /// A phase name ("hashing", "uploading", "downloading").
    fn phase(&self, _name: &str) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// The manifest and whole-file hash of a file.
#[derive(Debug, Clone)]
pub struct FilePlan {
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: Vec<([u8; 32], u32)>,
    pub file_hash: [u8; 32],
}

/// Hashes a file: chunk ids on one thread, the whole-file BLAKE3 on another.
pub fn plan(path: &Path, chunk_size: u32, progress: &dyn Progress) -> anyhow::Result<FilePlan> {
    let size = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        .len();
    progress.phase("hashing");
    progress.start(size);
    let (chunks, file_hash) = std::thread::scope(|s| {
        let whole = s.spawn(|| -> anyhow::Result<[u8; 32]> {
            let mut f = File::open(path)?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(*hasher.finalize().as_bytes())
        });
        let ids = (|| -> anyhow::Result<Vec<([u8; 32], u32)>> {
            let mut f = File::open(path)?;
            let mut buf = vec![0u8; chunk_size as usize];
            let mut out = Vec::new();
            let mut done = 0u64;
            loop {
                let n = read_full(&mut f, &mut buf)?;
                if n == 0 {
                    break;
                }
                out.push((*blake3::hash(&buf[..n]).as_bytes(), n as u32));
                done += n as u64;
                progress.advance(done);
            }
            Ok(out)
        })();
        let whole = whole
            .join()
            .map_err(|_| anyhow::anyhow!("hashing thread panicked"))?;
        Ok::<_, anyhow::Error>((ids?, whole?))
    })?;
    let hashed: u64 = chunks.iter().map(|c| c.1 as u64).sum();
    if hashed != size {
        anyhow::bail!("{} changed size while it was being read", path.display());
    }
    Ok(FilePlan {
        size,
        chunk_size,
        chunks,
        file_hash,
    })
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What an upload did.
#[derive(Debug, Clone)]
pub struct UploadReport {
    pub info: pb::ObjectInfo,
    pub session_id: String,
    pub resumed: bool,
    /// Bytes the node already held (dedup or an earlier, interrupted run).
    pub skipped_bytes: u64,
    /// Bytes sent in this run.
    pub sent_bytes: u64,
}

/// Uploads `path` to bucket/key.
pub async fn upload(
    client: &mut Storage,
    path: &Path,
    bucket: &str,
    key: &str,
    content_type: &str,
    chunk_size: u32,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<UploadReport> {
    let p = path.to_owned();
    let prog = progress.clone();
    // Hashing is CPU-bound: keep it off the async workers.
    let plan = tokio::task::spawn_blocking(move || plan(&p, chunk_size, prog.as_ref())).await??;
    upload_planned(client, path, bucket, key, content_type, &plan, progress).await
}

/// Uploads a file whose plan is known.
pub async fn upload_planned(
    client: &mut Storage,
    path: &Path,
    bucket: &str,
    key: &str,
    content_type: &str,
    plan: &FilePlan,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<UploadReport> {
    let manifest = plan
        .chunks
        .iter()
        .map(|(id, len)| pb::ChunkRef {
            id: Bytes::copy_from_slice(id),
            len: *len,
        })
        .collect();
    let create = pb::CreateUploadRequest {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        size: plan.size,
        manifest,
        content_type: content_type.to_owned(),
    };
    let created = crate::unary!(*client, create_upload, create, "create upload")?;
    let have: std::collections::HashSet<u32> = created.existing.iter().copied().collect();
    let mut todo = Vec::new();
    let mut offset = 0u64;
    for (i, (id, len)) in plan.chunks.iter().enumerate() {
        if !have.contains(&(i as u32)) {
            todo.push((offset, *id, *len));
        }
        offset += *len as u64;
    }
    let skipped = created.bytes_present;
    progress.phase("uploading");
    progress.start(plan.size);
    progress.advance(skipped);

    let sent: u64 = todo.iter().map(|t| t.2 as u64).sum();
    if !todo.is_empty() {
        // A stream refused for a rate limit sent nothing; sending again is safe anyway (a
        // chunk the session holds is acknowledged again).
        with_retry(|| {
            let mut c = client.clone();
            let (todo, session, progress) = (todo.clone(), &created.session_id, progress.as_ref());
            async move { send_chunks(&mut c, path, session, todo, skipped, progress).await }
        })
        .await?;
    }
    let complete = pb::CompleteUploadRequest {
        session_id: created.session_id.clone(),
        file_hash: Bytes::copy_from_slice(&plan.file_hash),
    };
    let info = crate::unary!(*client, complete_upload, complete, "complete upload")?;
    progress.advance(plan.size);
    Ok(UploadReport {
        info,
        session_id: created.session_id,
        resumed: created.resumed,
        skipped_bytes: skipped,
        sent_bytes: sent,
    })
}

/// Streams the listed chunks, reading them from the file as the stream drains, and waits for
/// every acknowledgement.
async fn send_chunks(
    client: &mut Storage,
    path: &Path,
    session_id: &str,
    todo: Vec<(u64, [u8; 32], u32)>,
    already: u64,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    let expected = todo.len();
    let (tx, rx) = mpsc::channel::<pb::PutChunkRequest>(SEND_AHEAD);
    let path: PathBuf = path.to_owned();
    let session = session_id.to_owned();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut f = File::open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        for (i, (offset, id, len)) in todo.into_iter().enumerate() {
            let mut buf = vec![0u8; len as usize];
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut buf)?;
            if blake3::hash(&buf).as_bytes() != &id {
                anyhow::bail!(
                    "{} changed while it was being uploaded (chunk at offset {offset})",
                    path.display()
                );
            }
            let msg = pb::PutChunkRequest {
                session_id: if i == 0 {
                    session.clone()
                } else {
                    String::new()
                },
                offset,
                id: Bytes::copy_from_slice(&id),
                data: Bytes::from(buf),
            };
            if tx.blocking_send(msg).is_err() {
                break; // the call ended; its error is reported below
            }
        }
        Ok(())
    });
    let mut acks = client
        .put_chunks(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_error("put chunks", s))?
        .into_inner();
    let mut acked = 0usize;
    let mut done = already;
    while let Some(ack) = acks.next().await {
        let ack = ack.map_err(|s| status_error("put chunks", s))?;
        acked += 1;
        done = done.max(ack.bytes_present);
        progress.advance(done);
    }
    reader.await??;
    if acked != expected {
        anyhow::bail!(
            "the node acknowledged {acked} of {expected} chunks; run the same upload again to resume"
        );
    }
    Ok(())
}

/// What a download did.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    pub info: pb::ObjectInfo,
    pub bytes: u64,
    /// Whether the whole-file BLAKE3 was checked (whole downloads only).
    pub verified: bool,
}

/// Downloads an object (or a range of it) into `out`. A whole download is checked against the
/// object's BLAKE3 and fails if it does not match.
pub async fn download(
    client: &mut Storage,
    req: pb::GetRequest,
    out: &mut (dyn Write + Send),
    progress: &dyn Progress,
) -> anyhow::Result<DownloadReport> {
    let whole = req.offset == 0 && req.length == 0;
    let mut stream = with_retry(|| {
        let (mut c, req) = (client.clone(), req.clone());
        async move {
            Ok(c.get(req)
                .await
                .map_err(|s| status_error("get", s))?
                .into_inner())
        }
    })
    .await?;
    let mut info = None;
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0u64;
    progress.phase("downloading");
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|s| status_error("get", s))?;
        if let Some(i) = msg.info {
            progress.start(i.size);
            info = Some(i);
        }
        if !msg.data.is_empty() {
            if whole {
                hasher.update(&msg.data);
            }
            out.write_all(&msg.data)?;
            bytes += msg.data.len() as u64;
            progress.advance(bytes);
        }
    }
    let info = info.ok_or_else(|| anyhow::anyhow!("get: the node sent no object information"))?;
    if whole {
        if bytes != info.size {
            anyhow::bail!("get: received {bytes} bytes, expected {}", info.size);
        }
        if hasher.finalize().as_bytes()[..] != info.file_hash[..] {
            anyhow::bail!("get: the downloaded bytes do not match the object's BLAKE3");
        }
    }
    out.flush()?;
    Ok(DownloadReport {
        info,
        bytes,
        verified: whole,
    })
}
