//! The leakwatch collector.
//!
//! In: `Report` batches from agents over gRPC ([`ingest`]). They go into
//! the [`log`] (RocksDB, fsync before the ack, batch ids deduplicated),
//! the [`flusher`] moves them to day-partitioned Parquet files, and SQL
//! (through `leakwatch-query`) reads the files plus the unflushed tail.
//! Out: acks, Parquet, query results, the public [`dashboard`], `/metrics`
//! and `/healthz` over HTTP.
//!
//! [`cli`] is the `leakwatch` command line: `serve`, `sql` and `demo`.

use std::path::PathBuf;

pub mod admin;
pub mod allocator;
pub mod background;
pub mod cli;
pub mod convert;
pub mod dashboard;
pub mod demo;
pub mod flight;
pub mod flusher;
pub mod http;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod server;
pub mod sql;
pub mod tls;
pub mod validate;

/// Errors of the collector, sorted by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB or the object store failed (ours: Internal / 500).
    #[error("storage: {0}")]
    Storage(String),
    /// Stored data does not decode (ours: Internal / 500).
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// A batch id was reused with different content (caller's fault:
    /// InvalidArgument / 400).
    #[error("batch_id: {0:?} was stored before with different content; a batch id may not be reused")]
    Conflict(String),
    /// The same batch id is being stored by a concurrent request
    /// (transient: Aborted, the agent retries).
    #[error("batch_id: {0:?} is being stored by a concurrent request; retry")]
    InFlight(String),
    /// No collector data at the path (caller's fault).
    #[error("no leakwatch data at {0}: start `leakwatch serve --data-dir` there first")]
    NoData(PathBuf),
    /// Bad configuration or flags (caller's fault).
    #[error("{0}")]
    Config(String),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] leakwatch_query::Error),
    /// The agent pipeline failed (demo).
    #[error(transparent)]
    Agent(#[from] leakwatch_agent::Error),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Conflict(_) | Error::Config(_) => tonic::Status::invalid_argument(msg),
            Error::InFlight(_) => tonic::Status::aborted(msg),
            Error::NoData(_) => tonic::Status::failed_precondition(msg),
            Error::Query(leakwatch_query::Error::ReadOnly(_) | leakwatch_query::Error::Invalid(_)) => {
                tonic::Status::invalid_argument(msg)
            }
            Error::Query(leakwatch_query::Error::Timeout(_) | leakwatch_query::Error::ResourcesExhausted(_)) => {
                tonic::Status::resource_exhausted(msg)
            }
            _ => tonic::Status::internal(msg),
        }
    }
}

/// Compares two secrets' hashes without an early exit (equal lengths
/// required).
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Result with the collector's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
