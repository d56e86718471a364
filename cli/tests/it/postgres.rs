//! The PostgreSQL wire protocol on a running collector: real clients
//! (psql, and psycopg from Python) answer what the collector's own SQL
//! answers and run every rule; the catalog queries clients send when they
//! connect; Grafana's dashboard from the docs; and hostile clients, each
//! told the SQLSTATE a client expects, its connection slot freed.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use leakwatch::demo::run_pipeline;
use leakwatch_collector::pg::{MAX_MESSAGE_BYTES, PgLimits};
use leakwatch_collector::server::{ServeConfig, Server};
use leakwatch_query::format::{OutputFormat, render};
use leakwatch_query::rules::builtin_rules;

use crate::flight::sql_token;
use crate::{leakwatch, set_by_make_test};

async fn pg_server(dir: &Path, limits: PgLimits) -> Server {
    let config = ServeConfig {
        pg_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        pg: limits,
        ..crate::serve_config(&dir.join("collector"))
    };
    let server = Server::start(config).await.expect("start");
    run_pipeline(&server, dir, Some(60), None).await.expect("fleet through agent and collector");
    server
}

/// `sql`'s result from the collector's own session, as CSV without its header.
async fn embedded(server: &Server, sql: &str) -> String {
    let session = server.sessions.session().await.expect("session");
    let csv = render(&session.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")), OutputFormat::Csv).expect("csv");
    csv.lines().skip(1).map(|l| format!("{l}\n")).collect()
}

fn psql(addr: SocketAddr, password: &str, sql: &str) -> std::process::Output {
    psql_with(&format!("host={} port={} sslmode=disable", addr.ip(), addr.port()), password, sql)
}

fn psql_with(conninfo: &str, password: &str, sql: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new("psql");
    cmd.arg(format!("{conninfo} user=analyst dbname=leakwatch"))
        .args(["--no-psqlrc", "--csv", "--tuples-only", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10");
    tokio::task::block_in_place(|| cmd.output()).expect("run psql (make test installs postgresql-client)")
}

/// The counts analysts ask first, and what the catalog answers.
const COUNTS: &[&str] = &[
    "SELECT count(*) FROM flows",
    "SELECT vendor, count(*) AS n FROM flows GROUP BY vendor ORDER BY vendor",
    "SELECT count(*) FROM devices",
    "SELECT count(DISTINCT boot_pseudonym) FROM flows",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_psql_and_psycopg_answer_like_leakwatch_sql_and_run_every_rule() {
    let python = set_by_make_test("LEAKWATCH_TEST_PYTHON", " (it creates the venv)", "postgres_");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = pg_server(dir.path(), PgLimits::default()).await;
    let addr = server.pg_addr.expect("PostgreSQL listener");
    let data = dir.path().join("collector");
    let token = sql_token(&data);

    // psql: the counts, the catalog, and each rule, as the collector's own SQL answers.
    let mut expected = BTreeMap::new();
    for sql in COUNTS {
        let out = psql(addr, &token, sql);
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        let want = embedded(&server, sql).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "psql: {sql}");
        expected.insert(sql.to_string(), want);
    }
    let mut rules = BTreeMap::new();
    for rule in builtin_rules() {
        let sql = rule.render(&BTreeMap::new()).expect("rule sql");
        let out = psql(addr, &token, &sql);
        assert!(out.status.success(), "psql rule {}: {}", rule.name, String::from_utf8_lossy(&out.stderr));
        let rows = String::from_utf8_lossy(&out.stdout).lines().count();
        let want = embedded(&server, &sql).await.lines().count();
        assert_eq!(rows, want, "psql: rule {} rows", rule.name);
        rules.insert(rule.name.clone(), (sql, want));
    }
    assert!(rules.values().any(|(_, n)| *n > 0), "the fleet has findings");
    for (sql, want) in [
        ("SELECT current_schema()", "public"),
        ("SELECT current_database()", "datafusion"),
        ("SHOW transaction_isolation", "read committed"),
        ("SELECT current_setting('server_version_num')", "160006"),
    ] {
        let out = psql(addr, &token, sql);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = psql(addr, &token, "SELECT version()");
    assert!(
        String::from_utf8_lossy(&out.stdout).trim_start_matches('"').starts_with("PostgreSQL 16.6 (leakwatch"),
        "{out:?}"
    );
    // psql's own catalog queries: \d lists the relations, \d flows its columns.
    let out = psql(addr, &token, "\\d");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("flows") && listed.contains("devices"),
        "\\d: {listed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(addr, &token, "\\d flows");
    let columns = String::from_utf8_lossy(&out.stdout);
    assert!(
        columns.contains("window_start") && columns.contains("device_pseudonym"),
        "\\d flows: {columns} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A write is refused with the read-only SQLSTATE, nothing written.
    let out = psql(addr, &token, "CREATE TABLE stolen AS SELECT * FROM flows");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"), "{}", String::from_utf8_lossy(&out.stderr));

    // psycopg: the same counts and rules, a parameterised query, the catalog.
    let model = "Echo Dot";
    let param_sql = format!("SELECT count(*) FROM flows WHERE model = '{model}'");
    let plan = serde_json::json!({
        "counts": expected,
        "rules": rules.iter().map(|(name, (sql, rows))| serde_json::json!({"name": name, "sql": sql, "rows": rows})).collect::<Vec<_>>(),
        "param": {"sql": "SELECT count(*) FROM flows WHERE model = %s", "value": model, "want": embedded(&server, &param_sql).await},
    });
    let plan_file = dir.path().join("psycopg.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan).expect("json")).expect("write plan");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg/psycopg_client.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script).arg(addr.to_string()).arg(&token).arg(&plan_file);
    let out = tokio::task::block_in_place(|| cmd.output()).expect("run the psycopg client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("psycopg: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Grafana's dashboard from the docs: each panel's query over the wire.
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/leakwatch.json");
    let mut cmd = std::process::Command::new(set_by_make_test("LEAKWATCH_TEST_PYTHON", "", "postgres_"));
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg/grafana_panels.py"))
        .arg(addr.to_string())
        .arg(&token)
        .arg(&dashboard);
    let out = tokio::task::block_in_place(|| cmd.output()).expect("run the dashboard's queries");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("grafana: ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each rule has a panel, which runs the rule as leakwatch ships it.
    let text = std::fs::read_to_string(&dashboard).expect("dashboard json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard parses");
    let panels = json["panels"].as_array().expect("panels");
    for (name, (sql, _)) in &rules {
        let title = format!("(rule {name})");
        let panel = panels
            .iter()
            .find(|p| p["title"].as_str().is_some_and(|t| t.ends_with(&title)))
            .unwrap_or_else(|| panic!("docs/grafana/leakwatch.json has no panel for rule {name}"));
        assert_eq!(panel["targets"][0]["rawSql"].as_str().map(str::trim), Some(sql.trim()), "rule {name}'s panel");
    }

    // After the collector stops, `leakwatch sql` on its data agrees.
    server.shutdown().await.expect("shutdown");
    for (sql, want) in &expected {
        let mut cmd = leakwatch();
        cmd.args(["sql", "--format", "csv", "--data-dir"]).arg(&data).args(["-c", sql]);
        let out = tokio::task::block_in_place(|| cmd.output()).expect("leakwatch sql");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: String = String::from_utf8_lossy(&out.stdout).lines().skip(1).map(|l| format!("{l}\n")).collect();
        assert_eq!(&rows, want, "leakwatch sql: {sql}");
    }
}

/// A minimal PostgreSQL client that says exactly what it sends, for
/// what real clients never send.
struct Raw(TcpStream);

/// A backend message: its type and body.
type Message = (u8, Vec<u8>);

impl Raw {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        Self(s)
    }

    /// A connection to `addr` from the loopback address `from`.
    async fn connect_from(from: std::net::Ipv4Addr, addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((from, 0))).expect("bind");
        let s = socket.connect(addr).await.expect("connect").into_std().expect("std stream");
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        Self(s)
    }

    /// Logs in on the connection `c` with `password`, as [`Raw::login`].
    fn login_on(mut c: Self, password: &str) -> (Self, Vec<Message>) {
        c.startup();
        let auth = c.read().expect("an authentication request");
        assert_eq!(auth, (b'R', vec![0, 0, 0, 3]), "asks for a clear-text password");
        let mut body = password.as_bytes().to_vec();
        body.push(0);
        c.send(b'p', &body);
        let answer = c.until_ready();
        (c, answer)
    }

    /// Whether the connection is open with nothing to read: a peek waits
    /// 300 ms.
    fn open_and_quiet(&mut self) -> bool {
        self.0.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        let mut byte = [0u8; 1];
        let quiet = matches!(self.0.peek(&mut byte), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        self.0.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        quiet
    }

    fn startup(&mut self) {
        let mut body = vec![0, 3, 0, 0];
        for (k, v) in [("user", "analyst"), ("database", "leakwatch")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = u32::try_from(body.len() + 4).expect("len").to_be_bytes().to_vec();
        m.extend(body);
        self.0.write_all(&m).expect("startup");
    }

    fn send(&mut self, kind: u8, body: &[u8]) {
        let mut m = vec![kind];
        m.extend_from_slice(&u32::try_from(body.len() + 4).expect("len").to_be_bytes());
        m.extend_from_slice(body);
        self.0.write_all(&m).expect("send");
    }

    /// The next message, or `None` at the end of the connection.
    fn read(&mut self) -> Option<Message> {
        let mut header = [0u8; 5];
        self.0.read_exact(&mut header).ok()?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        self.0.read_exact(&mut body).ok()?;
        Some((header[0], body))
    }

    /// Messages up to ReadyForQuery or an error (included), or the end.
    fn until_ready(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = self.read() {
            let done = m.0 == b'Z' || m.0 == b'E';
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Logs in with `password`; the messages up to ReadyForQuery or the error.
    fn login(addr: SocketAddr, password: &str) -> (Self, Vec<Message>) {
        Self::login_on(Self::connect(addr), password)
    }

    fn query(&mut self, sql: &str) -> Vec<Message> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(b'Q', &body);
        let mut out = self.until_ready();
        if out.last().is_some_and(|m| m.0 == b'E') {
            out.extend(self.until_ready());
        }
        out
    }

    /// A Parse message: `sql` prepared as `name`.
    fn parse(&mut self, name: &str, sql: &str) {
        let mut body = Vec::with_capacity(name.len() + sql.len() + 4);
        for text in [name, sql] {
            body.extend_from_slice(text.as_bytes());
            body.push(0);
        }
        body.extend_from_slice(&[0, 0]);
        self.send(b'P', &body);
    }

    /// A Bind message: the statement `statement` without parameters, as
    /// the portal `portal`.
    fn bind(&mut self, portal: &str, statement: &str) {
        let mut body = Vec::new();
        for text in [portal, statement] {
            body.extend_from_slice(text.as_bytes());
            body.push(0);
        }
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        self.send(b'B', &body);
    }

    /// A Close message for the statement (`b'S'`) or portal (`b'P'`) `name`.
    fn close(&mut self, kind: u8, name: &str) {
        let mut body = vec![kind];
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        self.send(b'C', &body);
    }

    /// A Sync, and the answers up to ReadyForQuery.
    fn sync(&mut self) -> Vec<Message> {
        self.send(b'S', &[]);
        let mut out = Vec::new();
        while let Some(m) = self.read() {
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Whether the server closed the connection (a read sees its end).
    fn closed(&mut self) -> bool {
        self.read().is_none()
    }
}

/// Runs the blocking `f` (a [`Raw`] client's reads and writes) off the runtime's scheduler.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// The fields of the first error among `messages`, by their type byte.
fn error_fields(messages: &[Message]) -> Option<BTreeMap<u8, String>> {
    let (_, body) = messages.iter().find(|m| m.0 == b'E')?;
    let mut fields = BTreeMap::new();
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        fields.insert(field[0], String::from_utf8_lossy(&field[1..]).to_string());
    }
    Some(fields)
}

/// The SQLSTATE and severity of the first error among `messages`.
fn sqlstate(messages: &[Message]) -> Option<(String, String)> {
    let fields = error_fields(messages)?;
    Some((fields.get(&b'C')?.clone(), fields.get(&b'S')?.clone()))
}

fn code(messages: &[Message]) -> String {
    sqlstate(messages).map(|(c, _)| c).unwrap_or_else(|| format!("no error among {messages:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_input_gets_the_codes_clients_expect_and_frees_its_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = PgLimits {
        max_connections: 2,
        idle_timeout: Duration::from_secs(2),
        startup_timeout: Duration::from_secs(2),
        ..PgLimits::default()
    };
    let server = pg_server(dir.path(), limits).await;
    let addr = server.pg_addr.expect("PostgreSQL listener");
    let data = dir.path().join("collector");
    let token = sql_token(&data);
    let log = server.log.clone();

    // A wrong password, and an agent's kind of token: 28P01, and closed.
    for wrong in ["hunter2", "lwsql_00"] {
        let (mut c, answer) = blocking(|| Raw::login(addr, wrong));
        assert_eq!(sqlstate(&answer), Some(("28P01".into(), "FATAL".into())), "{wrong}: {answer:?}");
        assert!(blocking(|| c.closed()), "a refused login is closed");
    }

    // Logged in: a write, and a statement DataFusion cannot plan, each an
    // error the connection survives.
    let (mut c, answer) = blocking(|| Raw::login(addr, &token));
    assert_eq!(answer.last().map(|m| m.0), Some(b'Z'), "logged in: {answer:?}");
    // With one of the two slots held, refused logins one straight after
    // another each find the other free: a slot is given back before its
    // client sees the end.
    for attempt in 0..20 {
        let (mut w, answer) = blocking(|| Raw::login(addr, "hunter2"));
        assert_eq!(code(&answer), "28P01", "attempt {attempt}: {answer:?}");
        assert!(blocking(|| w.closed()), "attempt {attempt}: a refused login is closed");
    }
    for (sql, want) in [
        ("INSERT INTO flows SELECT * FROM flows", "25006"),
        ("DROP TABLE flows", "25006"),
        ("COPY flows TO '/tmp/leakwatch-pg-copy.csv'", "25006"),
        ("SELEKT 1", "42601"),
        ("SELECT * FROM no_such_table", "42P01"),
        ("SHOW no_such_setting", "42704"),
    ] {
        let answer = blocking(|| c.query(sql));
        assert_eq!(code(&answer), want, "{sql}: {answer:?}");
        assert_eq!(answer.last().map(|m| m.0), Some(b'Z'), "{sql}: the connection goes on");
    }
    assert!(!Path::new("/tmp/leakwatch-pg-copy.csv").exists());
    let answer = blocking(|| c.query("SELECT count(*) FROM flows"));
    assert!(answer.iter().any(|m| m.0 == b'D'), "still answers: {answer:?}");

    // A revoked token ends the session at its next statement.
    let (mut other, _) = blocking(|| Raw::login(addr, &token));
    leakwatch_collector::admin::revoke_sql_tokens(&log, "analyst@example.org", "").expect("revoke");
    let answer = blocking(|| other.query("SELECT 1"));
    assert_eq!(sqlstate(&answer), Some(("28P01".into(), "FATAL".into())), "{answer:?}");
    assert!(blocking(|| other.closed()));
    let (_, answer) = blocking(|| Raw::login(addr, &token));
    assert_eq!(code(&answer), "28P01", "a revoked token no longer logs in");
    drop(c);

    let token = sql_token(&data);
    // An unsupported protocol message (a function call): 08P01, closed.
    let (mut c, _) = blocking(|| Raw::login(addr, &token));
    blocking(|| c.send(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
    let answer = blocking(|| c.until_ready());
    assert_eq!(sqlstate(&answer), Some(("08P01".into(), "FATAL".into())), "{answer:?}");
    assert!(blocking(|| c.closed()));

    // A message longer than the limit: refused at its header (54000).
    let (mut c, _) = blocking(|| Raw::login(addr, &token));
    let len = u32::try_from(MAX_MESSAGE_BYTES + 1).expect("len");
    blocking(|| c.0.write_all(&[b'Q', (len >> 24) as u8, (len >> 16) as u8, (len >> 8) as u8, len as u8, b'S']))
        .expect("header");
    let answer = blocking(|| c.until_ready());
    assert_eq!(sqlstate(&answer), Some(("54000".into(), "FATAL".into())), "{answer:?}");
    assert!(blocking(|| c.closed()));

    // Clients that never send hold the two slots; a third is refused
    // (53300); once they are dropped, a client logs in again.
    let (mut silent, mut half) = (Raw::connect(addr), Raw::connect(addr));
    blocking(|| half.startup());
    assert_eq!(blocking(|| half.read()).map(|m| m.0), Some(b'R'));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = Raw::connect(addr);
    let answer = blocking(|| third.until_ready());
    assert_eq!(sqlstate(&answer), Some(("53300".into(), "FATAL".into())), "{answer:?}");
    // Silent from the start: dropped; silent at the password: told 57014.
    assert!(blocking(|| silent.closed()), "a client that never sends is dropped");
    let answer = blocking(|| half.until_ready());
    assert_eq!(sqlstate(&answer), Some(("57014".into(), "FATAL".into())), "{answer:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c, answer) = blocking(|| Raw::login(addr, &token));
    assert_eq!(answer.last().map(|m| m.0), Some(b'Z'), "the slots are free again: {answer:?}");
    // Idle past the idle timeout: 57P05, closed, the slot freed.
    let answer = blocking(|| c.until_ready());
    assert_eq!(sqlstate(&answer), Some(("57P05".into(), "FATAL".into())), "{answer:?}");
    assert!(blocking(|| c.closed()));
    server.shutdown().await.expect("shutdown");
}

/// One address that connects and never logs in holds no more than its
/// share of the slots: an analyst elsewhere still logs in. Logged-in
/// connections (a Grafana pool from one address) are not held to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_address_cannot_hold_every_slot_without_logging_in() {
    use std::net::Ipv4Addr;
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = PgLimits { max_connections: 12, max_logging_in_per_client: 3, ..PgLimits::default() };
    let server = pg_server(dir.path(), limits).await;
    let addr = server.pg_addr.expect("PostgreSQL listener");
    let token = sql_token(&dir.path().join("collector"));
    let attacker = Ipv4Addr::new(127, 0, 0, 2);

    // As many connections as there are slots, from one address, silent:
    // three are held, the rest told 53300 naming the address and bound.
    let mut silent = Vec::new();
    for _ in 0..12 {
        silent.push(Raw::connect_from(attacker, addr).await);
    }
    let (mut held, mut refused) = (Vec::new(), 0);
    for mut c in silent {
        if blocking(|| c.open_and_quiet()) {
            held.push(c);
            continue;
        }
        let answer = blocking(|| c.until_ready());
        let fields = error_fields(&answer).unwrap_or_else(|| panic!("no error: {answer:?}"));
        assert_eq!(fields.get(&b'C').map(String::as_str), Some("53300"), "{fields:?}");
        let message = fields.get(&b'M').cloned().unwrap_or_default();
        assert!(message.contains("127.0.0.2") && message.contains("at most 3"), "{message}");
        refused += 1;
    }
    assert_eq!((held.len(), refused), (3, 9), "held and refused of the silent connections");

    // An analyst from elsewhere logs in, six times at once.
    let mut pool = Vec::new();
    for i in 0..6 {
        let (mut c, answer) = blocking(|| Raw::login(addr, &token));
        assert_eq!(answer.last().map(|m| m.0), Some(b'Z'), "login {i}: {answer:?}");
        let rows = blocking(|| c.query("SELECT 40 + 2"));
        assert!(rows.iter().any(|m| m.0 == b'D'), "login {i}: {rows:?}");
        pool.push(c);
    }
    drop(pool);

    // The silent ones gone, the address logs in more than three times at
    // once: a connection leaves the bound as it logs in.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut pool = Vec::new();
    for i in 0..5 {
        let c = Raw::connect_from(attacker, addr).await;
        let (c, answer) = blocking(|| Raw::login_on(c, &token));
        assert_eq!(answer.last().map(|m| m.0), Some(b'Z'), "login {i} from 127.0.0.2: {answer:?}");
        pool.push(c);
    }
    drop(pool);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_only_when_the_collector_has_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = crate::self_signed_localhost(dir.path());
    let data = dir.path().join("collector");
    let config = ServeConfig {
        tls: Some((cert.clone(), key)),
        pg_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..crate::serve_config(&data)
    };
    let server = Server::start(config).await.expect("start with TLS");
    let port = server.pg_addr.expect("PostgreSQL listener").port();
    let now = chrono::Utc::now().timestamp();
    let token = leakwatch_collector::admin::create_sql_token(&server.log, "analyst", now + 3600, now).expect("token");
    let verified = format!("host=localhost port={port} sslmode=verify-full sslrootcert={}", cert.display());
    let out = psql_with(&verified, &token, "SELECT 40 + 2");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{}", String::from_utf8_lossy(&out.stderr));
    // In clear, the token is not even asked for.
    let out = psql_with(&format!("host=localhost port={port} sslmode=disable"), &token, "SELECT 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sslmode=require"), "{err}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_query_past_its_time_or_cancelled_gets_57014() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ServeConfig {
        pg_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        query: leakwatch_query::QueryConfig { timeout: Duration::from_secs(2), ..Default::default() },
        ..crate::serve_config(&dir.path().join("collector"))
    };
    let server = Server::start(config).await.expect("start");
    run_pipeline(&server, dir.path(), Some(60), None).await.expect("fleet through agent and collector");
    let addr = server.pg_addr.expect("PostgreSQL listener");
    let token = sql_token(&dir.path().join("collector"));
    // Tens of millions of joined rows to add up: past two seconds.
    let endless = "SELECT sum(a.duration_s * b.duration_s * c.duration_s) FROM flows a \
                   JOIN flows b ON a.vendor = b.vendor JOIN flows c ON b.vendor = c.vendor";

    let (mut c, _) = blocking(|| Raw::login(addr, &token));
    let started = std::time::Instant::now();
    let answer = blocking(|| c.query(endless));
    assert_eq!(code(&answer), "57014", "{answer:?}");
    let said = String::from_utf8_lossy(&answer.iter().find(|m| m.0 == b'E').expect("error").1).to_string();
    assert!(said.contains("timed out"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(30), "stopped at its time limit: {:?}", started.elapsed());
    assert_eq!(answer.last().map(|m| m.0), Some(b'Z'), "the connection goes on");

    // A cancel request from another connection, with the key the login gave.
    let (mut c, login) = blocking(|| Raw::login(addr, &token));
    let (_, key) = login.iter().find(|m| m.0 == b'K').expect("backend key data");
    let mut body = vec![b'Q'];
    let sql = format!("{endless}\0");
    body.extend_from_slice(&u32::try_from(sql.len() + 4).expect("len").to_be_bytes());
    body.extend_from_slice(sql.as_bytes());
    blocking(|| c.0.write_all(&body)).expect("query");
    std::thread::sleep(Duration::from_millis(300));
    let mut cancel = u32::try_from(8 + key.len()).expect("len").to_be_bytes().to_vec();
    cancel.extend_from_slice(&[0x04, 0xd2, 0x16, 0x2e]);
    cancel.extend_from_slice(key);
    let started = std::time::Instant::now();
    blocking(|| TcpStream::connect(addr).and_then(|mut s| s.write_all(&cancel))).expect("cancel request");
    let answer = blocking(|| c.until_ready());
    assert_eq!(code(&answer), "57014", "{answer:?}");
    let said = String::from_utf8_lossy(&answer.iter().find(|m| m.0 == b'E').expect("error").1).to_string();
    assert!(said.contains("canceling statement due to user request"), "cancelled, not timed out: {said}");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_prepared_statements_and_portals_are_bounded_per_connection() {
    use leakwatch_collector::pg::session::{MAX_PREPARED, MAX_PREPARED_BYTES};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ServeConfig {
        pg_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..crate::serve_config(&dir.path().join("collector"))
    };
    let server = Server::start(config).await.expect("start");
    let addr = server.pg_addr.expect("PostgreSQL listener");
    let now = chrono::Utc::now().timestamp();
    let token = leakwatch_collector::admin::create_sql_token(&server.log, "analyst", now + 3600, now).expect("token");
    let parsed = |answer: &[Message]| answer.iter().filter(|m| m.0 == b'1').count();

    let (mut c, _) = blocking(|| Raw::login(addr, &token));
    let answer = blocking(|| {
        for i in 0..MAX_PREPARED {
            c.parse(&format!("s{i}"), "SELECT 1");
        }
        c.sync()
    });
    assert_eq!((parsed(&answer), sqlstate(&answer)), (MAX_PREPARED, None), "as many as the bound are held");
    let answer = blocking(|| {
        c.parse("one_more", "SELECT 1");
        c.sync()
    });
    assert_eq!(code(&answer), "54000", "one more is refused: {answer:?}");
    // Closing one makes room; the unnamed statement never counts.
    let answer = blocking(|| {
        c.close(b'S', "s0");
        c.parse("one_more", "SELECT 1");
        c.parse("", "SELECT 2");
        c.sync()
    });
    assert_eq!((parsed(&answer), sqlstate(&answer)), (2, None), "{answer:?}");
    assert_eq!(code(&blocking(|| c.query("DEALLOCATE nonesuch"))), "26000");
    let answer = blocking(|| c.query("DEALLOCATE ALL"));
    assert_eq!(sqlstate(&answer), None, "{answer:?}");

    // Their text is bounded too: statements of the longest SQL fit until
    // their bytes reach the bound.
    let long = format!("SELECT 1{}", " ".repeat(leakwatch_collector::pg::MAX_SQL_BYTES - 8));
    let fit = MAX_PREPARED_BYTES / long.len();
    let answer = blocking(|| {
        for i in 0..fit {
            c.parse(&format!("long{i}"), &long);
        }
        c.sync()
    });
    assert_eq!((parsed(&answer), sqlstate(&answer)), (fit, None));
    let answer = blocking(|| {
        c.parse("too_long", &long);
        c.sync()
    });
    assert_eq!(code(&answer), "54000", "{answer:?}");
    assert!(blocking(|| c.query("SELECT 1")).iter().any(|m| m.0 == b'D'), "the connection goes on");

    // Named portals too: each may hold a query read part by part.
    use leakwatch_collector::pg::session::MAX_PORTALS;
    let bound = |answer: &[Message]| answer.iter().filter(|m| m.0 == b'2').count();
    let answer = blocking(|| {
        c.query("DEALLOCATE ALL");
        c.parse("one", "SELECT 1");
        for i in 0..MAX_PORTALS {
            c.bind(&format!("p{i}"), "one");
        }
        c.sync()
    });
    assert_eq!((bound(&answer), sqlstate(&answer)), (MAX_PORTALS, None), "{answer:?}");
    let answer = blocking(|| {
        c.bind("one_more", "one");
        c.sync()
    });
    assert_eq!(code(&answer), "54000", "{answer:?}");
    let answer = blocking(|| {
        c.close(b'P', "p0");
        c.bind("one_more", "one");
        c.sync()
    });
    assert_eq!((bound(&answer), sqlstate(&answer)), (1, None), "{answer:?}");
    server.shutdown().await.expect("shutdown");
}
