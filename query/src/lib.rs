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

pub mod ballista;
mod bounded;
mod copies;
pub mod format;
pub mod materialise;
pub mod rules;
mod schema;
mod session;
pub mod statement;
mod store;
mod udf;

pub use copies::{BATCHES_KEY, batch_list, batch_pairs};
pub use schema::{
    BatchLabels, FlowBatchBuilder, FlowRow, MICROSECOND_COLUMNS, MICROSECOND_STORED, RecordValues,
    flows_encoded_schema, flows_schema, rules_order, sorted_for_rules, sorted_slice, stored_schema, to_microsecond,
    to_stored,
};
pub use session::{
    FilesOnly, QueryConfig, QuerySession, SessionFactory, TailSnapshot, TailSource, boundary_schema, flushed_range_of,
    range_within,
};
pub use store::{FlowStore, ReadOnlyStore, S3Options, footer_of, parse_s3_url, s3_store};
pub use udf::registrable_domain;

use datafusion::error::DataFusionError;

/// Stack size for threads that plan and run queries. Plans of the rules
/// nest deeply enough that (de)serializing them for a Ballista cluster
/// overflows the 2 MiB thread default in debug builds.
pub const QUERY_THREAD_STACK: usize = 8 << 20;

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
    /// The query needed more memory than the pool allows (HTTP 429 /
    /// ResourceExhausted).
    #[error("query needs more memory than allowed: {0}")]
    ResourcesExhausted(String),
    /// The tail source failed (ours, HTTP 500 / Internal).
    #[error("reading unflushed data: {0}")]
    Tail(String),
    /// Anything else DataFusion reports (ours, HTTP 500 / Internal).
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
            other => Error::Internal(other.to_string()),
        }
    }
}

/// Result with the query layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
