//! The one session factory.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::common::{ScalarValue, TableReference};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt as _;

use crate::digest::DigestStats;
use crate::schema::flows_schema;
use crate::store::FlowStore;
use crate::{Error, Result};

/// Limits of every query session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryConfig {
    /// Memory pool limit per session, bytes (default 1 GiB). A query that
    /// needs more fails with a ResourcesExhausted error instead of taking
    /// the process down.
    pub memory_limit_bytes: usize,
    /// What all sessions' queries may hold at once (default 4 GiB), shared
    /// by every clone of this configuration and the sessions of every
    /// factory made with one.
    pub total_memory: crate::memory::QueryMemory,
    /// Time limit per query (default 60 s).
    pub timeout: Duration,
    /// A query none of whose operators makes progress this long while its
    /// next batch is awaited has stopped (default 30 s; see
    /// [`crate::watch`]): planned again on one partition if it handed out
    /// nothing yet, else failed with [`Error::Stalled`]. Zero: queries are
    /// not watched.
    pub stall_after: Duration,
    /// Scheduler URL (`df://HOST:PORT`) of the Apache DataFusion Ballista
    /// cluster that runs the queries, on the flushed files only (see
    /// [`crate::ballista`]); `None`: this process runs them, on the files
    /// and the unflushed tail.
    pub ballista: Option<String>,
}

impl QueryConfig {
    /// Whether the limits can work together: a session's memory limit
    /// within the total (else one session could never reach its limit).
    pub fn check(&self) -> std::result::Result<(), String> {
        let (session, total) = (self.memory_limit_bytes, self.total_memory.total_bytes());
        if total < session {
            return Err(format!(
                "--query-memory-total-mib {} is less than --query-memory-mib {}: a session could never use its limit",
                total >> 20,
                session >> 20
            ));
        }
        Ok(())
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit_bytes: 1 << 30,
            total_memory: crate::memory::QueryMemory::default(),
            timeout: Duration::from_secs(60),
            stall_after: Duration::from_secs(30),
            ballista: None,
        }
    }
}

/// The unflushed rows of the collector's log, with the watermark they sit
/// above: rows at or below the watermark are in Parquet files, rows above
/// it are in `batches`.
#[derive(Debug, Clone, Default)]
pub struct TailSnapshot {
    /// Highest log sequence number contained in the Parquet files.
    pub watermark: u64,
    /// Rows above the watermark, in `flows` schema.
    pub batches: Vec<RecordBatch>,
}

/// Supplies the unflushed tail of the log.
pub trait TailSource: Send + Sync {
    /// A consistent snapshot: the watermark and the rows above it, read
    /// at one point in time.
    fn snapshot(&self) -> std::result::Result<TailSnapshot, TailError>;
}

/// Why a [`TailSource`] could not give a snapshot (its own error, kept
/// whole).
pub type TailError = Box<dyn std::error::Error + Send + Sync>;

/// No unflushed tail: every Parquet file is read, whatever its range
/// (for files written outside a running collector, such as benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct FilesOnly;

impl TailSource for FilesOnly {
    fn snapshot(&self) -> std::result::Result<TailSnapshot, TailError> {
        Ok(TailSnapshot { watermark: u64::MAX, batches: Vec::new() })
    }
}

/// Why `--ballista` fails in a build without the `ballista` feature.
pub const NO_BALLISTA: &str = "this build of leakwatch has no Ballista support; build it with `cargo build --features ballista` (see docs/scale-out.md)";

/// Builds every DataFusion session: read-only, with the leakwatch tables
/// and functions, within the configured limits.
#[derive(Clone)]
pub struct SessionFactory {
    config: QueryConfig,
    flows: FlowStore,
    tail: Arc<dyn TailSource>,
    mud: Option<crate::mud::MudLibrary>,
}

impl std::fmt::Debug for SessionFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFactory")
            .field("config", &self.config)
            .field("flows", &self.flows)
            .finish_non_exhaustive()
    }
}

/// A session: run read-only SQL.
pub struct QuerySession {
    ctx: SessionContext,
    timeout: Duration,
    /// See [`QueryConfig::stall_after`].
    stall_after: Duration,
    /// The scheduler URL when it runs on a Ballista cluster (which reads
    /// files only: no tables computed into this process's memory).
    cluster: Option<String>,
    /// The files it planned to read, which retention and compaction leave
    /// in place until it is dropped.
    _pins: crate::store::FilePins,
}

impl std::fmt::Debug for QuerySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuerySession")
            .field("session_id", &self.ctx.session_id())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SessionFactory {
    /// A factory over the Parquet files in `flows` and `tail`.
    pub fn new(config: QueryConfig, flows: FlowStore, tail: Arc<dyn TailSource>) -> Self {
        Self { config, flows, tail, mud: None }
    }

    /// The same, with the MUD files loaded in `library` as the table
    /// `mud_allowed` (without one, the table is empty).
    pub fn with_mud(mut self, library: crate::mud::MudLibrary) -> Self {
        self.mud = Some(library);
        self
    }

    /// The time limit of each query of its sessions.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// The flushed files it reads.
    pub fn flow_store(&self) -> &FlowStore {
        &self.flows
    }

    /// A new session with a fresh snapshot of the data.
    pub async fn session(&self) -> Result<QuerySession> {
        Ok(self.open(None).await?.0)
    }

    /// A new session whose `flows` is the digest of a fresh snapshot of
    /// the data (see [`crate::digest`]): `digests` brought up to the
    /// files listed now, and the tail's. Only what the dashboard's queries
    /// and the rules read of `flows` is in it, and its views of devices
    /// and boots are left out. It runs here, also when queries otherwise
    /// run on a cluster: the digests are this process's.
    pub async fn digest_session(&self, digests: &crate::digest::Digests) -> Result<(QuerySession, DigestStats)> {
        let local = Self { config: QueryConfig { ballista: None, ..self.config.clone() }, ..self.clone() };
        let (session, stats) = local.open(Some(digests)).await?;
        Ok((session, stats.unwrap_or_default()))
    }

    /// A session over the flows, or over their digests in `digests`.
    async fn open(&self, digests: Option<&crate::digest::Digests>) -> Result<(QuerySession, Option<DigestStats>)> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(self.config.total_memory.session_pool(self.config.memory_limit_bytes))
            .with_object_store_registry(Arc::new(self.flows.registry()))
            .build_arc()?;
        #[cfg(feature = "ballista")]
        let config = match &self.config.ballista {
            Some(_) => crate::ballista::cluster_config(),
            None => query_options(SessionConfig::new()),
        };
        #[cfg(not(feature = "ballista"))]
        let config = match &self.config.ballista {
            Some(url) => return Err(Error::Invalid(format!("--ballista {url}: {NO_BALLISTA}"))),
            None => query_options(SessionConfig::new()),
        };
        let mut state =
            SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features();
        // Plans run here; a cluster plans with its own rules.
        if self.config.ballista.is_none() {
            state = state.with_physical_optimizer_rule(Arc::new(crate::yielding::YieldingJoins));
        }
        let state = state.build();
        #[cfg(feature = "ballista")]
        let ctx = match &self.config.ballista {
            Some(url) => crate::ballista::remote_context(url, state).await?,
            None => SessionContext::new_with_state(state),
        };
        #[cfg(not(feature = "ballista"))]
        let ctx = SessionContext::new_with_state(state);
        // No table functions that generate unbounded rows.
        ctx.deregister_udtf("generate_series");
        ctx.deregister_udtf("range");
        ctx.deregister_udf("generate_series");
        ctx.deregister_udf("range");
        for udf in crate::udf::all() {
            ctx.register_udf(udf);
        }
        crate::bounded::register(&ctx);

        // A cluster reads the flushed files only, all of them; a local
        // session reads the files up to the watermark and the tail.
        let snapshot = match &self.config.ballista {
            Some(_) => TailSnapshot { watermark: u64::MAX, batches: Vec::new() },
            None => self.tail.snapshot().map_err(Error::Tail)?,
        };
        let files = self.flows.readable(self.flows.files(snapshot.watermark).await?).await;
        let pins = self.flows.pin(&files.iter().map(|f| &f.meta.location).collect::<Vec<_>>());
        let mut tail_pairs = std::collections::HashSet::new();
        if self.flows.is_shared() {
            crate::copies::batch_pairs(&snapshot.batches, &mut tail_pairs);
        }
        let losers = self.flows.losing_copies(&files, &tail_pairs).await?;
        let schema = view_schema(&flows_schema());
        let batches = snapshot.batches.into_iter().map(|b| in_schema(b, &schema)).collect::<Result<Vec<_>>>()?;
        if let (Some(url), true) = (&self.config.ballista, files.is_empty()) {
            return Err(Error::Invalid(format!(
                "--ballista {url}: {} holds no flushed files yet; the cluster reads flushed files only",
                self.flows
            )));
        }
        let loaded = self.mud.as_ref().map(crate::mud::MudLibrary::all).unwrap_or_default();
        let mud = ctx.sql(&crate::mud::allowed_sql(&loaded)).await?.into_view();
        ctx.register_table("mud_allowed", mud)?;
        let session = QuerySession {
            ctx,
            timeout: self.config.timeout,
            stall_after: self.config.stall_after,
            cluster: self.config.ballista.clone(),
            _pins: pins,
        };
        if let Some(digests) = digests {
            let tail = session.ctx.read_table(Arc::new(MemTable::try_new(schema, vec![batches])?))?;
            let tail = if losers.is_empty() { tail } else { tail.filter(not_a_losing_copy(&losers))? };
            let stats = digests.update(&session, &self.flows, &files, &losers, tail).await?;
            return Ok((session, Some(stats)));
        }
        let mut flows = None;
        if !files.is_empty() {
            let urls = files.into_iter().map(|f| f.url).collect();
            let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(schema.clone());
            flows = Some(session.ctx.read_table(Arc::new(ListingTable::try_new(config)?))?);
        }
        // A cluster reads the files' table alone.
        if self.config.ballista.is_none() {
            let tail = session.ctx.read_table(Arc::new(MemTable::try_new(schema, vec![batches])?))?;
            flows = Some(match flows {
                Some(flushed) => flushed.union(tail)?,
                None => tail,
            });
        }
        let Some(mut flows) = flows else {
            return Err(Error::Internal("no table of files and no tail".into()));
        };
        if !losers.is_empty() {
            flows = flows.filter(not_a_losing_copy(&losers))?;
        }
        session.ctx.register_table("flows", flows.into_view())?;
        for (name, sql) in VIEWS {
            let view = session.ctx.sql(sql).await?.into_view();
            session.ctx.register_table(*name, view)?;
        }
        Ok((session, None))
    }
}

/// `e` of a query that ran on the Ballista cluster at `url`, naming it: a
/// cluster that cannot be reached or fails otherwise shows up only when a
/// query runs.
fn on_cluster(url: &str, e: Error) -> Error {
    match e {
        e @ (Error::Internal(_) | Error::DataFusion(_)) => Error::Cluster { url: url.to_string(), source: Box::new(e) },
        e => e,
    }
}

/// `config` with the options of every leakwatch session: the
/// information schema; strings read as views (no copy of each value
/// out of the Parquet pages, and cheaper grouping and comparing; results
/// reach analysts and Flight SQL clients as plain Utf8, see `in_schema`);
/// and [`SKIP_PARTIAL_AGGREGATION_RATIO`].
pub(crate) fn query_options(config: SessionConfig) -> SessionConfig {
    let mut config = config.with_information_schema(true);
    let options = config.options_mut();
    options.sql_parser.map_string_types_to_utf8view = false;
    options.execution.parquet.schema_force_view_types = true;
    options.execution.skip_partial_aggregation_probe_ratio_threshold = SKIP_PARTIAL_AGGREGATION_RATIO;
    config
}

/// An aggregation skips its partial (per-partition) phase when, after its
/// first 100,000 rows, it has more than this many groups per row, and
/// hands rows straight to the final phase. The rules group by device and
/// destination, a group per two or three rows: a partial phase then hashes
/// every row once more and shrinks the data little. DataFusion's default,
/// 0.8, keeps the partial phase for those; at 0.1 the five rules that
/// count devices ran in 6 to 23 % less time on 50 M simulated records,
/// each run alternating with one at 0.8 (see the rules benchmark in
/// benches/README.md). Aggregations that shrink their input tenfold or more keep it.
const SKIP_PARTIAL_AGGREGATION_RATIO: f64 = 0.1;

/// True for rows of `flows` that are not in one of the `losers` (`(agent_id,
/// batch_id)` copies of a batch another collector holds too).
pub(crate) fn not_a_losing_copy(losers: &[(String, String)]) -> datafusion::logical_expr::Expr {
    use datafusion::functions::expr_fn::concat;
    use datafusion::prelude::{col, lit};
    let mut ids: Vec<&str> = losers.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let ids = ids.into_iter().map(lit).collect();
    let pairs = losers.iter().map(|(agent, id)| lit(format!("{agent}/{id}"))).collect();
    // The cheap test first: most rows' batch ids are in no copy.
    let copy = col("batch_id")
        .in_list(ids, false)
        .and(concat(vec![col("agent_id"), lit("/"), col("batch_id")]).in_list(pairs, false));
    datafusion::logical_expr::not(copy)
}

/// Views analysts reach for first.
const VIEWS: &[(&str, &str)] = &[
    (
        "devices",
        "SELECT device_pseudonym, max(vendor) AS vendor, max(model) AS model, max(os_version) AS os_version, \
         max(consent) AS consent, count(DISTINCT boot_pseudonym) AS boots, count(*) AS flows, \
         min(window_start) AS first_seen, max(window_start) AS last_seen \
         FROM flows GROUP BY device_pseudonym",
    ),
    (
        "boots",
        "SELECT boot_pseudonym, max(device_pseudonym) AS device_pseudonym, max(vendor) AS vendor, \
         max(model) AS model, max(os_version) AS os_version, max(consent) AS consent, \
         max(boot_source) AS boot_source, min(window_start) AS first_window, count(*) AS flows, \
         count(DISTINCT domain) AS domains FROM flows GROUP BY boot_pseudonym",
    ),
];

impl QuerySession {
    /// Parses and plans one statement, refusing anything but a read-only
    /// query, and a statement past the bounds of [`crate::statement`].
    pub async fn plan(&self, sql: &str) -> Result<LogicalPlan> {
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let state = self.ctx.state();
        let statement = crate::statement::parse_bounded(&state, sql)?;
        let plan = state.statement_to_plan(statement).await?;
        if let Err(e) = options.verify_plan(&plan) {
            let msg = match e.find_root() {
                datafusion::error::DataFusionError::Plan(m) => m.clone(),
                other => other.to_string(),
            };
            return Err(Error::ReadOnly(msg));
        }
        Ok(plan)
    }

    /// The types of a planned statement's `$1`, `$2`, ... parameters, in
    /// order (`None` where the query does not determine one).
    pub fn parameter_types(plan: &LogicalPlan) -> Result<Vec<(String, Option<DataType>)>> {
        let mut types: Vec<(String, Option<DataType>)> = plan.get_parameter_types()?.into_iter().collect();
        types.sort_by_key(|(name, _)| name.trim_start_matches('$').parse::<u64>().unwrap_or(u64::MAX));
        Ok(types)
    }

    /// The schema results have at the boundary to clients: plain `Utf8`
    /// and `Binary` instead of their view types.
    pub fn result_schema(plan: &LogicalPlan) -> SchemaRef {
        boundary_schema(plan.schema().as_arrow())
    }

    /// Runs a planned statement with `params` bound to its placeholders
    /// (each cast to the type the query expects); batches come in
    /// [`Self::result_schema`]. The caller applies [`Self::timeout`] to
    /// reading the stream.
    pub async fn execute(
        &self,
        plan: LogicalPlan,
        params: Vec<ScalarValue>,
    ) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
        let schema = Self::result_schema(&plan);
        let plan = if params.is_empty() {
            plan
        } else {
            let types = Self::parameter_types(&plan)?;
            if types.len() != params.len() {
                return Err(Error::Invalid(format!(
                    "parameters: the query has {} placeholders, {} values were bound",
                    types.len(),
                    params.len()
                )));
            }
            let mut values = Vec::with_capacity(params.len());
            for (i, (value, (name, ty))) in params.into_iter().zip(types).enumerate() {
                values.push(match ty {
                    Some(ty) if value.data_type() != ty => value.cast_to(&ty).map_err(|e| {
                        Error::Invalid(format!("parameter {} ({name}): cannot be read as {ty}: {e}", i + 1))
                    })?,
                    _ => value,
                });
            }
            plan.with_param_values(values)?
        };
        let stream = self.stream(plan).await?;
        Ok(stream.map(move |batch| in_schema(batch?, &schema)).boxed())
    }

    /// Starts a planned statement: its batches as the plan makes them.
    /// Run here, it is watched for a stop (see [`crate::watch`]); on a
    /// cluster, its errors name the cluster.
    async fn stream(&self, plan: LogicalPlan) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
        let Some(url) = &self.cluster else {
            let watched = (!self.stall_after.is_zero()).then_some(self.stall_after);
            return crate::watch::run(self.ctx.state(), plan, watched).await;
        };
        let url = url.clone();
        let name_cluster = move |e: datafusion::error::DataFusionError| on_cluster(&url, e.into());
        let frame = self.ctx.execute_logical_plan(plan).await?;
        let stream = frame.execute_stream().await.map_err(&name_cluster)?;
        Ok(stream.map(move |batch| batch.map_err(&name_cluster)).boxed())
    }

    /// Runs one read-only statement and collects its result, within the
    /// time limit.
    ///
    /// Common table expressions the query references more than once are
    /// computed once each, before it (see [`crate::materialise`]).
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        // Planned as written first: its errors name what the analyst wrote.
        let plan = self.plan(sql).await?;
        let run = async {
            if self.cluster.is_none()
                && let Some(steps) = crate::materialise::split(sql, &step_prefix())
                && let Some(tables) = self.step_tables(steps.tables).await?
            {
                let batches = self.collect(self.plan(&steps.query).await?).await;
                drop(tables);
                return batches;
            }
            self.collect(plan).await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }

    /// All batches of a planned statement, in [`Self::result_schema`].
    ///
    /// The result is counted against the memory limit as it arrives: a
    /// result too large to hold (a cross join's rows) fails with
    /// ResourcesExhausted instead of growing outside the pool.
    async fn collect(&self, plan: LogicalPlan) -> Result<Vec<RecordBatch>> {
        let schema = Self::result_schema(&plan);
        let mut stream = self.stream(plan).await?;
        let pool = &self.ctx.runtime_env().memory_pool;
        let reservation = MemoryConsumer::new("query result").register(pool);
        let mut seen = std::collections::HashSet::new();
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = in_schema(batch?, &schema)?;
            if let Err(e) = reservation.try_grow(new_buffer_bytes(&batch, &mut seen)) {
                return Err(Error::ResourcesExhausted(format!(
                    "the result of {} rows so far does not fit: {e}",
                    batches.iter().map(RecordBatch::num_rows).sum::<usize>() + batch.num_rows()
                )));
            }
            batches.push(batch);
        }
        Ok(batches)
    }

    /// Computes the tables of `steps` into memory (counted against the
    /// memory limit as they arrive, together at most half of it: the
    /// query that reads them needs the rest), or, one that does not fit,
    /// onto disk (see [`crate::on_disk`]); or registers them as views when
    /// computing them is no cheaper than reading them again (see
    /// [`works`]). They stay registered until the returned guard drops.
    /// `None` when one cannot be kept (computing it runs out of memory,
    /// or the disk refuses it): the query then runs as written.
    async fn step_tables(&self, tables: Vec<(String, String)>) -> Result<Option<StepTables>> {
        let pool = &self.ctx.runtime_env().memory_pool;
        let reservation = MemoryConsumer::new("common table expressions computed once").register(pool);
        let mut guard = StepTables { ctx: self.ctx.clone(), names: Vec::new(), reservation, on_disk: 0 };
        let partitions = self.ctx.copied_config().target_partitions().max(1);
        let memory = match pool.memory_limit() {
            datafusion::execution::memory_pool::MemoryLimit::Finite(bytes) => bytes,
            _ => usize::MAX,
        };
        for (name, sql) in tables {
            let plan = self.plan(&sql).await?;
            if !works(&plan)? {
                // Reading it again costs what reading its result would.
                let view = self.ctx.execute_logical_plan(plan).await?.into_view();
                self.ctx.register_table(TableReference::bare(name.as_str()), view)?;
                guard.names.push(name);
                continue;
            }
            let planned: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
            let mut stream = match self.stream(plan).await {
                Ok(stream) => stream,
                Err(Error::ResourcesExhausted(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            let (mut held, mut in_memory, mut seen) = (Vec::new(), 0usize, std::collections::HashSet::new());
            let mut writing: Option<crate::on_disk::Writing> = None;
            let what = format!("common table expression {name}");
            while let Some(batch) = stream.next().await {
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(Error::ResourcesExhausted(_)) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let kept = match &mut writing {
                    Some(file) => file.write(&batch),
                    None => {
                        let bytes = new_buffer_bytes(&batch, &mut seen);
                        // At most half the limit in memory: the query
                        // reading them needs the rest.
                        let within = guard.reservation.size().saturating_add(bytes) <= memory / 2;
                        if within && guard.reservation.try_grow(bytes).is_ok() {
                            in_memory += bytes;
                            held.push(batch);
                            continue;
                        }
                        // It does not fit: what came so far, and the rest,
                        // to disk.
                        guard.reservation.shrink(in_memory);
                        (in_memory, seen) = (0, std::collections::HashSet::new());
                        let limit = memory.saturating_mul(crate::on_disk::DISK_PER_MEMORY);
                        match crate::on_disk::Writing::create(&self.ctx, batch.schema(), limit, &what) {
                            Ok(mut file) => {
                                let kept = held.drain(..).chain([batch]).try_for_each(|b| file.write(&b));
                                writing = Some(file);
                                kept
                            }
                            Err(e) => Err(crate::on_disk::NotKept::Failed(e)),
                        }
                    }
                };
                match kept {
                    Ok(()) => {}
                    Err(crate::on_disk::NotKept::TooLarge(bytes)) => {
                        tracing::debug!(
                            bytes,
                            "{what} is too large for memory and for disk; the query runs as written"
                        );
                        return Ok(None);
                    }
                    Err(crate::on_disk::NotKept::Failed(e)) => {
                        tracing::debug!(error = %e, "{what} could not be kept on disk; the query runs as written");
                        return Ok(None);
                    }
                }
            }
            if let Some(file) = writing {
                let (table, rows) = file.finish()?;
                tracing::debug!(table = %name, rows, "A common table expression too large for memory was kept on disk");
                STEP_TABLES_ON_DISK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.ctx.register_table(TableReference::bare(name.as_str()), Arc::new(table))?;
                guard.names.push(name);
                guard.on_disk += 1;
                continue;
            }
            // The batches' own schema: the logical plan's may declare a
            // column nullable where the executed plan's does not, or the
            // other way round (a CASE over a function), and the table must
            // hold what was computed.
            let schema = held.first().map_or(planned, RecordBatch::schema);
            let table = MemTable::try_new(schema, spread(held, partitions))?;
            self.ctx.register_table(TableReference::bare(name.as_str()), Arc::new(table))?;
            guard.names.push(name);
        }
        Ok(Some(guard))
    }

    /// [`Self::execute`] for a statement whose text is at hand: without
    /// parameters, its repeated common table expressions are computed once
    /// first (see [`crate::materialise`]), and dropped with the stream.
    pub async fn execute_sql(
        &self,
        sql: &str,
        plan: LogicalPlan,
        params: Vec<ScalarValue>,
    ) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
        if params.is_empty()
            && self.cluster.is_none()
            && let Some(steps) = crate::materialise::split(sql, &step_prefix())
            && let Some(tables) = self.step_tables(steps.tables).await?
        {
            let stream = self.execute(self.plan(&steps.query).await?, Vec::new()).await?;
            return Ok(stream
                .map(move |batch| {
                    let _kept_until_the_stream_ends = &tables;
                    batch
                })
                .boxed());
        }
        self.execute(plan, params).await
    }

    /// The time limit of each query.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The underlying context (for table providers that need it).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }
}

/// Whether `plan` does work worth doing once: grouping, de-duplicating,
/// joining, windows, sorting or subqueries. A plan without them filters
/// and projects what it reads, row by row, and is read again where it is
/// referenced rather than held in memory.
fn works(plan: &LogicalPlan) -> Result<bool> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut works = false;
    plan.apply_with_subqueries(|node| {
        works = matches!(
            node,
            LogicalPlan::Aggregate(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::Join(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Subquery(_)
                | LogicalPlan::RecursiveQuery(_)
        );
        Ok(if works { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    Ok(works)
}

/// Tables computed (or views registered) for one query; dropped (and
/// their memory released) with this guard.
struct StepTables {
    ctx: SessionContext,
    names: Vec<String>,
    reservation: datafusion::execution::memory_pool::MemoryReservation,
    /// Of them, tables kept on disk.
    on_disk: usize,
}

/// Step tables this process kept on disk, for they did not fit memory.
static STEP_TABLES_ON_DISK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many common table expressions computed once this process kept on
/// disk because they did not fit a session's memory.
pub fn step_tables_on_disk() -> u64 {
    STEP_TABLES_ON_DISK.load(std::sync::atomic::Ordering::Relaxed)
}

impl Drop for StepTables {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.ctx.deregister_table(TableReference::bare(name.as_str()));
        }
    }
}

/// Bytes of the buffers of `batch` not in `seen` (by address), which
/// records them.
fn new_buffer_bytes(batch: &RecordBatch, seen: &mut std::collections::HashSet<usize>) -> usize {
    fn visit(data: &arrow::array::ArrayData, seen: &mut std::collections::HashSet<usize>, total: &mut usize) {
        let nulls = data.nulls().map(|n| n.buffer());
        for buffer in data.buffers().iter().chain(nulls) {
            if seen.insert(buffer.data_ptr().as_ptr() as usize) {
                *total += buffer.capacity();
            }
        }
        for child in data.child_data() {
            visit(child, seen, total);
        }
    }
    let mut total = 0;
    for column in batch.columns() {
        visit(&column.to_data(), seen, &mut total);
    }
    total
}

/// A table name prefix no other query run uses.
fn step_prefix() -> String {
    static QUERIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("__leakwatch_cte_{}", QUERIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// `schema` with view types replaced by their plain counterparts.
pub fn boundary_schema(schema: &Schema) -> SchemaRef {
    retyped(schema, |t| match t {
        DataType::Utf8View => Some(DataType::Utf8),
        DataType::BinaryView => Some(DataType::Binary),
        _ => None,
    })
}

/// `schema` with plain strings and binaries replaced by their view types,
/// as the session reads them.
pub(crate) fn view_schema(schema: &Schema) -> SchemaRef {
    retyped(schema, |t| match t {
        DataType::Utf8 => Some(DataType::Utf8View),
        DataType::Binary => Some(DataType::BinaryView),
        _ => None,
    })
}

/// `schema` with each field's type replaced where `to` gives another.
fn retyped(schema: &Schema, to: impl Fn(&DataType) -> Option<DataType>) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match to(f.data_type()) {
            Some(t) => f.as_ref().clone().with_data_type(t),
            None => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` with its columns cast to the types of `schema` (the same
/// columns in the same order): view types to plain ones at the boundary,
/// plain to views for the unflushed tail.
pub(crate) fn in_schema(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| Error::Arrow { context: "casting a batch to the declared schema", source })?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|source| Error::Arrow { context: "batch does not fit the declared schema", source })
}

/// `batches` dealt round-robin into `partitions` (at least one) lists: a
/// [`MemTable`]'s partitions, each scanned by its own thread.
pub(crate) fn spread(batches: Vec<RecordBatch>, partitions: usize) -> Vec<Vec<RecordBatch>> {
    let partitions = partitions.max(1);
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
    for (i, batch) in batches.into_iter().enumerate() {
        parts[i % partitions].push(batch);
    }
    parts
}

#[cfg(test)]
mod tests {
    use datafusion::parquet::arrow::ArrowWriter;

    use super::*;
    use crate::{FlowBatchBuilder, FlowRow};

    /// Bytes `batches` hold, each allocation counted once ([`new_buffer_bytes`]
    /// over them): the batches of one result often slice the same buffers,
    /// which [`RecordBatch::get_array_memory_size`] would count once per
    /// batch.
    fn held_bytes(batches: &[RecordBatch]) -> usize {
        let mut seen = std::collections::HashSet::new();
        batches.iter().map(|b| new_buffer_bytes(b, &mut seen)).sum()
    }

    struct FixedTail(TailSnapshot);

    impl TailSource for FixedTail {
        fn snapshot(&self) -> std::result::Result<TailSnapshot, TailError> {
            Ok(self.0.clone())
        }
    }

    fn rows(domain: &str, n: usize) -> RecordBatch {
        let mut b = FlowBatchBuilder::new();
        for i in 0..n {
            b.push(FlowRow { domain: domain.into(), device_pseudonym: format!("d{i}"), ..Default::default() });
        }
        b.finish()
    }

    fn write_file(dir: &std::path::Path, name: &str, batch: &RecordBatch) {
        let day = dir.join("flows/day=2026-10-01");
        std::fs::create_dir_all(&day).expect("mkdir");
        let file = std::fs::File::create(day.join(name)).expect("create");
        let mut w = ArrowWriter::try_new(file, flows_schema(), None).expect("writer");
        w.write(batch).expect("write");
        w.close().expect("close");
    }

    /// Sessions over the flushed files in `dir` and `tail`, with the
    /// default limits.
    fn files_and_tail(dir: &std::path::Path, tail: TailSnapshot) -> SessionFactory {
        SessionFactory::new(QueryConfig::default(), FlowStore::local(dir).expect("store"), Arc::new(FixedTail(tail)))
    }

    async fn count(factory: &SessionFactory, sql: &str) -> String {
        let session = factory.session().await.expect("session");
        let batches = session.sql(sql).await.expect("query");
        crate::format::render(&batches, crate::format::OutputFormat::Csv).expect("render")
    }

    #[tokio::test]
    async fn files_at_or_below_the_watermark_plus_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_file(dir.path(), "00000000000000000001-00000000000000000002.parquet", &rows("flushed.example", 3));
        // A flush in progress above the watermark: its rows are still in the tail.
        write_file(dir.path(), "00000000000000000003-00000000000000000004.parquet", &rows("tail.example", 2));
        let tail = TailSnapshot { watermark: 2, batches: vec![rows("tail.example", 2)] };
        let factory = SessionFactory::new(
            QueryConfig::default(),
            FlowStore::local(dir.path()).expect("store"),
            Arc::new(FixedTail(tail)),
        );
        let out = count(&factory, "SELECT domain, count(*) AS n FROM flows GROUP BY domain ORDER BY domain").await;
        assert_eq!(out, "domain,n\nflushed.example,3\ntail.example,2\n");
        let out = count(&factory, "SELECT count(*) AS n FROM devices").await;
        assert_eq!(out, "n\n3\n");
        let out = count(
            &factory,
            "SELECT registrable_domain('api.account.xiaomi.com') AS d, is_private_ip('10.1.1.1') AS p, \
             ip_in_cidr('192.168.4.4', '192.168.0.0/16') AS c, is_private_ip(domain) AS n FROM flows LIMIT 1",
        )
        .await;
        assert_eq!(out, "d,p,c,n\nxiaomi.com,true,true,\n");
    }

    #[tokio::test]
    async fn measured_times_read_back_as_the_doubles_the_rows_held_from_either_file_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let times = [0.0, 0.000_001, 1.5, 59.999_999, 141.054_364, 86_399.123_456, 315_359_999.999_999];
        let rows = |domain: &str| {
            let mut b = FlowBatchBuilder::new();
            for (i, &t) in times.iter().enumerate() {
                b.push(FlowRow {
                    domain: domain.into(),
                    device_pseudonym: format!("d{i}"),
                    seconds_since_boot: t,
                    duration_s: crate::to_microsecond(t / 7.0),
                    ..Default::default()
                });
            }
            b.finish()
        };
        // Doubles, as earlier releases wrote them.
        write_file(dir.path(), "00000000000000000001-00000000000000000001.parquet", &rows("doubles.example"));
        // Whole microseconds, as the flusher writes them now.
        let day = dir.path().join("flows/day=2026-10-01");
        let file =
            std::fs::File::create(day.join("00000000000000000002-00000000000000000002.parquet")).expect("create");
        let stored = crate::to_stored(&rows("micros.example")).expect("stored");
        assert_eq!(
            stored.schema().field_with_name("seconds_since_boot").expect("field").data_type(),
            &crate::MICROSECOND_STORED
        );
        let mut w = ArrowWriter::try_new(file, stored.schema(), None).expect("writer");
        w.write(&stored).expect("write");
        w.close().expect("close");
        let tail = TailSnapshot { watermark: 2, batches: vec![rows("tail.example")] };
        let factory = SessionFactory::new(
            QueryConfig::default(),
            FlowStore::local(dir.path()).expect("store"),
            Arc::new(FixedTail(tail)),
        );
        let session = factory.session().await.expect("session");
        let batches = session
            .sql(
                "SELECT domain, seconds_since_boot, duration_s, arrow_typeof(seconds_since_boot) AS t FROM flows \
                 WHERE seconds_since_boot >= 1.5 ORDER BY domain, seconds_since_boot",
            )
            .await
            .expect("query");
        let mut got = Vec::new();
        for b in &batches {
            let f64s = |i: usize| {
                b.column(i).as_any().downcast_ref::<arrow::array::Float64Array>().expect("doubles").values().to_vec()
            };
            let types = arrow::compute::cast(b.column(3), &DataType::Utf8).expect("cast");
            let types = types.as_any().downcast_ref::<arrow::array::StringArray>().expect("strings");
            assert!(types.iter().all(|t| t == Some("Float64")), "{types:?}");
            got.extend(f64s(1).into_iter().zip(f64s(2)).map(|(t, d)| (t.to_bits(), d.to_bits())));
        }
        let want: Vec<(u64, u64)> =
            times[2..].iter().map(|&t| (t.to_bits(), crate::to_microsecond(t / 7.0).to_bits())).collect();
        assert_eq!(got, [want.clone(), want.clone(), want].concat(), "doubles, micros and tail, bit for bit");
    }

    /// `n` rows of batch `batch_id` as agent `agent_id` stored them.
    fn batch_rows(agent_id: &str, batch_id: &str, n: usize) -> RecordBatch {
        let mut b = FlowBatchBuilder::new();
        for i in 0..n {
            b.push(FlowRow {
                agent_id: agent_id.into(),
                batch_id: batch_id.into(),
                domain: format!("{batch_id}.example"),
                device_pseudonym: format!("d{i}"),
                ..Default::default()
            });
        }
        b.finish()
    }

    #[tokio::test]
    async fn a_batch_two_collectors_stored_is_counted_once_wherever_the_query_runs() {
        use datafusion::parquet::file::metadata::KeyValue;
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs"));
        // Collector a stored batch x (as agent a1); its answer was lost and
        // the agent's retry landed on b (as agent b1), which also stored y.
        // a's file lists its batches in the footer; b's does not (written
        // to a local store and moved, or before footers listed batches),
        // so its batches are read from its columns.
        let put = |collector: &str, rows: Vec<RecordBatch>, listed: bool| {
            let mut buf = Vec::new();
            let mut w = ArrowWriter::try_new(&mut buf, flows_schema(), None).expect("writer");
            let mut pairs = std::collections::HashSet::new();
            crate::copies::batch_pairs(&rows, &mut pairs);
            if listed {
                w.append_key_value_metadata(KeyValue::new(crate::BATCHES_KEY.into(), crate::batch_list(&pairs)));
            }
            for r in &rows {
                w.write(r).expect("write");
            }
            w.close().expect("close");
            let key =
                format!("fleet/{collector}/flows/day=2026-10-01/00000000000000000001-00000000000000000002.parquet");
            let inner = inner.clone();
            async move {
                use object_store::ObjectStoreExt as _;
                inner.put(&object_store::path::Path::from(key), buf.into()).await.expect("put");
            }
        };
        put("a", vec![batch_rows("a1", "x", 3)], true).await;
        put("b", vec![batch_rows("b1", "x", 3), batch_rows("b1", "y", 2)], false).await;
        let query = "SELECT domain, agent_id, count(*) AS n FROM flows GROUP BY domain, agent_id ORDER BY domain";
        for (own, tail) in [
            // On collector b, on collector a, and on a reader that is neither.
            (Some("b"), vec![]),
            (Some("a"), vec![]),
            (None, vec![]),
            // On collector c, whose unflushed tail holds a third copy.
            (Some("c"), vec![batch_rows("c1", "x", 3)]),
        ] {
            let store = FlowStore::in_bucket(inner.clone(), "bucket", "fleet", own).expect("store");
            let tail = TailSnapshot { watermark: 2, batches: tail };
            let factory = SessionFactory::new(QueryConfig::default(), store, Arc::new(FixedTail(tail)));
            // Twice: the second session reads the remembered footers.
            for _ in 0..2 {
                let out = count(&factory, query).await;
                assert_eq!(out, "domain,agent_id,n\nx.example,a1,3\ny.example,b1,2\n", "on {own:?}");
            }
        }
        // Copies under one collector are two agents' batches: both count.
        let store = FlowStore::local(&dir.path().join("fleet/b")).expect("store");
        let factory = SessionFactory::new(QueryConfig::default(), store, Arc::new(FilesOnly));
        assert_eq!(count(&factory, "SELECT count(*) AS n FROM flows").await, "n\n5\n");
    }

    /// Live agents report a connection kept open window by window: the
    /// first record counts it (`connections` 1, its start after boot), the
    /// later ones carry its later traffic (`connections` 0). The rules
    /// count each device once, and its bytes add up.
    #[tokio::test]
    async fn a_connection_reported_across_windows_counts_once_in_the_rules() {
        let mut b = FlowBatchBuilder::new();
        for device in 0..6 {
            for (part, since_boot) in [3.0, 63.0, 123.0].into_iter().enumerate() {
                b.push(FlowRow {
                    agent_id: format!("a{device}"),
                    batch_id: format!("b{device}-{part}"),
                    device_pseudonym: format!("d{device}"),
                    boot_pseudonym: format!("boot{device}"),
                    vendor: "Acme".into(),
                    model: "Plug".into(),
                    domain: "cloud.acme-iot.example".into(),
                    seconds_since_boot: since_boot,
                    window_start_s: 1_790_000_000 + 60 * part as i64,
                    bytes_out: 100,
                    connections: i64::from(part == 0),
                    ..Default::default()
                });
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let factory = files_and_tail(dir.path(), TailSnapshot { watermark: 0, batches: vec![b.finish()] });
        let sql = crate::rules::rule("boot_phone_home").expect("rule").render(&Default::default()).expect("render");
        let out = count(&factory, &format!("SELECT domain, devices, model_devices, share FROM ({sql})")).await;
        assert_eq!(out, "domain,devices,model_devices,share\nacme-iot.example,6,6,1.0\n");
        let out = count(
            &factory,
            "SELECT sum(connections) AS connections, sum(bytes_out) AS bytes FROM flows GROUP BY device_pseudonym LIMIT 1",
        )
        .await;
        assert_eq!(out, "connections,bytes\n1,300\n");
    }

    /// Files stored before the `source` column and those after it read them
    /// as NULL beside newer files that hold them.
    #[tokio::test]
    async fn files_without_the_source_column_read_it_as_null() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = FlowBatchBuilder::new();
        b.push(FlowRow { domain: "old.example".into(), device_pseudonym: "d1".into(), ..Default::default() });
        let full = b.finish();
        let n = full.schema().index_of("source").expect("source");
        let older = full.project(&(0..n).collect::<Vec<_>>()).expect("without source and the columns after it");
        let day = dir.path().join("flows/day=2026-10-01");
        std::fs::create_dir_all(&day).expect("mkdir");
        let file =
            std::fs::File::create(day.join("00000000000000000001-00000000000000000002.parquet")).expect("create");
        let mut w = ArrowWriter::try_new(file, older.schema(), None).expect("writer");
        w.write(&older).expect("write");
        w.close().expect("close");
        let mut b = FlowBatchBuilder::new();
        b.push(FlowRow { domain: "new.example".into(), source: "capture".into(), ..Default::default() });
        write_file(dir.path(), "00000000000000000003-00000000000000000004.parquet", &b.finish());
        let factory = files_and_tail(dir.path(), TailSnapshot { watermark: 4, batches: vec![] });
        let out = count(
            &factory,
            "SELECT domain, source IS NULL AS unknown, source, blocked IS NULL AS unblocked, \
             initiated_by IS NULL AND via_website IS NULL AS unsaid FROM flows ORDER BY domain",
        )
        .await;
        assert_eq!(
            out,
            "domain,unknown,source,unblocked,unsaid\nnew.example,false,capture,true,true\nold.example,true,,true,true\n"
        );
    }

    /// Destinations no name was seen for: every rule that keys on a
    /// destination groups them by port or network.
    #[tokio::test]
    async fn every_rule_runs_over_unnamed_destinations() {
        let mut b = FlowBatchBuilder::new();
        for device in 0..6 {
            for (ip, port) in [("52.58.10.21", 8886), ("3.122.87.140", 8886), ("91.212.186.50", 443)] {
                b.push(FlowRow {
                    agent_id: format!("a{device}"),
                    batch_id: format!("b{device}"),
                    device_pseudonym: format!("d{device}"),
                    boot_pseudonym: format!("boot{device}"),
                    vendor: "Gosund".into(),
                    model: "SP111".into(),
                    consent: "cloud_account=off".into(),
                    transport: "tcp".into(),
                    dst_ip: ip.into(),
                    dst_port: port,
                    seconds_since_boot: 4.0,
                    window_start_s: 1_790_000_000,
                    bytes_out: 300,
                    connections: 1,
                    ..Default::default()
                });
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let factory = files_and_tail(dir.path(), TailSnapshot { watermark: 0, batches: vec![b.finish()] });
        for rule in crate::rules::builtin_rules() {
            let sql = rule.render(&Default::default()).expect("render");
            let session = factory.session().await.expect("session");
            let out = session.sql(&sql).await.unwrap_or_else(|e| panic!("{}: {e}", rule.name));
            let csv = crate::format::render(&out, crate::format::OutputFormat::Csv).expect("render");
            if ["boot_phone_home", "consent_off_traffic", "model_exclusive"].contains(&rule.name.as_str()) {
                assert!(
                    csv.contains("tcp/8886 (unnamed)") && csv.contains("91.212.186.0/24 (unnamed)"),
                    "{}: {csv}",
                    rule.name
                );
            }
        }
    }

    #[tokio::test]
    async fn compacted_inputs_are_not_read_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_file(dir.path(), "00000000000000000001-00000000000000000001.parquet", &rows("a.example", 2));
        write_file(dir.path(), "00000000000000000002-00000000000000000002.parquet", &rows("a.example", 3));
        // The compacted file, written before its inputs were deleted.
        write_file(dir.path(), "00000000000000000001-00000000000000000002.parquet", &rows("a.example", 5));
        let tail = TailSnapshot { watermark: 2, batches: vec![] };
        let factory = SessionFactory::new(
            QueryConfig::default(),
            FlowStore::local(dir.path()).expect("store"),
            Arc::new(FixedTail(tail)),
        );
        assert_eq!(count(&factory, "SELECT count(*) AS n FROM flows").await, "n\n5\n");
    }

    #[tokio::test]
    async fn writes_and_generators_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let factory = SessionFactory::new(
            QueryConfig::default(),
            FlowStore::local(dir.path()).expect("store"),
            Arc::new(FixedTail(TailSnapshot::default())),
        );
        let session = factory.session().await.expect("session");
        for sql in [
            "COPY (SELECT 1) TO 'x.csv'",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 'x.csv'",
            "CREATE VIEW v AS SELECT 1",
            "INSERT INTO flows SELECT * FROM flows",
            "SET datafusion.execution.batch_size = 1",
            "DROP TABLE flows",
        ] {
            let err = session.sql(sql).await.expect_err(sql);
            assert!(matches!(err, Error::ReadOnly(_)), "{sql}: {err:?}");
        }
        for sql in ["SELECT * FROM generate_series(1, 10)", "SELECT * FROM range(10)"] {
            let err = session.sql(sql).await.expect_err(sql);
            assert!(matches!(err, Error::Invalid(_)), "{sql}: {err:?}");
        }
        assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none());
    }

    #[tokio::test]
    async fn a_query_over_the_memory_limit_fails_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = QueryConfig { memory_limit_bytes: 256 * 1024, ..QueryConfig::default() };
        let tail = TailSnapshot { watermark: 0, batches: vec![rows("a.example", 20_000)] };
        let factory =
            SessionFactory::new(config, FlowStore::local(dir.path()).expect("store"), Arc::new(FixedTail(tail)));
        let session = factory.session().await.expect("session");
        let sql = "SELECT a.device_pseudonym, count(*) FROM flows a JOIN flows b ON a.domain = b.domain \
                   GROUP BY a.device_pseudonym ORDER BY 2 DESC";
        let err = session.sql(sql).await.expect_err("over the memory limit");
        assert!(matches!(err, Error::ResourcesExhausted(_)), "{err:?}");
        // It names the setting to raise, and its value.
        assert!(err.to_string().contains("(one query's memory limit, --query-memory-mib: 256.0 KB)"), "{err}");
        // The session stays usable.
        assert_eq!(session.sql("SELECT 1").await.expect("small query").len(), 1);
    }

    /// Sessions of one factory (and of factories given the same
    /// configuration) share the total: a query that fits its own session's
    /// limit fails while other sessions hold the rest, and runs once they
    /// let go.
    #[tokio::test]
    async fn sessions_together_are_held_to_the_total() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = QueryConfig {
            memory_limit_bytes: 64 << 20,
            total_memory: crate::memory::QueryMemory::new(70 << 20),
            ..QueryConfig::default()
        };
        let tail = TailSnapshot { watermark: 0, batches: vec![rows("a.example", 20_000)] };
        let store = FlowStore::local(dir.path()).expect("store");
        let analysts = SessionFactory::new(config.clone(), store.clone(), Arc::new(FixedTail(tail.clone())));
        let refresh = SessionFactory::new(config, store, Arc::new(FixedTail(tail)));
        let mut held = Vec::new();
        for bytes in [60 << 20, 8 << 20] {
            let holding = analysts.session().await.expect("session");
            let query = MemoryConsumer::new("another query").register(&holding.ctx.runtime_env().memory_pool);
            query.try_grow(bytes).expect("within its own limit and the total");
            held.push(query);
        }

        let session = refresh.session().await.expect("session");
        let sql = "SELECT * FROM flows";
        let err = session.sql(sql).await.expect_err("the total has 2 MiB left");
        assert!(matches!(&err, Error::ResourcesExhausted(m) if m.contains("--query-memory-total-mib")), "{err}");
        drop(held);
        let rows: usize = session.sql(sql).await.expect("the total has room again").iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 20_000);
    }

    /// Functions whose result dwarfs their arguments,
    /// and a cross join, are held to the memory limit. Before the fix each
    /// of these succeeded (or ran on) outside the pool, up to 8 GB.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn functions_and_joins_that_grow_are_held_to_the_memory_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = QueryConfig { memory_limit_bytes: 256 << 20, ..QueryConfig::default() };
        let tail = TailSnapshot { watermark: 0, batches: vec![rows("a.example", 6000)] };
        let factory =
            SessionFactory::new(config, FlowStore::local(dir.path()).expect("store"), Arc::new(FixedTail(tail)));
        let session = factory.session().await.expect("session");
        for (sql, function) in [
            ("SELECT length(repeat('a', 1000000000))", "repeat()"),
            ("SELECT length(repeat(repeat('a', 100000000), 20))", "repeat()"),
            ("SELECT cardinality(array_repeat(1, 200000000))", "array_repeat()"),
            ("SELECT length(lpad('a', 1000000000))", "lpad()"),
            ("SELECT length(replace(repeat('a', 100000), 'a', repeat('b', 100000)))", "replace()"),
            ("SELECT sum(length(repeat(domain, 100000))) FROM flows", "repeat()"),
        ] {
            let err = session.sql(sql).await.expect_err(sql);
            assert!(matches!(err, Error::ResourcesExhausted(_)), "{sql}: {err:?}");
            assert!(err.to_string().contains(function), "{sql}: {err}");
        }
        // Within the limit they work as before.
        let ok = session.sql("SELECT length(repeat('ab', 1000)) AS n").await.expect("small repeat");
        assert_eq!(crate::format::render(&ok, crate::format::OutputFormat::Csv).expect("render"), "n\n2000\n");
        // A cross join's rows (36 million), collected as the console does.
        let sql = "SELECT a.device_pseudonym, b.device_pseudonym, a.domain FROM flows a, flows b";
        let err = session.sql(sql).await.expect_err("a cross join");
        assert!(matches!(err, Error::ResourcesExhausted(_)), "{err:?}");
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    #[test]
    fn slices_of_one_result_count_their_buffers_once() {
        let batch = rows("a.example", 1000);
        let slices: Vec<RecordBatch> = (0..10).map(|i| batch.slice(i * 100, 100)).collect();
        assert_eq!(held_bytes(&slices), held_bytes(std::slice::from_ref(&batch)));
        let naive: usize = slices.iter().map(RecordBatch::get_array_memory_size).sum();
        assert!(naive >= 5 * held_bytes(&slices), "{naive} vs {}", held_bytes(&slices));
    }

    /// Waits up to 10 s for `files` of `session` to be none: the file of a
    /// step table goes as its steps drop, the spill files of a query's
    /// operators as their tasks end.
    async fn no_files_left(session: &QuerySession, files: &dyn Fn(&QuerySession) -> usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while files(session) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(files(session), 0, "nothing left on disk");
    }

    async fn assert_no_step_tables(session: &QuerySession) {
        let sql = "SELECT count(*) AS n FROM information_schema.tables WHERE table_name LIKE '__leakwatch_cte%'";
        let tables = session.sql(sql).await.expect("tables");
        assert_eq!(crate::format::render(&tables, crate::format::OutputFormat::Csv).expect("render"), "n\n0\n");
    }

    #[tokio::test]
    async fn ctes_referenced_twice_run_once_with_the_same_result_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut batch = FlowBatchBuilder::new();
        for (domain, device) in [("a.example", "d1"), ("a.example", "d2"), ("b.example", "d1"), ("a.example", "d1")] {
            batch.push(FlowRow { domain: domain.into(), device_pseudonym: device.into(), ..Default::default() });
        }
        let tail = TailSnapshot { watermark: 0, batches: vec![batch.finish()] };
        let factory = SessionFactory::new(
            QueryConfig::default(),
            FlowStore::local(dir.path()).expect("store"),
            Arc::new(FixedTail(tail)),
        );
        let repeated = "WITH Contacts AS (SELECT DISTINCT domain, device_pseudonym FROM flows), \
                        reach AS (SELECT domain, count(*) AS d FROM contacts GROUP BY domain) \
                        SELECT r.domain, r.d, c.device_pseudonym FROM reach r JOIN contacts c ON c.domain = r.domain \
                        WHERE r.d >= (SELECT min(d) FROM reach) ORDER BY 1, 3";
        assert!(crate::materialise::split(repeated, "t").is_some(), "the query has CTEs to compute once");
        let inlined = "SELECT r.domain, r.d, c.device_pseudonym \
                       FROM (SELECT domain, count(*) AS d FROM (SELECT DISTINCT domain, device_pseudonym FROM flows) \
                             GROUP BY domain) r \
                       JOIN (SELECT DISTINCT domain, device_pseudonym FROM flows) c ON c.domain = r.domain ORDER BY 1, 3";
        let want = "domain,d,device_pseudonym\na.example,2,d1\na.example,2,d2\nb.example,1,d1\n";
        assert_eq!(count(&factory, inlined).await, want);
        let session = factory.session().await.expect("session");
        let got = session.sql(repeated).await.expect("repeated CTEs");
        assert_eq!(crate::format::render(&got, crate::format::OutputFormat::Csv).expect("render"), want);
        assert_no_step_tables(&session).await;
        // The streaming path (Flight SQL) too, its tables dropped with the stream.
        let plan = session.plan(repeated).await.expect("plan");
        let stream = session.execute_sql(repeated, plan, Vec::new()).await.expect("stream");
        let got: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream).await.expect("batches");
        assert_eq!(crate::format::render(&got, crate::format::OutputFormat::Csv).expect("render"), want);
        assert_no_step_tables(&session).await;

        // A computed CTE counts against the memory limit as it arrives; one
        // that does not fit is kept on disk, computed once still, and its
        // file goes with the query's steps.
        let config = QueryConfig { memory_limit_bytes: 64 * 1024, ..QueryConfig::default() };
        let tail = TailSnapshot { watermark: 0, batches: vec![rows("a.example", 20_000)] };
        let factory =
            SessionFactory::new(config, FlowStore::local(dir.path()).expect("store"), Arc::new(FixedTail(tail)));
        let session = factory.session().await.expect("session");
        let files = |session: &QuerySession| -> usize {
            let dirs = session.context().runtime_env().disk_manager.temp_dir_paths();
            dirs.iter().filter_map(|d| std::fs::read_dir(d).ok()).map(|entries| entries.count()).sum()
        };
        let before = step_tables_on_disk();
        // Counting streams: only a computed table would hold memory.
        let sql = "WITH d AS (SELECT device_pseudonym || domain AS k FROM flows \
                             WHERE domain = (SELECT max(domain) FROM flows)) \
                   SELECT (SELECT count(k) FROM d) + (SELECT count(*) FROM d) AS n";
        let steps = crate::materialise::split(sql, "__leakwatch_cte_test").expect("steps");
        let tables = session.step_tables(steps.tables).await.expect("steps").expect("kept on disk");
        assert_eq!((tables.on_disk, tables.reservation.size()), (1, 0), "on disk, holding no memory");
        assert!(files(&session) >= 1, "its file");
        drop(tables);
        no_files_left(&session, &files).await;
        assert_no_step_tables(&session).await;
        let got = session.sql(sql).await.expect("runs, its step on disk");
        assert_eq!(crate::format::render(&got, crate::format::OutputFormat::Csv).expect("render"), "n\n40000\n");
        assert!(step_tables_on_disk() >= before + 2, "both kept on disk");
        no_files_left(&session, &files).await;
        assert_no_step_tables(&session).await;
        // One larger than its share of the disk (8 times the memory limit)
        // leaves the query to run as written.
        let sql = "WITH d AS (SELECT uuid() || uuid() AS k FROM flows \
                             WHERE domain = (SELECT max(domain) FROM flows)) \
                   SELECT (SELECT count(k) FROM d) + (SELECT count(*) FROM d) AS n";
        let steps = crate::materialise::split(sql, "__leakwatch_cte_test").expect("steps");
        assert!(session.step_tables(steps.tables).await.expect("steps").is_none(), "too large for its share");
        no_files_left(&session, &files).await;
        assert_no_step_tables(&session).await;
        let got = session.sql(sql).await.expect("runs as written");
        assert_eq!(crate::format::render(&got, crate::format::OutputFormat::Csv).expect("render"), "n\n40000\n");
        assert_no_step_tables(&session).await;
        // A CTE that only filters and projects is read again where it is
        // referenced: it holds no memory, however many rows it has.
        let sql = "WITH d AS (SELECT device_pseudonym || domain AS k FROM flows WHERE domain IS NOT NULL) \
                   SELECT (SELECT count(k) FROM d) + (SELECT count(*) FROM d) AS n";
        let steps = crate::materialise::split(sql, "__leakwatch_cte_test").expect("steps");
        let views = session.step_tables(steps.tables).await.expect("steps").expect("a view fits");
        assert_eq!(views.reservation.size(), 0);
        drop(views);
        assert_no_step_tables(&session).await;
        let got = session.sql(sql).await.expect("runs");
        assert_eq!(crate::format::render(&got, crate::format::OutputFormat::Csv).expect("render"), "n\n40000\n");
        assert_no_step_tables(&session).await;
    }

    #[tokio::test]
    async fn timeout_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = QueryConfig { timeout: Duration::from_nanos(1), ..QueryConfig::default() };
        let tail = TailSnapshot { watermark: 0, batches: vec![rows("a.example", 3000)] };
        let factory =
            SessionFactory::new(config, FlowStore::local(dir.path()).expect("store"), Arc::new(FixedTail(tail)));
        let session = factory.session().await.expect("session");
        let sql = "SELECT count(DISTINCT a.device_pseudonym || b.device_pseudonym) FROM flows a CROSS JOIN flows b";
        let err = session.sql(sql).await.expect_err("timeout");
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    }

    /// A join whose output an aggregate consumes in one go (a cross join
    /// into `sum`) never waits, so the threads it runs on never yield: no
    /// timer fired there, and the query ran on past its time limit, for
    /// hours at this size, holding every query thread. Run on a runtime
    /// of its own, as the collector's queries are; watched from outside it.
    #[test]
    fn a_join_that_never_waits_still_stops_at_its_time_limit() {
        let runtime = crate::query_runtime_builder().worker_threads(2).build().expect("runtime");
        let (done, outcome) = std::sync::mpsc::channel();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FlowStore::local(dir.path()).expect("store");
        runtime.spawn(async move {
            let config = QueryConfig { timeout: Duration::from_secs(1), ..QueryConfig::default() };
            let tail = TailSnapshot { watermark: 0, batches: vec![rows("a.example", 3000)] };
            let factory = SessionFactory::new(config, store, Arc::new(FixedTail(tail)));
            let session = factory.session().await.expect("session");
            // 27 billion rows to add up.
            let sql =
                "SELECT sum(length(a.domain) * length(b.domain) * length(c.domain)) FROM flows a, flows b, flows c";
            let _ = done.send(session.sql(sql).await.map(|_| ()));
        });
        let started = std::time::Instant::now();
        let outcome = outcome.recv_timeout(Duration::from_secs(60));
        runtime.shutdown_background();
        match outcome {
            // Stopped within a few seconds of its limit.
            Ok(Err(Error::Timeout(_))) if started.elapsed() < Duration::from_secs(5) => {}
            other => panic!("after {:?}: {other:?}", started.elapsed()),
        }
    }

    #[tokio::test]
    #[cfg(not(feature = "ballista"))]
    async fn a_build_without_ballista_refuses_the_flag_and_says_how_to_build_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = QueryConfig { ballista: Some("df://127.0.0.1:50050".into()), ..QueryConfig::default() };
        let factory = SessionFactory::new(config, FlowStore::local(dir.path()).expect("store"), Arc::new(FilesOnly));
        let text = factory.session().await.map(drop).expect_err("no Ballista in this build").to_string();
        assert!(text.contains("--ballista df://127.0.0.1:50050") && text.contains("--features ballista"), "{text}");
    }

    #[tokio::test]
    #[cfg(feature = "ballista")]
    async fn an_unreachable_scheduler_is_an_error_naming_the_flag_and_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let day = dir.path().join("flows/day=2026-10-01");
        std::fs::create_dir_all(&day).expect("mkdir");
        let file =
            std::fs::File::create(day.join("00000000000000000001-00000000000000000002.parquet")).expect("create");
        let mut w = ArrowWriter::try_new(file, flows_schema(), None).expect("writer");
        w.write(&batch_rows("a1", "x", 3)).expect("write");
        w.close().expect("close");
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let url = format!("df://127.0.0.1:{port}");
        let config = QueryConfig { ballista: Some(url.clone()), ..QueryConfig::default() };
        let factory = SessionFactory::new(config, FlowStore::local(dir.path()).expect("store"), Arc::new(FilesOnly));
        let err = match factory.session().await {
            Err(e) => e,
            Ok(session) => session.sql("SELECT count(*) FROM flows").await.expect_err("no scheduler"),
        };
        let text = err.to_string();
        assert!(!text.contains("no flushed files"), "{text}");
        assert!(text.contains("--ballista") && text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }
}
