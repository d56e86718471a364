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
use leakwatch::demo::{DemoReport, run_pipeline_over};
use leakwatch_collector::flusher::SharedStore;
use leakwatch_collector::server::Server;
use leakwatch_query::format::{OutputFormat, render};
use leakwatch_query::rules::builtin_rules;
#[cfg(feature = "ballista")]
use leakwatch_query::{FilesOnly, FlowStore, QueryConfig, SessionFactory};
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
        self.objects().await.into_iter().map(|m| m.location.to_string()).collect()
    }

    fn client(&self) -> std::sync::Arc<dyn object_store::ObjectStore> {
        let options = S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: None,
            credentials: Some((KEY.0.into(), KEY.1.into())),
        };
        s3_store(BUCKET, &options).expect("client")
    }

    async fn objects(&self) -> Vec<object_store::ObjectMeta> {
        self.client().list(None).try_collect().await.expect("list")
    }

    /// The Parquet files whose footer does not list their batches.
    async fn files_without_batch_list(&self) -> Vec<String> {
        let store = self.client();
        let mut out = Vec::new();
        for meta in self.objects().await.iter().filter(|m| m.location.as_ref().ends_with(".parquet")) {
            let footer = leakwatch_query::footer_of(store.as_ref(), meta).await.expect("footer");
            let kv = footer.file_metadata().key_value_metadata();
            if !kv.is_some_and(|kv| kv.iter().any(|kv| kv.key == leakwatch_query::BATCHES_KEY)) {
                out.push(meta.location.to_string());
            }
        }
        out
    }
}

#[cfg(feature = "ballista")]
/// Runs `work` on a runtime whose threads have the stack queries need
/// (`leakwatch_query::QUERY_THREAD_STACK`), as the `leakwatch` binary's
/// do; what it spawns (an in-process Ballista cluster) stays there, running
/// until the test process ends.
fn on_query_threads<T: Send + 'static>(work: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(leakwatch_query::QUERY_THREAD_STACK)
        .spawn(move || {
            let runtime = leakwatch_query::query_runtime_builder().worker_threads(2).build().expect("runtime");
            let out = runtime.block_on(work);
            // The cluster's tasks keep running for the console below.
            std::mem::forget(runtime);
            out
        })
        .expect("thread")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `leakwatch sql` (with `flags`) running `sql` on a collector's data
/// directory, whose shared store it finds there (credentials from the AWS
/// environment, as for `serve`); its CSV output.
fn console(data_dir: &Path, flags: &[&str], sql: &str) -> String {
    let out = crate::leakwatch()
        .args(["sql", "--format", "csv", "-c", sql])
        .args(flags)
        .arg("--data-dir")
        .arg(data_dir)
        .env("AWS_ACCESS_KEY_ID", KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", KEY.1)
        .output()
        .expect("leakwatch sql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows a rule finds on one node holding the whole built-in fleet
/// (checked by `rules::every_rule_finds_exactly_its_planted_rows`).
fn golden(rule: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{rule}.csv"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
    // A shared store's files list their batches, for finding copies fast.
    assert_eq!(s3.files_without_batch_list().await, Vec::<String>::new());

    // Either collector's SQL reads both collectors' files and finds exactly
    // what one collector holding the whole fleet finds (the rules' golden
    // files, which `rules::every_rule_finds_exactly_its_planted_rows`
    // checks on a single node).
    for server in &servers {
        for (rule, csv) in rules_csv(server).await {
            assert_eq!(csv, golden(&rule), "rule {rule} over two collectors differs from one node");
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
    let count = "SELECT count(*) AS n FROM flows";
    assert_eq!(console(&dir.path().join("collector-b"), &[], count), format!("n\n{}\n", report.records_accepted));
    // Shutting down flushes each collector's tail to the store.
    for server in servers {
        server.shutdown().await.expect("shutdown");
    }

    on_ballista(&dir, &s3, &report, count);
}

/// A Ballista scheduler and two executors (in this process, on loopback)
/// read the store of [`scale_two_collectors_on_one_s3_store_answer_every_rule_as_one_node`]:
/// every rule gives the same rows. The executors know leakwatch's SQL
/// functions only through the codecs.
#[cfg(feature = "ballista")]
fn on_ballista(dir: &tempfile::TempDir, s3: &S3Server, report: &DemoReport, count: &str) {
    let options = S3Options {
        endpoint: Some(s3.endpoint.clone()),
        region: None,
        credentials: Some((KEY.0.into(), KEY.1.into())),
    };
    let store = FlowStore::s3(&format!("s3://{BUCKET}/fleet"), &options, None).expect("store");
    let url = on_query_threads(async move {
        let url = leakwatch_query::ballista::start_local_cluster(&store, 2, 1).await.expect("Ballista cluster");
        // The default 60 s limit is for analysts; a debug build on a busy
        // machine can take longer over shuffles, and the test is about rows.
        let config =
            QueryConfig { ballista: Some(url.clone()), timeout: Duration::from_secs(900), ..QueryConfig::default() };
        let factory = SessionFactory::new(config, store, std::sync::Arc::new(FilesOnly));
        let session = factory.session().await.expect("session on the cluster");
        for rule in builtin_rules() {
            let sql = rule.render(&BTreeMap::new()).expect("render");
            let batches = session.sql(&sql).await.unwrap_or_else(|e| panic!("rule {} on Ballista: {e}", rule.name));
            let csv = render(&batches, OutputFormat::Csv).expect("csv");
            assert_eq!(csv, golden(&rule.name), "rule {} on Ballista", rule.name);
        }
        url
    });
    // The console runs on the cluster when given its scheduler.
    let on_cluster = console(&dir.path().join("collector-a"), &["--ballista", &url], count);
    assert_eq!(on_cluster, format!("n\n{}\n", report.records_accepted));
}

#[cfg(not(feature = "ballista"))]
fn on_ballista(_: &tempfile::TempDir, _: &S3Server, _: &DemoReport, _: &str) {
    panic!(
        "built without the `ballista` feature: run `make test` (or `cargo test --features ballista`), or skip with `-- --skip scale_`"
    );
}

/// Two real `leakwatch serve` processes on the shared store; 20 agents,
/// each given both collectors, upload concurrently; collector A is
/// SIGKILLed mid-upload and stays down while its agents fail over to B,
/// then comes back (its log still holds what it acknowledged). In the end
/// every batch is in `flows` exactly once with all its records, including
/// one the agent's retry made both collectors store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_killing_one_collector_mid_upload_loses_nothing_its_agents_fail_over() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use leakwatch_agent::state::AgentState;
    use leakwatch_agent::uploader::Uploader;

    use crate::durability::spawn_serve_env;
    const AGENTS: usize = 20;
    const BATCHES: usize = 20;
    const RECORDS: usize = 40;

    let s3 = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("AWS_ACCESS_KEY_ID", KEY.0), ("AWS_SECRET_ACCESS_KEY", KEY.1)];
    let serve = |id: &str| {
        let store = format!("s3://{BUCKET}/fleet");
        let flags = ["--store", store.as_str(), "--collector-id", id, "--s3-endpoint", s3.endpoint.as_str()];
        spawn_serve_env(&dir.path().join(id), 1, "127.0.0.1:0", &flags, &env)
    };
    let (mut a, url_a) = serve("collector-a");
    let (b, url_b) = serve("collector-b");
    let both = format!("{url_a},{url_b}");
    let batch_of = |agent: usize, n: usize| {
        crate::hostile::numbered_batch(format!("failover-{agent}-{n}"), format!("dev{agent}"), RECORDS)
    };

    // A batch whose answer was lost: stored by A, then retried to B.
    let state = AgentState::open(&dir.path().join("agent-copy")).expect("state");
    for url in [&url_a, &url_b] {
        let mut up = Uploader::connect(url, &state, "", Duration::from_secs(20)).await.expect("enroll");
        let ack = up.send(&batch_of(AGENTS, 0)).await.expect("send");
        assert_eq!(ack.records_accepted as usize, RECORDS, "each collector stores its copy");
    }

    let progress = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for agent in 0..AGENTS {
        let state = AgentState::open(&dir.path().join(format!("agent-{agent}"))).expect("state");
        let (both, progress) = (both.clone(), progress.clone());
        let batches: Vec<_> = (0..BATCHES).map(|n| batch_of(agent, n)).collect();
        tasks.push(tokio::spawn(async move {
            let mut up = Uploader::connect(&both, &state, "", Duration::from_secs(120)).await.expect("enroll");
            let first = up.url().to_string();
            for batch in &batches {
                up.send(batch).await.unwrap_or_else(|e| panic!("batch {}: {e}", batch.batch_id));
                progress.fetch_add(1, Ordering::SeqCst);
            }
            (first, up.stats.failovers)
        }));
    }
    // Kill A a third of the way through, while agents are sending.
    let total = AGENTS * BATCHES;
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::SeqCst) < total / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.kill().expect("SIGKILL collector A");
    a.wait().expect("reap");
    let at_kill = progress.load(Ordering::SeqCst);
    assert!(at_kill < total, "the kill landed mid-upload ({at_kill} of {total} acknowledged)");
    let mut started_on_a = 0;
    for task in tasks {
        let (first, failovers) = task.await.expect("agent task");
        if first == url_a {
            started_on_a += 1;
            assert!(failovers > 0, "an agent that started on A finished without failing over to B");
        }
    }
    assert!(started_on_a > 0, "no agent started on A (the install secret picks the first collector)");
    eprintln!("{started_on_a} of {AGENTS} agents started on A, killed after {at_kill} of {total} acks");

    // A comes back and flushes what its log holds; both stop cleanly.
    let (a, _) = serve("collector-a");
    for mut serving in [a, b] {
        let pid = serving.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let st = serving.wait().expect("wait");
        assert!(st.success(), "clean exit after SIGTERM: {st:?}");
    }

    let query = "SELECT count(*) AS batches, min(n) AS fewest, max(n) AS most, sum(n) AS records \
                 FROM (SELECT batch_id, count(*) AS n FROM flows GROUP BY batch_id)";
    let batches = total + 1;
    assert_eq!(
        console(&dir.path().join("collector-b"), &[], query),
        format!("batches,fewest,most,records\n{batches},{RECORDS},{RECORDS},{}\n", batches * RECORDS),
        "every acknowledged batch once, whole"
    );
}
