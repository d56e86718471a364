//! Arrow Flight SQL for analysts' clients (ADBC, JDBC, DBeaver, the
//! remote console): read-only statements and prepared statements with
//! parameters, and catalog metadata, over the same session factory as
//! every other SQL entry point.
//!
//! Every call carries `authorization: Bearer TOKEN` with a token from
//! `leakwatch admin sql-token` (agents' tokens are not accepted). Queries
//! run on the query runtime, apart from ingest. Text columns cross the
//! boundary as `Utf8`, never `Utf8View`, and a `FlightInfo` declares the
//! schema its stream carries.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementSubstraitPlan, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt as _, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{LogicalPlan, TableType};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use leakwatch_query::{QuerySession, SessionFactory};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::log::DurableLog;

/// Prepared statements kept at once; the oldest is dropped beyond this.
pub const MAX_PREPARED: usize = 4096;

/// Longest SQL text accepted, bytes.
pub const MAX_SQL_BYTES: usize = leakwatch_query::statement::MAX_SQL_BYTES;

type FlightStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// A prepared statement: its SQL and the parameter values bound to it.
#[derive(Debug, Clone)]
struct Prepared {
    sql: String,
    params: Vec<ScalarValue>,
    serial: u64,
}

/// Open prepared statements by handle, with the serial number the next
/// one gets.
#[derive(Debug, Default)]
struct PreparedStatements {
    serial: u64,
    by_handle: HashMap<Vec<u8>, Prepared>,
}

/// The Flight SQL service.
#[derive(Clone)]
pub struct FlightSql {
    sessions: SessionFactory,
    queries: tokio::runtime::Handle,
    prepared: Arc<Mutex<PreparedStatements>>,
    info: Arc<SqlInfoData>,
    metrics: Option<Arc<crate::metrics::IngestMetrics>>,
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSql").finish_non_exhaustive()
    }
}

fn status(e: leakwatch_query::Error) -> Status {
    Status::from(crate::Error::Query(e))
}

fn check_sql(sql: &str) -> Result<(), Status> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(Status::invalid_argument(format!("query: {} bytes, at most {MAX_SQL_BYTES}", sql.len())));
    }
    Ok(())
}

fn schema_ipc(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &Default::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(format!("encoding a schema: {e}")))?;
    Ok(bytes)
}

fn info_for(schema: &Schema, ticket: Any, descriptor: FlightDescriptor) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding a schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn one_batch(
    schema: SchemaRef,
    batch: Result<RecordBatch, arrow_flight::error::FlightError>,
) -> Response<FlightStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { batch }))
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

impl FlightSql {
    /// A service over `sessions`, running queries on `queries`.
    pub fn new(sessions: SessionFactory, queries: tokio::runtime::Handle) -> Self {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "leakwatch");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
        #[allow(clippy::expect_used)]
        let info = info.build().expect("static SQL info");
        Self { sessions, queries, prepared: Arc::default(), info: Arc::new(info), metrics: None }
    }

    /// Times each query into `metrics` (`leakwatch_query_seconds{front_end="flight_sql"}`).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::IngestMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The gRPC service, accepting only analysts' tokens stored in `log`.
    pub fn into_server(
        self,
        log: Arc<DurableLog>,
    ) -> tonic::service::interceptor::InterceptedService<FlightServiceServer<Self>, SqlTokenCheck> {
        FlightServiceServer::with_interceptor(self, SqlTokenCheck { log })
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, PreparedStatements> {
        match self.prepared.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn lookup(&self, handle: &[u8]) -> Result<Prepared, Status> {
        self.prepared().by_handle.get(handle).cloned().ok_or_else(|| {
            Status::not_found("prepared_statement_handle: unknown or closed; create the prepared statement again")
        })
    }

    /// A session and the plan of `sql`, made on the query runtime (whose
    /// threads have a known stack; see `leakwatch_query::statement`).
    async fn plan(&self, sql: &str) -> Result<(QuerySession, LogicalPlan), Status> {
        check_sql(sql)?;
        let sessions = self.sessions.clone();
        let sql = sql.to_string();
        let planned = self.queries.spawn(async move {
            let session = sessions.session().await?;
            let plan = session.plan(&sql).await?;
            Ok::<_, leakwatch_query::Error>((session, plan))
        });
        planned.await.map_err(|e| Status::internal(format!("planning failed: {e}")))?.map_err(status)
    }

    async fn plan_schema(&self, sql: &str) -> Result<SchemaRef, Status> {
        Ok(QuerySession::result_schema(&self.plan(sql).await?.1))
    }

    /// Runs `sql` with `params` on the query runtime and streams the
    /// result in the schema `get_flight_info` declared.
    async fn run(&self, sql: String, params: Vec<ScalarValue>) -> Result<Response<FlightStream>, Status> {
        let (session, plan) = self.plan(&sql).await?;
        let schema = QuerySession::result_schema(&plan);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, Status>>(2);
        let timeout = session.timeout();
        let metrics = self.metrics.clone();
        self.queries.spawn(async move {
            let _timed = crate::metrics::QueryTimer::start(metrics, "flight_sql");
            let deadline = tokio::time::Instant::now() + timeout;
            let stream = match tokio::time::timeout_at(deadline, session.execute_sql(&sql, plan, params)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(status(e))).await;
                    return;
                }
                Err(_) => {
                    let _ = tx.send(Err(status(leakwatch_query::Error::Timeout(timeout)))).await;
                    return;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(None) => break,
                    Ok(Some(batch)) => batch.map_err(status),
                    Err(_) => Err(status(leakwatch_query::Error::Timeout(timeout))),
                };
                let failed = next.is_err();
                // The client went away: stop the query.
                if tx.send(next).await.is_err() || failed {
                    break;
                }
            }
        });
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx).map_err(arrow_flight::error::FlightError::from);
        let stream = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    /// Catalog, schema, table name, table type and schema of every table
    /// and view a session offers.
    async fn tables(&self) -> Result<Vec<(String, String, String, &'static str, SchemaRef)>, Status> {
        let session = self.sessions.session().await.map_err(status)?;
        let ctx = session.context();
        let mut out = Vec::new();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                for table_name in schema.table_names() {
                    let Ok(Some(table)) = schema.table(&table_name).await else { continue };
                    // `flows` is a view over the files and the tail inside,
                    // a table to analysts.
                    let kind = match table.table_type() {
                        TableType::View if table_name != "flows" => "VIEW",
                        _ => "TABLE",
                    };
                    let arrow_schema = leakwatch_query::boundary_schema(table.schema().as_ref());
                    out.push((catalog_name.clone(), schema_name.clone(), table_name, kind, arrow_schema));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        Ok(out)
    }
}

fn read_only() -> Status {
    Status::invalid_argument("refused: leakwatch SQL is read-only (updates and ingestion are not accepted)")
}

/// Decodes the one row of parameter values a client binds.
async fn bound_values(stream: PeekableFlightDataStream) -> Result<Vec<ScalarValue>, Status> {
    let batches: Vec<RecordBatch> = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        stream.map_err(arrow_flight::error::FlightError::from),
    )
    .try_collect()
    .await
    .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    if rows != 1 {
        return Err(Status::invalid_argument(format!("parameters: {rows} rows bound; bind one row per query")));
    }
    batch
        .columns()
        .iter()
        .map(|c| ScalarValue::try_from_array(c, 0))
        .collect::<datafusion::error::Result<Vec<_>>>()
        .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.plan_schema(&query.query).await?;
        let ticket = TicketStatementQuery { statement_handle: query.query.into_bytes().into() };
        info_for(&schema, ticket.as_any(), request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("statement_handle: not UTF-8"))?;
        self.run(sql, Vec::new()).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (_, plan) = self.plan(&query.query).await?;
        let schema = QuerySession::result_schema(&plan);
        let types = QuerySession::parameter_types(&plan).map_err(status)?;
        let params = Schema::new(
            types
                .iter()
                .map(|(name, ty)| {
                    arrow::datatypes::Field::new(name, ty.clone().unwrap_or(arrow::datatypes::DataType::Utf8), true)
                })
                .collect::<Vec<_>>(),
        );
        let handle = rand::random::<[u8; 16]>().to_vec();
        {
            let mut open = self.prepared();
            open.serial += 1;
            let serial = open.serial;
            if open.by_handle.len() >= MAX_PREPARED
                && let Some(oldest) = open.by_handle.iter().min_by_key(|(_, p)| p.serial).map(|(k, _)| k.clone())
            {
                open.by_handle.remove(&oldest);
            }
            open.by_handle.insert(handle.clone(), Prepared { sql: query.query, params: Vec::new(), serial });
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: schema_ipc(&schema)?,
            parameter_schema: if types.is_empty() { Default::default() } else { schema_ipc(&params)? },
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.lookup(&query.prepared_statement_handle)?;
        let values = bound_values(request.into_inner()).await?;
        let handle = query.prepared_statement_handle.to_vec();
        match self.prepared().by_handle.get_mut(&handle) {
            Some(p) => p.params = values,
            None => return Err(Status::not_found("prepared_statement_handle: closed while binding")),
        }
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle.into()) })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let prepared = self.lookup(&cmd.prepared_statement_handle)?;
        let schema = self.plan_schema(&prepared.sql).await?;
        info_for(&schema, cmd.as_any(), request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let prepared = self.lookup(&query.prepared_statement_handle)?;
        self.run(prepared.sql, prepared.params).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        self.prepared().by_handle.remove(query.prepared_statement_handle.as_ref());
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let mut builder = query.into_builder();
        let catalogs: std::collections::BTreeSet<String> = self.tables().await?.into_iter().map(|t| t.0).collect();
        for c in catalogs {
            builder.append(c);
        }
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let mut builder = query.into_builder();
        let schemas: std::collections::BTreeSet<(String, String)> =
            self.tables().await?.into_iter().map(|t| (t.0, t.1)).collect();
        for (c, s) in schemas {
            builder.append(c, s);
        }
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let mut builder = query.into_builder();
        for (catalog, db_schema, table, kind, schema) in self.tables().await? {
            builder.append(catalog, db_schema, table, kind, &schema).map_err(Status::from)?;
        }
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.info).schema();
        info_for(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<FlightStream>, Status> {
        let builder = query.into_builder(&self.info);
        Ok(one_batch(builder.schema(), builder.build()))
    }

    async fn do_put_statement_update(
        &self,
        _ticket: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn do_put_statement_ingest(
        &self,
        _ticket: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Accepts calls that carry a valid analyst's SQL token.
#[derive(Clone)]
pub struct SqlTokenCheck {
    log: Arc<DurableLog>,
}

impl std::fmt::Debug for SqlTokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTokenCheck").finish_non_exhaustive()
    }
}

/// The analyst a call was authorised for (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Analyst(pub String);

impl tonic::service::Interceptor for SqlTokenCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "authorization: missing; send `Bearer TOKEN` with a token from `leakwatch admin sql-token`",
                )
            })?;
        let hash = crate::admin::token_hash(token.trim());
        match self.log.sql_token(&hash, chrono::Utc::now().timestamp()) {
            Ok(Some(name)) => {
                request.extensions_mut().insert(Analyst(name));
                Ok(request)
            }
            Ok(None) => Err(Status::unauthenticated("authorization: unknown or expired SQL token")),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}
