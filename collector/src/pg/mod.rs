//! The PostgreSQL wire protocol (`--pg-listen`), for the tools analysts
//! already use: psql, psycopg, DBeaver, Metabase, Grafana's PostgreSQL
//! data source.
//!
//! A client logs in with any user name and an analyst's SQL token (from
//! `leakwatch admin sql-token`) as the password; each statement runs
//! read-only in a session of its own, within the limits of every SQL
//! entry point (see [`session`]). With `--tls-cert`, clients must
//! negotiate TLS (`sslmode=require`): the token is a password sent in
//! clear otherwise.
//!
//! The listener faces the internet, so every connection is bounded: a
//! cap on connections (the next is refused with SQLSTATE 53300), a cap
//! on the connections one client (an IPv4 address, an IPv6 /64; trusted
//! proxies exempt) has open before they logged in (also 53300: one
//! address cannot hold every slot without a token), a client that does
//! not finish logging in within its startup timeout is dropped, one idle
//! for longer than its idle timeout is told 57P05 and closed, and no
//! message may be longer than [`MAX_MESSAGE_BYTES`] (54000): its bytes
//! are refused as its header arrives, before they are buffered.

pub mod catalog;
pub mod session;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use leakwatch_dashboard::TrustedProxies;
use leakwatch_dashboard::proxies::client_network;
use leakwatch_query::SessionFactory;
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{ClientInfo as _, ConnectionManager, NoopHandler, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{MaybeTls, PgWireMessageServerCodec, negotiate_tls, process_error, process_message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::codec::{Framed, FramedParts};

use crate::connections::{Admission, Held, Refused};
use crate::log::DurableLog;

pub use session::{Handlers, PgStatement, Planner};

/// Longest SQL text accepted, bytes.
pub const MAX_SQL_BYTES: usize = leakwatch_query::statement::MAX_SQL_BYTES;

/// Longest message a client may send, bytes: a statement of
/// [`MAX_SQL_BYTES`], or the parameters bound to one, with room for the
/// message's own fields.
pub const MAX_MESSAGE_BYTES: usize = MAX_SQL_BYTES + 64 * 1024;

/// Time a client has from connecting to being logged in, by default.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Default of [`PgLimits::max_logging_in_per_client`].
pub const DEFAULT_MAX_LOGGING_IN_PER_CLIENT: usize = 8;

/// Bounds of the PostgreSQL listener.
#[derive(Debug, Clone, Copy)]
pub struct PgLimits {
    /// Connections open at once; the next is refused (SQLSTATE 53300).
    pub max_connections: usize,
    /// Connections one client (an IPv4 address, an IPv6 /64; trusted
    /// proxies exempt) has open that are not logged in yet; the next is
    /// refused (53300). Logged-in connections (a Grafana pool) count only
    /// towards `max_connections`.
    pub max_logging_in_per_client: usize,
    /// A logged-in client that sends nothing for this long is told so
    /// (57P05) and its connection closed.
    pub idle_timeout: Duration,
    /// A client not logged in this long after connecting is dropped (told
    /// 57014 if it had started to).
    pub startup_timeout: Duration,
}

impl Default for PgLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_logging_in_per_client: DEFAULT_MAX_LOGGING_IN_PER_CLIENT,
            idle_timeout: Duration::from_secs(3600),
            startup_timeout: STARTUP_TIMEOUT,
        }
    }
}

/// The PostgreSQL service of a collector.
#[derive(Clone)]
pub struct PgService {
    handlers: Arc<Handlers>,
    cancel: Arc<DefaultCancelHandler>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: PgLimits,
    slots: Arc<Semaphore>,
    /// Connections not logged in yet, per client.
    logging_in: Admission,
}

impl std::fmt::Debug for PgService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgService").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl PgService {
    /// The service over `sessions` (run on `queries`), accepting analysts'
    /// tokens stored in `log`; with `tls`, over TLS only. Connections
    /// from `proxies` are exempt from the per-client bound.
    pub fn new(
        sessions: SessionFactory,
        queries: tokio::runtime::Handle,
        log: Arc<DurableLog>,
        tls: Option<Arc<rustls::ServerConfig>>,
        limits: PgLimits,
        proxies: TrustedProxies,
        metrics: Option<Arc<crate::metrics::IngestMetrics>>,
    ) -> crate::Result<Self> {
        let planner = Planner::new(sessions, queries, metrics)
            .map_err(|e| crate::Error::Config(format!("--pg-listen: the PostgreSQL catalog: {e}")))?;
        let connections = Arc::new(ConnectionManager::new());
        let tls = tls.map(|config| crate::tls::acceptor(&config, b"postgresql"));
        let handlers = Handlers::new(planner, log, connections.clone(), tls.is_some());
        Ok(Self {
            handlers: Arc::new(handlers),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
            tls,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            logging_in: Admission::new(limits.max_connections, limits.max_logging_in_per_client, proxies),
        })
    }

    /// Accepts connections on `listener` until `shutdown` turns true.
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (socket, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "Accepting a PostgreSQL connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let max = self.limits.max_connections;
            let too_many = || format!("sorry, too many clients already (at most {max} connections)");
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tokio::spawn(refuse(socket, too_many()));
                continue;
            };
            let login = match self.logging_in.admit(peer.ip()) {
                Ok(login) => login,
                Err(Refused::PerClient) => {
                    let (client, max) = (client_network(peer.ip()), self.limits.max_logging_in_per_client);
                    tracing::debug!(peer = %peer, "PostgreSQL connection refused: {client} has {max} not logged in");
                    tokio::spawn(refuse(
                        socket,
                        format!("sorry, too many connections from {client} not logged in yet (at most {max} at once)"),
                    ));
                    continue;
                }
                // Held under a quarter of the open-file limit.
                Err(Refused::Total) => {
                    tokio::spawn(refuse(socket, too_many()));
                    continue;
                }
            };
            let service = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    result = service.connection(socket, Places { _slot: slot, login: Some(login) }) => {
                        if let Err(e) = result {
                            tracing::debug!(peer = %peer, error = %e, "PostgreSQL connection ended");
                        }
                    }
                    _ = wait_for(shutdown) => {}
                }
            });
        }
    }

    /// One client's connection, from TLS negotiation to its end. Its
    /// `places` are given back before the socket closes, so a client that
    /// saw the close and connects again finds them free; its place among
    /// its client's connections not logged in, as soon as it logged in.
    async fn connection(&self, socket: TcpStream, places: Places) -> io::Result<()> {
        let startup = tokio::time::Instant::now() + self.limits.startup_timeout;
        let negotiated = tokio::time::timeout_at(startup, negotiate_tls::<PgStatement>(socket, self.tls.clone())).await;
        let Ok(Some(socket)) = negotiated.unwrap_or(Ok(None)) else {
            return Ok(());
        };
        let parts = socket.into_parts();
        let refused = Arc::new(Mutex::new(None));
        let mut frames = Frames::new(MAX_MESSAGE_BYTES);
        // Bytes read while negotiating are the start of the first message.
        if let Err(len) = frames.observe(&parts.read_buf) {
            *lock(&refused) = Some(len);
        }
        let io = Limited { places: Some(places), inner: parts.io, frames, refused: refused.clone() };
        let mut rebuilt = FramedParts::new(io, parts.codec);
        rebuilt.read_buf = parts.read_buf;
        rebuilt.write_buf = parts.write_buf;
        let mut socket: Framed<Limited, PgWireMessageServerCodec<PgStatement>> = Framed::from_parts(rebuilt);

        let copy = Arc::new(NoopHandler);
        loop {
            let logging_in = matches!(
                socket.state(),
                PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
            );
            let deadline = match logging_in {
                true => startup,
                false => tokio::time::Instant::now() + self.limits.idle_timeout,
            };
            let next = tokio::time::timeout_at(deadline, socket.next()).await;
            let message = match next {
                // Not logged in in time: dropped before its startup
                // message, told so after it, as PostgreSQL does.
                Err(_) if matches!(socket.state(), PgWireConnectionState::AuthenticationInProgress) => {
                    return fatal(&mut socket, "57014", "canceling authentication due to timeout".into()).await;
                }
                Err(_) if logging_in => return Ok(()),
                Err(_) => {
                    let idle = self.limits.idle_timeout.as_secs();
                    return fatal(
                        &mut socket,
                        "57P05",
                        format!("terminating connection due to idle-session timeout ({idle} s without a message)"),
                    )
                    .await;
                }
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    let too_long = *lock(&refused);
                    return match too_long {
                        Some(len) => {
                            fatal(&mut socket, "54000", format!("message of {len} bytes, at most {MAX_MESSAGE_BYTES}"))
                                .await
                        }
                        None => fatal(&mut socket, "08P01", format!("invalid message: {e}")).await,
                    };
                }
                Ok(Some(Ok(message))) => message,
            };
            if matches!(message, PgWireFrontendMessage::Terminate(_)) {
                return Ok(());
            }
            let extended = match socket.state() {
                PgWireConnectionState::CopyInProgress(extended) => extended,
                _ => message.is_extended_query(),
            };
            let processed = process_message(
                message,
                &mut socket,
                self.handlers.clone(),
                self.handlers.clone(),
                self.handlers.clone(),
                copy.clone(),
                self.cancel.clone(),
            )
            .await;
            // Logged in: out of its client's bound on logins.
            if logging_in
                && matches!(socket.state(), PgWireConnectionState::ReadyForQuery)
                && let Some(places) = socket.get_mut().places.as_mut()
            {
                places.login = None;
            }
            if let Err(e) = processed {
                let info = ErrorInfo::from(e);
                if info.is_fatal() {
                    // Told why, and closed: nothing follows a fatal error.
                    tracing::info!(code = %info.code, error = %info.message, "PostgreSQL connection refused");
                    let ErrorInfo { code, message, .. } = info;
                    return fatal(&mut socket, &code, message).await;
                }
                process_error(&mut socket, PgWireError::UserError(Box::new(info)), extended).await?;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Tells a client why its connection ends, and ends it.
async fn fatal<S>(
    socket: &mut Framed<S, PgWireMessageServerCodec<PgStatement>>,
    code: &str,
    message: String,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let info = ErrorInfo::new("FATAL".into(), code.into(), message);
    socket.send(PgWireBackendMessage::ErrorResponse(info.into())).await?;
    socket.close().await
}

/// Refuses a connection past a cap with `message`, as PostgreSQL does:
/// an error message (53300) before anything is read, then the end.
async fn refuse(mut socket: TcpStream, message: String) {
    use tokio::io::AsyncWriteExt as _;
    let info = ErrorInfo::new("FATAL".into(), "53300".into(), message);
    let mut out = prost::bytes::BytesMut::new();
    if PgWireBackendMessage::ErrorResponse(info.into()).encode(&mut out).is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = socket.write_all(&out).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// Follows the messages in a client's byte stream: each message's length
/// is checked as its header arrives.
#[derive(Debug)]
struct Frames {
    /// Whether messages start with a type byte (all but the first:
    /// the startup message has none).
    typed: bool,
    header: [u8; 5],
    have: usize,
    body_left: usize,
    limit: usize,
}

impl Frames {
    fn new(limit: usize) -> Self {
        Self { typed: false, header: [0; 5], have: 0, body_left: 0, limit }
    }

    /// Follows `bytes`; the length of a message longer than the limit.
    fn observe(&mut self, mut bytes: &[u8]) -> Result<(), usize> {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let need = if self.typed { 5 } else { 4 };
            let n = (need - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == need {
                let at = need - 4;
                let len = u32::from_be_bytes([
                    self.header[at],
                    self.header[at + 1],
                    self.header[at + 2],
                    self.header[at + 3],
                ]) as usize;
                if len > self.limit {
                    return Err(len);
                }
                self.body_left = len.saturating_sub(4);
                self.have = 0;
                self.typed = true;
            }
        }
        Ok(())
    }
}

/// A connection's places in the listener's bounds.
struct Places {
    _slot: OwnedSemaphorePermit,
    /// Among its client's connections not logged in; `None` once it is.
    login: Option<Held>,
}

/// A connection's stream that fails a read once a message longer than
/// the limit starts (its length is kept in `refused`). It holds the
/// connection's places and gives them back as the stream shuts down, or
/// when dropped (declared before the stream, so dropped first): a client
/// sees the end only once its places are free.
struct Limited {
    places: Option<Places>,
    inner: MaybeTls,
    frames: Frames,
    refused: Arc<Mutex<Option<usize>>>,
}

impl AsyncRead for Limited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if lock(&self.refused).is_some() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "message too long")));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Err(len) = this.frames.observe(&buf.filled()[before..]) {
                    *lock(&this.refused) = Some(len);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("message of {len} bytes, at most {}", this.frames.limit),
                    )));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.places.take();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds `addr` for [`PgService::serve`].
pub async fn bind(addr: SocketAddr) -> crate::Result<(TcpListener, SocketAddr)> {
    let listener =
        TcpListener::bind(addr).await.map_err(|e| crate::Error::Config(format!("--pg-listen {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| crate::Error::Config(e.to_string()))?;
    Ok((listener, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: u8, len: u32) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&len.to_be_bytes());
        m.resize(1 + len as usize, b'x');
        m
    }

    #[test]
    fn frames_follow_messages_split_anywhere_and_refuse_a_long_one_at_its_header() {
        let mut startup = 12u32.to_be_bytes().to_vec();
        startup.extend_from_slice(&[0, 3, 0, 0, 0, 0, 0, 0]);
        let mut stream = startup;
        stream.extend(typed(b'Q', 20));
        stream.extend(typed(b'Q', 100));
        // Fed a byte at a time, or all at once: the same verdict.
        let mut whole = Frames::new(100);
        assert_eq!(whole.observe(&stream), Ok(()));
        let mut bytewise = Frames::new(100);
        assert!(stream.chunks(1).all(|b| bytewise.observe(b).is_ok()));

        let mut long = Frames::new(100);
        let mut stream = 8u32.to_be_bytes().to_vec();
        stream.extend_from_slice(&[0, 3, 0, 0]);
        stream.extend_from_slice(&[b'Q', 0, 0, 0x10, 0]);
        assert_eq!(long.observe(&stream), Err(0x1000));
        // The first message has no type byte: its own length is checked.
        assert_eq!(Frames::new(100).observe(&0x7fff_ffffu32.to_be_bytes()), Err(0x7fff_ffff));
    }
}
