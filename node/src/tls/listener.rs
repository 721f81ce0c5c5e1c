//! The gRPC listener. Every connection is TLS, except plaintext API connections where they
//! are allowed (`strata-node dev` on loopback, or `insecure_plaintext = true`): the first byte
//! tells them apart (a TLS handshake starts with 0x16, HTTP/2 with "PRI"). A plaintext client
//! where none is allowed gets an HTTP/2 GOAWAY saying so. Handshakes run in their own tasks
//! with a deadline, at most MAX_HANDSHAKES at once, so a slow or silent client never holds up
//! the others.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::pki::CertFacts;

/// Connections between accept and the end of their handshake; more are closed at once.
pub const MAX_HANDSHAKES: usize = 1024;
/// A connection must finish its TLS handshake (or send its first byte) within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// What the server knows about a connection; each request carries it in its extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub tls: bool,
    /// The member that presented a valid certificate (verified in the handshake: chains to
    /// the cluster CA, not expired, not revoked).
    pub node: Option<u64>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct Conn {
    io: Io,
    info: ConnInfo,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections accepted on `listener`, handshaken with `config`; plaintext ones pass only if
/// `plaintext` is set.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    plaintext: bool,
) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(config),
        plaintext,
        tx,
    ));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    plaintext: bool,
    tx: mpsc::Sender<std::io::Result<Conn>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("strata_connections_refused_total", "reason" => "handshakes")
                .increment(1);
            tracing::debug!(%remote, limit = MAX_HANDSHAKES, "connection closed: too many handshakes in progress (MAX_HANDSHAKES)");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                handshake(tcp, remote, acceptor, plaintext),
            )
            .await;
            match result {
                Ok(Ok(conn)) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(e)) => {
                    metrics::counter!("strata_connections_refused_total", "reason" => "handshake")
                        .increment(1);
                    tracing::debug!(%remote, error = %e, "connection refused");
                }
                Err(_) => {
                    metrics::counter!("strata_connections_refused_total", "reason" => "timeout")
                        .increment(1);
                    tracing::debug!(%remote, "connection closed: no handshake within {HANDSHAKE_TIMEOUT:?}");
                }
            }
        });
    }
}

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    plaintext: bool,
) -> std::io::Result<Conn> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Err(std::io::Error::other("closed before sending anything"));
    }
    if first[0] == 0x16 {
        let tls = acceptor.accept(tcp).await?;
        let node = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| CertFacts::of(c).ok())
            .and_then(|f| f.node);
        return Ok(Conn {
            io: Io::Tls(Box::new(tls)),
            info: ConnInfo {
                remote: Some(remote),
                tls: true,
                node,
            },
        });
    }
    if plaintext {
        return Ok(Conn {
            io: Io::Plain(tcp),
            info: ConnInfo {
                remote: Some(remote),
                tls: false,
                node: None,
            },
        });
    }
    refuse_plaintext(tcp).await;
    Err(std::io::Error::other(
        "plaintext connection refused: this node accepts TLS only",
    ))
}

/// Answers a plaintext HTTP/2 (gRPC) client of a TLS-only node: its first call gets a gRPC
/// status FAILED_PRECONDITION saying why, then the connection ends with GOAWAY. The client's
/// frames are read (at most 64 KiB, for at most 2 s) only to find that call's stream id.
async fn refuse_plaintext(mut tcp: TcpStream) {
    const MESSAGE: &str =
        "this node accepts TLS only: use an https:// endpoint (and --ca-file with the cluster CA)";
    let stream = tokio::time::timeout(Duration::from_secs(2), first_request(&mut tcp))
        .await
        .ok()
        .flatten();
    let mut out = Vec::new();
    frame(&mut out, 0x4, 0, 0, &[]); // our SETTINGS
    frame(&mut out, 0x4, 0x1, 0, &[]); // ACK of the client's
    if let Some(id) = stream {
        let mut block = vec![0x88]; // ":status: 200" (static table)
        for (name, value) in [
            ("content-type", "application/grpc"),
            ("grpc-status", "9"),
            ("grpc-message", MESSAGE),
        ] {
            block.push(0x00); // literal, not indexed, new name
            hpack_int(&mut block, name.len());
            block.extend_from_slice(name.as_bytes());
            hpack_int(&mut block, value.len());
            block.extend_from_slice(value.as_bytes());
        }
        frame(&mut out, 0x1, 0x4 | 0x1, id, &block); // HEADERS, END_HEADERS | END_STREAM
    }
    let mut goaway = stream.unwrap_or(0).to_be_bytes().to_vec();
    goaway.extend_from_slice(&0xcu32.to_be_bytes()); // INADEQUATE_SECURITY
    goaway.extend_from_slice(MESSAGE.as_bytes());
    frame(&mut out, 0x7, 0, 0, &goaway);
    let _ = tcp.write_all(&out).await;
    let _ = tcp.shutdown().await;
    // A lingering close: closing a socket with unread bytes (the client's frames after its
    // HEADERS) makes the kernel send RST, which can discard our answer before the client reads
    // it ("transport error" instead of the message). Read until the client closes, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut sink = [0u8; 4096];
        let mut budget = 64 * 1024usize;
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
            let Some(left) = budget.checked_sub(n) else {
                break;
            };
            budget = left;
        }
    })
    .await;
}

/// Reads the client preface and frames until the first HEADERS frame; its stream id.
async fn first_request(tcp: &mut TcpStream) -> Option<u32> {
    let mut preface = [0u8; 24];
    tcp.read_exact(&mut preface).await.ok()?;
    if &preface[..3] != b"PRI" {
        return None;
    }
    let mut budget = 64 * 1024usize;
    loop {
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if head[3] == 0x1 && id != 0 {
            return Some(id);
        }
        budget = budget.checked_sub(len + 9)?;
        let mut skip = vec![0u8; len];
        tcp.read_exact(&mut skip).await.ok()?;
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with a 7-bit prefix (string lengths, no Huffman coding).
fn hpack_int(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}
