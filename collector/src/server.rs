//! The collector server: gRPC ingest with health and reflection, HTTP
//! `/healthz` (alive), `/readyz` (the log and the flusher work),
//! `/metrics` and the public dashboard, and the background flusher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use leakwatch_proto::v1::admin_server::AdminServer;
use leakwatch_proto::v1::collector_server::CollectorServer;
use leakwatch_query::{FlowStore, QueryConfig, SessionFactory, TailError, TailSnapshot, TailSource};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{AdminEndpoint, AdminService};
use crate::convert::add_message;
use crate::flight::FlightSql;
use crate::flusher::{COMPACT_MIN_FILES, COMPACT_RUN_LIMIT, DataStore, Flusher, KEEP_REPLACED, SharedStore};
use crate::ingest::{Ingest, IngestLimits};
use crate::log::DurableLog;
use crate::metrics::{Gauges, IngestMetrics};
use crate::{Error, Result};
use leakwatch_dashboard::{Dashboard, DashboardConfig};

/// Largest decoded `Report` message, bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Timeout of each query of a dashboard refresh (or `--query-timeout-secs`
/// when longer).
pub const DASHBOARD_QUERY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Settings of a running collector.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory (`log/` for RocksDB, `store/` for Parquet).
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Accept `Enroll` without a code.
    pub open_enrollment: bool,
    /// Time between flushes.
    pub flush_interval: Duration,
    /// Largest decoded `Report`, bytes.
    pub max_message_bytes: usize,
    /// Rate and concurrency limits.
    pub limits: IngestLimits,
    /// Delete day partitions older than this many days, and then the batch
    /// ids of their records (None: keep all).
    pub retention_days: Option<u32>,
    /// TLS certificate chain and private key (PEM files) for gRPC and
    /// HTTP; plain text when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: clients must present a certificate signed by one of
    /// these CA certificates (PEM).
    pub client_ca: Option<PathBuf>,
    /// Query limits.
    pub query: QueryConfig,
    /// Serve Flight SQL on this address instead of the gRPC address.
    pub flight_listen: Option<SocketAddr>,
    /// Serve the PostgreSQL wire protocol on this address (none: not at all).
    pub pg_listen: Option<SocketAddr>,
    /// Bounds of the PostgreSQL listener.
    pub pg: crate::pg::PgLimits,
    /// The public dashboard's thresholds and rate limit.
    pub dashboard: DashboardConfig,
    /// Bounds of the HTTP listener (timeouts, connections).
    pub http: crate::http::HttpLimits,
    /// Bounds of the gRPC listeners (handshake time, connections).
    pub grpc: crate::grpc::GrpcLimits,
    /// Write Parquet to this shared S3-compatible store instead of the
    /// data directory's `store/`.
    pub store: Option<SharedStore>,
}

impl ServeConfig {
    /// A collector on loopback ports the system picks, with open
    /// enrollment, default limits, no TLS, and no timed flush (flush
    /// explicitly): for tests and benchmarks.
    pub fn loopback(data_dir: impl Into<PathBuf>) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir: data_dir.into(),
            grpc_listen: any_port,
            http_listen: any_port,
            open_enrollment: true,
            flush_interval: Duration::from_secs(3600),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            limits: IngestLimits::default(),
            retention_days: None,
            tls: None,
            client_ca: None,
            query: QueryConfig::default(),
            flight_listen: None,
            pg_listen: None,
            pg: crate::pg::PgLimits::default(),
            dashboard: DashboardConfig::default(),
            http: crate::http::HttpLimits::default(),
            grpc: crate::grpc::GrpcLimits::default(),
            store: None,
        }
    }
}

/// The flusher runs at ingest's priority while more than
/// `--max-unflushed-batches` / this many log entries wait (a quarter of
/// the way to refusing reports), at background priority otherwise.
pub const CATCH_UP_FRACTION: u64 = 4;

/// How often a log that failed a write is tried to be opened again.
const LOG_REOPEN_EVERY: Duration = Duration::from_secs(2);

/// How long stopping the collector waits for the query runtime's tasks
/// to give up.
const QUERY_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// The runtime SQL queries run on, apart from the one serving ingest, so
/// that a heavy query cannot delay acknowledgements.
#[derive(Debug)]
pub struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl QueryRuntime {
    /// A multi-threaded runtime with one worker per core, its threads at
    /// background priority (see [`crate::background`]).
    pub fn new() -> Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let rt = leakwatch_query::query_runtime_builder()
            .worker_threads(threads)
            .on_thread_start(crate::background::lower_this_thread)
            .thread_name("leakwatch-query")
            .build()
            .map_err(|e| Error::Config(format!("starting the query runtime: {e}")))?;
        Ok(Self(Some(rt)))
    }

    /// Where to spawn queries.
    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }

    /// Stops the runtime, waiting up to `timeout` for its tasks to be
    /// dropped. A task left behind (the dashboard's refresh, a query) would
    /// keep the log's RocksDB open until the process exits, and RocksDB
    /// left open then can abort the exit ("pthread lock: Invalid
    /// argument") instead of ending it cleanly.
    pub async fn close(mut self, timeout: std::time::Duration) {
        if let Some(rt) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || rt.shutdown_timeout(timeout)).await;
        }
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            // Queries still running are abandoned; no data depends on them.
            rt.shutdown_background();
        }
    }
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The layout under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
    /// The RocksDB log.
    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }
    /// The Parquet store root.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    /// The vendors' MUD files loaded for the rule `outside_mud`
    /// (`leakwatch mud load`).
    pub fn mud(&self) -> PathBuf {
        self.root.join("mud")
    }
    /// What the dashboard keeps across restarts (its feeds' history).
    pub fn dashboard(&self) -> PathBuf {
        self.root.join("dashboard")
    }

    /// Where the shared store this directory's collector writes to is
    /// named (absent for a local store).
    fn shared_store_file(&self) -> PathBuf {
        self.root.join("store.json")
    }

    /// The shared store the collector on this directory writes to, as it
    /// recorded it (None: the local `store/`).
    pub fn shared_store(&self) -> Result<Option<SharedStore>> {
        let path = self.shared_store_file();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
        }
    }

    /// Records the store the collector writes to, so that `leakwatch sql
    /// --data-dir` reads the same (no credentials are written).
    fn record_store(&self, shared: Option<&SharedStore>) -> Result<()> {
        let path = self.shared_store_file();
        let io = |e: std::io::Error| Error::Config(format!("{}: {e}", path.display()));
        match shared {
            Some(shared) => {
                let json = serde_json::to_vec_pretty(shared).map_err(|e| Error::Config(e.to_string()))?;
                let tmp = path.with_extension("json.tmp");
                std::fs::write(&tmp, json).map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                _ => Ok(()),
            },
        }
    }

    /// The flushed files as SQL reads them: the recorded shared store, or
    /// the local `store/`.
    pub fn flow_store(&self) -> Result<FlowStore> {
        match self.shared_store()? {
            Some(shared) => shared.flow_store(),
            None => Ok(FlowStore::local(&self.store())?),
        }
    }
}

/// Tail of a log, for the query layer.
#[derive(Debug, Clone)]
pub struct LogTail {
    log: Arc<DurableLog>,
}

impl LogTail {
    /// The tail of `log`.
    pub fn new(log: Arc<DurableLog>) -> Self {
        Self { log }
    }
}

impl TailSource for LogTail {
    fn snapshot(&self) -> std::result::Result<TailSnapshot, TailError> {
        let mut builder = leakwatch_query::FlowBatchBuilder::new();
        let watermark = self.log.each_in_tail(|message| add_message(&mut builder, message))?;
        Ok(TailSnapshot { watermark, batches: vec![builder.finish()] })
    }
}

/// A gRPC server builder: HTTP/2 keep-alive pings find connections whose
/// peer is gone, and a connection's streams are bounded (TLS and the
/// connections' bounds are the listeners', [`crate::grpc`]).
fn grpc_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(crate::grpc::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(crate::grpc::KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(crate::grpc::MAX_STREAMS_PER_CONNECTION))
        .http2_max_local_error_reset_streams(Some(crate::grpc::MAX_ERROR_RESETS_PER_CONNECTION))
}

fn serve_grpc(
    router: tonic::transport::server::Router,
    incoming: impl futures::Stream<Item = std::io::Result<crate::grpc::Admitted>> + Send + 'static,
    rx: watch::Receiver<bool>,
    what: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let serving = router.serve_with_incoming_shutdown(incoming, shutdown_signal(rx.clone()));
        // Stopping asks open connections to finish the requests they are
        // in, and waits for them no longer than the grace: a stalled
        // connection does not hold up the exit.
        let grace = async {
            shutdown_signal(rx).await;
            tokio::time::sleep(crate::grpc::SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            result = serving => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "{what} server failed");
                }
            }
            () = grace => tracing::info!("{what} connections still open at shutdown were closed"),
        }
    })
}

/// A running collector.
#[derive(Debug)]
pub struct Server {
    data_dir: PathBuf,
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound Flight SQL address (the gRPC address unless `flight_listen`
    /// was given).
    pub flight_addr: SocketAddr,
    /// Bound PostgreSQL address (with `pg_listen`).
    pub pg_addr: Option<SocketAddr>,
    /// The log.
    pub log: Arc<DurableLog>,
    /// The flusher.
    pub flusher: Arc<Flusher>,
    /// Sessions over this collector's data.
    pub sessions: SessionFactory,
    /// Counters.
    pub metrics: Arc<IngestMetrics>,
    /// The public dashboard.
    pub dashboard: Dashboard,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _queries: QueryRuntime,
}

/// Most batch ids one retention pass deletes (a fraction of a second's
/// work; passes come every flush interval, so a busy day's tens of
/// millions of ids go within hours, not in one pass that holds up flushes).
const EXPIRE_IDS_PER_PASS: u64 = 200_000;

/// The first day a retention of `days` keeps on disk at `now`: queries
/// stop reading a day once it is older than `days` days
/// ([`leakwatch_query::FlowStore::with_retention`]), and its files are
/// deleted [`KEEP_REPLACED`] after that, so that a query that listed them
/// just before finishes (as it does over a compaction's inputs).
fn retention_cutoff(now: chrono::DateTime<chrono::Utc>, days: u32) -> Option<chrono::NaiveDate> {
    let listed_until = now - chrono::Duration::from_std(KEEP_REPLACED).ok()?;
    listed_until.date_naive().checked_sub_days(chrono::Days::new(u64::from(days)))
}

/// One retention pass: deletes the day partitions older than `days` days
/// (see [`retention_cutoff`]) and then the ids of the batches that were in
/// them, whose retries are stored again from then on. Failures are logged;
/// the next pass retries.
async fn expire(log: &Arc<DurableLog>, store: &DataStore, metrics: &IngestMetrics, days: u32) {
    let Some(cutoff) = retention_cutoff(chrono::Utc::now(), days) else { return };
    // Read before the files are listed: a batch flushed during the pass
    // may be in a file retention did not see, and keeps its id.
    let flushed = match log.watermark() {
        Ok(w) => w,
        Err(e) => return tracing::error!(error = %e, "Retention failed; will retry"),
    };
    match store.apply_retention(cutoff).await {
        Ok(pass) => {
            IngestMetrics::add(&metrics.files_expired, pass.deleted);
            // The batch ids go with the last of their files: a retry of a
            // batch in a file still there must still be a duplicate.
            if pass.left > 0 {
                return;
            }
        }
        Err(e) => return tracing::error!(error = %e, "Retention failed; will retry"),
    }
    let log = log.clone();
    match tokio::task::spawn_blocking(move || log.expire_batch_ids(cutoff, flushed, EXPIRE_IDS_PER_PASS)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(expired)) => {
            IngestMetrics::add(&metrics.batch_ids_expired, expired);
            tracing::info!(expired, "Retention forgot the batch ids of deleted partitions");
        }
        Ok(Err(e)) => tracing::error!(error = %e, "Expiring batch ids failed; will retry"),
        Err(e) => tracing::error!(error = %e, "Expiring batch ids panicked; will retry"),
    }
}

async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl Server {
    /// Opens the data directory, finishes an interrupted flush, binds the
    /// listeners and starts serving.
    pub async fn start(config: ServeConfig) -> Result<Self> {
        // Settings that cannot work are refused before anything is opened.
        config.query.check().map_err(Error::Config)?;
        if config.client_ca.is_some() && config.tls.is_none() {
            return Err(Error::Config("--tls-client-ca needs --tls-cert and --tls-key".into()));
        }
        let dirs = DataDir::new(config.data_dir.clone());
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| Error::Config(format!("--data-dir {}: {e}", config.data_dir.display())))?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_not_serving::<CollectorServer<Ingest>>().await;
        let log_path = dirs.log();
        let log = Arc::new(
            tokio::task::spawn_blocking(move || DurableLog::open(&log_path))
                .await
                .map_err(Error::task("opening the log"))??,
        );
        let store = match &config.store {
            Some(shared) => DataStore::shared(shared)?,
            None => DataStore::local(dirs.store())?,
        };
        dirs.record_store(config.store.as_ref())?;
        let metrics = Arc::new(IngestMetrics::default());
        let flusher = Arc::new(
            Flusher::new(log.clone(), store.clone(), metrics.clone())
                .catching_up_from(config.limits.max_unflushed_batches / CATCH_UP_FRACTION),
        );
        // Recovery: finish a flush a crash interrupted before serving.
        let recovered = flusher.flush().await?;
        tracing::info!(watermark = recovered.watermark, rows = recovered.rows, "Recovered log");

        let grpc = TcpListener::bind(config.grpc_listen)
            .await
            .map_err(|e| Error::Config(format!("--grpc-listen {}: {e}", config.grpc_listen)))?;
        let http = TcpListener::bind(config.http_listen)
            .await
            .map_err(|e| Error::Config(format!("--http-listen {}: {e}", config.http_listen)))?;
        let grpc_addr = grpc.local_addr().map_err(|e| Error::Config(e.to_string()))?;
        let http_addr = http.local_addr().map_err(|e| Error::Config(e.to_string()))?;
        let (shutdown, rx) = watch::channel(false);

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(leakwatch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Config(format!("reflection: {e}")))?;
        let ingest = Ingest::new(log.clone(), metrics.clone(), config.open_enrollment, config.limits)
            .into_service(config.max_message_bytes);
        let admin_token = hex::encode(rand::random::<[u8; 32]>());
        let admin = AdminServer::new(AdminService::new(log.clone(), admin_token.clone()));
        AdminEndpoint { grpc: grpc_addr, token: admin_token }.write(&config.data_dir)?;
        let tls_config = match &config.tls {
            Some((cert, key)) => Some(crate::tls::server_config(cert, key, config.client_ca.as_deref())?),
            None => None,
        };
        let grpc_listeners =
            crate::grpc::Listeners::new(config.grpc, config.dashboard.trusted_proxies.clone(), tls_config.clone());
        // Queries stop reading a day the moment retention expires it;
        // retention deletes it `KEEP_REPLACED` later (see `expire`).
        let flows = store.flow_store().with_retention(config.retention_days);
        let mud = leakwatch_query::mud::MudLibrary::new(dirs.mud());
        let sessions = SessionFactory::new(config.query.clone(), flows.clone(), Arc::new(LogTail::new(log.clone())))
            .with_mud(mud.clone());
        let queries = QueryRuntime::new()?;
        let flight =
            FlightSql::new(sessions.clone(), queries.handle()).with_metrics(metrics.clone()).into_server(log.clone());
        // The dashboard's refresh is the collector's own work, not an
        // analyst's query: the same memory limit, but a longer timeout, as
        // each of its queries reads every flow.
        let refresh_sessions = SessionFactory::new(
            QueryConfig { timeout: config.query.timeout.max(DASHBOARD_QUERY_TIMEOUT), ..config.query.clone() },
            flows,
            Arc::new(LogTail::new(log.clone())),
        )
        .with_mud(mud);
        let mut dashboard_config = config.dashboard.clone();
        if dashboard_config.public_url.is_none() {
            let scheme = if config.tls.is_some() { "https" } else { "http" };
            dashboard_config.public_url = Some(format!("{scheme}://{http_addr}"));
        }
        dashboard_config.state_dir.get_or_insert_with(|| dirs.dashboard());
        let dashboard = Dashboard::new(refresh_sessions, queries.handle(), dashboard_config)?;
        {
            let metrics = metrics.clone();
            dashboard.on_refresh(move |took| metrics.refresh_seconds.observe(took.as_secs_f64()));
        }
        let mut tasks = Vec::new();
        let (flight_addr, flight_beside_ingest) = match config.flight_listen {
            Some(addr) => {
                let listener =
                    TcpListener::bind(addr).await.map_err(|e| Error::Config(format!("--flight-listen {addr}: {e}")))?;
                let bound = listener.local_addr().map_err(|e| Error::Config(e.to_string()))?;
                let router = grpc_builder().add_service(flight);
                let incoming = grpc_listeners.incoming(listener, "Flight SQL", rx.clone());
                tasks.push(serve_grpc(router, incoming, rx.clone(), "Flight SQL"));
                (bound, None)
            }
            None => (grpc_addr, Some(flight)),
        };
        let pg_addr = match config.pg_listen {
            Some(addr) => {
                let (listener, bound) = crate::pg::bind(addr).await?;
                let service = crate::pg::PgService::new(
                    sessions.clone(),
                    queries.handle(),
                    log.clone(),
                    tls_config.clone(),
                    config.pg,
                    config.dashboard.trusted_proxies.clone(),
                    Some(metrics.clone()),
                )?;
                tasks.push(tokio::spawn(service.serve(listener, rx.clone())));
                Some(bound)
            }
            None => None,
        };
        let router =
            grpc_builder().add_service(health_service).add_service(reflection).add_service(ingest).add_service(admin);
        let router = match flight_beside_ingest {
            Some(flight) => router.add_service(flight),
            None => router,
        };
        let incoming = grpc_listeners.incoming(grpc, "gRPC", rx.clone());
        tasks.push(serve_grpc(router, incoming, rx.clone(), "gRPC"));
        let http_task = {
            let metrics = metrics.clone();
            let log = log.clone();
            let (ready_log, ready_flusher) = (log.clone(), flusher.clone());
            let unreadable_of = store.flow_store();
            let dashboard_for_metrics = dashboard.clone();
            let app = Router::new()
                .route("/healthz", get(|| async { "ok\n" }))
                .route(
                    "/readyz",
                    get(move || async move {
                        let failing: Vec<String> = [
                            ready_log.failure().map(|e| format!("the log cannot be written, reports are refused: {e}")),
                            ready_flusher.failure().map(|e| format!("flushing the log to the store fails: {e}")),
                        ]
                        .into_iter()
                        .flatten()
                        .collect();
                        match failing.is_empty() {
                            true => (axum::http::StatusCode::OK, "ready\n".to_string()),
                            false => (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {}\n", failing.join("; ")),
                            ),
                        }
                    }),
                )
                .route(
                    "/metrics",
                    get(move || async move {
                        let snapshot = &dashboard_for_metrics.published().snapshot;
                        let (published, digested) = (snapshot.refreshed_unix, snapshot.digested);
                        let gauges = Gauges {
                            published_age_seconds: (published > 0)
                                .then(|| (chrono::Utc::now().timestamp() - published).max(0)),
                            flush_lag_batches: log.flush_lag(),
                            log_bytes: log.size_bytes(),
                            log_wal_bytes: log.wal_bytes(),
                            log_write_failing: log.failure().is_some(),
                            files_unreadable: unreadable_of.unreadable_counts().0 as u64,
                            refresh_failures: dashboard_for_metrics.failures_in_a_row(),
                            digested: (published > 0).then_some(digested),
                        };
                        (
                            [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                            metrics.render(gauges),
                        )
                    }),
                )
                .merge(dashboard.router());
            let limits = config.http;
            let proxies = config.dashboard.trusted_proxies.clone();
            tokio::spawn(crate::http::serve(http, tls_config, app, limits, proxies, rx.clone()))
        };
        // A log that failed a write is opened again as soon as it can be
        // (RocksDB refuses writes until then).
        let reopen_task = {
            let log = log.clone();
            let metrics = metrics.clone();
            let mut rx = rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(LOG_REOPEN_EVERY) => {}
                        _ = rx.changed() => break,
                    }
                    if log.failure().is_none() {
                        continue;
                    }
                    let log = log.clone();
                    match tokio::task::spawn_blocking(move || log.reopen()).await {
                        Ok(Ok(true)) => IngestMetrics::add(&metrics.log_reopened, 1),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "The log cannot be opened again yet; will retry"),
                        Err(e) => tracing::error!(error = %e, "Opening the log again panicked; will retry"),
                    }
                }
            })
        };
        let flush_task = {
            let flusher = flusher.clone();
            let store = store.clone();
            let log = log.clone();
            let metrics = metrics.clone();
            let retention = config.retention_days;
            let mut rx = rx.clone();
            let interval = config.flush_interval;
            let dashboard = dashboard.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        _ = rx.changed() => break,
                    }
                    match store.set_aside_unreadable().await {
                        Ok(0) => {}
                        Ok(n) => {
                            IngestMetrics::add(&metrics.files_quarantined, n);
                            dashboard.request_refresh();
                        }
                        Err(e) => tracing::error!(error = %e, "Setting aside unreadable files failed; will retry"),
                    }
                    match flusher.flush().await {
                        Ok(done) => {
                            if done.rows > 0 {
                                dashboard.request_refresh();
                            }
                            if let Err(e) =
                                store.compact(done.watermark, COMPACT_MIN_FILES, COMPACT_RUN_LIMIT, KEEP_REPLACED).await
                            {
                                tracing::error!(error = %e, "Compaction failed; will retry");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "Flush failed; will retry"),
                    }
                    if let Some(days) = retention {
                        expire(&log, &store, &metrics, days).await;
                    }
                }
            })
        };
        health.set_serving::<CollectorServer<Ingest>>().await;
        dashboard.request_refresh();
        tasks.extend([http_task, flush_task, reopen_task]);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, flight_sql = %flight_addr, postgres = ?pg_addr, data_dir = %config.data_dir.display(), "Collector serving");
        Ok(Self {
            data_dir: config.data_dir.clone(),
            grpc_addr,
            http_addr,
            flight_addr,
            pg_addr,
            log,
            flusher,
            sessions,
            metrics,
            dashboard,
            shutdown,
            tasks,
            _queries: queries,
        })
    }

    /// Stops accepting, lets requests in flight finish, flushes, returns.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = std::fs::remove_file(AdminEndpoint::path(&self.data_dir));
        self.flusher.flush().await?;
        self._queries.close(QUERY_SHUTDOWN).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_deletes_a_day_only_after_queries_stopped_listing_it() {
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).expect("a time").to_utc();
        let date = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("a date");
        // At midnight queries stop reading 2026-11-05 (31 days old); its
        // files stay while a query that listed them may still run.
        assert_eq!(retention_cutoff(at("2026-12-06T00:00:00Z"), 30), Some(date("2026-11-05")));
        assert_eq!(retention_cutoff(at("2026-12-06T00:14:59Z"), 30), Some(date("2026-11-05")));
        assert_eq!(retention_cutoff(at("2026-12-06T00:15:00Z"), 30), Some(date("2026-11-06")));
    }
}
