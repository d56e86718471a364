//! leakwatch query layer.
//!
//! In: Parquet files under the collector's data store and the unflushed
//! tail of its log (through [`TailSource`]). Out: Arrow record batches for
//! read-only SQL, detection [`rules`], and their rendering as table, CSV or
//! JSON.
//!
//! Every DataFusion session comes from [`SessionFactory`]: read-only (no
//! DDL, DML, COPY, SET or other statements), no URL tables, an object
//! store that reads the data store and nothing else ([`ReadOnlyStore`]),
//! `generate_series` and `range` removed, a memory pool limit and a
//! per-query timeout; statements are parsed within the bounds of
//! [`statement`] (length, nesting, set operations, tables).
//!
//! This crate knows nothing of gRPC or RocksDB: the collector hands in the
//! tail as `flows` record batches, built with [`FlowBatchBuilder`] (a
//! batch's labels, then its records; or whole [`FlowRow`]s).

#[cfg(feature = "ballista")]
pub mod ballista;
mod bounded;
mod copies;
pub mod digest;
pub mod files;
pub mod format;
pub mod materialise;
pub mod memory;
pub mod mud;
mod on_disk;
mod rows;
pub mod rules;
mod schema;
mod session;
pub mod statement;
mod store;
mod udf;
pub mod watch;
mod yielding;

pub use copies::{batch_list, batch_pairs};
pub use files::{BATCHES_KEY, flushed_range_of, range_within, rules_order, sorted_for_rules, sorted_slice};
pub use rows::{BatchLabels, FlowBatchBuilder, FlowRow, RecordValues};
pub use schema::{
    MICROSECOND_COLUMNS, MICROSECOND_STORED, flows_encoded_schema, flows_schema, stored_schema, to_microsecond,
    to_stored,
};
pub use session::{
    FilesOnly, NO_BALLISTA, QueryConfig, QuerySession, SessionFactory, TailError, TailSnapshot, TailSource,
    boundary_schema, step_tables_on_disk,
};
pub use store::{FlowStore, ReadOnlyStore, S3Options, StoreError, footer_of, parse_s3_url, s3_store};
pub use udf::{registrable_domain, unnamed_destination};

use datafusion::error::DataFusionError;

/// Stack size for threads that plan and run queries. Plans of the rules
/// nest deeply enough that (de)serializing them for a Ballista cluster
/// overflows the 2 MiB thread default in debug builds.
pub const QUERY_THREAD_STACK: usize = 8 << 20;

/// A multi-threaded tokio runtime whose threads can plan and run queries
/// (their stacks [`QUERY_THREAD_STACK`]), with I/O and timers; the caller
/// sets the rest (worker count, names, hooks).
pub fn query_runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.thread_stack_size(QUERY_THREAD_STACK).enable_all();
    builder
}

/// Errors of the query layer, sorted by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement would change something; SQL here is read-only
    /// (caller's fault, HTTP 400 / gRPC InvalidArgument).
    #[error("refused: leakwatch SQL is read-only ({0})")]
    ReadOnly(String),
    /// The SQL does not parse or plan, or a rule parameter is invalid
    /// (caller's fault, HTTP 400 / gRPC InvalidArgument).
    #[error("{0}")]
    Invalid(String),
    /// The query exceeded the time limit (HTTP 429 / ResourceExhausted).
    #[error("query timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// None of the query's operators made progress for this long after it
    /// had handed out part of its result (see [`watch`]; HTTP 503 /
    /// Unavailable: running it again is the remedy).
    #[error(
        "query stopped: none of its operators made progress for {0:?} after part of its result was sent \
         (a spilling repartition under the memory limit can stop so); run it again"
    )]
    Stalled(std::time::Duration),
    /// The query needed more memory than the pool allows (HTTP 429 /
    /// ResourceExhausted).
    #[error("query needs more memory than allowed: {0}")]
    ResourcesExhausted(String),
    /// The tail source failed (ours, HTTP 500 / Internal).
    #[error("reading unflushed data: {0}")]
    Tail(#[source] TailError),
    /// The store of the Parquet files cannot be opened (a bad URL or
    /// bucket name is the caller's fault; see [`StoreError`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object store failed (ours).
    #[error("{context}: {source}")]
    ObjectStore {
        /// What was being done, on which key.
        context: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A Parquet file's footer or rows do not read (ours, or a damaged file).
    #[error("{context}: {source}")]
    Parquet {
        /// What was being read.
        context: String,
        /// The reader's error.
        #[source]
        source: DataFusionError,
    },
    /// Arrow could not render or convert a result (ours).
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: &'static str,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A query that ran on a Ballista cluster failed there.
    #[error("on the Ballista cluster --ballista {url}: {source}")]
    Cluster {
        /// The scheduler's URL.
        url: String,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// Anything else DataFusion reports (ours, HTTP 500 / Internal).
    #[error("query failed: {0}")]
    DataFusion(#[source] DataFusionError),
    /// Something that cannot happen did: a thread did not start or
    /// panicked (ours, HTTP 500 / Internal).
    #[error("query failed: {0}")]
    Internal(String),
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(m) => Error::ResourcesExhausted(m.clone()),
            DataFusionError::Plan(m) | DataFusionError::SQL(_, Some(m)) => {
                Error::Invalid(format!("error in query: {m}"))
            }
            DataFusionError::SQL(p, None) => Error::Invalid(format!("SQL syntax error: {p}")),
            DataFusionError::SchemaError(s, _) => Error::Invalid(format!("error in query: {s}")),
            DataFusionError::NotImplemented(m) => Error::Invalid(format!("not supported: {m}")),
            _ => Error::DataFusion(e),
        }
    }
}

/// Result with the query layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
