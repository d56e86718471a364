//! The HTTP listener (public dashboard, `/api`, `/export`, `/healthz`,
//! `/metrics`), served so that slow or many clients can neither take it
//! nor the rest of the collector down.
//!
//! - A client must send a request's headers within
//!   [`HttpLimits::header_timeout`] of connecting or of its previous
//!   response (idle keep-alive connections close then too), and a TLS
//!   handshake must finish within the same time, each on the connection's
//!   own task (a slow handshake holds up nobody else).
//! - A request's handling, its body included, ends after
//!   [`HttpLimits::request_timeout`] with 408.
//! - At most [`HttpLimits::per_client`] connections per client (an IPv4
//!   address, an IPv6 /64; but for trusted proxies, which carry many
//!   clients' connections) and
//!   [`HttpLimits::total`] in all are open at once; more are closed as
//!   soon as they are accepted. The total is also held under a quarter of
//!   the process's open-file limit, so that HTTP clients alone can never
//!   use up the descriptors that ingest and the log need.
//! - Stopping stops accepting, asks open connections to finish the request
//!   they are in and waits at most [`HttpLimits::shutdown_grace`] for
//!   them: an idle or stalled connection does not hold up the exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::either::Either;
use tower_service::Service as _;

use leakwatch_dashboard::{PeerAddr, TrustedProxies};

use crate::connections::Admission;
use crate::grpc::Admitted;

/// Default of [`HttpLimits::header_timeout`], seconds.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default of [`HttpLimits::total`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`HttpLimits::per_client`].
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 32;

/// Bounds of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to send a request's headers (and to finish a TLS handshake).
    pub header_timeout: Duration,
    /// Time to handle one request, reading its body included.
    pub request_timeout: Duration,
    /// Connections open at once, in all (held under a quarter of the
    /// open-file limit as well).
    pub total: usize,
    /// Connections open at once from one client (an IPv4 address, an IPv6 /64).
    pub per_client: usize,
    /// How long stopping waits for open connections.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            request_timeout: Duration::from_secs(30),
            total: DEFAULT_MAX_CONNECTIONS,
            per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `app` on `listener` (with TLS when `tls` is set) within
/// `limits` (`proxies` exempt from the per-client one) until `stop` turns
/// true.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: HttpLimits,
    proxies: TrustedProxies,
    mut stop: watch::Receiver<bool>,
) {
    let admission = Admission::new(limits.total, limits.per_client, proxies);
    let acceptor = tls.map(|config| crate::tls::acceptor(&config, b"http/1.1"));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tracing::debug!(total = admission.total(), per_client = limits.per_client, "HTTP listener bounds");
    loop {
        let (stream, peer, held) = tokio::select! {
            accepted = admission.accept(&listener, "HTTP") => accepted,
            () = async { drop(stop.wait_for(|stopping| *stopping).await) } => break,
        };
        // Finished connections' tasks, so the set does not grow.
        while connections.try_join_next().is_some() {}
        let (app, acceptor, closing) = (app.clone(), acceptor.clone(), closing_rx.clone());
        connections.spawn(async move {
            // The connection holds its place until it is dropped, and gives
            // it back before its socket closes: a client that saw the close
            // and connects again finds its place free.
            match acceptor {
                None => {
                    let io = Admitted::holding(held, Either::Left(stream), peer);
                    serve_connection(io, peer, app, limits, closing).await;
                }
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let io = Admitted::holding(held, Either::Right(tls), peer);
                        serve_connection(io, peer, app, limits, closing).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let drained =
        tokio::time::timeout(limits.shutdown_grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(left = connections.len(), "HTTP connections still open at shutdown were closed");
        connections.abort_all();
    }
}

/// One connection: HTTP/1.1 with the header timeout, each request within
/// the request timeout, until it closes or `closing` turns true.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
        let mut app = app.clone();
        async move {
            let handled = tokio::time::timeout(limits.request_timeout, app.call(req.map(axum::body::Body::new))).await;
            Ok::<_, std::convert::Infallible>(match handled {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => (StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response(),
            })
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "HTTP connection ended");
            }
        }
        () = async { drop(closing.wait_for(|closing| *closing).await) } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
