//! The public leak dashboard on the collector's HTTP port: HTML pages, a
//! JSON API behind each, and open-data exports, all served from the
//! aggregates in memory ([`aggregate::Snapshot`]) that are recomputed
//! after each flush, never by scanning flows per request. Groups below the
//! publication thresholds appear nowhere; the public sends no SQL; each
//! client address is rate limited.

pub mod aggregate;
pub mod charts;
mod conditional;
mod export;
mod feeds;
#[cfg(test)]
mod incremental_tests;
pub mod lists;
pub mod merged;
pub mod mud;
mod pages;
pub mod proxies;
pub mod queries;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use leakwatch_query::SessionFactory;
use leakwatch_query::digest::{DigestStats, Digests};

pub use aggregate::{Snapshot, Thresholds};
pub use pages::{destination_href, finding_href, model_href};
pub use proxies::TrustedProxies;

/// Errors of the dashboard, sorted by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting out of range (the operator's fault).
    #[error("{0}")]
    Config(String),
    /// The query layer failed outside a named query (opening a session,
    /// reading the digests, filling in a rule).
    #[error(transparent)]
    Query(#[from] leakwatch_query::Error),
    /// A dashboard query or rule failed: which one, and why.
    #[error("dashboard query {query}: {source}")]
    InQuery {
        /// The query's (or rule's) name.
        query: String,
        /// Why it failed.
        #[source]
        source: Box<leakwatch_query::Error>,
    },
    /// A query's result did not have the shape its file declares, or an
    /// export could not be built (ours).
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A query answered other columns than its file declares (ours).
    #[error("dashboard query {query}: answered the columns {got}, its file declares {want}")]
    Shape {
        /// The query's name.
        query: &'static str,
        /// Declared columns.
        want: String,
        /// Columns answered.
        got: String,
    },
    /// A query file's header does not parse (ours).
    #[error("dashboard query file: {0}")]
    QueryFile(String),
    /// The Parquet export could not be written (ours).
    #[error("findings export: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The refresh task panicked or was cancelled (ours).
    #[error("dashboard refresh: {0}")]
    Refresh(#[from] tokio::task::JoinError),
}

/// Result with the dashboard's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The licence the published data is offered under, named on the about
/// page and at the head of every export, list and feed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DataLicence {
    /// Its name, e.g. "CC BY 4.0".
    pub name: String,
    /// Where its text is.
    pub url: String,
}

impl Default for DataLicence {
    fn default() -> Self {
        Self { name: "CC BY 4.0".into(), url: "https://creativecommons.org/licenses/by/4.0/".into() }
    }
}

/// What every page, list, feed and export says of where it comes from.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Site {
    /// The dashboard's public address, no trailing slash.
    pub base: String,
    /// The data licence.
    pub licence: DataLicence,
}

/// Settings of the public dashboard.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Publication thresholds (k devices, m volunteers).
    pub thresholds: Thresholds,
    /// Requests per second each client address may make.
    pub requests_per_second: u32,
    /// Least time from the end of one refresh the flusher asks for to the
    /// start of the next (each recomputes every aggregate from all flows).
    pub min_refresh_interval: Duration,
    /// The data licence.
    pub licence: DataLicence,
    /// The address the public reaches the dashboard at, without a trailing
    /// slash (`https://leaks.example.org`): lists, feeds and MUD files
    /// link back to it. The collector fills in its own HTTP address when
    /// none is given.
    pub public_url: Option<String>,
    /// Where the dashboard keeps what must outlive a restart (when each
    /// finding was first published and last changed, for the feeds).
    pub state_dir: Option<PathBuf>,
    /// Proxies whose forwarding headers name the client a rate limit
    /// counts (`--trusted-proxies`).
    pub trusted_proxies: TrustedProxies,
}

/// Longest wait before a failed refresh is tried again.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(3600);

/// Wait before a requested refresh that failed `failures` times in a row
/// is tried again: the least interval between refreshes (at least a
/// second), doubled with each failure after the first, at most
/// [`MAX_RETRY_WAIT`].
pub fn retry_wait(min_interval: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    min_interval.max(Duration::from_secs(1)).saturating_mul(1 << doublings).min(MAX_RETRY_WAIT)
}

/// Default of [`DashboardConfig::min_refresh_interval`], seconds.
pub const DEFAULT_REFRESH_SECS: u64 = 300;

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            requests_per_second: 20,
            min_refresh_interval: Duration::from_secs(DEFAULT_REFRESH_SECS),
            licence: DataLicence::default(),
            public_url: None,
            state_dir: None,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// What is being served: the aggregates and their exports.
#[derive(Debug, Default)]
pub struct Published {
    /// The aggregates.
    pub snapshot: Snapshot,
    /// `/export/findings.csv`.
    pub csv: axum::body::Bytes,
    /// `/export/findings.parquet`.
    pub parquet: axum::body::Bytes,
    /// How many refreshes this process had published with this one (0:
    /// none yet); with the snapshot's time, the answers' `ETag`.
    pub generation: u64,
}

/// The client's address, as the HTTP server hands it to handlers.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

type Limiter = governor::DefaultKeyedRateLimiter<proxies::ClientNetwork>;

struct Inner {
    sessions: SessionFactory,
    queries: tokio::runtime::Handle,
    config: DashboardConfig,
    published: RwLock<Arc<Published>>,
    refresh: tokio::sync::Mutex<()>,
    pending: AtomicBool,
    refreshes: AtomicU64,
    /// Requested refreshes that failed since the last that succeeded.
    failures: AtomicU32,
    last_finished: std::sync::Mutex<Option<Instant>>,
    limiter: Limiter,
    site: Site,
    history: Arc<std::sync::Mutex<feeds::History>>,
    on_refresh: std::sync::OnceLock<Box<dyn Fn(Duration) + Send + Sync>>,
    /// Each flushed file's digest, kept between refreshes: a refresh reads
    /// the files flushed since the last one (see `leakwatch_query::digest`).
    digests: Arc<Digests>,
    /// The aggregates the digests keep up to date (see [`merged`]).
    merged: Arc<std::sync::Mutex<merged::Merged>>,
}

/// What may be written into a list, a feed or a header: one line, no
/// quote, no control character.
fn checked_text(flag: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 200 {
        return Err(Error::Config(format!("{flag}: must be 1 to 200 characters, not {}", value.len())));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || matches!(c, '"' | '<' | '>' | '\\')) {
        return Err(Error::Config(format!("{flag}: {value:?} holds {c:?}, which lists and feeds cannot carry")));
    }
    Ok(())
}

/// A checked http(s) address.
fn checked_url(flag: &str, value: &str) -> Result<String> {
    checked_text(flag, value)?;
    if !(value.starts_with("http://") || value.starts_with("https://")) || value.contains(char::is_whitespace) {
        return Err(Error::Config(format!("{flag}: {value:?} is not an http:// or https:// address")));
    }
    Ok(value.to_string())
}

/// The dashboard: cheap to clone, shared by the HTTP server and the
/// flusher that asks it to refresh.
#[derive(Clone)]
pub struct Dashboard(Arc<Inner>);

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").field("config", &self.0.config).finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard over `sessions`, refreshing on the `queries` runtime.
    pub fn new(sessions: SessionFactory, queries: tokio::runtime::Handle, config: DashboardConfig) -> Result<Self> {
        Thresholds::new(config.thresholds.min_devices, config.thresholds.min_volunteers)?;
        let rate = NonZeroU32::new(config.requests_per_second)
            .ok_or_else(|| Error::Config("--public-rate: must be at least 1 request per second".into()))?;
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        checked_text("--data-licence", &config.licence.name)?;
        let site = Site {
            base: checked_url("--public-url", config.public_url.as_deref().unwrap_or("http://127.0.0.1:8080"))?
                .trim_end_matches('/')
                .to_string(),
            licence: DataLicence {
                name: config.licence.name.clone(),
                url: checked_url("--data-licence-url", &config.licence.url)?,
            },
        };
        let history = feeds::History::load(config.state_dir.as_deref());
        // Digests in the state directory outlive a restart: the first
        // refresh then reads only what was flushed meanwhile.
        let digests = match &config.state_dir {
            Some(dir) => Digests::in_dir(&dir.join("digests")).map_err(|e| Error::Config(format!("{e}")))?,
            None => Digests::in_memory(),
        };
        // The dashboard's own aggregates, kept up to date from the digests.
        let merged = Arc::new(std::sync::Mutex::new(merged::Merged::new()));
        let digests = digests.merging(merged.clone());
        let first = Published {
            snapshot: Snapshot { site: site.clone(), thresholds: config.thresholds, ..Snapshot::default() },
            ..Published::default()
        };
        Ok(Self(Arc::new(Inner {
            sessions,
            queries,
            config,
            published: RwLock::new(Arc::new(first)),
            refresh: tokio::sync::Mutex::new(()),
            pending: AtomicBool::new(false),
            refreshes: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            last_finished: std::sync::Mutex::new(None),
            limiter: governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst)),
            site,
            history: Arc::new(std::sync::Mutex::new(history)),
            on_refresh: std::sync::OnceLock::new(),
            digests: Arc::new(digests),
            merged,
        })))
    }

    /// Calls `observe` with the time of each completed refresh (once set,
    /// kept).
    pub fn on_refresh(&self, observe: impl Fn(Duration) + Send + Sync + 'static) {
        let _ = self.0.on_refresh.set(Box::new(observe));
    }

    /// What is served now.
    pub fn published(&self) -> Arc<Published> {
        self.0.published.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// What the last completed refresh read and kept of the flushed files'
    /// digests.
    pub fn digested(&self) -> DigestStats {
        self.published().snapshot.digested
    }

    /// Completed refreshes.
    pub fn refreshes(&self) -> u64 {
        self.0.refreshes.load(Ordering::Relaxed)
    }

    /// Requested refreshes that failed since the last that succeeded.
    pub fn failures_in_a_row(&self) -> u32 {
        self.0.failures.load(Ordering::Relaxed)
    }

    /// Recomputes the aggregates now and waits for them.
    pub async fn refresh(&self) -> Result<()> {
        let one_at_a_time = self.0.refresh.lock().await;
        self.refresh_holding(one_at_a_time).await
    }

    /// The refresh [`Dashboard::request_refresh`] asked for, unless a
    /// refresh that began after the request (and so reads what it was made
    /// for) has answered it meanwhile.
    async fn refresh_requested(&self) -> Result<()> {
        let one_at_a_time = self.0.refresh.lock().await;
        if !self.0.pending.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.refresh_holding(one_at_a_time).await
    }

    /// A refresh, holding the lock that makes refreshes take turns.
    async fn refresh_holding(&self, _one_at_a_time: tokio::sync::MutexGuard<'_, ()>) -> Result<()> {
        self.0.pending.store(false, Ordering::SeqCst);
        let started = Instant::now();
        let (sessions, thresholds) = (self.0.sessions.clone(), self.0.config.thresholds);
        let (site, history, digests) = (self.0.site.clone(), self.0.history.clone(), self.0.digests.clone());
        let merged = self.0.merged.clone();
        let computed = self
            .0
            .queries
            .spawn(async move {
                let (session, digested) = sessions.digest_session(&digests).await?;
                tracing::debug!(
                    files_read = digested.digested,
                    files_kept = digested.kept,
                    files_forgotten = digested.forgotten,
                    digest_rows = digested.rows,
                    digest_bytes = digested.bytes,
                    merged = digested.merged,
                    merged_bytes = digested.merged_bytes,
                    "Digests brought up to date"
                );
                let merged = digested.merged.then_some(&*merged);
                let mut snapshot = aggregate::compute(&session, thresholds, merged).await?;
                snapshot.digested = digested;
                let (left_out, set_aside) = sessions.flow_store().unreadable_counts();
                snapshot.unreadable_files = left_out as u64 + set_aside;
                let now = snapshot.refreshed_rfc3339();
                history.lock().unwrap_or_else(PoisonError::into_inner).stamp(&mut snapshot.findings, &now);
                snapshot.site = site;
                let (csv, parquet) = export::findings(&snapshot.findings, &snapshot.site.licence)?;
                Ok::<_, Error>(Published { snapshot, csv: csv.into(), parquet: parquet.into(), generation: 0 })
            })
            .await
            .map_err(Error::from);
        *self.0.last_finished.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let computed = computed??;
        if let Some(observe) = self.0.on_refresh.get() {
            observe(started.elapsed());
        }
        tracing::info!(
            findings = computed.snapshot.findings.len(),
            models = computed.snapshot.models.len(),
            destinations = computed.snapshot.destinations.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Dashboard refreshed"
        );
        let mut computed = computed;
        // Refreshes take turns (the refresh lock), so this is the next.
        computed.generation = self.0.refreshes.load(Ordering::Relaxed) + 1;
        *self.0.published.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(computed);
        self.0.refreshes.fetch_add(1, Ordering::Relaxed);
        self.0.failures.store(0, Ordering::Relaxed);
        self.0.limiter.retain_recent();
        Ok(())
    }

    /// Asks for a refresh in the background, to start once
    /// [`DashboardConfig::min_refresh_interval`] has passed since the last
    /// one ended; requests made while one is waiting are folded into it,
    /// and a refresh that begins meanwhile ([`Dashboard::refresh`])
    /// answers them all. One that fails (its queries refused memory that
    /// analysts' queries hold, a file unreadable for a moment) is asked
    /// for again, after [`retry_wait`]: the new data is published without
    /// waiting for another flush.
    pub fn request_refresh(&self) {
        if self.0.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let last = *self.0.last_finished.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wait_until = last.map(|last| last + self.0.config.min_refresh_interval);
        // Held weakly while waiting: a dashboard dropped meanwhile (its
        // collector stopped) is not kept, nor what it holds (the log).
        let dashboard = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                if let Some(at) = wait_until {
                    tokio::time::sleep_until(at.into()).await;
                }
                let Some(me) = dashboard.upgrade().map(Self) else { return };
                let e = match me.refresh_requested().await {
                    Ok(()) => return,
                    // Cancelled: the query runtime stopped with the collector.
                    Err(Error::Refresh(e)) if e.is_cancelled() => return,
                    Err(e) => e,
                };
                let failures = me.0.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let wait = retry_wait(me.0.config.min_refresh_interval, failures);
                tracing::error!(
                    error = %e,
                    failures,
                    retry_in_secs = wait.as_secs(),
                    "Dashboard refresh failed; the previous aggregates stay published"
                );
                // Asked for again, unless a request made meanwhile is
                // already waiting (it answers this one too).
                if me.0.pending.swap(true, Ordering::SeqCst) {
                    return;
                }
                wait_until = Some(Instant::now() + wait);
            }
        });
    }

    /// The public routes: pages, `/api/...` and `/export/...`, rate
    /// limited per client address.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(pages::home))
            .route("/models", get(pages::models))
            .route("/models/{vendor}/{model}", get(pages::model))
            .route("/destinations", get(pages::destinations))
            .route("/destinations/{name}", get(pages::destination))
            .route("/findings/{id}", get(pages::finding))
            .route("/about", get(pages::about))
            .route("/lists", get(pages::lists_page))
            .route("/api", get(pages::api_index))
            .route("/api/openapi.json", get(pages::api_openapi))
            .route("/api/findings", get(pages::api_findings))
            .route("/api/findings/{id}", get(pages::api_finding))
            .route("/api/models", get(pages::api_models))
            .route("/api/models/{vendor}/{model}", get(pages::api_model))
            .route("/api/destinations", get(pages::api_destinations))
            .route("/api/destinations/{name}", get(pages::api_destination))
            .route("/export/findings.csv", get(export::csv))
            .route("/export/findings.parquet", get(export::parquet))
            .route("/lists/{file}", get(export::list_all))
            .route("/lists/vendors/{vendor}/{file}", get(export::list_vendor))
            .route("/lists/models/{vendor}/{model}/{file}", get(export::list_model))
            .route("/lists/findings/{id}/{file}", get(export::list_finding))
            .route("/feeds/findings.atom", get(export::feed_all))
            .route("/feeds/vendors/{file}", get(export::feed_vendor))
            .route("/feeds/models/{vendor}/{file}", get(export::feed_model))
            .route("/mud/{vendor}/{file}", get(export::mud_file))
            .fallback(pages::not_found)
            .layer(axum::middleware::from_fn_with_state(self.clone(), rate_limit))
            .with_state(self.clone())
    }
}

/// Refuses a client (its address, or the one a trusted proxy names) that
/// exceeds its rate with 429 and `Retry-After`; adds caching,
/// content-security (no framing, no referrer), licence and, to `/api`,
/// CORS headers; the refresh's validators, 304 to a client that holds it,
/// and gzip ([`conditional`]).
async fn rate_limit(
    State(dashboard): State<Dashboard>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    request: Request,
    next: Next,
) -> Response {
    let client = proxies::client_network(dashboard.0.config.trusted_proxies.client(peer.ip(), request.headers()));
    if let Err(not_until) = dashboard.0.limiter.check_key(&client) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        let secs = wait.as_secs() + 1;
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many requests from {client}: the limit is {} per second; retry in {secs} s\n",
                dashboard.0.config.requests_per_second
            ),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let api = request.uri().path().starts_with("/api/") || request.uri().path() == "/api";
    let (method, asked) = (request.method().clone(), request.headers().clone());
    let published = dashboard.published();
    let refresh = conditional::Refresh { unix: published.snapshot.refreshed_unix, generation: published.generation };
    drop(published);
    let response = next.run(request).await;
    let mut response = conditional::finish(&method, &asked, refresh, response).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=30"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if api {
        // Public data, read with GET alone: any site's scripts may read it.
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    if let Ok(licence) = HeaderValue::from_str(&format!("<{}>; rel=\"license\"", dashboard.0.site.licence.url)) {
        headers.insert(header::LINK, licence);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_refresh_waits_longer_after_each_failure_up_to_an_hour() {
        let five_minutes = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=6).map(|n| retry_wait(five_minutes, n).as_secs()).collect();
        assert_eq!(waits, [300, 600, 1200, 2400, 3600, 3600]);
        assert_eq!(retry_wait(Duration::ZERO, 1), Duration::from_secs(1), "at least a second");
        assert_eq!(retry_wait(five_minutes, u32::MAX), MAX_RETRY_WAIT);
    }

    #[test]
    fn the_licence_and_public_url_are_refused_when_lists_and_feeds_could_not_carry_them() {
        assert!(checked_text("--data-licence", "CC BY 4.0").is_ok());
        let e = checked_text("--data-licence", "CC BY\n# injected").expect_err("newline");
        assert!(e.to_string().starts_with("--data-licence: "), "{e}");
        assert!(checked_text("--data-licence", "").is_err());
        assert!(checked_text("--data-licence", &"x".repeat(201)).is_err());
        assert_eq!(checked_url("--public-url", "https://leaks.example.org").expect("ok"), "https://leaks.example.org");
        for bad in ["ftp://x.org", "leaks.example.org", "https://x.org/a b", "https://x.org/\"><script>"] {
            let e = checked_url("--public-url", bad).expect_err(bad);
            assert!(e.to_string().starts_with("--public-url: "), "{e}");
        }
    }
}
