//! The `leakwatch` binary: read-only SQL, and the demo.

use crate::{TestServer, leakwatch};

#[test]
fn plain_text_off_loopback_needs_allow_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = leakwatch()
        .args(["serve", "--grpc-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--grpc-listen 0.0.0.0:0") && stderr.contains("--allow-plaintext"), "{stderr}");
}

#[tokio::test]
async fn sql_that_writes_is_refused_and_creates_no_file() {
    let t = TestServer::start().await;
    let data = t.dir.path().join("data");
    let cwd = tempfile::tempdir().expect("tempdir");
    let statements = [
        "COPY (SELECT 1) TO 'x.csv'",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 'y.csv'",
        "CREATE TABLE z AS SELECT 1",
        "INSERT INTO flows SELECT * FROM flows",
        "SET datafusion.execution.batch_size = 1",
        "SELECT * FROM generate_series(1, 1000000000)",
    ];
    for sql in statements {
        let out = leakwatch()
            .current_dir(cwd.path())
            .args(["sql", "--data-dir"])
            .arg(&data)
            .args(["-c", sql])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sql} must fail");
        assert!(stderr.starts_with("error: "), "{sql}: {stderr}");
        if !sql.contains("generate_series") {
            assert!(stderr.contains("read-only"), "{sql}: {stderr}");
        }
    }
    let left: Vec<_> = std::fs::read_dir(cwd.path()).expect("read").collect();
    assert!(left.is_empty(), "files were created: {left:?}");
    let ok = leakwatch()
        .args(["sql", "--format", "csv", "--data-dir"])
        .arg(&data)
        .args(["-c", "SELECT 1 AS one"])
        .output()
        .expect("run");
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "one\n1");
}

#[test]
fn demo_once_finds_the_seed_case_and_not_the_decoy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = || {
        leakwatch()
            .args(["demo", "--once", "--devices", "60", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("run demo")
    };
    let out = demo();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ") && !l.contains("vendor")).collect();
    let first = rows.first().unwrap_or_else(|| panic!("no findings:\n{stdout}"));
    assert!(
        first.contains("Redmi 1S") && first.contains("api.account.xiaomi.com") && first.contains("cloud_account=off"),
        "{stdout}"
    );
    for decoy in ["gstatic", "time.android.com", "google.com"] {
        assert!(!stdout.contains(decoy), "decoy {decoy} reported:\n{stdout}");
    }
    // Running it again re-sends the same batches: all duplicates, same table.
    let again = demo();
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);
    assert!(String::from_utf8_lossy(&again.stderr).contains("collector stored 0 new records"));
}

#[tokio::test]
async fn console_commands_scripts_and_out_files() {
    use std::io::Write as _;
    let t = TestServer::start().await;
    let data = t.dir.path().join("data");
    // The console over stdin: backslash commands and a multi-line statement.
    let mut child = leakwatch()
        .args(["sql", "--data-dir"])
        .arg(&data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("console");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            b"\\d\n\\d devices\n\\format csv\nSELECT 40 + 2\n  AS answer;\n\\rules\n\\nope\n\\format markdown\n\\limit 2\n\
              SELECT v FROM (VALUES (1), (2), (3), (4), (5)) AS t(v) ORDER BY v;\n\\format ndjson\nSELECT 'a|b' AS s;\n\\q\n",
        )
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for want in ["flows", "boots", "device_pseudonym", "answer\n42", "boot_phone_home"] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    assert!(stderr.contains("unknown command"), "{stderr}");
    // Markdown, two rows of five, and the console says what it left out.
    assert!(stdout.contains("| v |\n| --- |\n| 1 |\n| 2 |\n{\"s\":\"a|b\"}"), "{stdout}");
    assert!(stderr.contains("(3 more rows not shown: \\limit N shows up to N"), "{stderr}");

    // Tab completion's words, read from the session as the console reads
    // them when it opens on a terminal.
    let sessions = leakwatch_collector::sql::open_sessions(&data, &t.dir.path().join("scratch"), Default::default())
        .expect("sessions");
    let words = leakwatch_collector::completion::Vocabulary::load(&sessions.into()).await;
    assert_eq!(words.complete("SELECT device_p", 15).1, ["device_pseudonym"]);
    assert!(words.complete("SELECT registrable_d", 20).1.contains(&"registrable_domain".to_string()));
    assert!(words.complete("SELECT count(*) FROM boo", 24).1.contains(&"boots".to_string()));
    assert_eq!(words.complete("\\rule boot_p", 12).1, ["boot_phone_home"]);

    // A script file, written to Parquet, CSV and JSON.
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("q.sql");
    std::fs::write(&script, "-- two statements\nSELECT 1 AS a;\nSELECT 'x' AS b, 2 AS c;\n").expect("write");
    let out = leakwatch()
        .args(["sql", "--format", "csv", "--data-dir"])
        .arg(&data)
        .arg("-f")
        .arg(&script)
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\n1\nb,c\nx,2\n");
    for ext in ["parquet", "csv", "json"] {
        let path = dir.path().join(format!("r.{ext}"));
        let out = leakwatch()
            .args(["sql", "--data-dir"])
            .arg(&data)
            .args(["-c", "SELECT 7 AS seven, 'y' AS why"])
            .arg("--out")
            .arg(&path)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("wrote 1 rows"));
        if ext == "parquet" {
            let file = std::fs::File::open(&path).expect("open");
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .expect("parquet")
                .build()
                .expect("reader");
            let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
            assert_eq!(rows, 1);
        } else {
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(text.contains('7') && text.contains('y'), "{text}");
        }
    }
    let bad = leakwatch()
        .args(["sql", "--data-dir"])
        .arg(&data)
        .args(["-c", "SELECT 1", "--out", "x.txt"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use .parquet, .csv or .json"));
}

/// Every flag `leakwatch serve --help` and `leakwatch-agent import --help`
/// list has its row in the flag table of docs/operating.md and
/// docs/agent.md, so the tables cannot fall behind the code.
#[test]
fn every_serve_and_import_flag_is_in_its_docs_flag_table() {
    let cases = [
        (leakwatch(), "serve", "operating.md"),
        (std::process::Command::new(crate::durability::agent_binary()), "import", "agent.md"),
    ];
    for (mut binary, command, page) in cases {
        let out = binary.args([command, "--help"]).output().expect("run --help");
        let help = String::from_utf8_lossy(&out.stdout);
        let docs = std::fs::read_to_string(format!("{}/../docs/{page}", env!("CARGO_MANIFEST_DIR"))).expect("docs");
        let table: String = docs.lines().filter(|l| l.starts_with("| `--")).collect::<Vec<_>>().join("\n");
        let flags: std::collections::BTreeSet<&str> = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
            .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
            .filter(|w| w.starts_with("--") && w.len() > 2 && *w != "--help")
            .collect();
        assert!(flags.len() > 10, "{help}");
        let missing: Vec<&&str> = flags.iter().filter(|f| !table.contains(&format!("`{f}"))).collect();
        assert!(missing.is_empty(), "flags of `{command}` missing from docs/{page}'s table: {missing:?}");
    }
}
