//! A loopback HTTP proxy in front of moto that behaves like Backblaze B2's S3-compatible API
//! where the two differ for Strata: B2 refuses every `x-amz-checksum-*` header (and the SDK's
//! `x-amz-sdk-checksum-algorithm`) with a 400 InvalidArgument "Unsupported header". Everything
//! else is passed through, one request per connection (the proxy asks for `Connection: close`
//! so each request's headers are seen).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;

pub struct B2Proxy {
    /// `http://127.0.0.1:<port>`: use it as the backend's endpoint.
    pub endpoint: String,
    refused: Arc<AtomicU64>,
    passed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl B2Proxy {
    /// Starts the proxy in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> B2Proxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let refused = Arc::new(AtomicU64::new(0));
        let passed = Arc::new(AtomicU64::new(0));
        let (r, p) = (refused.clone(), passed.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (up, r, p) = (upstream.clone(), r.clone(), p.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &up, &r, &p).await;
                });
            }
        });
        B2Proxy {
            endpoint,
            refused,
            passed,
            task,
        }
    }

    /// Requests refused for a checksum header.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests passed to moto.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }
}

impl Drop for B2Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A header line's name, lower-cased.
fn header_name(line: &str) -> String {
    line.split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

async fn serve(
    mut conn: TcpStream,
    upstream: &str,
    refused: &AtomicU64,
    passed: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut piece = [0u8; 4096];
        let n = conn.read(&mut piece).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&piece[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    if let Some(bad) = headers.iter().find_map(|h| {
        let name = header_name(h);
        (name.starts_with("x-amz-checksum-") || name == "x-amz-sdk-checksum-algorithm")
            .then_some(name)
    }) {
        refused.fetch_add(1, Ordering::Relaxed);
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\n    <Code>InvalidArgument</Code>\n    <Message>Unsupported header '{bad}' received for this API call.</Message>\n</Error>"
        );
        let reply = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(reply.as_bytes()).await?;
        return conn.shutdown().await;
    }
    passed.fetch_add(1, Ordering::Relaxed);
    headers.retain(|h| header_name(h) != "connection");
    let mut new_head = request_line;
    new_head.push_str("\r\n");
    for h in headers {
        new_head.push_str(h);
        new_head.push_str("\r\n");
    }
    new_head.push_str("Connection: close\r\n\r\n");
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(new_head.as_bytes()).await?;
    up.write_all(&buf[head_end..]).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut up).await?;
    Ok(())
}
