//! The leakwatch agent.
//!
//! In: capture files (pcap, pcapng) and the volunteer's labels for the
//! device. Out: anonymised per-destination [`FlowRecord`]s, uploaded in
//! batches over gRPC to a collector, or printed by `--dry-run`.
//!
//! Stages, in data-flow order: [`capture`] (files → packets), [`parsers`]
//! (DNS, TLS, HTTP), [`flow`] (packets → per-destination flows),
//! [`anonymiser`] (privacy rules), [`uploader`] (gRPC). [`import`] wires
//! them for one capture; [`simulate`] writes realistic fleet captures;
//! [`cli`] is the `leakwatch-agent` command line.
//!
//! The agent stays small: it depends on neither DataFusion, Arrow nor
//! RocksDB.
//!
//! [`FlowRecord`]: leakwatch_proto::v1::FlowRecord

use std::path::PathBuf;

pub mod anonymiser;
pub mod capture;
pub mod check;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod discover;
pub mod explain;
pub mod flow;
pub mod host;
pub mod import;
pub mod imports;
pub mod lan;
pub mod live;
pub mod notify;
pub mod parsers;
pub mod service;
pub mod simulate;
pub mod spool;
pub mod state;
pub mod uploader;

/// Errors of the agent library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written (the caller's environment).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not a pcap or pcapng capture, or nothing in it could be read.
    #[error("{path}: not a readable capture: {reason}")]
    NotACapture {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A flag or setting has an invalid value (the caller's fault).
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The flag or field.
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The state directory holds something unreadable.
    #[error("agent state {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The collector refused a call or could not be reached in time.
    #[error("collector {url}: {}: {}", status.code(), status.message())]
    Collector {
        /// The collector URL.
        url: String,
        /// The final gRPC status.
        status: tonic::Status,
    },
    /// A simulator profile is invalid.
    #[error("fleet profile: {0}")]
    Profile(String),
}

/// A label flag's value the protocol's rule refused (its message names the
/// value as `--FLAG`), as the error naming `field`.
pub(crate) fn refused_label(flag: &str, field: String, leakwatch_proto::Invalid(e): leakwatch_proto::Invalid) -> Error {
    Error::InvalidArgument { field, reason: e.strip_prefix(&format!("--{flag}: ")).unwrap_or(&e).to_string() }
}

/// Maps an I/O error on `path` to [`Error::Io`] (for `map_err`).
pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
