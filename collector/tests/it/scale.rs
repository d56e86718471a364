//! Scale-out: collectors sharing one S3-compatible store.
//!
//! A real S3 server (`s3s-fs`, which `make test` installs with cargo and
//! names in `LEAKWATCH_S3S_FS`) on loopback; two collectors write their
//! Parquet to it, each under its own prefix, while the built-in fleet's
//! volunteers are spread over them.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use leakwatch_collector::demo::run_pipeline_over;
use leakwatch_collector::flusher::SharedStore;
use leakwatch_collector::server::Server;
use leakwatch_query::format::{OutputFormat, render};
use leakwatch_query::rules::builtin_rules;
use leakwatch_query::{S3Options, s3_store};

use crate::{serve_config, set_by_make_test};

const BUCKET: &str = "leakwatch-fleet";
const KEY: (&str, &str) = ("leakwatch-test", "leakwatch-test-secret");

/// An `s3s-fs` server on a loopback port, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    _root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    fn start() -> Self {
        let binary = set_by_make_test("LEAKWATCH_S3S_FS", " (it installs s3s-fs with cargo)", "scale::");
        let root = tempfile::tempdir().expect("tempdir");
        // s3s-fs keeps a bucket as a directory under its root.
        std::fs::create_dir_all(root.path().join(BUCKET)).expect("bucket");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", KEY.0, "--secret-key", KEY.1])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", Path::new(&binary).display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on port {port} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, endpoint: format!("http://127.0.0.1:{port}"), _root: root }
    }

    fn store(&self, collector_id: &str) -> SharedStore {
        SharedStore {
            url: format!("s3://{BUCKET}/fleet"),
            endpoint: Some(self.endpoint.clone()),
            region: None,
            collector_id: collector_id.into(),
            credentials: Some((KEY.0.into(), KEY.1.into())),
        }
    }

    /// Every key in the bucket.
    async fn keys(&self) -> Vec<String> {
        let options = S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: None,
            credentials: Some((KEY.0.into(), KEY.1.into())),
        };
        let store = s3_store(BUCKET, &options).expect("client");
        let listed: Vec<_> = store.list(None).try_collect().await.expect("list");
        listed.into_iter().map(|m| m.location.to_string()).collect()
    }
}

async fn rules_csv(server: &Server) -> BTreeMap<String, String> {
    let session = server.sessions.session().await.expect("session");
    let mut out = BTreeMap::new();
    for rule in builtin_rules() {
        let sql = rule.render(&BTreeMap::new()).expect("render");
        let batches = session.sql(&sql).await.unwrap_or_else(|e| panic!("rule {}: {e}", rule.name));
        out.insert(rule.name.clone(), render(&batches, OutputFormat::Csv).expect("csv"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_two_collectors_on_one_s3_store_answer_every_rule_as_one_node() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut servers = Vec::new();
    for id in ["collector-a", "collector-b"] {
        let config = leakwatch_collector::server::ServeConfig {
            store: Some(s3.store(id)),
            ..serve_config(&dir.path().join(id))
        };
        servers.push(Server::start(config).await.expect("collector starts"));
    }
    let refs: Vec<&Server> = servers.iter().collect();
    let report =
        run_pipeline_over(&refs, &dir.path().join("fleet"), None, None).await.expect("the fleet over two collectors");

    // Each collector wrote its own files, under its own prefix only, and
    // nothing went to the local data directories.
    let keys = s3.keys().await;
    for id in ["collector-a", "collector-b"] {
        let own = keys.iter().filter(|k| k.starts_with(&format!("fleet/{id}/flows/day="))).count();
        assert!(own > 0, "no files of {id} in {keys:?}");
        assert!(!dir.path().join(id).join("store/flows").exists(), "{id} wrote Parquet locally");
    }
    assert!(
        keys.iter().all(|k| k.starts_with("fleet/collector-a/flows/") || k.starts_with("fleet/collector-b/flows/")),
        "{keys:?}"
    );

    // Either collector's SQL reads both collectors' files and finds exactly
    // what one collector holding the whole fleet finds (the rules' golden
    // files, which `rules::every_rule_finds_exactly_its_planted_rows`
    // checks on a single node).
    for server in &servers {
        for (rule, csv) in rules_csv(server).await {
            let golden = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{rule}.csv")),
            )
            .expect("golden file");
            assert_eq!(csv, golden, "rule {rule} over two collectors differs from one node");
        }
    }
    // Every stored record once: each collector counts both collectors' rows.
    for server in &servers {
        let session = server.sessions.session().await.expect("session");
        let batches = session.sql("SELECT count(*) AS n FROM flows").await.expect("count");
        let csv = render(&batches, OutputFormat::Csv).expect("csv");
        assert_eq!(csv, format!("n\n{}\n", report.records_accepted));
    }
    // The console on a collector's data directory finds the shared store
    // there (credentials from the AWS environment, as for `serve`).
    let out = crate::leakwatch()
        .args(["sql", "--format", "csv", "-c", "SELECT count(*) AS n FROM flows", "--data-dir"])
        .arg(dir.path().join("collector-b"))
        .env("AWS_ACCESS_KEY_ID", KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", KEY.1)
        .output()
        .expect("leakwatch sql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("n\n{}\n", report.records_accepted));
    for server in servers {
        server.shutdown().await.expect("shutdown");
    }
}
