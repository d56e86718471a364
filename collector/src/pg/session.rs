//! The protocol's handlers: an analyst's SQL token as the password, and
//! statements by the simple and the extended query protocol, each run in
//! its own read-only session (a fresh snapshot of the data, the memory
//! and time limits of every SQL entry point) on the query runtime.
//!
//! Statements that only set up a client's connection (`BEGIN`, `COMMIT`,
//! `SET`, `SHOW`, `DISCARD`) are answered here without a query: there is
//! nothing to change, and the settings do not change the limits.
//! `DEALLOCATE` closes prepared statements. A connection holds a bounded
//! number of named prepared statements and portals.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::sink::{Sink, SinkExt as _};
use futures::{StreamExt as _, stream};
use leakwatch_query::{QuerySession, SessionFactory};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, DEFAULT_NAME, METADATA_USER, PgWireConnectionState,
    PidSecretKeyGenerator as _, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Close, CloseComplete, Parse, ParseComplete, TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use tokio::sync::mpsc;

use super::catalog::{self, Catalog};
use crate::log::DurableLog;

/// A statement as parsed: answered here, or a query with what planning
/// it told.
#[derive(Debug, Clone)]
pub enum PgStatement {
    /// Answered without a query.
    Command(Command),
    /// A read-only query.
    Query {
        /// Its text, as DataFusion plans it.
        sql: String,
        /// The types of its `$1`, `$2`, ... (`None` where the query does
        /// not tell).
        params: Vec<Option<DataType>>,
        /// Its result's columns.
        schema: SchemaRef,
    },
}

/// Statements answered without a query.
#[derive(Debug, Clone)]
pub enum Command {
    /// `BEGIN`, `START TRANSACTION`: every statement reads a snapshot of
    /// its own, there is nothing to hold.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// `SHOW name`.
    Show(String),
    /// `DEALLOCATE name` or `DEALLOCATE ALL`: prepared statements closed.
    Deallocate(String),
    /// A statement accepted and without effect, with its tag (`SET`,
    /// `DISCARD ALL`, `CLOSE CURSOR`).
    Accept(&'static str),
}

impl Command {
    fn of(statement: &Statement) -> Option<Self> {
        Some(match statement {
            Statement::StartTransaction { .. } => Self::Begin,
            Statement::Commit { .. } => Self::Commit,
            Statement::Rollback { .. } => Self::Rollback,
            Statement::ShowVariable { variable } => {
                Self::Show(variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(" "))
            }
            Statement::Set(_) => Self::Accept("SET"),
            Statement::Discard { .. } => Self::Accept("DISCARD ALL"),
            Statement::Deallocate { name, .. } => Self::Deallocate(name.value.clone()),
            Statement::Close { .. } => Self::Accept("CLOSE CURSOR"),
            _ => return None,
        })
    }
}

/// An error with the SQLSTATE a PostgreSQL client expects.
pub fn pg_error(severity: &str, code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(severity.to_string(), code.to_string(), message.into())))
}

/// The SQLSTATE of a query layer's error.
pub fn sqlstate(e: &leakwatch_query::Error) -> &'static str {
    use leakwatch_query::Error as E;
    match e {
        E::ReadOnly(_) => "25006",
        E::Invalid(m) if m.starts_with("SQL syntax error") => "42601",
        E::Invalid(m) if m.starts_with("not supported") => "0A000",
        E::Invalid(m) if m.contains("table") && m.contains("not found") => "42P01",
        E::Invalid(m) if m.contains("No field named") || m.contains("not found") => "42703",
        E::Invalid(m) if m.starts_with("parameter") => "22023",
        E::Invalid(_) => "42000",
        E::Timeout(_) | E::Stalled(_) => "57014",
        E::ResourcesExhausted(_) => "53200",
        E::Store(_) | E::ObjectStore { .. } => "58030",
        _ => "XX000",
    }
}

fn query_error(e: leakwatch_query::Error) -> PgWireError {
    pg_error("ERROR", sqlstate(&e), e.to_string())
}

/// A started query: its result's columns, the channel its batches come
/// by from the query runtime (where its session lives until the last
/// one), and its deadline.
struct Running {
    schema: SchemaRef,
    batches: mpsc::Receiver<leakwatch_query::Result<RecordBatch>>,
    deadline: tokio::time::Instant,
    timeout: std::time::Duration,
}

impl Running {
    /// The batches until the last, or until the deadline (then an error).
    fn batches(self) -> impl futures::Stream<Item = leakwatch_query::Result<RecordBatch>> + Send {
        let (deadline, timeout) = (self.deadline, self.timeout);
        stream::unfold(Some(self.batches), move |batches| async move {
            let mut batches = batches?;
            match tokio::time::timeout_at(deadline, batches.recv()).await {
                Ok(Some(batch)) => Some((batch, Some(batches))),
                Ok(None) => None,
                Err(_) => Some((Err(leakwatch_query::Error::Timeout(timeout)), None)),
            }
        })
    }
}

/// Parses, plans and runs statements for every connection.
pub struct Planner {
    sessions: SessionFactory,
    queries: tokio::runtime::Handle,
    catalog: Catalog,
    parser: Arc<PostgresCompatibilityParser>,
    metrics: Option<Arc<crate::metrics::IngestMetrics>>,
}

impl Planner {
    /// A planner over `sessions`, running on `queries`.
    pub fn new(
        sessions: SessionFactory,
        queries: tokio::runtime::Handle,
        metrics: Option<Arc<crate::metrics::IngestMetrics>>,
    ) -> Result<Self, datafusion::error::DataFusionError> {
        Ok(Self {
            sessions,
            queries,
            catalog: Catalog::new()?,
            parser: Arc::new(PostgresCompatibilityParser::new()),
            metrics,
        })
    }

    /// The statements of `sql`, parsed as PostgreSQL and rewritten to what
    /// DataFusion plans (on the query runtime, whose threads have a known
    /// stack).
    async fn parse(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        if sql.len() > super::MAX_SQL_BYTES {
            return Err(pg_error(
                "ERROR",
                "54000",
                format!("query: {} bytes, at most {}", sql.len(), super::MAX_SQL_BYTES),
            ));
        }
        let parser = self.parser.clone();
        let sql = sql.to_string();
        self.queries
            .spawn(async move { parser.parse(&sql) })
            .await
            .map_err(|e| pg_error("ERROR", "XX000", format!("parsing failed: {e}")))?
            .map_err(|e| pg_error("ERROR", "42601", format!("SQL syntax error: {e}")))
    }

    /// A session with the PostgreSQL catalog.
    async fn session(sessions: &SessionFactory, catalog: &Catalog) -> leakwatch_query::Result<QuerySession> {
        let session = sessions.session().await?;
        catalog.install(session.context()).await?;
        Ok(session)
    }

    /// `statement` classified, and a query planned: its parameters' types
    /// and result.
    async fn prepare(&self, statement: Statement) -> PgWireResult<PgStatement> {
        if let Some(command) = Command::of(&statement) {
            return Ok(PgStatement::Command(command));
        }
        let sql = statement.to_string();
        let (sessions, catalog) = (self.sessions.clone(), self.catalog.clone());
        let planned = self.queries.spawn(async move {
            let session = Self::session(&sessions, &catalog).await?;
            let plan = session.plan(&sql).await?;
            let params = QuerySession::parameter_types(&plan)?.into_iter().map(|(_, t)| t).collect();
            Ok::<_, leakwatch_query::Error>(PgStatement::Query {
                schema: QuerySession::result_schema(&plan),
                params,
                sql,
            })
        });
        planned.await.map_err(|e| pg_error("ERROR", "XX000", format!("planning failed: {e}")))?.map_err(query_error)
    }

    /// Starts `sql` with `params` on the query runtime; returns once its
    /// first batch (or error) is at hand, so that an error is told before
    /// any row.
    ///
    /// The time limit is kept on both sides: the query stops at it, and
    /// the client is told at it on this runtime even if the query's
    /// threads are all inside an operator that does not yield (a cross
    /// join's output into an aggregate), where no timer of theirs fires.
    async fn run(&self, sql: String, params: Vec<ScalarValue>) -> PgWireResult<(Running, Option<RecordBatch>)> {
        let (sessions, catalog) = (self.sessions.clone(), self.catalog.clone());
        let (tx, rx) = mpsc::channel::<leakwatch_query::Result<RecordBatch>>(2);
        let (planned_tx, planned_rx) = tokio::sync::oneshot::channel();
        let metrics = self.metrics.clone();
        // A client that goes away, or cancels, drops the receiver: the
        // query stops then, wherever it is.
        let gone = tx.clone();
        let work = async move {
            let _timed = crate::metrics::QueryTimer::start(metrics, "postgres");
            let session = match Self::session(&sessions, &catalog).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = planned_tx.send(Err(e));
                    return;
                }
            };
            let plan = match session.plan(&sql).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = planned_tx.send(Err(e));
                    return;
                }
            };
            let _ = planned_tx.send(Ok(QuerySession::result_schema(&plan)));
            let timeout = session.timeout();
            let deadline = tokio::time::Instant::now() + timeout;
            let timed_out = || leakwatch_query::Error::Timeout(timeout);
            let stream = match tokio::time::timeout_at(deadline, session.execute_sql(&sql, plan, params)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(_) => {
                    let _ = tx.send(Err(timed_out())).await;
                    return;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(None) => break,
                    Ok(Some(batch)) => batch,
                    Err(_) => Err(timed_out()),
                };
                let failed = next.is_err();
                // A client that stops reading holds the query no longer
                // than its time limit; one that went away stops it.
                match tokio::time::timeout_at(deadline, tx.send(next)).await {
                    Ok(Ok(())) if !failed => {}
                    _ => break,
                }
            }
        };
        self.queries.spawn(async move {
            tokio::select! {
                () = work => {}
                () = gone.closed() => {}
            }
        });
        let timeout = self.sessions.timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || query_error(leakwatch_query::Error::Timeout(timeout));
        let schema = tokio::time::timeout_at(deadline, planned_rx)
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| pg_error("ERROR", "XX000", "the query stopped before it was planned"))?
            .map_err(query_error)?;
        let mut running = Running { schema, batches: rx, deadline, timeout };
        let first = match tokio::time::timeout_at(deadline, running.batches.recv()).await.map_err(|_| timed_out())? {
            None => None,
            Some(Ok(batch)) => Some(batch),
            Some(Err(e)) => return Err(query_error(e)),
        };
        Ok((running, first))
    }

    /// The rows of a started query in `format`, the first batch first.
    fn respond(
        running: Running,
        first: Option<RecordBatch>,
        format: &Format,
        options: Arc<FormatOptions>,
    ) -> PgWireResult<QueryResponse> {
        let fields = Arc::new(arrow_pg::datatypes::arrow_schema_to_pg_fields(&running.schema, format, Some(options))?);
        let rest = running.batches();
        let batches = stream::iter(first.map(Ok)).chain(rest);
        let encode_with = fields.clone();
        let rows = batches
            .map(move |batch| -> Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> {
                match batch {
                    Ok(batch) => arrow_pg::datatypes::encode_recordbatch(encode_with.clone(), batch),
                    Err(e) => Box::new(std::iter::once(Err(query_error(e)))),
                }
            })
            .flat_map(stream::iter);
        Ok(QueryResponse::new(fields, rows))
    }

    /// The answer to a command.
    fn command(command: &Command, format: &Format) -> PgWireResult<Response> {
        Ok(match command {
            Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Command::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            Command::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            Command::Accept(tag) => Response::Execution(Tag::new(tag)),
            // Closed by the handler, which holds the connection's statements.
            Command::Deallocate(_) => Response::Execution(Tag::new("DEALLOCATE")),
            Command::Show(name) => {
                let value = catalog::setting(name).ok_or_else(|| {
                    pg_error("ERROR", "42704", format!("unrecognized configuration parameter \"{name}\""))
                })?;
                let fields = Arc::new(Self::command_fields(command, format));
                let mut row = DataRowEncoder::new(fields.clone());
                row.encode_field(&value)?;
                let rows = stream::iter([Ok(row.take_row())]);
                Response::Query(QueryResponse::new(fields, rows))
            }
        })
    }

    fn command_fields(command: &Command, format: &Format) -> Vec<FieldInfo> {
        match command {
            Command::Show(name) => vec![FieldInfo::new(name.clone(), None, None, Type::TEXT, format.format_for(0))],
            _ => Vec::new(),
        }
    }
}

/// Named prepared statements one connection may hold at once.
pub const MAX_PREPARED: usize = 512;

/// Bytes of SQL text the named prepared statements of one connection may
/// hold in all.
pub const MAX_PREPARED_BYTES: usize = 16 << 20;

/// Named portals one connection may hold at once (each may hold a query
/// a client reads part by part), and the bytes of their parameters.
pub const MAX_PORTALS: usize = 64;

/// Bytes of bound parameters the named portals of one connection may hold.
pub const MAX_PORTAL_BYTES: usize = 16 << 20;

/// Named objects of one connection, with the bytes each holds: a client
/// that makes them without ever closing them is refused (54000) before
/// they grow the collector's memory.
#[derive(Debug)]
struct Held {
    /// What they are, for the message ("prepared statement", "portal").
    what: &'static str,
    max: usize,
    max_bytes: usize,
    by_name: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Held {
    fn new(what: &'static str, max: usize, max_bytes: usize) -> Self {
        Self { what, max, max_bytes, by_name: std::sync::Mutex::default() }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.by_name.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `name` with `bytes`, or refuses it past the bounds.
    fn admit(&self, name: &str, bytes: usize) -> PgWireResult<()> {
        let mut held = self.held();
        let others: usize = held.iter().filter(|(n, _)| n.as_str() != name).map(|(_, b)| b).sum();
        let count = held.len() + usize::from(!held.contains_key(name));
        if count > self.max || others + bytes > self.max_bytes {
            let (what, max, max_bytes) = (self.what, self.max, self.max_bytes);
            return Err(pg_error(
                "ERROR",
                "54000",
                format!(
                    "{what} \"{name}\": this connection holds {} named ones of {others} bytes, at most {max} of \
                     {max_bytes} bytes; close some",
                    held.len()
                ),
            ));
        }
        held.insert(name.to_string(), bytes);
        Ok(())
    }

    /// Forgets `name`; whether it was held.
    fn forget(&self, name: &str) -> bool {
        self.held().remove(name).is_some()
    }

    /// Forgets every one; their names.
    fn forget_all(&self) -> Vec<String> {
        self.held().drain().map(|(n, _)| n).collect()
    }
}

/// A connection's named prepared statements (their SQL's bytes).
#[derive(Debug)]
struct Prepared(Held);

impl Default for Prepared {
    fn default() -> Self {
        Self(Held::new("prepared statement", MAX_PREPARED, MAX_PREPARED_BYTES))
    }
}

/// A connection's named portals (their parameters' bytes).
#[derive(Debug)]
struct Portals(Held);

impl Default for Portals {
    fn default() -> Self {
        Self(Held::new("portal", MAX_PORTALS, MAX_PORTAL_BYTES))
    }
}

/// The analyst a connection authenticated as, and the hash of the token
/// it did so with (checked again before each statement: a token revoked
/// or expired ends the connection's queries).
#[derive(Debug, Clone)]
struct Analyst {
    name: String,
    token_hash: [u8; 32],
}

/// Every handler of a connection.
pub struct Handlers {
    planner: Arc<Planner>,
    log: Arc<DurableLog>,
    connections: Arc<ConnectionManager>,
    keys: RandomPidSecretKeyGenerator,
    parameters: DefaultServerParameterProvider,
    tls_required: bool,
}

impl Handlers {
    /// Handlers over `planner`, accepting analysts' tokens stored in `log`;
    /// with `tls_required`, a client must have negotiated TLS.
    pub fn new(
        planner: Planner,
        log: Arc<DurableLog>,
        connections: Arc<ConnectionManager>,
        tls_required: bool,
    ) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("{} (leakwatch {})", catalog::PG_VERSION, env!("CARGO_PKG_VERSION"));
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        parameters.time_zone = "UTC".into();
        Self {
            planner: Arc::new(planner),
            log,
            connections,
            keys: RandomPidSecretKeyGenerator::default(),
            parameters,
            tls_required,
        }
    }

    /// Checks the connection's token again.
    fn still_authorised<C: ClientInfo>(&self, client: &C) -> PgWireResult<()> {
        let Some(analyst) = client.session_extensions().get::<Analyst>() else {
            return Err(pg_error("FATAL", "28000", "not authenticated"));
        };
        match self.log.sql_token(&analyst.token_hash, chrono::Utc::now().timestamp()) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(pg_error(
                "FATAL",
                "28P01",
                format!("the SQL token of \"{}\" was revoked or has expired; connect with a new one", analyst.name),
            )),
            Err(e) => Err(pg_error("FATAL", "XX000", e.to_string())),
        }
    }
}

/// The name a Parse, Bind or Close message gives, if any: an empty name
/// is the unnamed statement or portal.
fn named(name: &Option<String>) -> Option<&str> {
    name.as_deref().filter(|n| !n.is_empty())
}

/// Closes the prepared statements `DEALLOCATE name` names (all of them
/// for `ALL`).
fn deallocate<C>(client: &C, name: &str) -> PgWireResult<()>
where
    C: ClientInfo + ClientPortalStore,
    C::PortalStore: PortalStore,
{
    let Some(prepared) = client.session_extensions().get::<Prepared>() else { return Ok(()) };
    let names = if name.eq_ignore_ascii_case("all") {
        prepared.0.forget_all()
    } else if prepared.0.forget(name) {
        vec![name.to_string()]
    } else {
        return Err(pg_error("ERROR", "26000", format!("prepared statement \"{name}\" does not exist")));
    };
    for name in names {
        client.portal_store().rm_statement(&name);
    }
    Ok(())
}

fn format_options<C: ClientInfo>(client: &C) -> Arc<FormatOptions> {
    Arc::new(FormatOptions::from_client_metadata(client.metadata()))
}

#[async_trait]
impl StartupHandler for Handlers {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.tls_required && !client.is_secure() {
                    return Err(pg_error(
                        "FATAL",
                        "28000",
                        "this collector takes SQL tokens over TLS only: connect with sslmode=require",
                    ));
                }
                if startup.parameters.get("replication").is_some_and(|v| !matches!(v.as_str(), "false" | "off" | "0")) {
                    return Err(pg_error("FATAL", "0A000", "replication connections are not supported"));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let token = password.into_password()?.password;
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                let token_hash = crate::admin::token_hash(token.trim());
                let name = match self.log.sql_token(&token_hash, chrono::Utc::now().timestamp()) {
                    Ok(Some(name)) => name,
                    Ok(None) => {
                        return Err(pg_error(
                            "FATAL",
                            "28P01",
                            format!(
                                "password authentication failed for user \"{user}\": the password is not a valid SQL \
                                 token (unknown, revoked or expired); make one with `leakwatch admin sql-token`"
                            ),
                        ));
                    }
                    Err(e) => return Err(pg_error("FATAL", "XX000", e.to_string())),
                };
                let (pid, secret) = self.keys.generate(client);
                client.set_pid_and_secret_key(pid, secret.clone());
                let (handle, guard) = self.connections.register(pid, secret);
                client.session_extensions().insert(handle);
                client.session_extensions().insert(guard);
                client.session_extensions().insert(Analyst { name, token_hash });
                client.session_extensions().insert(Prepared::default());
                client.session_extensions().insert(Portals::default());
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait]
impl SimpleQueryHandler for Handlers {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.still_authorised(client)?;
        let mut responses = Vec::new();
        for statement in self.planner.parse(query).await? {
            let response = match Command::of(&statement) {
                Some(Command::Deallocate(name)) => deallocate(client, &name)
                    .and_then(|()| Planner::command(&Command::Deallocate(name), &Format::UnifiedText)),
                Some(command) => Planner::command(&command, &Format::UnifiedText),
                None => {
                    let (running, first) = self.planner.run(statement.to_string(), Vec::new()).await?;
                    Planner::respond(running, first, &Format::UnifiedText, format_options(client)).map(Response::Query)
                }
            };
            match response {
                Ok(r) => responses.push(r),
                // The statements after a failed one are not run.
                Err(e) => {
                    responses.push(Response::Error(Box::new(e.into())));
                    break;
                }
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

#[async_trait]
impl QueryParser for Planner {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.parse(sql).await?;
        if statements.len() > 1 {
            return Err(pg_error("ERROR", "42601", "cannot insert multiple commands into a prepared statement"));
        }
        match statements.pop() {
            None => Ok(None),
            Some(statement) => Ok(Some(self.prepare(statement).await?)),
        }
    }

    fn get_parameter_types(&self, statement: &Self::Statement) -> PgWireResult<Vec<Type>> {
        match statement {
            PgStatement::Query { params, .. } => params
                .iter()
                .map(|t| match t {
                    Some(t) => arrow_pg::datatypes::into_pg_type(t),
                    None => Ok(Type::UNKNOWN),
                })
                .collect(),
            PgStatement::Command(_) => Ok(Vec::new()),
        }
    }

    fn get_result_schema(&self, statement: &Self::Statement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.unwrap_or(&Format::UnifiedText);
        match statement {
            PgStatement::Query { schema, .. } => arrow_pg::datatypes::arrow_schema_to_pg_fields(schema, format, None),
            PgStatement::Command(command) => Ok(Planner::command_fields(command, format)),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handlers {
    type Statement = PgStatement;
    type QueryParser = Planner;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.planner.clone()
    }

    /// Parses as pgwire does, counting each named statement against the
    /// connection's bounds first.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let parsed = StoredStatement::parse(client, &message, self.query_parser()).await?;
        let name = named(&message.name);
        if let (Some(name), Some(prepared)) = (name, client.session_extensions().get::<Prepared>()) {
            prepared.0.admit(name, message.query.len())?;
        }
        match parsed {
            Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
            None => client.portal_store().put_empty_statement(name.unwrap_or(DEFAULT_NAME)),
        }
        client.send(PgWireBackendMessage::ParseComplete(ParseComplete::new())).await?;
        Ok(())
    }

    /// Binds as pgwire does, counting each named portal against the
    /// connection's bounds first.
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let portal_name = named(&message.portal_name);
        if let (Some(name), Some(portals)) = (portal_name, client.session_extensions().get::<Portals>()) {
            let bytes = message.parameters.iter().flatten().map(|p| p.len()).sum();
            portals.0.admit(name, bytes)?;
        }
        let statement_name = named(&message.statement_name).unwrap_or(DEFAULT_NAME);
        match client.portal_store().get_statement(statement_name) {
            Some(Entry::Value(statement)) => {
                let portal = Portal::try_new(&message, statement)?;
                client.portal_store().put_portal(Arc::new(portal));
            }
            Some(Entry::Empty) if message.parameters.is_empty() => {
                client.portal_store().put_empty_portal(portal_name.unwrap_or(DEFAULT_NAME));
            }
            Some(Entry::Empty) => {
                return Err(pg_error(
                    "ERROR",
                    "08P01",
                    format!(
                        "bind message supplies {} parameters, but the prepared statement requires 0",
                        message.parameters.len()
                    ),
                ));
            }
            None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
        }
        client.send(PgWireBackendMessage::BindComplete(BindComplete::new())).await?;
        Ok(())
    }

    /// Closes as pgwire does, and forgets a closed statement's count.
    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = named(&message.name).unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => {
                client.portal_store().rm_statement(name);
                if let Some(prepared) = client.session_extensions().get::<Prepared>() {
                    prepared.0.forget(name);
                }
            }
            TARGET_TYPE_BYTE_PORTAL => {
                client.portal_store().rm_portal(name);
                if let Some(portals) = client.session_extensions().get::<Portals>() {
                    portals.0.forget(name);
                }
            }
            _ => {}
        }
        client.send(PgWireBackendMessage::CloseComplete(CloseComplete::new())).await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.still_authorised(client)?;
        match &portal.statement.statement {
            PgStatement::Command(Command::Deallocate(name)) => {
                deallocate(client, name)?;
                Planner::command(&Command::Deallocate(name.clone()), &portal.result_column_format)
            }
            PgStatement::Command(command) => Planner::command(command, &portal.result_column_format),
            PgStatement::Query { sql, params, .. } => {
                let types: Vec<Option<&DataType>> = params.iter().map(Option::as_ref).collect();
                let values = match arrow_pg::datatypes::df::deserialize_parameters(portal, &types)? {
                    datafusion::common::ParamValues::List(values) => values.into_iter().map(|v| v.value).collect(),
                    datafusion::common::ParamValues::Map(_) => {
                        return Err(pg_error("ERROR", "22023", "parameters: named parameters are not supported"));
                    }
                };
                let (running, first) = self.planner.run(sql.clone(), values).await?;
                Planner::respond(running, first, &portal.result_column_format, format_options(client))
                    .map(Response::Query)
            }
        }
    }
}
