//! Rules benchmark (`make bench`): the six detection rules over at least
//! 50 M simulated records in Parquet, on leakwatch's session factory
//! (DataFusion) and, on the same files with the same SQL, on DuckDB (its
//! Python package). Goal: leakwatch <= 1.0x DuckDB's time on every rule.
//!
//! The data: the built-in fleet goes through agent and collector once;
//! its rows are then copied with fresh device, boot and agent pseudonyms
//! (so every pattern and decoy scales with the fleet) until there are
//! `BENCH_RECORDS` rows, written as compaction writes merged runs: the
//! flusher's Parquet settings, files of at most a million rows
//! (`COMPACT_RUN_LIMIT`), each sorted as the flusher sorts its rows.
//! Each rule runs `BENCH_RUNS` times on each engine (default 3, after one
//! warm-up run each), the engines taking turns (leakwatch, DuckDB,
//! leakwatch, ...) so that a slow minute of the machine falls on both; the
//! best time counts, and the lowest and highest ratio of one turn show how
//! far a single comparison moves.
//!
//! Then the same rules on Apache DataFusion Ballista, a scheduler with one
//! executor and then with two (in this process, on loopback; the machine's
//! cores split among the executors), against leakwatch on one node. On a
//! machine this small that shows the cost of distributing a query
//! (stages, shuffle files, Arrow Flight between executors), not a speed-up.
//!
//! Environment: `BENCH_RECORDS` (default 50,000,000), `BENCH_DIR` (default
//! the system temp dir), `BENCH_KEEP` (set: keep the files),
//! `BENCH_PYTHON` (a Python with `duckdb`; without it DuckDB is skipped
//! and said so), `BENCH_MEMORY_MIB` (leakwatch's query
//! memory limit, default 16384), `BENCH_RUNS`, `BENCH_BALLISTA_RUNS`
//! (default 1; 0 skips Ballista), `BENCH_BALLISTA_EXECUTORS` (the
//! clusters' numbers of executors, comma-separated, default `1,2`), `BENCH_RULES` (rule names, comma-separated,
//! to run only those), `BENCH_FLOWS` (a `flows` directory an earlier run
//! kept with `BENCH_KEEP`: time the rules on its files instead of writing
//! new ones), `BENCH_VARIANTS` (a directory of rule files: each
//! `<rule>.sql` or `<rule>.<label>.sql` in it, its SQL filled in with the
//! built-in rule's parameters, is timed too, in the same turns as the
//! built-in SQL and on both engines, and printed under it as "variant
//! <label>"; how a rewrite of a rule is judged) and `BENCH_EXPLAIN` (set:
//! print each timed SQL's plan with its metrics, `EXPLAIN ANALYZE`, first).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Copies, bench_dir, dir_bytes, env_or, replicate};
use leakwatch_query::rules::builtin_rules;
use leakwatch_query::{FilesOnly, FlowStore, QueryConfig, SessionFactory};

/// DuckDB in a Python process of its own (`benches/duckdb_rules.py`),
/// running one rule each time it is asked.
struct DuckDb {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl DuckDb {
    fn start(python: &str, flows: &Path, sql_dir: &Path) -> Result<Self, String> {
        use std::process::{Command, Stdio};
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/duckdb_rules.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(flows)
            .arg(sql_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{python}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes to the DuckDB script".into());
        };
        Ok(Self { child, stdin, stdout: std::io::BufReader::new(stdout) })
    }

    /// One run of `rule` (its SQL in the script's SQL directory): seconds
    /// and rows.
    fn run(&mut self, rule: &str) -> Result<(f64, u64), String> {
        use std::io::{BufRead as _, Write as _};
        writeln!(self.stdin, "{rule}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("to the DuckDB script: {e}"))?;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => return Err(format!("the DuckDB script ended on {rule} (its error is above)")),
            Ok(_) => {}
            Err(e) => return Err(format!("from the DuckDB script: {e}")),
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{line}: {e}"))?;
        match (v["seconds"].as_f64(), v["rows"].as_u64()) {
            (Some(secs), Some(rows)) => Ok((secs, rows)),
            _ => Err(format!("unexpected line {line}")),
        }
    }
}

impl Drop for DuckDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One engine's runs of one rule: each run's time (warm-up left out) and
/// the rows of the last.
#[derive(Default)]
struct Runs {
    rows: u64,
    each: Vec<f64>,
}

impl Runs {
    fn add(&mut self, secs: f64, rows: u64) {
        self.rows = rows;
        self.each.push(secs);
    }

    /// The best (lowest) time.
    fn best(&self) -> f64 {
        self.each.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// Width of the tables' first column: a rule's name, or a variant's
/// ("  variant LABEL", for labels of up to 17 characters).
const NAME_WIDTH: usize = 28;

/// One SQL text timed on both engines: a built-in rule's, or a variant of
/// it (`BENCH_VARIANTS`).
struct Entry {
    /// The name its SQL file has in the DuckDB script's directory.
    label: String,
    /// What heads its line of the table.
    shown: String,
    sql: String,
    mine: Runs,
    theirs: Runs,
}

impl Entry {
    fn new(label: &str, shown: String, rule: &leakwatch_query::rules::Rule, sql_dir: &Path) -> Self {
        let sql = rule.render(&BTreeMap::new()).unwrap_or_else(|e| panic!("{label}: {e}"));
        std::fs::write(sql_dir.join(format!("{label}.sql")), &sql).expect("write sql");
        Self { label: label.to_string(), shown, sql, mine: Runs::default(), theirs: Runs::default() }
    }

    /// Its line of the table.
    fn print(&self) {
        let name = &self.shown;
        let (mine, theirs) = (&self.mine, &self.theirs);
        if theirs.each.len() == mine.each.len() {
            // Each turn's ratio, lowest to highest: how far one
            // comparison moves on this machine.
            let turns: Vec<f64> = mine.each.iter().zip(&theirs.each).map(|(m, t)| m / t).collect();
            let (low, high) = turns.iter().fold((f64::INFINITY, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
            println!(
                "  {:<NAME_WIDTH$} {:>12.3} {:>12.3} {:>8.2} {:>14} {:>14}",
                name,
                mine.best(),
                theirs.best(),
                mine.best() / theirs.best(),
                format!("{low:.2}-{high:.2}"),
                format!("{}/{}", mine.rows, theirs.rows)
            );
        } else {
            let dash = "-";
            let (best, rows) = (mine.best(), mine.rows);
            println!("  {name:<NAME_WIDTH$} {best:>12.3} {dash:>12} {dash:>8} {dash:>14} {rows:>14}");
        }
    }
}

/// The variants of rule `name` in `dir`: its files `<name>.sql` and
/// `<name>.<label>.sql`, each with its file stem, its label (empty for
/// `<name>.sql`) and its text, in name order.
fn variant_files(dir: &Path, name: &str) -> Vec<(String, String, String)> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("BENCH_VARIANTS={}: {e}", dir.display()));
    let mut found: Vec<(String, String, String)> = entries
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().into_string().ok()?;
            let stem = file.strip_suffix(".sql")?;
            let label = match stem.strip_prefix(name)? {
                "" => "",
                rest => rest.strip_prefix('.')?,
            };
            let text = std::fs::read_to_string(entry.path()).unwrap_or_else(|e| panic!("{file}: {e}"));
            Some((stem.to_string(), label.to_string(), text))
        })
        .collect();
    found.sort();
    found
}

/// The built-in rules named in `BENCH_RULES` (comma-separated; all but
/// `outside_mud` when unset), to time or profile some of them alone.
fn chosen_rules() -> Vec<leakwatch_query::rules::Rule> {
    let names = std::env::var("BENCH_RULES").unwrap_or_default();
    let names: Vec<&str> = names.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    // outside_mud reads the MUD files an operator loaded: none here, so it
    // would time an empty table (and DuckDB has no mud_allowed).
    let rules: Vec<_> = builtin_rules()
        .into_iter()
        .filter(|r| if names.is_empty() { r.name != "outside_mud" } else { names.contains(&r.name.as_str()) })
        .collect();
    assert!(!rules.is_empty(), "BENCH_RULES={names:?} names no built-in rule");
    rules
}

fn main() {
    // The binary's allocator setting (see `src/main.rs`).
    leakwatch_collector::allocator::keep_freed_memory_longer();
    let target: usize = env_or("BENCH_RECORDS", 50_000_000);
    let runs: usize = env_or("BENCH_RUNS", 3usize).max(1);
    let memory_mib: usize = env_or("BENCH_MEMORY_MIB", 16_384);
    let dir = bench_dir();
    let rt = leakwatch_query::query_runtime_builder().build().expect("runtime");
    rt.block_on(async {
        let flows = match std::env::var_os("BENCH_FLOWS") {
            Some(kept) => {
                let flows = std::path::PathBuf::from(kept);
                println!("rules: the files in {} (BENCH_FLOWS), {:.2} GB of Parquet", flows.display(), dir_bytes(&flows) as f64 / 1e9);
                flows
            }
            None => {
                let flows = dir.path().join("bench/flows");
                let Copies { rows, copies, base_rows, bytes, elapsed } = replicate(dir.path(), &flows, target).await;
                println!(
                    "rules: {rows} records ({copies} copies of the {base_rows}-record simulated fleet), {:.2} GB of Parquet, written in {elapsed:.0?}",
                    bytes as f64 / 1e9,
                );
                flows
            }
        };

        let config = QueryConfig {
            memory_limit_bytes: memory_mib << 20,
            total_memory: leakwatch_query::memory::QueryMemory::at_least(memory_mib << 20),
            timeout: Duration::from_secs(3600),
            ..QueryConfig::default()
        };
        let store = FlowStore::local(flows.parent().expect("the flows directory's parent")).expect("store");
        let sessions = SessionFactory::new(config.clone(), store.clone(), Arc::new(FilesOnly));
        let sql_dir = dir.path().join("sql");
        std::fs::create_dir_all(&sql_dir).expect("sql dir");
        let mut duck = match std::env::var("BENCH_PYTHON") {
            Ok(python) => match DuckDb::start(&python, &flows, &sql_dir) {
                Ok(duck) => Some(duck),
                Err(e) => {
                    println!("  DuckDB failed: {e}");
                    None
                }
            },
            Err(_) => {
                println!("  DuckDB skipped: BENCH_PYTHON is not set (`make bench` sets it)");
                None
            }
        };
        println!(
            "  {:<NAME_WIDTH$} {:>12} {:>12} {:>8} {:>14} {:>14}   (best of {runs} after a warm-up, the engines taking turns; goal ratio <= 1.0)",
            "rule", "leakwatch s", "DuckDB s", "ratio", "each turn", "rows lw/duck"
        );
        let mut ours = BTreeMap::new();
        let variants = std::env::var_os("BENCH_VARIANTS").map(std::path::PathBuf::from);
        for rule in chosen_rules() {
            let mut entries = vec![Entry::new(&rule.name, rule.name.clone(), &rule, &sql_dir)];
            for (stem, label, text) in variants.as_deref().map(|d| variant_files(d, &rule.name)).unwrap_or_default() {
                // Its header lines are SQL comments; the built-in rule's
                // parameters fill its placeholders.
                let variant = leakwatch_query::rules::Rule { sql: text, ..rule.clone() };
                let shown = if label.is_empty() { "  variant".to_string() } else { format!("  variant {label}") };
                entries.push(Entry::new(&format!("{stem}.variant"), shown, &variant, &sql_dir));
            }
            if std::env::var_os("BENCH_EXPLAIN").is_some() {
                for entry in &entries {
                    let session = sessions.session().await.expect("session");
                    let plan = session.sql(&format!("EXPLAIN ANALYZE {}", entry.sql)).await.expect("explain");
                    println!("{}:\n{}", entry.label, arrow::util::pretty::pretty_format_batches(&plan).expect("format"));
                }
            }
            // Turn 0 warms both up and is not counted.
            for turn in 0..=runs {
                for entry in &mut entries {
                    let session = sessions.session().await.expect("session");
                    let t0 = Instant::now();
                    let batches = session.sql(&entry.sql).await.unwrap_or_else(|e| panic!("{}: {e}", entry.label));
                    let secs = t0.elapsed().as_secs_f64();
                    if turn > 0 {
                        entry.mine.add(secs, batches.iter().map(|b| b.num_rows() as u64).sum());
                    }
                    if let Some(d) = duck.as_mut() {
                        match d.run(&entry.label) {
                            Ok((secs, rows)) if turn > 0 => entry.theirs.add(secs, rows),
                            Ok(_) => {}
                            Err(e) => {
                                println!("  DuckDB failed: {e}");
                                duck = None;
                            }
                        }
                    }
                }
            }
            for entry in &entries {
                entry.print();
            }
            ours.insert(rule.name.clone(), (entries[0].mine.best(), entries[0].mine.rows));
        }
        drop(duck);
        // Step tables larger than the in-memory share of the query memory.
        let on_disk = leakwatch_query::step_tables_on_disk();
        if on_disk > 0 {
            println!("  common table expressions kept on disk (too large for memory): {on_disk}");
        }

        let ballista_runs: usize = env_or("BENCH_BALLISTA_RUNS", 1usize);
        if ballista_runs == 0 {
            println!("  Ballista skipped: BENCH_BALLISTA_RUNS=0");
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut clusters = Vec::new();
        let counts = std::env::var("BENCH_BALLISTA_EXECUTORS").unwrap_or_else(|_| "1,2".into());
        let counts: Vec<usize> = counts
            .split(',')
            .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("BENCH_BALLISTA_EXECUTORS={counts}: numbers of executors, comma-separated")))
            .collect();
        for executors in counts {
            let slots = (cores / executors).max(1);
            let url = leakwatch_query::ballista::start_local_cluster(&store, executors, slots)
                .await
                .expect("Ballista cluster");
            let sessions = SessionFactory::new(QueryConfig { ballista: Some(url), ..config.clone() }, store.clone(), Arc::new(FilesOnly));
            let mut times = BTreeMap::new();
            for rule in chosen_rules() {
                let sql = rule.render(&BTreeMap::new()).expect("render");
                let mut best = f64::INFINITY;
                let mut found = 0;
                for _ in 0..ballista_runs {
                    let session = sessions.session().await.expect("session");
                    let t0 = Instant::now();
                    let batches = session.sql(&sql).await.unwrap_or_else(|e| panic!("rule {} on Ballista: {e}", rule.name));
                    best = best.min(t0.elapsed().as_secs_f64());
                    found = batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
                }
                times.insert(rule.name.clone(), (best, found));
            }
            clusters.push((executors, slots, times));
        }
        let described: Vec<String> =
            clusters.iter().map(|(n, slots, _)| format!("{n} executor(s) x {slots} task slots")).collect();
        println!(
            "  Ballista, in-process scheduler with {} (best of {ballista_runs}; on {cores} cores this is overhead, not speed-up):",
            described.join(", then ")
        );
        let heads: String = clusters.iter().map(|(n, _, _)| format!(" {:>12} {:>8}", format!("{n} exec s"), "ratio")).collect();
        println!("  {:<NAME_WIDTH$} {:>12}{heads} {:>6}", "rule", "leakwatch s", "rows");
        for (rule, (secs, found)) in &ours {
            let per: Vec<(f64, u64)> = clusters.iter().map(|(_, _, t)| t[rule]).collect();
            let same = per.iter().all(|(_, rows)| rows == found);
            let cells: String = per.iter().map(|(t, _)| format!(" {t:>12.3} {:>8.2}", t / secs)).collect();
            println!("  {rule:<NAME_WIDTH$} {secs:>12.3}{cells} {:>6}", if same { "same" } else { "DIFFER" });
        }
    });
}
