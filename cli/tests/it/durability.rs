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
pub struct Serving(pub Child);

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
    spawn_serve_on(data_dir, flush_secs, "127.0.0.1:0", &[])
}

/// As [`spawn_serve`], listening on `grpc` with `extra` flags.
fn spawn_serve_on(data_dir: &Path, flush_secs: u64, grpc: &str, extra: &[&str]) -> (Serving, String) {
    spawn_serve_env(data_dir, flush_secs, grpc, extra, &[])
}

/// As [`spawn_serve_on`], with `envs` set.
pub fn spawn_serve_env(
    data_dir: &Path,
    flush_secs: u64,
    grpc: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (Serving, String) {
    let mut child = leakwatch()
        .args(["serve", "--open-enrollment", "--grpc-listen", grpc, "--http-listen", "127.0.0.1:0"])
        .args(["--flush-interval-secs", &flush_secs.to_string(), "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .envs(envs.iter().copied())
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

pub fn sql_csv(data_dir: &Path, sql: &str) -> String {
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

/// The agent binary (built on demand when only this crate's tests were
/// built).
pub fn agent_binary() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_leakwatch")).parent().expect("target dir").to_path_buf();
    let bin = dir.join("leakwatch-agent");
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "leakwatch-agent", "--bin", "leakwatch-agent"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building leakwatch-agent");
    }
    bin
}

fn sent_batches(state: &Path) -> u64 {
    std::fs::read(state.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["sent_batches"].as_u64())
        .unwrap_or(0)
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line per record: what identifies it and its counts.
fn record_line(batch: &str, dst_ip: &str, port: &str, domain: &str, counts: [&str; 4]) -> String {
    format!("{batch},{dst_ip},{port},{domain},{}", counts.join(","))
}

/// The agent's spool against a collector that is down, then SIGKILLed
/// mid-upload and restarted, while the agent is itself SIGKILLed and
/// restarted: in the end the store holds every record exactly once.
#[test]
fn agent_spool_survives_collector_and_agent_crashes_exactly_once() {
    let agent = agent_binary();
    let (caps, manifest) = simulated(16);
    let files: Vec<_> = manifest.captures.iter().map(|c| caps.path().join(&c.file)).collect();
    let work = tempfile::tempdir().expect("tempdir");
    let (state, data) = (work.path().join("agent"), work.path().join("data"));

    // What must arrive: the dry run of the same captures with the same
    // install secret (so the same batch ids).
    let dry = std::process::Command::new(&agent)
        .args(["import", "--dry-run", "--format", "jsonl", "--state-dir"])
        .arg(&state)
        .args(&files)
        .output()
        .expect("dry run");
    assert!(dry.status.success());
    let mut expected: Vec<String> = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            let n = |k: &str| v[k].as_u64().unwrap_or(0).to_string();
            let counts = [n("bytes_out"), n("bytes_in"), n("packets_out"), n("packets_in")];
            record_line(
                v["batch_id"].as_str().unwrap_or_default(),
                v["dst_ip"].as_str().unwrap_or_default(),
                &n("dst_port"),
                v["domain"].as_str().unwrap_or_default(),
                [&counts[0], &counts[1], &counts[2], &counts[3]],
            )
        })
        .collect();
    expected.sort();
    let batches: std::collections::BTreeSet<&str> =
        expected.iter().map(|l| l.split(',').next().unwrap_or("")).collect();
    assert!(batches.len() >= 12, "enough batches to crash in the middle: {}", batches.len());

    // 1. The collector is down: import queues everything and exits 0.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    let agent_cmd = |sub: &str| {
        let mut c = std::process::Command::new(&agent);
        c.arg(sub).args(["--collector", &url, "--deliver-timeout"]);
        c.arg(if sub == "import" { "2" } else { "300" }).arg("--state-dir").arg(&state);
        c.env_remove("LEAKWATCH_AGENT_CONFIG").env("HOME", work.path());
        c
    };
    let out = agent_cmd("import").args(&files).output().expect("import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("in {} batches still queued", batches.len())), "{stderr}");

    // 2. The collector comes up, rate-limited so the upload takes a while;
    //    it is SIGKILLed after a few acks and restarted on the same port.
    let grpc = format!("127.0.0.1:{port}");
    let slow = ["--agent-rate-limit", "3"];
    let (mut serve, _) = spawn_serve_on(&data, 1, &grpc, &slow);
    let mut flush = Serving(agent_cmd("flush").stderr(Stdio::null()).spawn().expect("flush"));
    wait_until("three acks", Duration::from_secs(60), || sent_batches(&state) >= 3);
    serve.kill().expect("SIGKILL collector");
    serve.wait().expect("reap");
    std::thread::sleep(Duration::from_millis(500));
    let (_serve, _) = spawn_serve_on(&data, 1, &grpc, &slow);

    // 3. The agent is SIGKILLed mid-upload and started again.
    let before = sent_batches(&state);
    wait_until("more acks", Duration::from_secs(60), || sent_batches(&state) >= before + 3);
    flush.kill().expect("SIGKILL agent");
    flush.wait().expect("reap");
    let out = agent_cmd("flush").output().expect("flush again");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let status = std::process::Command::new(&agent)
        .args(["status", "--state-dir"])
        .arg(&state)
        .env("HOME", work.path())
        .output()
        .expect("status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("queued: 0 records in 0 batches"), "{status}");

    // 4. Every record exactly once, with its content.
    let csv = sql_csv(
        &data,
        "SELECT batch_id, dst_ip, dst_port, coalesce(domain, '') AS domain, bytes_out, bytes_in, packets_out, packets_in \
         FROM flows",
    );
    let mut stored: Vec<String> = csv.lines().skip(1).filter(|l| !l.is_empty()).map(str::to_string).collect();
    stored.sort();
    let (mut extra, mut missing) = (stored.clone(), Vec::new());
    for line in &expected {
        match extra.iter().position(|l| l == line) {
            Some(i) => {
                extra.remove(i);
            }
            None => missing.push(line.clone()),
        }
    }
    assert!(extra.is_empty() && missing.is_empty(), "stored twice or unexpected: {extra:#?}\nmissing: {missing:#?}");
    assert_eq!(stored.len(), expected.len(), "record count");
}

/// The crash test: 50 agents upload concurrently while the real collector
/// is SIGKILLed at random moments and restarted, `LEAKWATCH_CRASH_ROUNDS`
/// times (default 5; `make soak` runs more). In the end every batch is
/// stored exactly once with all its records: none lost after its ack,
/// none stored twice after a retry, none half-stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_sigkilled_repeatedly_under_50_agents_stores_every_ack_exactly_once() {
    use rand::{Rng as _, SeedableRng as _};
    const AGENTS: usize = 50;
    const BATCHES: usize = 20;
    const RECORDS: usize = 40;
    let rounds: usize = std::env::var("LEAKWATCH_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let seed: u64 =
        std::env::var("LEAKWATCH_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test: {rounds} rounds, seed {seed} (LEAKWATCH_CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let grpc = format!("127.0.0.1:{port}");
    let url = format!("http://{grpc}");
    let (mut serve, _) = spawn_serve_on(&data, 1, &grpc, &[]);

    // Every agent enrolls, then sends its batches one after the other,
    // retrying through the crashes.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for a in 0..AGENTS {
        let state = AgentState::open(&dir.path().join(format!("agent-{a}"))).expect("state");
        let url = url.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut up = Uploader::connect(&url, &state, "", Duration::from_secs(120)).await.expect("enroll");
            let mut acked = Vec::new();
            for b in 0..BATCHES {
                let batch = crate::hostile::numbered_batch(format!("crash-{a}-{b}"), format!("dev{a}"), RECORDS);
                let ack = up.send(&batch).await.unwrap_or_else(|e| panic!("batch {}: {e}", batch.batch_id));
                acked.push((batch.batch_id, ack.status()));
                progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            acked
        }));
    }
    let mut mid_upload = 0;
    let total = AGENTS * BATCHES;
    for round in 0..rounds {
        // A random moment within this round's share of the upload, so every
        // kill lands while agents are sending, however fast the machine.
        let (lo, hi) = (total * round / (rounds + 1), total * (round + 1) / (rounds + 1));
        let target = rng.random_range(lo..hi.max(lo + 1));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while progress.load(std::sync::atomic::Ordering::SeqCst) < target && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
        serve.kill().expect("SIGKILL");
        serve.wait().expect("reap");
        let done = progress.load(std::sync::atomic::Ordering::SeqCst);
        mid_upload += usize::from(done < total);
        eprintln!("round {round}: collector killed with {done} of {total} batches acknowledged");
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        serve = spawn_serve_on(&data, 1, &grpc, &[]).0;
    }
    assert_eq!(mid_upload, rounds, "every SIGKILL landed while agents were uploading");
    let mut acked = 0;
    for task in tasks {
        let statuses = task.await.expect("agent task");
        acked += statuses.len();
    }
    assert_eq!(acked, AGENTS * BATCHES, "every batch was acknowledged in the end");
    let status = std::process::Command::new("kill").args(["-TERM", &serve.id().to_string()]).status().expect("kill");
    assert!(status.success());
    assert!(serve.wait().expect("wait").success(), "clean exit after SIGTERM");

    let csv = sql_csv(
        &data,
        "SELECT count(*) AS batches, min(n) AS fewest, max(n) AS most, sum(n) AS records \
         FROM (SELECT batch_id, count(*) AS n FROM flows GROUP BY batch_id)",
    );
    let want = format!("{},{RECORDS},{RECORDS},{}", AGENTS * BATCHES, AGENTS * BATCHES * RECORDS);
    assert_eq!(csv.lines().nth(1), Some(want.as_str()), "batches, records per batch (fewest, most), records:\n{csv}");
}
