//! Rules benchmark (`make bench`): the six detection rules over at least
//! 50 M simulated records in Parquet, on leakwatch's session factory
//! (DataFusion) and, on the same files with the same SQL, on DuckDB (its
//! Python package). Goal: leakwatch <= 1.0x DuckDB's time on every rule.
//!
//! The data: the built-in fleet goes through agent and collector once;
//! its rows are then copied with fresh device, boot and agent pseudonyms
//! (so every pattern and decoy scales with the fleet) until there are
//! `BENCH_RECORDS` rows, written with the flusher's Parquet settings.
//! Each rule runs `BENCH_RUNS` times on each engine (default 3, after one
//! warm-up run); the best time counts.
//!
//! Environment: `BENCH_RECORDS` (default 50,000,000), `BENCH_DIR` (default
//! the system temp dir), `BENCH_PYTHON` (a Python with `duckdb`; without it
//! DuckDB is skipped and said so), `BENCH_MEMORY_MIB` (leakwatch's query
//! memory limit, default 16384), `BENCH_RUNS`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array as _, ArrayRef, RecordBatch, StringArray};
use leakwatch_collector::server::{ServeConfig, Server};
use leakwatch_query::rules::builtin_rules;
use leakwatch_query::{FilesOnly, QueryConfig, SessionFactory, flows_schema};
use parquet::arrow::ArrowWriter;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// `column` with `-{copy}` appended to every value.
fn suffixed(column: &ArrayRef, copy: usize) -> ArrayRef {
    let Some(strings) = column.as_any().downcast_ref::<StringArray>() else { return column.clone() };
    let out: StringArray = strings.iter().map(|v| v.map(|v| format!("{v}-{copy}"))).collect();
    Arc::new(out)
}

/// One copy of the fleet: the pseudonyms made distinct for copy `copy`.
fn copy_of(batch: &RecordBatch, copy: usize) -> RecordBatch {
    let schema = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| match f.name().as_str() {
            "device_pseudonym" | "boot_pseudonym" | "agent_id" | "batch_id" => suffixed(c, copy),
            _ => c.clone(),
        })
        .collect();
    #[allow(clippy::expect_used)]
    RecordBatch::try_new(schema, columns).expect("same schema")
}

/// Writes copies of `base` until `target` rows, in files of about
/// `per_file` rows named like flushed files; returns the rows written.
fn write_copies(base: &[RecordBatch], flows: &Path, target: usize, per_file: usize) -> usize {
    let base_rows: usize = base.iter().map(|b| b.num_rows()).sum();
    let copies = target.div_ceil(base_rows.max(1));
    let copies_per_file = (per_file / base_rows.max(1)).max(1);
    let day = flows.join("day=2026-01-01");
    std::fs::create_dir_all(&day).expect("day dir");
    let files: Vec<(usize, usize)> =
        (0..copies).step_by(copies_per_file).map(|c| (c, (c + copies_per_file).min(copies))).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(from, to)) = files.get(i) else { break };
                    let name = format!("{:020}-{:020}.parquet", from + 1, to);
                    let file = std::fs::File::create(day.join(name)).expect("create");
                    let props = leakwatch_collector::flusher::writer_properties().expect("props");
                    let mut w = ArrowWriter::try_new(file, flows_schema(), Some(props)).expect("writer");
                    for copy in from..to {
                        for b in base {
                            w.write(&copy_of(b, copy)).expect("write");
                        }
                    }
                    w.close().expect("close");
                }
            });
        }
    });
    copies * base_rows
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    bytes
}

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

fn main() {
    let target: usize = env_or("BENCH_RECORDS", 50_000_000);
    let runs: usize = env_or("BENCH_RUNS", 3usize).max(1);
    let memory_mib: usize = env_or("BENCH_MEMORY_MIB", 16_384);
    let base_dir = std::env::var_os("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base_dir).expect("bench dir");
    let dir = tempfile::tempdir_in(&base_dir).expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        // The simulated fleet, once through agent and collector.
        let server = Server::start(ServeConfig::loopback(dir.path().join("fleet"))).await.expect("start collector");
        leakwatch_collector::demo::run_pipeline(&server, &dir.path().join("fleet-work"), None, None)
            .await
            .expect("fleet");
        let base = server.sessions.session().await.expect("session").sql("SELECT * FROM flows").await.expect("rows");
        server.shutdown().await.expect("shutdown");
        let base_rows: usize = base.iter().map(|b| b.num_rows()).sum();

        let flows = dir.path().join("bench/flows");
        let started = Instant::now();
        let rows = tokio::task::spawn_blocking({
            let flows = flows.clone();
            move || write_copies(&base, &flows, target, 2_000_000)
        })
        .await
        .expect("write");
        let bytes = dir_bytes(&flows);
        println!(
            "rules: {rows} records ({} copies of the {base_rows}-record simulated fleet), {:.2} GB of Parquet, written in {:.0?}",
            rows / base_rows.max(1),
            bytes as f64 / 1e9,
            started.elapsed()
        );

        let config = QueryConfig { memory_limit_bytes: memory_mib << 20, timeout: Duration::from_secs(3600) };
        let sessions = SessionFactory::new(config, flows.clone(), Arc::new(FilesOnly));
        let sql_dir = dir.path().join("sql");
        std::fs::create_dir_all(&sql_dir).expect("sql dir");
        let mut ours = BTreeMap::new();
        for rule in builtin_rules() {
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
    });
}
