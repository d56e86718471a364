//! The leakwatch collector.
//!
//! In: `Report` batches from agents over gRPC ([`ingest`]). They go into
//! the [`log`] (RocksDB, fsync before the ack, batch ids deduplicated),
//! the [`flusher`] moves them to day-partitioned Parquet files, and SQL
//! (through `leakwatch-query`) reads the files plus the unflushed tail.
//! Out: acks, Parquet, query results, the public [`dashboard`], `/metrics`
//! and `/healthz` over HTTP.
//!
//! The `leakwatch` command line, and its demo, are the `leakwatch` crate.

use std::path::PathBuf;

pub mod admin;
pub mod allocator;
pub mod background;
pub mod completion;
mod connections;
pub mod convert;
pub mod flight;
pub mod flusher;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod pg;
pub mod server;
pub mod sql;
pub mod tls;
pub mod validate;

/// Errors of the collector, sorted by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log's RocksDB failed (ours: Internal / 500).
    #[error("storage: {context}: {source}")]
    Log {
        /// What was being done.
        context: String,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// The object store the Parquet files go to failed (ours).
    #[error("storage: {context}: {source}")]
    Store {
        /// What was being done, on which key.
        context: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A Parquet file could not be read (ours).
    #[error("storage: {context}: {source}")]
    Parquet {
        /// What was being done, on which file.
        context: String,
        /// Parquet's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Rows could not be put in a file, or a file's rows read back into
    /// today's schema (ours).
    #[error("{context}: {source}")]
    Rows {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: leakwatch_query::files::WriteError,
    },
    /// A local file or directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, on which path.
        context: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The store of the Parquet files cannot be opened: a bad `--store`
    /// URL (the caller's fault) or a path that does not resolve (ours).
    #[error(transparent)]
    OpenStore(#[from] leakwatch_query::StoreError),
    /// Storage failed otherwise: the log is open read-only, a background
    /// task stopped without finishing (ours).
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
    /// The dashboard failed.
    #[error(transparent)]
    Dashboard(#[from] leakwatch_dashboard::Error),
}

impl Error {
    /// Whether storage failed (the log, the object store, a file): the
    /// collector's fault, and for ingest a reason to refuse reports until
    /// it recovers.
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            Self::Log { .. }
                | Self::Store { .. }
                | Self::Parquet { .. }
                | Self::Rows { .. }
                | Self::Io { .. }
                | Self::Storage(_)
        )
    }

    /// A failure of the object store, while doing `context`.
    pub(crate) fn store(context: impl Into<String>) -> impl FnOnce(object_store::Error) -> Self {
        let context = context.into();
        move |source| Self::Store { context, source }
    }

    /// A failure on a local path, while doing `context`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// A file that could not be read, while doing `context`.
    pub(crate) fn parquet(context: impl Into<String>) -> impl FnOnce(parquet::errors::ParquetError) -> Self {
        let context = context.into();
        move |source| Self::Parquet { context, source }
    }

    /// Rows that could not be written or read back, while doing `context`.
    pub(crate) fn rows<E: Into<leakwatch_query::files::WriteError>>(
        context: impl Into<String>,
    ) -> impl FnOnce(E) -> Self {
        let context = context.into();
        move |source| Self::Rows { context, source: source.into() }
    }

    /// A background task that was cancelled or panicked.
    pub(crate) fn task(what: &str) -> impl FnOnce(tokio::task::JoinError) -> Self + '_ {
        move |e| Self::Storage(format!("{what}: {e}"))
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Conflict(_) | Error::Config(_) => tonic::Status::invalid_argument(msg),
            Error::OpenStore(e) if e.is_callers() => tonic::Status::invalid_argument(msg),
            Error::InFlight(_) => tonic::Status::aborted(msg),
            Error::NoData(_) => tonic::Status::failed_precondition(msg),
            Error::Query(leakwatch_query::Error::ReadOnly(_) | leakwatch_query::Error::Invalid(_)) => {
                tonic::Status::invalid_argument(msg)
            }
            Error::Query(leakwatch_query::Error::Timeout(_) | leakwatch_query::Error::ResourcesExhausted(_)) => {
                tonic::Status::resource_exhausted(msg)
            }
            Error::Query(leakwatch_query::Error::Stalled(_)) => tonic::Status::unavailable(msg),
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
