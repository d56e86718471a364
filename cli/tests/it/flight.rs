//! Flight SQL on a running collector: analysts' tokens, statements,
//! prepared statements with parameters, metadata, read-only refusal, the
//! remote console, and a real external client (ADBC from Python).

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array as _, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables};
use futures::TryStreamExt as _;
use leakwatch::demo::run_pipeline;
use leakwatch_collector::server::Server;
use leakwatch_query::format::{OutputFormat, render};
use leakwatch_query::rules::rule;
use tonic::transport::Channel;

use crate::{leakwatch, serve_config};

/// A collector with a small simulated fleet uploaded (not yet flushed in
/// part: the tail and Parquet are both read).
async fn fleet_server(dir: &Path) -> Server {
    let server = Server::start(serve_config(&dir.join("collector"))).await.expect("start");
    run_pipeline(&server, dir, Some(60), None).await.expect("fleet through agent and collector");
    server
}

/// A token from `leakwatch admin sql-token`, through the running collector.
pub fn sql_token(data: &Path) -> String {
    let mut cmd = leakwatch();
    cmd.args(["admin", "sql-token", "--name", "analyst@example.org", "--expires", "1h", "--data-dir"]).arg(data);
    let out = tokio::task::block_in_place(|| cmd.output()).expect("run admin sql-token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().expect("token line").trim().to_string()
}

async fn client(server: &Server, token: Option<&str>) -> FlightSqlServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.flight_addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = FlightSqlServiceClient::new(channel);
    if let Some(token) = token {
        client.set_token(token.to_string());
    }
    client
}

fn message(e: arrow_flight::error::FlightError) -> String {
    match e {
        arrow_flight::error::FlightError::Tonic(status) => format!("{:?}: {}", status.code(), status.message()),
        other => other.to_string(),
    }
}

/// Runs `sql` as a statement; returns the FlightInfo's schema and the
/// batches of every endpoint.
async fn statement(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<(arrow::datatypes::Schema, Vec<RecordBatch>), String> {
    let info = client.execute(sql.to_string(), None).await.map_err(message)?;
    let schema = info.clone().try_decode_schema().map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.expect("ticket")).await.map_err(message)?;
        batches.extend(stream.try_collect::<Vec<_>>().await.map_err(message)?);
    }
    Ok((schema, batches))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_serves_analysts_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = fleet_server(dir.path()).await;
    let data = dir.path().join("collector");
    let token = sql_token(&data);

    // No token, a wrong token and an agent's token are all refused.
    let err = statement(&mut client(&server, None).await, "SELECT 1").await.expect_err("no token");
    assert!(err.contains("Unauthenticated") && err.contains("sql-token"), "{err}");
    let err = statement(&mut client(&server, Some("lwsql_00")).await, "SELECT 1").await.expect_err("bad token");
    assert!(err.contains("unknown or expired SQL token"), "{err}");

    let mut c = client(&server, Some(&token)).await;

    // Statements: the FlightInfo schema is the stream's, text is Utf8.
    let session = server.sessions.session().await.expect("session");
    let boot_sql = rule("boot_phone_home").expect("rule").render(&BTreeMap::new()).expect("sql");
    for sql in [
        "SELECT vendor, model, count(*) AS flows FROM flows GROUP BY vendor, model ORDER BY vendor, model",
        "SELECT registrable_domain(domain) AS d, lower(model) AS m, arrow_cast(model, 'Utf8View') AS v FROM flows ORDER BY 1, 2 LIMIT 5",
        "SELECT * FROM devices ORDER BY device_pseudonym",
        boot_sql.as_str(),
    ] {
        let (schema, batches) = statement(&mut c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        for b in &batches {
            assert_eq!(b.schema().as_ref(), &schema, "{sql}: stream schema equals FlightInfo schema");
        }
        for f in schema.fields() {
            assert!(!matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView), "{sql}: {f:?}");
        }
        let embedded = session.sql(sql).await.expect("embedded");
        assert_eq!(
            render(&batches, OutputFormat::Csv).expect("csv"),
            render(&embedded, OutputFormat::Csv).expect("csv"),
            "{sql}: same rows over Flight SQL as embedded"
        );
    }
    let (_, boot) = statement(&mut c, &boot_sql).await.expect("rule");
    assert!(boot.iter().map(|b| b.num_rows()).sum::<usize>() > 0, "the fleet has boot_phone_home findings");

    // Read-only: refused with the console's message, nothing written.
    for sql in [
        "DROP TABLE flows",
        "COPY (SELECT 1) TO '/tmp/leakwatch-flight-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let err = statement(&mut c, sql).await.expect_err(sql);
        assert!(err.contains("InvalidArgument") && err.contains("read-only"), "{sql}: {err}");
    }
    assert!(!Path::new("/tmp/leakwatch-flight-copy.csv").exists());
    let err = c.execute_update("DELETE FROM flows".into(), None).await.map_err(message).expect_err("update");
    assert!(err.contains("read-only"), "{err}");

    // A prepared statement with a parameter.
    let model = "Redmi 1S";
    let want =
        session.sql(&format!("SELECT count(*) AS n FROM flows WHERE model = '{model}'")).await.expect("embedded count");
    let mut prepared =
        c.prepare("SELECT count(*) AS n FROM flows WHERE model = $1".into(), None).await.expect("prepare");
    assert_eq!(prepared.parameter_schema().expect("params").fields().len(), 1);
    let params =
        RecordBatch::try_from_iter([("$1", std::sync::Arc::new(StringArray::from(vec![model])) as _)]).expect("params");
    prepared.set_parameters(params).expect("bind");
    let info = prepared.execute().await.expect("execute prepared");
    let mut got = Vec::new();
    for endpoint in info.endpoint {
        got.extend(
            c.do_get(endpoint.ticket.expect("ticket"))
                .await
                .expect("do_get")
                .try_collect::<Vec<_>>()
                .await
                .expect("rows"),
        );
    }
    assert_eq!(render(&got, OutputFormat::Csv).expect("csv"), render(&want, OutputFormat::Csv).expect("csv"));
    prepared.close().await.expect("close");

    // Metadata: catalogs, schemas, tables (with schemas), table types.
    let info = c.get_db_schemas(CommandGetDbSchemas::default()).await.expect("schemas");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let schemas: Vec<RecordBatch> = c.do_get(ticket).await.expect("do_get").try_collect().await.expect("rows");
    assert!(render(&schemas, OutputFormat::Csv).expect("csv").contains("datafusion,public"));
    let request = CommandGetTables {
        catalog: Some("datafusion".into()),
        db_schema_filter_pattern: Some("public".into()),
        table_name_filter_pattern: Some("%".into()),
        table_types: vec![],
        include_schema: true,
    };
    let info = c.get_tables(request).await.expect("tables");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let tables: Vec<RecordBatch> = c.do_get(ticket).await.expect("do_get").try_collect().await.expect("rows");
    let names: Vec<String> = tables
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name("table_name").expect("table_name");
            let col = col.as_any().downcast_ref::<StringArray>().expect("utf8");
            (0..col.len()).map(|i| col.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect();
    for t in ["boots", "devices", "flows"] {
        assert!(names.iter().any(|n| n == t), "{t} in {names:?}");
    }
    let info = c.get_table_types().await.expect("table types");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let types: Vec<RecordBatch> = c.do_get(ticket).await.expect("do_get").try_collect().await.expect("rows");
    assert_eq!(render(&types, OutputFormat::Csv).expect("csv"), "table_type\nTABLE\nVIEW\n");

    // The remote console prints what the embedded one does.
    let url = format!("grpc://{}", server.flight_addr);
    let console = |remote: bool, args: &[&str]| {
        let mut cmd = leakwatch();
        cmd.arg("sql").args(args).args(["--format", "csv"]);
        if remote {
            cmd.args(["--connect", &url, "--token", &token]);
        } else {
            cmd.arg("--data-dir").arg(&data);
        }
        let out = tokio::task::block_in_place(|| cmd.output()).expect("run leakwatch sql");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        &["-c", "SELECT model, count(DISTINCT device_pseudonym) AS devices FROM flows GROUP BY model ORDER BY model"][..],
        &["--rule", "boot_phone_home"],
        &["--rule", "beaconing", "--param", "max_cv=0.2"],
        &["-c", "DROP TABLE flows"],
    ] {
        let embedded = console(false, args);
        let remote = console(true, args);
        assert_eq!(remote, embedded, "{args:?}: remote console output equals embedded");
    }

    // Revocation, through the running collector: listed by holder and
    // id, never the token; one token by id, then a holder's all; each
    // refused at once.
    let second = sql_token(&data);
    let admin = |args: &[&str]| {
        let mut cmd = leakwatch();
        cmd.arg("admin").args(args).arg("--data-dir").arg(&data);
        let out = tokio::task::block_in_place(|| cmd.output()).expect("run leakwatch admin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, listed) = admin(&["sql-tokens"]);
    assert!(ok, "{listed}");
    assert!(!listed.contains(&token) && !listed.contains(&second), "{listed}");
    let lines: Vec<&str> = listed.lines().filter(|l| l.ends_with("analyst@example.org")).collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines.iter().all(|l| l.contains(" valid ")), "{listed}");
    let id_of = |t: &str| hex::encode(&leakwatch_collector::admin::token_hash(t)[..6]);
    assert!(listed.contains(&id_of(&second)), "{listed}");
    let (ok, out) = admin(&["revoke-sql-token", "--token", &id_of(&second)]);
    assert!(ok && out.contains("revoked 1 SQL token"), "{out}");
    let err = statement(&mut client(&server, Some(&second)).await, "SELECT 1").await.expect_err("revoked");
    assert!(err.contains("unknown or expired SQL token"), "{err}");
    statement(&mut c, "SELECT 1").await.expect("the holder's other token still works");
    let (ok, out) = admin(&["revoke-sql-token", "--name", "analyst@example.org"]);
    assert!(ok && out.contains("revoked 1 SQL token of holder"), "{out}");
    let err = statement(&mut c, "SELECT 1").await.expect_err("revoked");
    assert!(err.contains("unknown or expired SQL token"), "{err}");
    let (ok, out) = admin(&["revoke-sql-token", "--name", "analyst@example.org"]);
    assert!(!ok && out.contains("no SQL token of holder"), "{out}");
    let (ok, out) = admin(&["revoke-sql-token", "--token", "abc"]);
    assert!(!ok && out.contains("8 to 64 hex digits"), "{out}");
    // Each query it ran is timed in /metrics.
    let metrics = server.metrics.render(Default::default());
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("leakwatch_query_seconds_count{front_end=\"flight_sql\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(count.is_some_and(|n| n >= 3), "{metrics}");
    server.shutdown().await.expect("shutdown");
}

/// The ADBC Flight SQL driver from Python (`make test` installs it in a
/// venv and sets LEAKWATCH_TEST_PYTHON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_client_lists_tables_runs_a_rule_and_a_prepared_statement() {
    let python = crate::set_by_make_test("LEAKWATCH_TEST_PYTHON", " (it creates the venv)", "adbc_");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = fleet_server(dir.path()).await;
    let token = sql_token(&dir.path().join("collector"));
    let session = server.sessions.session().await.expect("session");
    let boot_sql = rule("boot_phone_home").expect("rule").render(&BTreeMap::new()).expect("sql");
    let expected_rule = render(&session.sql(&boot_sql).await.expect("rule"), OutputFormat::Csv).expect("csv");
    let model = "Echo Dot";
    let expected_count = render(
        &session.sql(&format!("SELECT count(*) AS n FROM flows WHERE model = '{model}'")).await.expect("count"),
        OutputFormat::Csv,
    )
    .expect("csv");
    std::fs::write(dir.path().join("rule.sql"), &boot_sql).expect("write");
    std::fs::write(dir.path().join("rule.csv"), &expected_rule).expect("write");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/adbc/flight_sql_client.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script)
        .arg(format!("grpc://{}", server.flight_addr))
        .arg(&token)
        .arg(dir.path().join("rule.sql"))
        .arg(dir.path().join("rule.csv"))
        .arg(model)
        .arg(expected_count.lines().nth(1).expect("count row"));
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "ADBC client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("adbc: ok"), "{stdout}");
    server.shutdown().await.expect("shutdown");
}
