//! The gRPC listeners (ingest, enrollment and admin; Flight SQL, beside
//! them or on its own address), accepted so that many or silent clients
//! can take neither them nor the rest of the collector down. tonic is
//! handed connections this module accepted and admitted:
//!
//! - A failed accept (out of descriptors, most likely) is logged and
//!   retried after a pause ([`Admission::accept`], as on the HTTP
//!   listener). (tonic's own accept loop ends the server on such an
//!   error, and no agent could report again.)
//! - At most [`GrpcLimits::per_client`] connections per client (an IPv4
//!   address, an IPv6 /64; trusted proxies exempt) and
//!   [`GrpcLimits::total`] in all are open at
//!   once, the gRPC and Flight SQL listeners together; the total is also
//!   held under a quarter of the process's open-file limit. More are
//!   closed as soon as they are accepted.
//! - A connection must finish its TLS handshake (done here, on the
//!   connection's own task) and send the HTTP/2 preface within
//!   [`GrpcLimits::handshake_timeout`] of being accepted, or it is closed.
//!   After that, HTTP/2 keep-alive pings close connections whose peer is
//!   gone.
//! - A connection has at most [`MAX_STREAMS_PER_CONNECTION`] requests open
//!   at once, and is closed after [`MAX_ERROR_RESETS_PER_CONNECTION`]
//!   streams reset for its errors.
//! - Stopping asks open connections to finish their requests and waits at
//!   most [`SHUTDOWN_GRACE`] for them.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use leakwatch_dashboard::TrustedProxies;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::either::Either;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::connections::{Admission, Held};

/// Default of [`GrpcLimits::handshake_timeout`], seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default of [`GrpcLimits::total`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default of [`GrpcLimits::per_client`].
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;

/// Time between HTTP/2 keep-alive pings on a gRPC connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// Time a peer has to answer a keep-alive ping before its connection is
/// closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long stopping waits for open connections to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Requests one gRPC connection may have open at once (HTTP/2 streams;
/// tonic leaves them unbounded unless told). An agent sends one at a time.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Streams of one connection the server may reset for the client's errors
/// before it closes the connection (tonic turns hyper's bound off unless
/// told; hyper's default).
pub const MAX_ERROR_RESETS_PER_CONNECTION: usize = 1024;

/// The HTTP/2 connection preface's length: the first bytes a client sends
/// (after TLS).
const PREFACE_BYTES: usize = 24;

/// Bounds of the gRPC listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Time from accepting a connection to its TLS handshake's end and
    /// its HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Connections open at once in all (held under a quarter of the
    /// open-file limit as well).
    pub total: usize,
    /// Connections open at once from one client (an IPv4 address, an IPv6 /64).
    pub per_client: usize,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            total: DEFAULT_MAX_CONNECTIONS,
            per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        }
    }
}

/// What the gRPC listeners of one collector share: their bounds, the
/// connections they hold, and TLS.
#[derive(Clone)]
pub struct Listeners {
    admission: Admission,
    handshake_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Listeners {
    /// Listeners within `limits` (`proxies` exempt from the per-client
    /// bound), with TLS when `tls` is set (naming HTTP/2 in ALPN). Served
    /// from these listeners, tonic's own TCP_NODELAY setting does not
    /// apply: [`Admission::accept`] sets it.
    pub fn new(limits: GrpcLimits, proxies: TrustedProxies, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let tls = tls.map(|config| crate::tls::acceptor(&config, b"h2"));
        let admission = Admission::new(limits.total, limits.per_client, proxies);
        Self { admission, handshake_timeout: limits.handshake_timeout, tls }
    }

    /// The connections `listener` accepts and admits, for tonic's
    /// `serve_with_incoming`, until `stop` turns true or the stream is
    /// dropped. `what` names the listener in the log.
    pub fn incoming(
        &self,
        listener: TcpListener,
        what: &'static str,
        mut stop: watch::Receiver<bool>,
    ) -> impl Stream<Item = io::Result<Admitted>> + Send + 'static {
        let (tx, rx) = mpsc::channel::<Admitted>(64);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer, held) = tokio::select! {
                    accepted = this.admission.accept(&listener, what) => accepted,
                    () = async { drop(stop.wait_for(|stopping| *stopping).await) } => break,
                    () = tx.closed() => break,
                };
                let (tx, this) = (tx.clone(), this.clone());
                tokio::spawn(async move {
                    if let Some(admitted) = this.handshake(stream, peer, held, what).await {
                        let _ = tx.send(admitted).await;
                    }
                });
            }
        });
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
    }

    /// `stream` from `peer` through its TLS handshake (when the listeners
    /// have TLS), or none when that failed or took too long.
    async fn handshake(&self, stream: TcpStream, peer: SocketAddr, held: Held, what: &str) -> Option<Admitted> {
        let deadline = Instant::now() + self.handshake_timeout;
        let info = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: Some(peer) };
        let io = match &self.tls {
            None => Either::Left(stream),
            Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Either::Right(tls),
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "{what} TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "{what} TLS handshake timed out");
                    return None;
                }
            },
        };
        Some(Admitted {
            held: Some(held),
            io,
            preface: Some(Preface { deadline: Box::pin(tokio::time::sleep_until(deadline)), left: PREFACE_BYTES }),
            info,
        })
    }
}

/// How much of the HTTP/2 preface is still to come, and by when.
struct Preface {
    deadline: Pin<Box<Sleep>>,
    left: usize,
}

/// A connection the listeners admitted: its place in their bounds is
/// held until it shuts down or is dropped (given back before the socket
/// closes, as it is declared first), and its reads fail once the
/// handshake timeout passed before the HTTP/2 preface came.
pub struct Admitted {
    held: Option<Held>,
    io: Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>,
    preface: Option<Preface>,
    info: TcpConnectInfo,
}

impl Admitted {
    /// `io` (a connection from `peer`, after its TLS handshake if any)
    /// holding its place `held` until it shuts down or is dropped, without
    /// a deadline for an HTTP/2 preface (the HTTP listener's connections:
    /// hyper bounds the time to their headers).
    pub(crate) fn holding(
        held: Held,
        io: Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>,
        peer: SocketAddr,
    ) -> Self {
        let local_addr = match &io {
            Either::Left(tcp) => tcp.local_addr().ok(),
            Either::Right(tls) => tls.get_ref().0.local_addr().ok(),
        };
        Self { held: Some(held), io, preface: None, info: TcpConnectInfo { local_addr, remote_addr: Some(peer) } }
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(preface) = &mut this.preface {
            match &polled {
                Poll::Ready(Ok(())) => {
                    preface.left = preface.left.saturating_sub(buf.filled().len() - before);
                    if preface.left == 0 {
                        this.preface = None;
                    }
                }
                Poll::Pending if preface.deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake timeout",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.held.take();
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
