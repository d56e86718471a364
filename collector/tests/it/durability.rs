//! Acknowledged means stored: SIGKILL after the ack loses nothing.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use leakwatch_agent::import::{DeviceLabels, import_capture};
use leakwatch_agent::state::AgentState;
use leakwatch_agent::uploader::Uploader;
use leakwatch_proto::v1::AckStatus;

use crate::leakwatch;
use crate::pipeline::simulated;

/// A spawned server, killed if the test ends early (a panic).
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Serving {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Serving {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts `leakwatch serve` and returns it with its gRPC URL.
fn spawn_serve(data_dir: &Path, flush_secs: u64) -> (Serving, String) {
    let mut child = leakwatch()
        .args(["serve", "--open-enrollment", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--flush-interval-secs", &flush_secs.to_string(), "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn leakwatch serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read banner");
    let addr = line
        .split("gRPC on ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .trim()
        .to_string();
    (Serving(child), format!("http://{addr}"))
}

fn sql_csv(data_dir: &Path, sql: &str) -> String {
    let out = leakwatch()
        .args(["sql", "--format", "csv", "--data-dir"])
        .arg(data_dir)
        .args(["-c", sql])
        .output()
        .expect("run leakwatch sql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_ack_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (fleet_dir, manifest) = simulated(10);
    let state = AgentState::open(&dir.path().join("agent")).expect("state");
    let mut batches = Vec::new();
    for entry in manifest.captures.iter().take(8) {
        let labels = DeviceLabels {
            device_id: Some(entry.device_id.clone()),
            vendor: entry.vendor.clone(),
            model: entry.model.clone(),
            ..Default::default()
        };
        batches
            .extend(import_capture(&fleet_dir.path().join(&entry.file), &labels, &state, 5).expect("import").batches);
    }
    let total: usize = batches.iter().map(|b| b.records.len()).sum();
    let half = batches.len() / 2;

    // First run: half the batches, a flush, then the rest, then SIGKILL
    // right after the last ack.
    let (mut child, url) = spawn_serve(&data, 1);
    let mut up = Uploader::connect(&url, &state, "", Duration::from_secs(20)).await.expect("enroll");
    for b in &batches[..half] {
        assert_eq!(up.send(b).await.expect("ack").status(), AckStatus::Accepted);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await; // at least one flush
    for b in &batches[half..] {
        assert_eq!(up.send(b).await.expect("ack").status(), AckStatus::Accepted);
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    // Second run on the same directory: everything acked is there, once.
    let (mut child, url) = spawn_serve(&data, 3600);
    let check = "SELECT count(*) AS n, count(DISTINCT batch_id) AS b FROM flows";
    let out = sql_csv(&data, check);
    assert_eq!(out.lines().nth(1), Some(format!("{total},{}", batches.len()).as_str()), "{out}");
    // Retrying every batch is answered duplicate.
    let mut up = Uploader::connect(&url, &state, "", Duration::from_secs(20)).await.expect("enroll again");
    for b in &batches {
        assert_eq!(up.send(b).await.expect("ack").status(), AckStatus::Duplicate);
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let out = sql_csv(&data, check);
    assert_eq!(out.lines().nth(1), Some(format!("{total},{}", batches.len()).as_str()), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_flushes_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (fleet_dir, manifest) = simulated(4);
    let state = AgentState::open(&dir.path().join("agent")).expect("state");
    let (mut child, url) = spawn_serve(&data, 3600);
    let mut up = Uploader::connect(&url, &state, "", Duration::from_secs(20)).await.expect("enroll");
    let mut records = 0;
    for entry in manifest.captures.iter().take(3) {
        let labels = DeviceLabels { device_id: Some(entry.device_id.clone()), ..Default::default() };
        for b in import_capture(&fleet_dir.path().join(&entry.file), &labels, &state, 1000).expect("import").batches {
            records += b.records.len();
            up.send(&b).await.expect("ack");
        }
    }
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");
    // Everything was flushed to Parquet on the way out, and admin.json removed.
    assert!(!data.join("admin.json").exists());
    let mut parquet_rows = 0;
    for day in std::fs::read_dir(data.join("store/flows")).expect("flows dir").flatten() {
        for file in std::fs::read_dir(day.path()).expect("day dir").flatten() {
            let f = std::fs::File::open(file.path()).expect("open");
            let reader = parquet::file::reader::SerializedFileReader::new(f).expect("parquet");
            parquet_rows += parquet::file::reader::FileReader::metadata(&reader).file_metadata().num_rows();
        }
    }
    assert_eq!(parquet_rows, records as i64, "all acknowledged rows are in Parquet");
    let out = sql_csv(&data, "SELECT count(*) AS n FROM flows");
    assert_eq!(out.lines().nth(1), Some(records.to_string().as_str()), "{out}");
}
