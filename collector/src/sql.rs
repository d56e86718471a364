//! `leakwatch sql`: read-only SQL and detection rules over a data
//! directory, also while `leakwatch serve` runs on it (the log is opened as
//! a RocksDB secondary instance).

use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use leakwatch_query::format::{OutputFormat, render};
use leakwatch_query::rules::{builtin_rules, rule};
use leakwatch_query::{QueryConfig, SessionFactory};

use crate::log::DurableLog;
use crate::server::{DataDir, LogTail};
use crate::{Error, Result};

/// A session factory over `data_dir`, with the log opened as a secondary
/// instance in `scratch` (a directory only this process uses).
pub fn open_sessions(data_dir: &Path, scratch: &Path, config: QueryConfig) -> Result<SessionFactory> {
    let dirs = DataDir::new(data_dir.to_path_buf());
    let log = DurableLog::open_secondary(&dirs.log(), scratch)?;
    Ok(SessionFactory::new(config, dirs.store().join("flows"), Arc::new(LogTail::new(Arc::new(log)))))
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

/// Runs `sql` in a fresh session.
pub async fn query(sessions: &SessionFactory, sql: &str) -> Result<Vec<RecordBatch>> {
    let session = sessions.session().await?;
    Ok(session.sql(sql).await?)
}

/// Runs `sql` in a fresh session and renders the result.
pub async fn run_statement(sessions: &SessionFactory, sql: &str, format: OutputFormat) -> Result<String> {
    Ok(render(&query(sessions, sql).await?, format)?)
}

/// The SQL of the built-in rule `name` with `params` filled in.
pub fn rule_sql(name: &str, params: &BTreeMap<String, String>) -> Result<String> {
    Ok(rule(name)?.render(params)?)
}

/// Runs the built-in rule `name` with `params`.
pub async fn run_rule(
    sessions: &SessionFactory,
    name: &str,
    params: &BTreeMap<String, String>,
    format: OutputFormat,
) -> Result<String> {
    run_statement(sessions, &rule_sql(name, params)?, format).await
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
            let mut w =
                parquet::arrow::ArrowWriter::try_new(&mut buf, schema, Some(props)).map_err(|e| err(e.to_string()))?;
            for b in batches {
                w.write(b).map_err(|e| err(e.to_string()))?;
            }
            w.close().map_err(|e| err(e.to_string()))?;
            buf
        }
        other => return Err(err(format!("unknown extension {other:?}: use .parquet, .csv or .json"))),
    };
    std::fs::write(path, bytes).map_err(|e| err(e.to_string()))
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
\\format F       output format: table, csv or json
\\timing         show how long each statement took (toggle)
\\q              quit";

/// The interactive console: statements end with `;`, backslash commands
/// as in `\\?`, `\\q` quits.
pub async fn console(sessions: &SessionFactory, mut format: OutputFormat) -> Result<()> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprintln!(
            "leakwatch SQL console (read-only). Tables: flows, devices, boots. End statements with ';', \\? for help, \\q quits."
        );
    }
    let mut timing = false;
    let mut pending = String::new();
    let mut lines = stdin.lock().lines();
    loop {
        if tty {
            eprint!("{}", if pending.is_empty() { "leakwatch> " } else { "      ...> " });
            std::io::stderr().flush().ok();
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| Error::Config(format!("reading stdin: {e}")))?;
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
                run_and_print(sessions, &sql, format, timing).await;
            }
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        if trimmed.ends_with(';') {
            let sql = std::mem::take(&mut pending);
            run_and_print(sessions, sql.trim().trim_end_matches(';'), format, timing).await;
        }
    }
    if !pending.trim().is_empty() {
        run_and_print(sessions, pending.trim().trim_end_matches(';'), format, timing).await;
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

async fn run_and_print(sessions: &SessionFactory, sql: &str, format: OutputFormat, timing: bool) {
    let started = std::time::Instant::now();
    match run_statement(sessions, sql, format).await {
        Ok(out) => print_result(&out),
        Err(e) => eprintln!("error: {e}"),
    }
    if timing {
        eprintln!("time: {:.3?}", started.elapsed());
    }
}
