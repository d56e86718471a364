//! `leakwatch sql`: read-only SQL and detection rules over a data
//! directory, also while `leakwatch serve` runs on it (the log is opened as
//! a RocksDB secondary instance).

use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt as _;
use leakwatch_query::format::{OutputFormat, first_rows, render};
use leakwatch_query::rules::{builtin_rules, rule};
use leakwatch_query::{QueryConfig, SessionFactory};

use crate::completion::{ConsoleHelper, Vocabulary};
use crate::log::DurableLog;
use crate::server::{DataDir, LogTail};
use crate::{Error, Result};

/// A session factory over `data_dir`, with the log opened as a secondary
/// instance in `scratch` (a directory only this process uses).
pub fn open_sessions(data_dir: &Path, scratch: &Path, config: QueryConfig) -> Result<SessionFactory> {
    config.check().map_err(Error::Config)?;
    let dirs = DataDir::new(data_dir.to_path_buf());
    let log = DurableLog::open_secondary(&dirs.log(), scratch)?;
    Ok(SessionFactory::new(config, dirs.flow_store()?, Arc::new(LogTail::new(Arc::new(log))))
        .with_mud(leakwatch_query::mud::MudLibrary::new(dirs.mud())))
}

/// Records stored per agent and when the newest arrived, over `data_dir`
/// (also while the collector runs on it), for `leakwatch admin agents`.
pub async fn agent_records(data_dir: &Path) -> Result<BTreeMap<String, crate::admin::AgentRecords>> {
    use arrow::array::{Array as _, AsArray as _};
    let scratch = tempfile::tempdir().map_err(|e| Error::Config(format!("temporary directory: {e}")))?;
    let sessions = open_sessions(data_dir, scratch.path(), QueryConfig::default())?;
    let session = sessions.session().await?;
    let sql = "SELECT CAST(agent_id AS VARCHAR) AS agent, count(*) AS records, \
               CAST(max(received_at) AS BIGINT) AS last_ms FROM flows GROUP BY agent_id";
    let mut out = BTreeMap::new();
    for batch in session.sql(sql).await? {
        let ids = batch.column(0).as_string::<i32>();
        let records = batch.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let last = batch.column(2).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..batch.num_rows() {
            let stats = crate::admin::AgentRecords {
                records: u64::try_from(records.value(i)).unwrap_or(0),
                last_ms: if last.is_null(i) { 0 } else { last.value(i) },
            };
            out.insert(ids.value(i).to_string(), stats);
        }
    }
    Ok(out)
}

/// Parses `--param k=v` pairs.
pub fn parse_params(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| Error::Config(format!("--param {p:?}: expected NAME=VALUE")))
        })
        .collect()
}

/// Where SQL runs: embedded over a data directory, or on a collector
/// through Flight SQL. Results are the same either way.
#[derive(Debug)]
pub enum Backend {
    /// Sessions over a data directory.
    Embedded(Box<SessionFactory>),
    /// A collector's Flight SQL endpoint.
    Remote(Box<tokio::sync::Mutex<FlightSqlServiceClient<tonic::transport::Channel>>>),
}

impl From<SessionFactory> for Backend {
    fn from(sessions: SessionFactory) -> Self {
        Self::Embedded(Box::new(sessions))
    }
}

/// The server's message of a failed Flight SQL call.
fn remote_error(e: FlightError) -> Error {
    match e {
        FlightError::Tonic(status) => Error::Config(status.message().to_string()),
        other => Error::Config(format!("Flight SQL: {other}")),
    }
}

impl Backend {
    /// Connects to a collector's Flight SQL endpoint: `grpc://HOST:PORT`
    /// or `grpcs://HOST:PORT` (TLS, verified against `ca_file` or the
    /// system's roots), authorised by an analyst's `token`.
    pub async fn connect(url: &str, token: &str, ca_file: Option<&Path>) -> Result<Self> {
        let err = |e: String| Error::Config(format!("--connect {url}: {e}"));
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| err("expected grpc://HOST:PORT or grpcs://HOST:PORT".into()))?;
        let endpoint = match scheme {
            "grpc" | "http" => tonic::transport::Endpoint::from_shared(format!("http://{rest}")),
            "grpcs" | "https" => tonic::transport::Endpoint::from_shared(format!("https://{rest}")),
            other => return Err(err(format!("scheme {other:?}: use grpc or grpcs"))),
        }
        .map_err(|e| err(e.to_string()))?;
        let endpoint = if matches!(scheme, "grpcs" | "https") {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = ca_file {
                let pem = std::fs::read(ca).map_err(|e| Error::Config(format!("--ca-file {}: {e}", ca.display())))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            endpoint.tls_config(tls).map_err(|e| err(e.to_string()))?
        } else {
            endpoint
        };
        let channel = endpoint.connect().await.map_err(|e| err(format!("cannot connect: {e}")))?;
        let mut client = FlightSqlServiceClient::new(channel);
        client.set_token(token.to_string());
        Ok(Self::Remote(Box::new(tokio::sync::Mutex::new(client))))
    }

    /// Runs one read-only statement and collects its result.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        match self {
            Self::Embedded(sessions) => {
                let session = sessions.session().await?;
                Ok(session.sql(sql).await?)
            }
            Self::Remote(client) => {
                let mut client = client.lock().await;
                let info = client.execute(sql.to_string(), None).await.map_err(remote_error)?;
                let mut batches = Vec::new();
                for endpoint in info.endpoint {
                    let Some(ticket) = endpoint.ticket else { continue };
                    let stream = client.do_get(ticket).await.map_err(remote_error)?;
                    batches.extend(stream.try_collect::<Vec<_>>().await.map_err(remote_error)?);
                }
                Ok(batches)
            }
        }
    }
}

/// Runs `sql` and renders the result.
pub async fn run_statement(backend: &Backend, sql: &str, format: OutputFormat) -> Result<String> {
    Ok(render(&backend.query(sql).await?, format)?)
}

/// The SQL of the built-in rule `name` with `params` filled in.
pub fn rule_sql(name: &str, params: &BTreeMap<String, String>) -> Result<String> {
    Ok(rule(name)?.render(params)?)
}

/// Writes `batches` to `path`, in the format its extension names:
/// `.parquet` (zstd), `.csv` or `.json` (one object per line).
pub fn write_out(batches: &[RecordBatch], path: &Path) -> Result<()> {
    let err = |e: String| Error::Config(format!("--out {}: {e}", path.display()));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let bytes = match ext.as_str() {
        "csv" => render(batches, OutputFormat::Csv)?.into_bytes(),
        "json" | "jsonl" => render(batches, OutputFormat::Json)?.into_bytes(),
        "parquet" => {
            let schema = match batches.first() {
                Some(b) => b.schema(),
                None => return Err(err("the query returned no batch to take a schema from".into())),
            };
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let mut buf = Vec::new();
            let context = || format!("--out {}", path.display());
            let mut w =
                parquet::arrow::ArrowWriter::try_new(&mut buf, schema, Some(props)).map_err(Error::rows(context()))?;
            for b in batches {
                w.write(b).map_err(Error::rows(context()))?;
            }
            w.close().map_err(Error::rows(context()))?;
            buf
        }
        other => return Err(err(format!("unknown extension {other:?}: use .parquet, .csv or .json"))),
    };
    std::fs::write(path, bytes).map_err(Error::io(format!("--out {}", path.display())))
}

/// Statements of a SQL script, split at `;` that end a line.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in script.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") && pending.trim().is_empty() {
            continue;
        }
        pending.push_str(line);
        pending.push('\n');
        if trimmed.ends_with(';') {
            out.push(std::mem::take(&mut pending).trim().trim_end_matches(';').to_string());
        }
    }
    if !pending.trim().is_empty() {
        out.push(pending.trim().trim_end_matches(';').to_string());
    }
    out
}

/// Lists the built-in rules.
pub fn describe_rules() -> String {
    builtin_rules().iter().map(|r| r.describe()).collect::<Vec<_>>().join("\n")
}

const CONSOLE_HELP: &str = "\\d              list tables and views
\\d TABLE        describe a table's columns
\\rules          list the detection rules
\\rule NAME      run a rule with its defaults
\\format F       output format: table, csv, json (or ndjson) or markdown
\\limit N        show at most N rows of a result (0: all; default 1000)
\\timing         show how long each statement took (toggle)
\\q              quit
Tab completes commands, tables, columns, functions and rule names.";

/// Rows of a result the console shows unless `\limit` says otherwise.
pub const CONSOLE_ROWS: usize = 1000;

/// Where the console reads lines: an editor with history on a terminal,
/// plain lines otherwise.
enum Lines {
    Editor(Box<rustyline::Editor<ConsoleHelper, rustyline::history::DefaultHistory>>, Option<PathBuf>),
    Plain(std::io::Lines<std::io::StdinLock<'static>>),
}

/// What reading a line gave.
enum Read {
    Line(String),
    /// Ctrl-C at the prompt: drop the statement being typed.
    Interrupted,
    Eof,
}

impl Lines {
    async fn open(backend: &Backend) -> Self {
        let stdin = std::io::stdin();
        if stdin.is_terminal()
            && let Ok(mut editor) = rustyline::Editor::new()
        {
            editor.set_helper(Some(ConsoleHelper(Vocabulary::load(backend).await)));
            let history = history_path();
            if let Some(path) = &history {
                let _ = editor.load_history(path);
            }
            return Self::Editor(Box::new(editor), history);
        }
        Self::Plain(stdin.lock().lines())
    }

    fn read(&mut self, prompt: &str) -> Result<Read> {
        match self {
            Self::Editor(editor, _) => match tokio::task::block_in_place(|| editor.readline(prompt)) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    Ok(Read::Line(line))
                }
                Err(rustyline::error::ReadlineError::Interrupted) => Ok(Read::Interrupted),
                Err(rustyline::error::ReadlineError::Eof) => Ok(Read::Eof),
                Err(e) => Err(Error::Config(format!("reading the terminal: {e}"))),
            },
            Self::Plain(lines) => match lines.next() {
                Some(line) => Ok(Read::Line(line.map_err(|e| Error::Config(format!("reading stdin: {e}")))?)),
                None => Ok(Read::Eof),
            },
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if let Self::Editor(editor, Some(path)) = self {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = editor.save_history(path);
        }
    }
}

/// The console's history file: `$LEAKWATCH_SQL_HISTORY`, else
/// `$XDG_STATE_HOME/leakwatch/sql_history` (or under `~/.local/state`).
fn history_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LEAKWATCH_SQL_HISTORY").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = leakwatch_core::paths::user_path("XDG_STATE_HOME", ".local/state", "leakwatch", "sql_history", "");
    path.is_absolute().then_some(path)
}

/// The interactive console: statements end with `;` (and may span
/// lines), backslash commands as in `\\?`, `\\q` or Ctrl-D quits. Ctrl-C
/// cancels the running query, or the statement being typed, and keeps
/// the console.
pub async fn console(backend: &Backend, mut format: OutputFormat) -> Result<()> {
    let mut lines = Lines::open(backend).await;
    let tty = matches!(lines, Lines::Editor(..));
    if tty {
        eprintln!(
            "leakwatch SQL console (read-only). Tables: flows, devices, boots. End statements with ';', \\? for help, \\q quits; Ctrl-C cancels a query."
        );
    }
    let mut timing = false;
    let mut limit = CONSOLE_ROWS;
    let mut pending = String::new();
    loop {
        let prompt = match (tty, pending.is_empty()) {
            (false, _) => "",
            (true, true) => "leakwatch> ",
            (true, false) => "      ...> ",
        };
        let line = match lines.read(prompt)? {
            Read::Line(line) => line,
            Read::Interrupted => {
                pending.clear();
                continue;
            }
            Read::Eof => break,
        };
        let trimmed = line.trim();
        if pending.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit") {
            break;
        }
        if pending.is_empty() && trimmed.starts_with('\\') {
            let mut words = trimmed.trim_end_matches(';').split_whitespace();
            let sql = match (words.next(), words.next()) {
                (Some("\\?"), _) => {
                    println!("{CONSOLE_HELP}");
                    None
                }
                (Some("\\d"), None) => Some("SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name".to_string()),
                (Some("\\d"), Some(table)) => Some(format!("DESCRIBE {table}")),
                (Some("\\rules"), _) => {
                    println!("{}", describe_rules());
                    None
                }
                (Some("\\rule"), Some(name)) => match rule_sql(name, &BTreeMap::new()) {
                    Ok(sql) => Some(sql),
                    Err(e) => {
                        eprintln!("error: {e}");
                        None
                    }
                },
                (Some("\\format"), Some(f)) => {
                    match f.parse() {
                        Ok(f) => format = f,
                        Err(e) => eprintln!("error: {e}"),
                    }
                    None
                }
                (Some("\\limit"), arg) => {
                    match arg.map(str::parse::<usize>) {
                        Some(Ok(n)) => limit = n,
                        Some(Err(_)) => eprintln!("error: \\limit takes a number of rows (0: all)"),
                        None => {}
                    }
                    eprintln!("showing at most {limit} rows{}", if limit == 0 { " (0: all)" } else { "" });
                    None
                }
                (Some("\\timing"), _) => {
                    timing = !timing;
                    eprintln!("timing {}", if timing { "on" } else { "off" });
                    None
                }
                _ => {
                    eprintln!("error: unknown command {trimmed:?}; \\? lists the commands");
                    None
                }
            };
            if let Some(sql) = sql {
                run_and_print(backend, &sql, format, limit, timing).await;
            }
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        if trimmed.ends_with(';') {
            let sql = std::mem::take(&mut pending);
            run_and_print(backend, sql.trim().trim_end_matches(';'), format, limit, timing).await;
        }
    }
    if !pending.trim().is_empty() {
        run_and_print(backend, pending.trim().trim_end_matches(';'), format, limit, timing).await;
    }
    Ok(())
}

/// Prints rendered results, ending them with one newline (CSV and JSON
/// already end in one; a table does not).
pub fn print_result(text: &str) {
    if text.ends_with('\n') {
        print!("{text}");
    } else {
        println!("{text}");
    }
}

/// Runs `sql` and prints at most `limit` rows of its result (0: all),
/// saying on stderr how many it left out.
async fn run_and_print(backend: &Backend, sql: &str, format: OutputFormat, limit: usize, timing: bool) {
    let started = std::time::Instant::now();
    let shown = async {
        let (rows, left) = first_rows(&backend.query(sql).await?, limit);
        Ok::<_, Error>((render(&rows, format)?, left))
    };
    tokio::select! {
        result = shown => match result {
            Ok((out, left)) => {
                print_result(&out);
                if left > 0 {
                    eprintln!("({left} more rows not shown: \\limit N shows up to N, \\limit 0 every row)");
                }
            }
            Err(e) => eprintln!("error: {e}"),
        },
        _ = tokio::signal::ctrl_c() => eprintln!("cancelled"),
    }
    if timing {
        eprintln!("time: {:.3?}", started.elapsed());
    }
}
