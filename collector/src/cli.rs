//! The `leakwatch` command line: `serve`, `sql`, `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use leakwatch_query::QueryConfig;
use leakwatch_query::format::OutputFormat;

use crate::admin;
use crate::dashboard::{DashboardConfig, Thresholds};
use crate::demo::{self, DemoOptions};
use crate::flusher::SharedStore;
use crate::server::{DEFAULT_MAX_MESSAGE_BYTES, DataDir, ServeConfig, Server};
use crate::sql;
use crate::{Error, Result};

/// leakwatch collector: stores what agents report and answers SQL over it.
#[derive(Debug, Parser)]
#[command(name = "leakwatch", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the collector.
    Serve(ServeArgs),
    /// Run read-only SQL or a detection rule over a data directory.
    Sql(SqlArgs),
    /// Operator actions: enrollment codes, revoking agents, analysts' SQL tokens.
    Admin(AdminArgs),
    /// Simulate the built-in fleet, send it through agent and collector,
    /// and print what the boot_phone_home rule finds.
    Demo(DemoArgs),
    /// Run a process of an Apache DataFusion Ballista cluster that runs
    /// the collectors' queries (`serve --ballista df://HOST:PORT`).
    Ballista(BallistaArgs),
}

/// Flags of `ballista`.
#[derive(Debug, Args)]
pub struct BallistaArgs {
    /// The process.
    #[command(subcommand)]
    pub role: BallistaRole,
    /// The shared store the collectors write to, s3://BUCKET/PREFIX
    /// (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "LEAKWATCH_STORE", global = true, conflicts_with = "data_dir")]
    pub store: Option<String>,
    /// S3 endpoint URL for stores other than AWS (default: AWS_ENDPOINT_URL).
    #[arg(long, env = "LEAKWATCH_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, env = "LEAKWATCH_S3_REGION", global = true)]
    pub s3_region: Option<String>,
    /// Or: a collector's data directory, to read the store it writes to
    /// (its local files, or its shared store).
    #[arg(long, env = "LEAKWATCH_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// A process of the cluster.
#[derive(Debug, Subcommand)]
pub enum BallistaRole {
    /// The scheduler: plans each query into stages and hands their tasks
    /// to the executors.
    Scheduler {
        /// gRPC listen address (collectors' `--ballista df://HOST:PORT`,
        /// and executors, connect here).
        #[arg(long, default_value = "127.0.0.1:50050")]
        listen: SocketAddr,
    },
    /// An executor: runs tasks, reading the Parquet files from the store.
    Executor {
        /// The scheduler, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Listen address of its Arrow Flight service (other executors
        /// fetch shuffle data here).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Port of its gRPC service, on the listen address (default: the
        /// listen port plus one).
        #[arg(long)]
        grpc_port: Option<u16>,
        /// Host name the others reach it by (default: the listen address).
        #[arg(long)]
        external_host: Option<String>,
        /// Task slots (default: the machine's cores).
        #[arg(long)]
        vcores: Option<usize>,
        /// Directory for shuffle files (default: a temporary one).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

impl BallistaArgs {
    /// The store the cluster reads.
    fn flow_store(&self) -> Result<leakwatch_query::FlowStore> {
        match (&self.store, &self.data_dir) {
            (Some(url), _) => {
                let options = leakwatch_query::S3Options {
                    endpoint: self.s3_endpoint.clone(),
                    region: self.s3_region.clone(),
                    credentials: None,
                };
                leakwatch_query::FlowStore::s3(url, &options, None).map_err(|e| Error::Config(format!("--store: {e}")))
            }
            (None, Some(dir)) => DataDir::new(dir.clone()).flow_store(),
            (None, None) => Err(Error::Config(
                "--store s3://BUCKET/PREFIX or --data-dir DIR: the cluster needs the store to read".into(),
            )),
        }
    }
}

/// Listening and query settings shared by `serve` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// gRPC listen address.
    #[arg(long, env = "LEAKWATCH_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// HTTP listen address (public dashboard, /api, /export, /healthz, /metrics).
    #[arg(long, env = "LEAKWATCH_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Seconds between flushes of the log to Parquet.
    #[arg(long, env = "LEAKWATCH_FLUSH_INTERVAL_SECS", default_value_t = 10)]
    pub flush_interval_secs: u64,
    /// Largest Report message after decompression, bytes.
    #[arg(long, env = "LEAKWATCH_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Delete day partitions older than this many days, and the batch ids of
    /// their records, whose retries are then stored again (default: keep
    /// everything).
    #[arg(long, env = "LEAKWATCH_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Reports per second one agent may send (burst: twice that).
    #[arg(long, env = "LEAKWATCH_AGENT_RATE_LIMIT", default_value_t = 100)]
    pub agent_rate_limit: u32,
    /// Reports being read, decoded and stored at once before new ones are refused with
    /// ResourceExhausted (each holds up to --max-message-bytes twice, compressed and decoded).
    #[arg(long, env = "LEAKWATCH_MAX_IN_FLIGHT", default_value_t = crate::ingest::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Acknowledged batches waiting for the flusher before new reports are refused with ResourceExhausted.
    #[arg(long, env = "LEAKWATCH_MAX_UNFLUSHED_BATCHES", default_value_t = crate::ingest::DEFAULT_MAX_UNFLUSHED_BATCHES)]
    pub max_unflushed_batches: u64,
    /// Serve Flight SQL on this address (default: on the gRPC address, beside ingest).
    #[arg(long, env = "LEAKWATCH_FLIGHT_LISTEN")]
    pub flight_listen: Option<SocketAddr>,
    /// Publish only groups seen from at least this many distinct devices (k; at least 2).
    #[arg(long, env = "LEAKWATCH_PUBLIC_MIN_DEVICES", default_value_t = 5)]
    pub public_min_devices: u64,
    /// Publish only groups seen from at least this many distinct volunteers' agents (m; at least 2).
    #[arg(long, env = "LEAKWATCH_PUBLIC_MIN_VOLUNTEERS", default_value_t = 3)]
    pub public_min_volunteers: u64,
    /// Requests per second one client address may make to the dashboard, /api and /export (burst: twice that).
    #[arg(long, env = "LEAKWATCH_PUBLIC_RATE", default_value_t = 20)]
    pub public_rate: u32,
    /// Least seconds between two dashboard refreshes; each flush that stores new rows asks for one.
    #[arg(long, env = "LEAKWATCH_PUBLIC_REFRESH_SECS", default_value_t = crate::dashboard::DEFAULT_REFRESH_SECS)]
    pub public_refresh_secs: u64,
    /// Seconds an HTTP client has to send a request's headers (or finish its TLS handshake),
    /// from connecting or from its previous response; then the connection is closed.
    #[arg(long, env = "LEAKWATCH_HTTP_HEADER_TIMEOUT_SECS", default_value_t = crate::http::DEFAULT_HEADER_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_header_timeout_secs: u64,
    /// HTTP connections open at once, in all (also held under a quarter of the open-file limit).
    #[arg(long, env = "LEAKWATCH_HTTP_MAX_CONNECTIONS", default_value_t = crate::http::DEFAULT_MAX_CONNECTIONS)]
    pub http_max_connections: usize,
    /// HTTP connections open at once from one client address.
    #[arg(long, env = "LEAKWATCH_HTTP_MAX_CONNECTIONS_PER_CLIENT", default_value_t = crate::http::DEFAULT_MAX_CONNECTIONS_PER_CLIENT)]
    pub http_max_connections_per_client: usize,
    #[command(flatten)]
    /// Query limits.
    pub query: QueryArgs,
}

/// Limits of SQL queries.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Memory limit per query session, MiB.
    #[arg(long, env = "LEAKWATCH_QUERY_MEMORY_MIB", default_value_t = 1024)]
    pub query_memory_mib: usize,
    /// Time limit per query, seconds.
    #[arg(long, env = "LEAKWATCH_QUERY_TIMEOUT_SECS", default_value_t = 60)]
    pub query_timeout_secs: u64,
    /// Run queries on an Apache DataFusion Ballista cluster: its
    /// scheduler's URL, df://HOST:PORT (see `leakwatch ballista`). The
    /// cluster reads the flushed files only; unflushed records stay with
    /// their collector until its next flush.
    #[arg(long, env = "LEAKWATCH_BALLISTA")]
    pub ballista: Option<String>,
}

impl QueryArgs {
    fn config(&self) -> QueryConfig {
        QueryConfig {
            memory_limit_bytes: self.query_memory_mib.saturating_mul(1024 * 1024),
            timeout: Duration::from_secs(self.query_timeout_secs),
            ballista: self.ballista.clone(),
        }
    }
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory (RocksDB log and Parquet files).
    #[arg(long, env = "LEAKWATCH_DATA_DIR", default_value = "leakwatch-data")]
    pub data_dir: PathBuf,
    /// Accept agents without an enrollment code (for trials).
    #[arg(long, env = "LEAKWATCH_OPEN_ENROLLMENT")]
    pub open_enrollment: bool,
    /// Listen in plain text on addresses other than loopback (tokens and
    /// data then cross the network unencrypted).
    #[arg(long, env = "LEAKWATCH_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
    /// TLS certificate chain (PEM) for gRPC and HTTP; with --tls-key.
    #[arg(long, env = "LEAKWATCH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for gRPC and HTTP; with --tls-cert.
    #[arg(long, env = "LEAKWATCH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CA certificates (PEM),
    /// on gRPC and HTTP; needs --tls-cert and --tls-key.
    #[arg(long, env = "LEAKWATCH_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Write Parquet to a shared S3-compatible store (`s3://BUCKET/PREFIX`)
    /// instead of DATA_DIR/store; credentials from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY. The RocksDB log stays in the data directory.
    #[arg(long, env = "LEAKWATCH_STORE")]
    pub store: Option<String>,
    /// This collector's directory under the shared store's prefix, unique
    /// among the collectors sharing it (default: the one recorded in the
    /// data directory, else a new random one).
    #[arg(long, env = "LEAKWATCH_COLLECTOR_ID", requires = "store")]
    pub collector_id: Option<String>,
    /// S3 endpoint URL for stores other than AWS (default: AWS_ENDPOINT_URL).
    #[arg(long, env = "LEAKWATCH_S3_ENDPOINT", requires = "store")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, env = "LEAKWATCH_S3_REGION", requires = "store")]
    pub s3_region: Option<String>,
    #[command(flatten)]
    /// Listening.
    pub listen: ListenArgs,
}

/// The shared store `serve` was given, its collector id settled: the flag,
/// else the id recorded in the data directory, else a new random one.
fn shared_store(args: &ServeArgs) -> Result<Option<SharedStore>> {
    let Some(url) = &args.store else { return Ok(None) };
    leakwatch_query::parse_s3_url(url).map_err(|e| Error::Config(format!("--store: {e}")))?;
    let recorded = DataDir::new(args.data_dir.clone()).shared_store()?.map(|s| s.collector_id);
    let collector_id = match (&args.collector_id, recorded) {
        (Some(id), _) => id.clone(),
        (None, Some(id)) => id,
        (None, None) => format!("collector-{}", hex::encode(rand::random::<[u8; 4]>())),
    };
    if let Some(endpoint) = &args.s3_endpoint
        && endpoint.starts_with("http://")
    {
        tracing::warn!(endpoint = %endpoint, "S3 endpoint in plain HTTP: credentials and data cross the network unencrypted");
    }
    Ok(Some(SharedStore {
        url: url.clone(),
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        collector_id,
        credentials: None,
    }))
}

/// Refuses plain-text listeners off loopback unless allowed.
fn check_plaintext(listen: &ListenArgs, allow: bool, tls: bool) -> Result<()> {
    let flight = listen.flight_listen.map(|a| ("--flight-listen", a, tls));
    let listeners = [("--grpc-listen", listen.grpc_listen, tls), ("--http-listen", listen.http_listen, tls)];
    for (flag, addr, tls) in listeners.into_iter().chain(flight) {
        if !tls && !addr.ip().is_loopback() {
            if !allow {
                return Err(Error::Config(format!(
                    "{flag} {addr}: plain text off loopback would expose agent tokens and data; \
                     listen on 127.0.0.1 behind a TLS proxy, or pass --allow-plaintext"
                )));
            }
            tracing::warn!(listen = %addr, "Serving plain text off loopback (--allow-plaintext)");
        }
    }
    Ok(())
}

/// Flags of `sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Data directory of a collector (it may be running).
    #[arg(long, env = "LEAKWATCH_DATA_DIR", default_value = "leakwatch-data")]
    pub data_dir: PathBuf,
    /// Query a collector over Flight SQL instead of a data directory:
    /// grpc://HOST:PORT, or grpcs://HOST:PORT for TLS.
    #[arg(long, env = "LEAKWATCH_CONNECT", requires = "token")]
    pub connect: Option<String>,
    /// Analyst's token for --connect (from `leakwatch admin sql-token`).
    #[arg(long, env = "LEAKWATCH_SQL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the collector's certificate, for grpcs://.
    #[arg(long, env = "LEAKWATCH_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Run this statement and exit (default: interactive console).
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    pub command: Option<String>,
    /// Run the statements in this file (separated by `;` at line ends).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Write the result to this file instead of stdout: .parquet, .csv or .json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Output format: table, csv or json.
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
    /// List the built-in detection rules.
    #[arg(long)]
    pub rules: bool,
    /// Run a built-in detection rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// Rule parameter NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    #[command(flatten)]
    /// Query limits.
    pub query: QueryArgs,
}

/// Flags of `admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Data directory of the collector (it may be running).
    #[arg(long, env = "LEAKWATCH_DATA_DIR", default_value = "leakwatch-data", global = true)]
    pub data_dir: PathBuf,
    /// The action.
    #[command(subcommand)]
    pub action: AdminCommand,
}

/// Operator actions.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an enrollment code; prints it as the last line.
    EnrollCode {
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// Expiry: a duration from now (30d, 12h, 45m) or an RFC 3339 time.
        #[arg(long, default_value = "7d")]
        expires: String,
        /// The code itself (16 to 128 of A-Za-z0-9_-), to create the same
        /// code on every collector an agent may fail over to; default: a
        /// random one.
        #[arg(long)]
        code: Option<String>,
    },
    /// Revoke an agent's token.
    Revoke {
        /// The agent id (from the collector's logs or `SELECT DISTINCT agent_id FROM flows`).
        agent_id: String,
    },
    /// Create an analyst's token for Flight SQL clients and `leakwatch sql
    /// --connect`; prints it as the last line.
    SqlToken {
        /// Who it is for (shown in the collector's logs).
        #[arg(long)]
        name: String,
        /// Expiry: a duration from now (90d, 12h) or an RFC 3339 time.
        #[arg(long, default_value = "90d")]
        expires: String,
    },
    /// List the analysts' SQL tokens: id, expiry, state and holder (never
    /// the token itself; the collector keeps only its hash).
    SqlTokens,
    /// Revoke analysts' SQL tokens, at once: every token of a holder
    /// (`--name`), or one (`--token`, the token or its id from
    /// `sql-tokens`).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["name", "token"])))]
    RevokeSqlToken {
        /// The holder whose tokens to revoke.
        #[arg(long)]
        name: Option<String>,
        /// The token, or its id (at least 8 of its hex digits).
        #[arg(long)]
        token: Option<String>,
    },
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data directory for the demo (collector data, captures, agent state).
    #[arg(long, default_value = "leakwatch-demo-data")]
    pub data_dir: PathBuf,
    /// Exit after printing the findings instead of serving on.
    #[arg(long)]
    pub once: bool,
    /// Devices to simulate (default: the built-in profile's 260).
    #[arg(long)]
    pub devices: Option<u32>,
    /// Simulator seed.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    /// Listening.
    pub listen: ListenArgs,
}

fn serve_config(data_dir: PathBuf, open_enrollment: bool, listen: &ListenArgs) -> ServeConfig {
    ServeConfig {
        data_dir,
        grpc_listen: listen.grpc_listen,
        http_listen: listen.http_listen,
        open_enrollment,
        flush_interval: Duration::from_secs(listen.flush_interval_secs.max(1)),
        max_message_bytes: listen.max_message_bytes,
        retention_days: listen.retention_days,
        tls: None,
        client_ca: None,
        limits: crate::ingest::IngestLimits {
            agent_reports_per_sec: listen.agent_rate_limit,
            max_in_flight: listen.max_in_flight,
            max_unflushed_batches: listen.max_unflushed_batches,
        },
        query: listen.query.config(),
        flight_listen: listen.flight_listen,
        dashboard: DashboardConfig {
            thresholds: Thresholds {
                min_devices: listen.public_min_devices,
                min_volunteers: listen.public_min_volunteers,
            },
            requests_per_second: listen.public_rate,
            min_refresh_interval: Duration::from_secs(listen.public_refresh_secs),
        },
        http: crate::http::HttpLimits {
            header_timeout: Duration::from_secs(listen.http_header_timeout_secs),
            total: listen.http_max_connections.max(1),
            per_client: listen.http_max_connections_per_client.max(1),
            ..crate::http::HttpLimits::default()
        },
        store: None,
    }
}

/// Registers for SIGTERM and SIGINT at once, so a signal that arrives
/// while the server starts or just after its banner is not lost to the
/// default action (which kills the process without a flush), and returns
/// the wait for either.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            check_plaintext(&args.listen, args.allow_plaintext, args.tls_cert.is_some())?;
            let stop = stop_signal();
            if args.open_enrollment {
                tracing::warn!("Open enrollment: any agent that can reach this collector may report");
            }
            let store = shared_store(&args)?;
            let mut config = serve_config(args.data_dir, args.open_enrollment, &args.listen);
            config.store = store;
            config.tls = args.tls_cert.zip(args.tls_key);
            config.client_ca = args.tls_client_ca;
            let server = Server::start(config).await?;
            println!("leakwatch collector: gRPC on {}, HTTP on http://{}", server.grpc_addr, server.http_addr);
            stop.await;
            tracing::info!("Stopping: draining requests and flushing");
            server.shutdown().await
        }
        Command::Sql(args) => {
            if args.rules {
                print!("{}", sql::describe_rules());
                return Ok(());
            }
            let scratch = tempfile::tempdir().map_err(|e| Error::Config(format!("temporary directory: {e}")))?;
            let backend = match (&args.connect, &args.token) {
                (Some(url), Some(token)) => sql::Backend::connect(url, token, args.ca_file.as_deref()).await?,
                _ => sql::open_sessions(&args.data_dir, scratch.path(), args.query.config())?.into(),
            };
            let statements: Vec<String> = if let Some(name) = &args.rule {
                vec![sql::rule_sql(name, &sql::parse_params(&args.params)?)?]
            } else if let Some(statement) = &args.command {
                vec![statement.clone()]
            } else if let Some(file) = &args.file {
                let script =
                    std::fs::read_to_string(file).map_err(|e| Error::Config(format!("-f {}: {e}", file.display())))?;
                sql::split_statements(&script)
            } else {
                return sql::console(&backend, args.format).await;
            };
            for statement in &statements {
                let batches = backend.query(statement).await?;
                match &args.out {
                    Some(path) => {
                        sql::write_out(&batches, path)?;
                        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                        eprintln!("wrote {rows} rows to {}", path.display());
                    }
                    None => crate::sql::print_result(&leakwatch_query::format::render(&batches, args.format)?),
                }
            }
            Ok(())
        }
        Command::Admin(args) => {
            let action = match args.action {
                AdminCommand::EnrollCode { max_uses, expires, code } => admin::AdminAction::EnrollCode {
                    code: code.unwrap_or_default(),
                    max_uses,
                    expires_at_s: admin::parse_expiry(&expires, chrono::Utc::now().timestamp())?,
                },
                AdminCommand::Revoke { agent_id } => admin::AdminAction::Revoke { agent_id },
                AdminCommand::SqlToken { name, expires } => admin::AdminAction::SqlToken {
                    name,
                    expires_at_s: admin::parse_expiry(&expires, chrono::Utc::now().timestamp())?,
                },
                AdminCommand::SqlTokens => admin::AdminAction::SqlTokens,
                AdminCommand::RevokeSqlToken { name, token } => admin::AdminAction::RevokeSqlToken {
                    name: name.unwrap_or_default(),
                    token: token.unwrap_or_default(),
                },
            };
            println!("{}", admin::run(&args.data_dir, action).await?);
            Ok(())
        }
        Command::Ballista(args) => {
            let flows = args.flow_store()?;
            let query_error = |e: leakwatch_query::Error| Error::Config(e.to_string());
            match args.role {
                BallistaRole::Scheduler { listen } => {
                    eprintln!("Ballista scheduler on {listen}, reading {flows}");
                    leakwatch_query::ballista::run_scheduler(listen, flows).await.map_err(query_error)
                }
                BallistaRole::Executor { scheduler, listen, grpc_port, external_host, vcores, work_dir } => {
                    let (host, port) = scheduler
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                        .ok_or_else(|| Error::Config(format!("--scheduler {scheduler:?}: expected HOST:PORT")))?;
                    let vcores = vcores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                    let grpc_port = grpc_port.unwrap_or_else(|| listen.port().saturating_add(1));
                    eprintln!(
                        "Ballista executor on {listen} (gRPC port {grpc_port}, task slots: {vcores}) for {scheduler}, reading {flows}"
                    );
                    let options = leakwatch_query::ballista::ExecutorOptions {
                        scheduler: (host, port),
                        bind: listen,
                        grpc_port,
                        external_host,
                        vcores,
                        work_dir,
                    };
                    leakwatch_query::ballista::run_executor(options, flows).await.map_err(query_error)
                }
            }
        }
        Command::Demo(args) => {
            demo::run(DemoOptions {
                data_dir: args.data_dir.clone(),
                once: args.once,
                devices: args.devices,
                seed: args.seed,
                serve: serve_config(args.data_dir, true, &args.listen),
            })
            .await
        }
    }
}
