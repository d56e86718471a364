//! Integration tests of the collector: the real server on 127.0.0.1:0 with
//! a RocksDB in a temp dir, the real agent pipeline, the real binary.

mod admin;
mod cli;
mod dashboard;
mod durability;
mod flight;
mod give_back;
mod hardening;
mod hostile;
mod pipeline;
mod postgres;
mod rules;
mod scale;

use std::path::{Path, PathBuf};
use std::time::Duration;

use leakwatch_agent::import::{DeviceLabels, ImportedCapture, import_capture};
use leakwatch_agent::state::AgentState;
use leakwatch_agent::uploader::Uploader;
use leakwatch_collector::server::{ServeConfig, Server};
use leakwatch_query::format::{OutputFormat, render};

/// A collector on loopback with its own data directory.
pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

pub fn serve_config(data_dir: &Path) -> ServeConfig {
    ServeConfig::loopback(data_dir)
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Server::start(serve_config(&dir.path().join("data"))).await.expect("server starts");
        Self { server, dir }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.grpc_addr)
    }

    /// An uploader with its own agent state.
    pub async fn uploader(&self) -> (Uploader, AgentState) {
        let state = AgentState::open(&self.dir.path().join("agent")).expect("agent state");
        let up = Uploader::connect(&self.url(), &state, "", Duration::from_secs(10)).await.expect("enroll");
        (up, state)
    }

    /// Runs SQL and renders it as CSV.
    pub async fn csv(&self, sql: &str) -> String {
        let session = self.server.sessions.session().await.expect("session");
        let batches = session.sql(sql).await.expect("query");
        render(&batches, OutputFormat::Csv).expect("render")
    }
}

/// Imports `path` with `labels` and sends every batch.
pub async fn send_capture(
    up: &mut Uploader,
    state: &AgentState,
    path: &Path,
    labels: &DeviceLabels,
) -> ImportedCapture {
    let imported = import_capture(path, labels, state, 1000).expect("import");
    for batch in &imported.batches {
        up.send(batch).await.expect("send");
    }
    imported
}

/// What `make test` passes in `var`, having set it up (`setup` says how,
/// for the message); the tests that need it are named `{prefix}*`, and
/// without it they fail saying how to run or skip them.
#[track_caller]
pub fn set_by_make_test(var: &str, setup: &str, prefix: &str) -> std::ffi::OsString {
    match std::env::var_os(var) {
        Some(value) => value,
        None => panic!("{var} is not set: run `make test`{setup}, or skip with `-- --skip {prefix}`"),
    }
}

/// The third-party captures (tests using them are named `external_*`).
pub fn external(rel: &str) -> PathBuf {
    let root = set_by_make_test("LEAKWATCH_EXTERNAL_TESTDATA", "", "external_");
    let path = PathBuf::from(root).join(rel);
    assert!(path.exists(), "missing test capture {}", path.display());
    path
}

/// A self-signed certificate for localhost and its key, as PEM files in
/// `dir`: (certificate, key).
pub fn self_signed_localhost(dir: &Path) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

pub fn leakwatch() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_leakwatch"))
}
