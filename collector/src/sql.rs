//! `leakwatch sql`: read-only SQL and detection rules over a data
//! directory, also while `leakwatch serve` runs on it (the log is opened as
//! a RocksDB secondary instance).

use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::sync::Arc;

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

/// Runs `sql` in a fresh session and renders the result.
pub async fn run_statement(sessions: &SessionFactory, sql: &str, format: OutputFormat) -> Result<String> {
    let session = sessions.session().await?;
    let batches = session.sql(sql).await?;
    Ok(render(&batches, format)?)
}

/// Runs the built-in rule `name` with `params`.
pub async fn run_rule(
    sessions: &SessionFactory,
    name: &str,
    params: &BTreeMap<String, String>,
    format: OutputFormat,
) -> Result<String> {
    let sql = rule(name)?.render(params)?;
    run_statement(sessions, &sql, format).await
}

/// Lists the built-in rules.
pub fn describe_rules() -> String {
    builtin_rules().iter().map(|r| r.describe()).collect::<Vec<_>>().join("\n")
}

/// The interactive console: statements end with `;`, `\q` quits.
pub async fn console(sessions: &SessionFactory, format: OutputFormat) -> Result<()> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprintln!(
            "leakwatch SQL console (read-only). Tables: flows, devices, boots. End statements with ';', \\q quits."
        );
    }
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
        pending.push_str(&line);
        pending.push('\n');
        if trimmed.ends_with(';') {
            let sql = std::mem::take(&mut pending);
            match run_statement(sessions, sql.trim().trim_end_matches(';'), format).await {
                Ok(out) => println!("{out}"),
                Err(e) => eprintln!("error: {e}"),
            }
        }
    }
    if !pending.trim().is_empty() {
        match run_statement(sessions, pending.trim().trim_end_matches(';'), format).await {
            Ok(out) => println!("{out}"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}
