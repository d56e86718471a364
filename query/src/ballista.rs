//! Queries on an Apache DataFusion Ballista cluster.
//!
//! A [`crate::SessionFactory`] given a scheduler URL (`df://HOST:PORT`)
//! plans SQL as usual and hands the plan to the scheduler, whose executors
//! read the flushed Parquet files straight from the data store. What the
//! cluster runs is limited to those files: each collector's unflushed
//! tail stays with it (a collector's own DataFusion session reads it).
//!
//! leakwatch's SQL functions (`registrable_domain`, `is_private_ip`,
//! `ip_in_cidr`) reach the scheduler and the executors through Ballista's
//! extension codecs ([`LogicalCodec`], [`PhysicalCodec`]): a plan names the
//! function, and the codec of the process that decodes it supplies it, so
//! scheduler and executors need no other registration.
//!
//! [`run_scheduler`] and [`run_executor`] run the cluster's processes with
//! these codecs and a read-only view of the data store
//! (`leakwatch ballista scheduler|executor`); [`start_local_cluster`] runs a
//! scheduler and executors inside this process (tests, benchmarks).

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::extension::SessionConfigExt as _;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::{BallistaCodec, BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use ballista_core::{ConfigProducer, RuntimeProducer};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use crate::store::FlowStore;

/// leakwatch's function `name`, if it is one.
fn leakwatch_udf(name: &str) -> Option<Arc<ScalarUDF>> {
    crate::udf::all().into_iter().find(|f| f.name() == name).map(Arc::new)
}

/// The function methods of both codecs: leakwatch's SQL functions by
/// name, everything else through Ballista's codec (`self.inner`).
macro_rules! function_codec {
    () => {
        fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
            leakwatch_udf(name).map_or_else(|| self.inner.try_decode_udf(name, buf), Ok)
        }

        fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
            self.inner.try_encode_udf(node, buf)
        }

        fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<AggregateUDF>> {
            self.inner.try_decode_udaf(name, buf)
        }

        fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DfResult<()> {
            self.inner.try_encode_udaf(node, buf)
        }

        fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<WindowUDF>> {
            self.inner.try_decode_udwf(name, buf)
        }

        fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> DfResult<()> {
            self.inner.try_encode_udwf(node, buf)
        }
    };
}

/// Ballista's logical codec, plus leakwatch's SQL functions by name.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> DfResult<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        self.inner.try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> DfResult<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> DfResult<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    function_codec!();
}

/// Ballista's physical codec, plus leakwatch's SQL functions by name.
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        self.inner.try_encode(node, buf, proto_converter)
    }

    function_codec!();
}

/// The session settings of every process of the cluster: Ballista's, with
/// leakwatch's codecs and query options.
pub fn cluster_config() -> SessionConfig {
    crate::session::query_options(
        SessionConfig::new_with_ballista()
            .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
            .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default())),
    )
}

fn codec() -> BallistaCodec {
    BallistaCodec::new(Arc::new(LogicalCodec::default()), Arc::new(PhysicalCodec::default()))
}

/// A runtime whose only object store is `flows`' store, read-only.
fn runtime(flows: &FlowStore) -> DfResult<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(flows.registry())).build_arc()
}

/// Sessions of the scheduler: the client's settings over a runtime that
/// reads the data store. No functions beyond DataFusion's are registered:
/// the codecs bring leakwatch's.
fn session_builder(runtime: Arc<RuntimeEnv>) -> ballista_scheduler::scheduler_server::SessionBuilder {
    Arc::new(move |config: SessionConfig| {
        Ok(SessionStateBuilder::new()
            .with_config(config.upgrade_for_ballista())
            .with_runtime_env(runtime.clone())
            .with_default_features()
            .build())
    })
}

/// DataFusion's functions, all those a default session has (nested ones
/// included); not leakwatch's, which come through the codecs.
fn datafusion_functions() -> BallistaFunctionRegistry {
    (&SessionStateBuilder::new().with_default_features().build()).into()
}

fn ballista_error(what: &str) -> impl Fn(ballista_core::error::BallistaError) -> crate::Error + '_ {
    move |e| crate::Error::Internal(format!("{what}: {e}"))
}

/// Runs a Ballista scheduler on `bind` until the process ends.
pub async fn run_scheduler(bind: SocketAddr, flows: FlowStore) -> crate::Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        override_session_builder: Some(session_builder(runtime(&flows)?)),
        override_config_producer: Some(Arc::new(cluster_config) as ConfigProducer),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config).await.map_err(ballista_error("Ballista scheduler"))?;
    ballista_scheduler::scheduler_process::start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(ballista_error("Ballista scheduler"))
}

/// Where an executor listens and whom it serves.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `HOST:PORT`.
    pub scheduler: (String, u16),
    /// Address its Arrow Flight service (shuffle data) listens on.
    pub bind: SocketAddr,
    /// Port of its gRPC service, on the same address.
    pub grpc_port: u16,
    /// Host name other executors reach it by (default: `bind`'s address).
    pub external_host: Option<String>,
    /// Task slots (default: the machine's cores).
    pub vcores: usize,
    /// Directory for shuffle files (default: a temporary one).
    pub work_dir: Option<std::path::PathBuf>,
}

/// Runs a Ballista executor until the process ends.
pub async fn run_executor(options: ExecutorOptions, flows: FlowStore) -> crate::Result<()> {
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    let runtime = runtime(&flows)?;
    let config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        port: options.bind.port(),
        grpc_port: options.grpc_port,
        external_host: options.external_host,
        scheduler_host: options.scheduler.0,
        scheduler_port: options.scheduler.1,
        vcores: options.vcores,
        work_dir: options.work_dir.map(|d| d.display().to_string()),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| Ok(runtime.clone())) as RuntimeProducer),
        override_config_producer: Some(Arc::new(cluster_config) as ConfigProducer),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        override_function_registry: Some(Arc::new(datafusion_functions())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config)).await.map_err(ballista_error("Ballista executor"))
}

/// Starts a scheduler and `executors` executors (`vcores` task slots each)
/// inside this process, on loopback, over `flows`; returns the scheduler's
/// `df://` URL. They run until the process ends.
pub async fn start_local_cluster(flows: &FlowStore, executors: usize, vcores: usize) -> crate::Result<String> {
    let runtime = runtime(flows)?;
    let addr = ballista_scheduler::standalone::new_standalone_scheduler_with_builder(
        session_builder(runtime.clone()),
        Arc::new(cluster_config),
        codec(),
    )
    .await
    .map_err(ballista_error("Ballista scheduler"))?;
    let url = format!("http://localhost:{}", addr.port());
    for _ in 0..executors {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let scheduler = loop {
            match SchedulerGrpcClient::connect(url.clone()).await {
                Ok(client) => break client,
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(crate::Error::Internal(format!("Ballista scheduler at {url}: {e}")));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        let runtime = runtime.clone();
        ballista_executor::new_standalone_executor_from_builder(
            scheduler,
            vcores.max(1),
            Arc::new(cluster_config),
            Arc::new(move |_: &SessionConfig| Ok(runtime.clone())),
            codec(),
            datafusion_functions(),
        )
        .await
        .map_err(ballista_error("Ballista executor"))?;
    }
    Ok(format!("df://localhost:{}", addr.port()))
}

/// A client session on the cluster at `url` (`df://HOST:PORT`) with
/// `state`'s settings, functions and tables.
pub(crate) async fn remote_context(
    url: &str,
    state: SessionState,
) -> crate::Result<datafusion::prelude::SessionContext> {
    use ballista::prelude::SessionContextExt as _;
    datafusion::prelude::SessionContext::remote_with_state(url, state)
        .await
        .map_err(|e: DataFusionError| crate::Error::Invalid(format!("--ballista {url:?}: {e}")))
}
