//! The command line as parsed: what each flag is, its default and its
//! environment variable. Nothing here checks or combines flags; that is
//! [`crate::settings`], which turns them into the collector's settings.
//! Flags that several commands take are declared once, as groups
//! ([`DataDirArgs`], [`StoreArgs`], [`ListenArgs`], [`QueryArgs`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use leakwatch_query::format::OutputFormat;

/// The collector's data directory, for the commands that work on one.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Data directory of the collector: its RocksDB log and, without
    /// --store, its Parquet files (`sql` and `admin` may use it while the
    /// collector runs).
    #[arg(long, env = "LEAKWATCH_DATA_DIR", default_value = "leakwatch-data", global = true)]
    pub data_dir: PathBuf,
}

/// A shared S3-compatible store.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Shared S3-compatible store for the Parquet files, `s3://BUCKET/PREFIX`
    /// (instead of DATA_DIR/store); credentials from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY. The RocksDB log stays in the data directory.
    #[arg(long, env = "LEAKWATCH_STORE", global = true)]
    pub store: Option<String>,
    /// S3 endpoint URL for stores other than AWS (default: AWS_ENDPOINT_URL).
    #[arg(long, env = "LEAKWATCH_S3_ENDPOINT", requires = "store", global = true)]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, env = "LEAKWATCH_S3_REGION", requires = "store", global = true)]
    pub s3_region: Option<String>,
}

/// leakwatch collector: stores what agents report and answers SQL over it.
#[derive(Debug, Parser)]
#[command(name = "leakwatch", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The log on stderr: `text`, or `json` for a log collector (one object a line); which
    /// events is `LEAKWATCH_LOG` (default `warn`).
    #[arg(long, global = true, env = "LEAKWATCH_LOG_FORMAT", default_value = "text",
          value_parser = leakwatch_core::log::FORMATS)]
    pub log_format: String,
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
    /// Vendors' MUD files (RFC 8520) that the rule `outside_mud` holds
    /// their models' traffic against: load, list, remove.
    Mud(MudArgs),
    /// Simulate the built-in fleet, send it through agent and collector,
    /// and print what the boot_phone_home rule finds.
    Demo(DemoArgs),
    /// Run a process of an Apache DataFusion Ballista cluster that runs
    /// the collectors' queries (`serve --ballista df://HOST:PORT`).
    Ballista(BallistaArgs),
}

/// Flags of `ballista`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").args(["store", "data_dir"])))]
pub struct BallistaArgs {
    /// The process.
    #[command(subcommand)]
    pub role: BallistaRole,
    /// The shared store the collectors write to.
    #[command(flatten)]
    pub store: StoreArgs,
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
    #[arg(long, env = "LEAKWATCH_MAX_MESSAGE_BYTES", default_value_t = leakwatch_collector::server::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Stop reading day partitions older than this many days (UTC), and
    /// delete them 15 minutes later with the batch ids of their records,
    /// whose retries are then stored again (default: keep everything).
    #[arg(long, env = "LEAKWATCH_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Reports per second one agent may send (burst: twice that).
    #[arg(long, env = "LEAKWATCH_AGENT_RATE_LIMIT", default_value_t = 100)]
    pub agent_rate_limit: u32,
    /// Reports being read, decoded and stored at once before new ones are refused with
    /// ResourceExhausted (each holds up to --max-message-bytes twice, compressed and decoded).
    #[arg(long, env = "LEAKWATCH_MAX_IN_FLIGHT", default_value_t = leakwatch_collector::ingest::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Acknowledged batches waiting for the flusher before new reports are refused with ResourceExhausted.
    #[arg(long, env = "LEAKWATCH_MAX_UNFLUSHED_BATCHES", default_value_t = leakwatch_collector::ingest::DEFAULT_MAX_UNFLUSHED_BATCHES)]
    pub max_unflushed_batches: u64,
    /// Serve Flight SQL on this address (default: on the gRPC address, beside ingest).
    #[arg(long, env = "LEAKWATCH_FLIGHT_LISTEN")]
    pub flight_listen: Option<SocketAddr>,
    /// Serve the PostgreSQL wire protocol on this address, for psql, psycopg, DBeaver and
    /// Grafana: any user name, an analyst's SQL token as the password (default: not served).
    #[arg(long, env = "LEAKWATCH_PG_LISTEN")]
    pub pg_listen: Option<SocketAddr>,
    /// PostgreSQL connections open at once; the next is refused (SQLSTATE 53300).
    #[arg(long, env = "LEAKWATCH_PG_MAX_CONNECTIONS", default_value_t = 64)]
    pub pg_max_connections: usize,
    /// PostgreSQL connections one client (an IPv4 address, an IPv6 /64; trusted proxies exempt)
    /// may have open before they logged in; the next is refused (SQLSTATE 53300).
    #[arg(long, env = "LEAKWATCH_PG_MAX_LOGGING_IN_PER_CLIENT", default_value_t = leakwatch_collector::pg::DEFAULT_MAX_LOGGING_IN_PER_CLIENT)]
    pub pg_max_logging_in_per_client: usize,
    /// Seconds a logged-in PostgreSQL client may send nothing before its connection is closed (57P05).
    #[arg(long, env = "LEAKWATCH_PG_IDLE_TIMEOUT_SECS", default_value_t = 3600)]
    pub pg_idle_timeout_secs: u64,
    /// Publish only groups seen from at least this many distinct devices (k; at least 2).
    #[arg(long, env = "LEAKWATCH_PUBLIC_MIN_DEVICES", default_value_t = 5)]
    pub public_min_devices: u64,
    /// Publish only groups seen from at least this many distinct volunteers' agents (m; at least 2).
    #[arg(long, env = "LEAKWATCH_PUBLIC_MIN_VOLUNTEERS", default_value_t = 3)]
    pub public_min_volunteers: u64,
    /// Requests per second one client (an IPv4 address, an IPv6 /64) may make to the dashboard,
    /// /api and /export (burst: twice that).
    #[arg(long, env = "LEAKWATCH_PUBLIC_RATE", default_value_t = 20)]
    pub public_rate: u32,
    /// Reverse proxies (networks in CIDR form, or addresses) whose Forwarded or X-Forwarded-For
    /// header names the client that rate limits count; a header from any other peer is ignored,
    /// and trusted proxies are exempt from the per-client connection limits, HTTP, gRPC and
    /// PostgreSQL (default: none).
    #[arg(long, env = "LEAKWATCH_TRUSTED_PROXIES", value_name = "CIDR", num_args = 1.., value_delimiter = ',',
          value_parser = leakwatch_dashboard::proxies::network)]
    pub trusted_proxies: Vec<leakwatch_dashboard::proxies::IpNet>,
    /// The address the public reaches the dashboard at (https://leaks.example.org): blocklists,
    /// feeds and MUD files link back to it (default: http:// and the HTTP listen address).
    #[arg(long, env = "LEAKWATCH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The licence the published data is offered under, named on the about page and in every
    /// export, list and feed.
    #[arg(long, env = "LEAKWATCH_DATA_LICENCE", default_value = "CC BY 4.0")]
    pub data_licence: String,
    /// Where the data licence's text is.
    #[arg(long, env = "LEAKWATCH_DATA_LICENCE_URL", default_value = "https://creativecommons.org/licenses/by/4.0/")]
    pub data_licence_url: String,
    /// Least seconds between two dashboard refreshes; each flush that stores new rows asks for one.
    #[arg(long, env = "LEAKWATCH_PUBLIC_REFRESH_SECS", default_value_t = leakwatch_dashboard::DEFAULT_REFRESH_SECS)]
    pub public_refresh_secs: u64,
    /// Seconds an HTTP client has to send a request's headers (or finish its TLS handshake),
    /// from connecting or from its previous response; then the connection is closed.
    #[arg(long, env = "LEAKWATCH_HTTP_HEADER_TIMEOUT_SECS", default_value_t = leakwatch_collector::http::DEFAULT_HEADER_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_header_timeout_secs: u64,
    /// HTTP connections open at once, in all (also held under a quarter of the open-file limit).
    #[arg(long, env = "LEAKWATCH_HTTP_MAX_CONNECTIONS", default_value_t = leakwatch_collector::http::DEFAULT_MAX_CONNECTIONS)]
    pub http_max_connections: usize,
    /// HTTP connections open at once from one client (an IPv4 address, an IPv6 /64).
    #[arg(long, env = "LEAKWATCH_HTTP_MAX_CONNECTIONS_PER_CLIENT", default_value_t = leakwatch_collector::http::DEFAULT_MAX_CONNECTIONS_PER_CLIENT)]
    pub http_max_connections_per_client: usize,
    /// Seconds a gRPC client (an agent, a Flight SQL client) has from connecting to finishing its
    /// TLS handshake and sending the HTTP/2 preface; then the connection is closed.
    #[arg(long, env = "LEAKWATCH_GRPC_HANDSHAKE_TIMEOUT_SECS", default_value_t = leakwatch_collector::grpc::DEFAULT_HANDSHAKE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub grpc_handshake_timeout_secs: u64,
    /// gRPC connections open at once, the gRPC and Flight SQL listeners together (also held under
    /// a quarter of the open-file limit).
    #[arg(long, env = "LEAKWATCH_GRPC_MAX_CONNECTIONS", default_value_t = leakwatch_collector::grpc::DEFAULT_MAX_CONNECTIONS)]
    pub grpc_max_connections: usize,
    /// gRPC connections open at once from one client (an IPv4 address, an IPv6 /64; trusted
    /// proxies exempt).
    #[arg(long, env = "LEAKWATCH_GRPC_MAX_CONNECTIONS_PER_CLIENT", default_value_t = leakwatch_collector::grpc::DEFAULT_MAX_CONNECTIONS_PER_CLIENT)]
    pub grpc_max_connections_per_client: usize,
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
    /// Memory all query sessions running at once may hold together, MiB (at least
    /// --query-memory-mib).
    #[arg(long, env = "LEAKWATCH_QUERY_MEMORY_TOTAL_MIB", default_value_t = leakwatch_query::memory::DEFAULT_TOTAL_BYTES >> 20)]
    pub query_memory_total_mib: usize,
    /// Time limit per query, seconds.
    #[arg(long, env = "LEAKWATCH_QUERY_TIMEOUT_SECS", default_value_t = 60)]
    pub query_timeout_secs: u64,
    /// A query none of whose operators makes progress this many seconds
    /// has stopped: run again on one partition if it sent nothing yet,
    /// else failed (0: not watched; see docs/sql.md).
    #[arg(long, env = "LEAKWATCH_QUERY_STALL_SECS", default_value_t = 30)]
    pub query_stall_secs: u64,
    /// Run queries on an Apache DataFusion Ballista cluster: its
    /// scheduler's URL, df://HOST:PORT (see `leakwatch ballista`). The
    /// cluster reads the flushed files only; unflushed records stay with
    /// their collector until its next flush.
    #[arg(long, env = "LEAKWATCH_BALLISTA")]
    pub ballista: Option<String>,
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory.
    #[command(flatten)]
    pub data_dir: DataDirArgs,
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
    /// The shared store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// This collector's directory under the shared store's prefix, unique
    /// among the collectors sharing it (default: the one recorded in the
    /// data directory, else a new random one).
    #[arg(long, env = "LEAKWATCH_COLLECTOR_ID", requires = "store")]
    pub collector_id: Option<String>,
    #[command(flatten)]
    /// Listening.
    pub listen: ListenArgs,
}

/// Flags of `sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Data directory.
    #[command(flatten)]
    pub data_dir: DataDirArgs,
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
    /// Output format: table, csv, json (one object a line; also `ndjson`) or markdown.
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
    /// Data directory.
    #[command(flatten)]
    pub data_dir: DataDirArgs,
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
    /// List the enrolled agents: id, when it enrolled, its last report,
    /// its version, the records stored and whether it was revoked.
    Agents,
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

/// Flags of `mud`.
#[derive(Debug, Args)]
pub struct MudArgs {
    /// Data directory.
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    /// The action.
    #[command(subcommand)]
    pub action: MudCommand,
}

/// What to do with MUD files.
#[derive(Debug, Subcommand)]
pub enum MudCommand {
    /// Load a MUD file (the RFC 8520 shape or the older access-lists one)
    /// for a model, replacing the one it had; a file with a match that
    /// cannot be evaluated is refused whole, naming the node.
    Load {
        /// The MUD file (JSON).
        file: PathBuf,
        /// The vendor as the flows name it (default: the file's mfg-name).
        #[arg(long)]
        vendor: Option<String>,
        /// The model as the flows name it (default: the file's model-name).
        #[arg(long)]
        model: Option<String>,
    },
    /// List the loaded MUD files: vendor, model, MUD URL, entries.
    List,
    /// Remove a model's MUD file.
    Remove {
        /// Vendor.
        #[arg(long)]
        vendor: String,
        /// Model.
        #[arg(long)]
        model: String,
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
    /// Devices to simulate (default: the built-in profile's 295).
    #[arg(long)]
    pub devices: Option<u32>,
    /// Simulator seed.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    /// Listening.
    pub listen: ListenArgs,
}
