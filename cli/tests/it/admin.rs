//! Enrollment codes and revocation through `leakwatch admin`, against a
//! running collector and against a stopped one.

use std::path::Path;
use std::time::Duration;

use leakwatch_agent::state::AgentState;
use leakwatch_agent::uploader::Uploader;
use leakwatch_collector::server::Server;
use leakwatch_proto::v1::collector_client::CollectorClient;
use tonic::{Code, Request};

use crate::{leakwatch, serve_config};

fn admin(data: &Path, args: &[&str]) -> Result<String, String> {
    let out = leakwatch().arg("admin").args(args).arg("--data-dir").arg(data).output().expect("run admin");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn enroll(url: &str, state_dir: &Path, code: &str) -> Result<Uploader, String> {
    let state = AgentState::open(state_dir).expect("state");
    Uploader::connect(url, &state, code, Duration::from_secs(5)).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_limit_enrollment_and_revocation_stops_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut config = serve_config(&data);
    config.open_enrollment = false;
    let server = Server::start(config.clone()).await.expect("start");
    let url = format!("http://{}", server.grpc_addr);

    let err = enroll(&url, &dir.path().join("a0"), "").await.expect_err("a code is required");
    assert!(err.contains("enrollment_code: required"), "{err}");
    let err = enroll(&url, &dir.path().join("a0"), "not-a-code").await.expect_err("unknown code");
    assert!(err.contains("unknown code"), "{err}");

    let code = admin(&data, &["enroll-code", "--max-uses", "1", "--expires", "1h"]).expect("code");
    assert_eq!(code.len(), 32, "{code}");
    let mut up = enroll(&url, &dir.path().join("a1"), &code).await.expect("first use");
    let err = enroll(&url, &dir.path().join("a2"), &code).await.expect_err("second use");
    assert!(err.contains("uses are all taken"), "{err}");
    let err = admin(&data, &["enroll-code", "--expires", "2000-01-01T00:00:00Z"]).expect_err("past expiry");
    assert!(err.contains("not in the future"), "{err}");
    // Three seconds: the expiry is fixed (in whole seconds) when the command
    // starts, and the collector must still find it in the future when the
    // request arrives. A code is expired once a whole second has passed
    // after its expiry second: four seconds on from then.
    let short = admin(&data, &["enroll-code", "--expires", "3s"]).expect("short-lived code");
    std::thread::sleep(Duration::from_millis(4100));
    let err = enroll(&url, &dir.path().join("a4"), &short).await.expect_err("expired code");
    assert!(err.contains("expired"), "{err}");
    let err = admin(&data, &["enroll-code", "--max-uses", "0"]).expect_err("zero uses");
    assert!(err.contains("max_uses: 0"), "{err}");

    // The enrolled agent reports until it is revoked.
    let batch = crate::hostile::good_batch();
    up.send(&batch).await.expect("accepted");
    let agent_id = up.agent_id().to_string();
    assert_eq!(admin(&data, &["revoke", &agent_id]).expect("revoke"), format!("revoked {agent_id}"));
    assert!(admin(&data, &["revoke", "nobody"]).expect_err("unknown agent").contains("no agent"));
    let token = AgentState::open(&dir.path().join("a1"))
        .expect("state")
        .credentials(&url)
        .expect("read")
        .expect("creds")
        .agent_token;
    let mut client = CollectorClient::connect(url.clone()).await.expect("connect");
    let mut req = Request::new(batch.clone());
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    let err = client.report(req).await.expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());

    // With the collector stopped, admin works on the log directly.
    server.shutdown().await.expect("shutdown");
    assert!(!data.join("admin.json").exists());
    let offline = admin(&data, &["enroll-code", "--max-uses", "2"]).expect("offline code");
    let server = Server::start(config).await.expect("restart");
    let url = format!("http://{}", server.grpc_addr);
    enroll(&url, &dir.path().join("a3"), &offline).await.expect("offline code works");
    server.shutdown().await.expect("shutdown");
}

/// One code, chosen by the operator and created on two collectors, enrolls
/// an agent given both with each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enroll_command_uses_an_operator_code_on_every_collector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let code = "fleet-2026-12-a1b2c3d4e5";
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    for name in ["c1", "c2"] {
        let data = dir.path().join(name);
        let mut config = serve_config(&data);
        config.open_enrollment = false;
        let server = Server::start(config).await.expect("start");
        urls.push(format!("http://{}", server.grpc_addr));
        assert_eq!(admin(&data, &["enroll-code", "--max-uses", "5", "--code", code]).expect("code"), code);
        servers.push(server);
    }
    let err = admin(&dir.path().join("c1"), &["enroll-code", "--code", "short"]).expect_err("too short");
    assert!(err.contains("code: must be 16 to 128 bytes of [A-Za-z0-9_-] (got 5 bytes)"), "{err}");
    let agent = std::path::PathBuf::from(env!("CARGO_BIN_EXE_leakwatch")).with_file_name("leakwatch-agent");
    assert!(agent.exists(), "build the agent binary first (cargo build --workspace)");
    let out = std::process::Command::new(&agent)
        .args(["enroll", "--collector", &urls.join(","), "--code", code, "--state-dir"])
        .arg(dir.path().join("agent"))
        .output()
        .expect("run agent enroll");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 2, "one agent id per collector: {ids:?}");
    let state = AgentState::open(&dir.path().join("agent")).expect("state");
    for (url, id) in urls.iter().zip(&ids) {
        assert_eq!(&state.credentials(url).expect("read").expect("stored").agent_id, id);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("agent/credentials.json")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "credentials are private: {mode:o}");
    }
    for server in servers {
        server.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_stops_delivering_and_keeps_its_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(serve_config(&data)).await.expect("start");
    let url = format!("http://{}", server.grpc_addr);
    let (caps, manifest) = crate::pipeline::simulated(2);
    let file = |i: usize| caps.path().join(&manifest.captures[i].file);
    let state = dir.path().join("agent");
    let import = |f: std::path::PathBuf| {
        std::process::Command::new(crate::durability::agent_binary())
            .args(["import", "--collector", &url, "--deliver-timeout", "5", "--state-dir"])
            .arg(&state)
            .arg(f)
            .env("HOME", dir.path())
            .output()
            .expect("agent import")
    };
    let out = import(file(0));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let agent_id = AgentState::open(&state).expect("state").credentials(&url).expect("read").expect("creds").agent_id;
    assert_eq!(admin(&data, &["revoke", &agent_id]).expect("revoke"), format!("revoked {agent_id}"));

    let out = import(file(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("revoked") && stderr.contains("leakwatch-agent enroll"), "{stderr}");
    assert!(stderr.contains("still queued"), "{stderr}");
    let status = std::process::Command::new(crate::durability::agent_binary())
        .args(["status", "--state-dir"])
        .arg(&state)
        .env("HOME", dir.path())
        .output()
        .expect("status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(!status.contains("queued: 0 records"), "the spool keeps the batches: {status}");
    assert!(status.contains("revoked"), "status shows the refusal: {status}");
    server.shutdown().await.expect("shutdown");
}

/// `status.json` is informational: cut short (a power loss; it is not
/// fsynced), the agent warns and delivers, counting afresh. With
/// `--log-format json` every line the agent writes to stderr is a JSON
/// object, `import`'s summary of each file and its errors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_status_file_does_not_stop_delivery_and_json_logs_stay_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(serve_config(&dir.path().join("data"))).await.expect("start");
    let url = format!("http://{}", server.grpc_addr);
    let (caps, manifest) = crate::pipeline::simulated(2);
    let file = |i: usize| caps.path().join(&manifest.captures[i].file);
    let state = dir.path().join("agent");
    let import = |files: &[std::path::PathBuf]| {
        std::process::Command::new(crate::durability::agent_binary())
            .args(["import", "--log-format", "json", "--collector", &url, "--deliver-timeout", "5", "--state-dir"])
            .arg(&state)
            .args(files)
            .env("HOME", dir.path())
            .env("LEAKWATCH_LOG", "info")
            .output()
            .expect("agent import")
    };
    let out = import(&[file(0)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(state.join("status.json"), b"{\"sent_batches\": 3").expect("cut short");
    // `status` shows the rest, and says the delivery figures did not read.
    for json in [false, true] {
        let out = std::process::Command::new(crate::durability::agent_binary())
            .args(["status", "--state-dir"])
            .arg(&state)
            .args(json.then_some("--json"))
            .env("HOME", dir.path())
            .output()
            .expect("agent status");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if json {
            let status: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
            assert!(status["delivery_unreadable"].as_str().is_some_and(|e| e.contains("status.json")), "{status}");
            assert_eq!(status["delivery"]["sent_batches"], 0, "{status}");
            assert!(status["queued"]["batches"].is_u64(), "{status}");
        } else {
            assert!(stdout.contains("queued: "), "{stdout}");
            assert!(
                stdout.contains("the delivery figures above are empty: ") && stdout.contains("status.json"),
                "{stdout}"
            );
        }
    }

    let missing = dir.path().join("no-such.pcap");
    let out = import(&[file(1), missing]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "one file could not be read, the other delivered: {stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let said = |level: &str, text: &str| {
        lines
            .iter()
            .any(|l| l["level"] == level && l["fields"].to_string().contains(text) && l["timestamp"].is_string())
    };
    assert!(said("WARN", "Agent status unreadable"), "{stderr}");
    assert!(said("ERROR", "no-such.pcap"), "the missing file, as an event: {stderr}");
    assert!(said("INFO", "records"), "the capture's summary, as an event: {stderr}");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("status.json")).expect("status")).expect("readable again");
    assert!(status["sent_batches"].as_u64().is_some_and(|n| n > 0), "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    server.shutdown().await.expect("shutdown");
}

/// `leakwatch admin agents`: every enrolled agent with when it enrolled,
/// its version, its last report and the records stored, running and
/// stopped; a revoked agent keeps its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_lists_each_enrolled_agent_with_its_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(serve_config(&data)).await.expect("start");
    let url = format!("http://{}", server.grpc_addr);
    let mut reporting = enroll(&url, &dir.path().join("a1"), "").await.expect("enroll");
    let quiet = enroll(&url, &dir.path().join("a2"), "").await.expect("enroll");
    let batch = crate::hostile::good_batch();
    reporting.send(&batch).await.expect("accepted");
    let (reporting, quiet) = (reporting.agent_id().to_string(), quiet.agent_id().to_string());
    let table = |data: &Path| {
        let out = leakwatch().args(["admin", "agents", "--data-dir"]).arg(data).output().expect("run admin");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let line = |table: &str, id: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} not listed:\n{table}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let version = env!("CARGO_PKG_VERSION");
    let records = batch.records.len().to_string();
    let listed = table(&data);
    assert!(listed.starts_with("AGENT"), "{listed}");
    // id, enrolled (date time), last report (date time), version, records, state
    let r = line(&listed, &reporting);
    assert_eq!(
        (r[1].as_str(), r[3].as_str(), r[5].as_str(), r[6].as_str(), r[7].as_str()),
        (today.as_str(), today.as_str(), version, records.as_str(), "enrolled"),
        "{listed}"
    );
    let q = line(&listed, &quiet);
    assert_eq!((q[3].as_str(), q[5].as_str(), q[6].as_str()), ("-", "0", "enrolled"), "never reported: {listed}");

    assert!(admin(&data, &["revoke", &reporting]).is_ok());
    let r = line(&table(&data), &reporting);
    assert_eq!((r[1].as_str(), r[6].as_str(), r[7].as_str()), (today.as_str(), records.as_str(), "revoked"));
    // Stopped: the same from the log and the store.
    server.shutdown().await.expect("shutdown");
    let offline = table(&data);
    assert_eq!(line(&offline, &reporting)[6..], [records.clone(), "revoked".into()], "{offline}");
    assert_eq!(line(&offline, &quiet)[5..], ["0".to_string(), "enrolled".into()], "{offline}");
}

/// `--log-format json` (for a log collector): every line either binary
/// writes to stderr is a JSON object with a time and a level, the last one
/// the error it stopped on.
#[test]
fn both_binaries_write_json_lines_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = std::path::PathBuf::from(env!("CARGO_BIN_EXE_leakwatch")).with_file_name("leakwatch-agent");
    assert!(agent.exists(), "build the agent binary first (cargo build --workspace)");
    // A configuration file that is there already: `init` refuses to
    // overwrite it and stops with an error.
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "# mine\n").expect("write");
    let runs = [
        crate::leakwatch()
            .args(["--log-format", "json", "sql", "--data-dir"])
            .arg(dir.path().join("no-data"))
            .args(["-c", "SELECT 1"])
            .env("LEAKWATCH_LOG", "info")
            .output(),
        std::process::Command::new(&agent)
            .args(["init", "--log-format", "json", "--config"])
            .arg(&config)
            .env("LEAKWATCH_LOG", "info")
            .output(),
    ];
    for out in runs {
        let out = out.expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        for line in &lines {
            assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
        }
        let last = lines.last().unwrap_or_else(|| panic!("nothing logged: {stderr}"));
        assert_eq!(last["level"], "ERROR", "{last}");
        assert!(last["fields"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{last}");
    }
}
