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
//! warm-up run); the best time counts.
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
//! (default 1; 0 skips Ballista), `BENCH_RULES` (rule names, comma-separated,
//! to run only those).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Copies, bench_dir, env_or, replicate};
use leakwatch_query::rules::builtin_rules;
use leakwatch_query::{FilesOnly, FlowStore, QueryConfig, SessionFactory};

/// Per rule: best seconds and rows, from the DuckDB script's JSON lines.
fn duckdb(python: &str, flows: &Path, sql_dir: &Path, runs: usize) -> Result<BTreeMap<String, (f64, u64)>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/duckdb_rules.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(flows)
        .arg(sql_dir)
        .arg(runs.to_string())
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut results = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{line}: {e}"))?;
        let (Some(rule), Some(secs), Some(rows)) = (v["rule"].as_str(), v["seconds"].as_f64(), v["rows"].as_u64())
        else {
            return Err(format!("unexpected line {line}"));
        };
        results.insert(rule.to_string(), (secs, rows));
    }
    Ok(results)
}

/// The built-in rules named in `BENCH_RULES` (comma-separated; all when
/// unset), to time or profile some of them alone.
fn chosen_rules() -> Vec<leakwatch_query::rules::Rule> {
    let names = std::env::var("BENCH_RULES").unwrap_or_default();
    let names: Vec<&str> = names.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    let rules: Vec<_> =
        builtin_rules().into_iter().filter(|r| names.is_empty() || names.contains(&r.name.as_str())).collect();
    assert!(!rules.is_empty(), "BENCH_RULES={names:?} names no built-in rule");
    rules
}

fn main() {
    let target: usize = env_or("BENCH_RECORDS", 50_000_000);
    let runs: usize = env_or("BENCH_RUNS", 3usize).max(1);
    let memory_mib: usize = env_or("BENCH_MEMORY_MIB", 16_384);
    let dir = bench_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(leakwatch_query::QUERY_THREAD_STACK)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let flows = dir.path().join("bench/flows");
        let Copies { rows, copies, base_rows, bytes, elapsed } = replicate(dir.path(), &flows, target).await;
        println!(
            "rules: {rows} records ({copies} copies of the {base_rows}-record simulated fleet), {:.2} GB of Parquet, written in {elapsed:.0?}",
            bytes as f64 / 1e9,
        );

        let config = QueryConfig { memory_limit_bytes: memory_mib << 20, timeout: Duration::from_secs(3600), ..QueryConfig::default() };
        let store = FlowStore::local(flows.parent().expect("the flows directory's parent")).expect("store");
        let sessions = SessionFactory::new(config.clone(), store.clone(), Arc::new(FilesOnly));
        let sql_dir = dir.path().join("sql");
        std::fs::create_dir_all(&sql_dir).expect("sql dir");
        let mut ours = BTreeMap::new();
        for rule in chosen_rules() {
            let sql = rule.render(&BTreeMap::new()).expect("render");
            std::fs::write(sql_dir.join(format!("{}.sql", rule.name)), &sql).expect("write sql");
            let mut best = f64::INFINITY;
            let mut found = 0;
            for _ in 0..=runs {
                let session = sessions.session().await.expect("session");
                let t0 = Instant::now();
                let batches = session.sql(&sql).await.unwrap_or_else(|e| panic!("rule {}: {e}", rule.name));
                best = best.min(t0.elapsed().as_secs_f64());
                found = batches.iter().map(|b| b.num_rows() as u64).sum();
            }
            ours.insert(rule.name.clone(), (best, found));
        }

        let python = std::env::var("BENCH_PYTHON").ok();
        let theirs = match &python {
            Some(python) => match duckdb(python, &flows, &sql_dir, runs) {
                Ok(r) => Some(r),
                Err(e) => {
                    println!("  DuckDB failed: {e}");
                    None
                }
            },
            None => {
                println!("  DuckDB skipped: BENCH_PYTHON is not set (`make bench` sets it)");
                None
            }
        };
        println!(
            "  {:<20} {:>12} {:>12} {:>8} {:>14}   (best of {runs} after a warm-up; goal ratio <= 1.0)",
            "rule", "leakwatch s", "DuckDB s", "ratio", "rows lw/duck"
        );
        for (rule, (secs, found)) in &ours {
            match theirs.as_ref().and_then(|t| t.get(rule)) {
                Some((dsecs, drows)) => println!(
                    "  {rule:<20} {secs:>12.3} {dsecs:>12.3} {:>8.2} {:>14}",
                    secs / dsecs,
                    format!("{found}/{drows}")
                ),
                None => println!("  {rule:<20} {secs:>12.3} {:>12} {:>8} {:>14}", "-", "-", found),
            }
        }

        let ballista_runs: usize = env_or("BENCH_BALLISTA_RUNS", 1usize);
        if ballista_runs == 0 {
            println!("  Ballista skipped: BENCH_BALLISTA_RUNS=0");
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut clusters = Vec::new();
        for executors in [1usize, 2] {
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
        println!("  {:<20} {:>12} {:>12} {:>8} {:>12} {:>8} {:>6}", "rule", "leakwatch s", "1 exec s", "ratio", "2 exec s", "ratio", "rows");
        for (rule, (secs, found)) in &ours {
            let per: Vec<(f64, u64)> = clusters.iter().map(|(_, _, t)| t[rule]).collect();
            let same = per.iter().all(|(_, rows)| rows == found);
            println!(
                "  {rule:<20} {secs:>12.3} {:>12.3} {:>8.2} {:>12.3} {:>8.2} {:>6}",
                per[0].0,
                per[0].0 / secs,
                per[1].0,
                per[1].0 / secs,
                if same { "same" } else { "DIFFER" }
            );
        }
    });
}
