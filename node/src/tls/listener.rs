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

/// Answers a plaintext HTTP/2 client with SETTINGS and GOAWAY (INADEQUATE_SECURITY) carrying
/// a message, so it sees why it was refused instead of a reset connection.
async fn refuse_plaintext(mut tcp: TcpStream) {
    const MESSAGE: &[u8] =
        b"this node accepts TLS only: use an https:// endpoint (and --ca-file with the cluster CA)";
    let mut preface = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut preface)).await;
    let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = (8 + MESSAGE.len()) as u32;
    frames.extend_from_slice(&len.to_be_bytes()[1..]);
    frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&0xcu32.to_be_bytes());
    frames.extend_from_slice(MESSAGE);
    let _ = tcp.write_all(&frames).await;
    let _ = tcp.shutdown().await;
}
