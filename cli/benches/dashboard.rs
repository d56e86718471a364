//! Dashboard benchmark (`make bench`): p50/p95/p99 latency of the home,
//! model and finding pages, the JSON API, a blocklist, the feed and a MUD
//! file, served over HTTP by a real
//! collector on loopback holding `BENCH_DASHBOARD_RECORDS` records
//! (default 10,000,000), under load from wrk. Goal: p95 <= 50 ms.
//!
//! The data: as in the rules benchmark, copies of the simulated fleet
//! (fresh device, boot and agent pseudonyms per copy), written with the
//! flusher's Parquet settings, here into a collector's data directory; the
//! collector's own log then records them as flushed (flush intent, then
//! watermark: the two steps its flusher takes after writing files). The
//! collector starts on that directory with the `serve` defaults (query
//! memory, thresholds) except the per-address rate limit, which is raised
//! because wrk sends from one address; it computes its aggregates, and
//! wrk requests each page for `BENCH_SECS` seconds (default 10) over
//! `BENCH_CONNECTIONS` connections (default 8) from 1 thread, on the same
//! machine.
//!
//! Before that, the refresh: over `BENCH_DASHBOARD_RECORDS` records of
//! the simulated fleet's four-minute boots, and again of the same fleet
//! on all day (`BENCH_DAY_DEVICES` devices, default 60, reported every
//! 15 minutes; see the ingest benchmark), each a full refresh (every
//! file read) and one after `BENCH_NEW_RECORDS` new records (default
//! 100,000) were flushed on top, which reads the new file alone; and, as
//! the measure of a full refresh, every aggregate computed from every
//! record (each file read as it is, no digest). Goal: the refresh after
//! new records takes <= 2 % of the full one's time.
//!
//! Environment: `BENCH_DASHBOARD_RECORDS`, `BENCH_SECS`, `BENCH_CONNECTIONS`,
//! `BENCH_NEW_RECORDS`, `BENCH_DAY_DEVICES`, `BENCH_PARTS` (which parts
//! run, comma-separated: `boots` and `day-long`, the refresh on each
//! fleet, and `pages`; default all three),
//! `BENCH_MEMORY_MIB` (the collector's query memory, default the `serve`
//! default 1024),
//! `BENCH_DIR` (default the system temp dir), `BENCH_KEEP` (set: keep the
//! files), `WRK` (default `wrk`),
//! `LEAKWATCH_LOG` (the collector's log filter, default `warn`; e.g.
//! `leakwatch_dashboard=debug` times each aggregate query).

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::{Copies, bench_dir, env_or, replicate, replicate_fleet, write_new};
use leakwatch::demo::FleetKind;
use leakwatch_collector::log::DurableLog;
use leakwatch_collector::server::{DataDir, ServeConfig, Server};
use leakwatch_dashboard::aggregate::{Thresholds, compute};
use leakwatch_dashboard::{Dashboard, DashboardConfig, finding_href, model_href};
use leakwatch_query::digest::Digests;
use leakwatch_query::memory::QueryMemory;
use leakwatch_query::{FilesOnly, FlowStore, QueryConfig, SessionFactory};

/// What wrk's `done` hook prints: requests, errors (connect, read, write,
/// timeout, and non-2xx/3xx statuses), p50/p95/p99 latency in
/// microseconds, and the run's duration in microseconds.
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("LEAKWATCH %d %d %d %d %d %d\n", summary.requests,
    e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), summary.duration))
end
"#;

/// One plain GET: the status code and body length (a check before the load).
fn get(addr: SocketAddr, path: &str) -> Result<(u16, usize), String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let status = text.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status line for {path}"))?;
    let body = text.find("\r\n\r\n").map_or(0, |i| response.len() - i - 4);
    Ok((status, body))
}

struct Figures {
    requests: u64,
    errors: u64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    per_second: f64,
}

fn wrk(wrk: &str, script: &std::path::Path, url: &str, secs: u64, connections: u64) -> Result<Figures, String> {
    let out = std::process::Command::new(wrk)
        .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s"), "--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .map_err(|e| format!("{wrk}: {e} (`make bench` installs Debian's wrk)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LEAKWATCH "))
        .ok_or_else(|| format!("wrk printed no figures: {stdout}{}", String::from_utf8_lossy(&out.stderr)))?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let [requests, errors, p50, p95, p99, duration_us] = v[..] else {
        return Err(format!("unexpected wrk figures {line:?}"));
    };
    Ok(Figures {
        requests,
        errors,
        p50_ms: p50 as f64 / 1e3,
        p95_ms: p95 as f64 / 1e3,
        p99_ms: p99 as f64 / 1e3,
        per_second: requests as f64 / (duration_us.max(1) as f64 / 1e6),
    })
}

/// A full refresh of the aggregates over `target` records of the fleet
/// `kind` (every file read), then one after `new_records` new records
/// were flushed on top (the files read before are not read again): both
/// times, and what the digests hold.
async fn refresh_figures(
    dir: &Path,
    kind: FleetKind,
    name: &str,
    devices: Option<u32>,
    target: usize,
    new_records: usize,
    memory: usize,
) {
    let root = dir.join(format!("refresh-{kind:?}"));
    let store = root.join("store");
    let (copies, base) = replicate_fleet(&root, &store.join("flows"), target, kind, devices).await;
    let config = QueryConfig {
        memory_limit_bytes: memory,
        total_memory: QueryMemory::at_least(memory),
        ..QueryConfig::default()
    };
    let factory = SessionFactory::new(config, FlowStore::local(&store).expect("store"), Arc::new(FilesOnly));
    let dashboard = Dashboard::new(factory.clone(), tokio::runtime::Handle::current(), DashboardConfig::default())
        .expect("dashboard");
    // Every aggregate from every record: each file read as it is.
    let t = Instant::now();
    let full_records = match factory.digest_session(&Digests::in_memory().raw_share(0.0)).await {
        Ok((session, _)) => compute(&session, Thresholds::default(), None).await.map(|_| t.elapsed()),
        Err(e) => Err(e.into()),
    };
    let t0 = Instant::now();
    if let Err(e) = dashboard.refresh().await {
        println!("refresh, {name}, {} records: the full refresh failed: {e}", copies.rows);
        return;
    }
    let full = t0.elapsed();
    let first = dashboard.digested();
    let written = tokio::task::spawn_blocking({
        let flows = store.join("flows");
        move || write_new(&base, &flows, copies.copies, new_records, copies.copies as u64 + 1)
    })
    .await
    .expect("write");
    let t1 = Instant::now();
    if let Err(e) = dashboard.refresh().await {
        println!("refresh, {name}: the refresh after {written} new records failed: {e}");
        return;
    }
    let after = t1.elapsed();
    let then = dashboard.digested();
    println!(
        "refresh, {name}, {} records in {} files ({} read as they are; digests {} rows, {:.1} MB, {:.1} records per row; {}):",
        copies.rows,
        first.digested,
        first.raw,
        first.rows,
        first.bytes as f64 / 1e6,
        if first.rows == 0 { 0.0 } else { copies.rows as f64 / first.rows as f64 },
        if then.merged {
            format!("the dashboard's own figures merged, {:.1} MB held", then.merged_bytes as f64 / 1e6)
        } else {
            "the dashboard's own figures by their SQL".to_string()
        },
    );
    let share =
        |part: std::time::Duration, of: std::time::Duration| 100.0 * part.as_secs_f64() / of.as_secs_f64().max(1e-9);
    match full_records {
        Ok(full_records) => println!(
            "  from every record {full_records:.2?}; with no digests yet {full:.2?}; after {written} new records {after:.2?}: {:.1} % of the first (goal <= 2 %), {:.1} % of the second ({} file read, {} kept)",
            share(after, full_records),
            share(after, full),
            then.digested,
            then.kept,
        ),
        Err(e) => println!(
            "  from every record: failed ({e}); with no digests yet {full:.2?}; after {written} new records {after:.2?}, {:.1} % of that",
            share(after, full),
        ),
    }
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}

fn main() {
    // The binary's allocator setting (see `src/main.rs`).
    leakwatch_collector::allocator::keep_freed_memory_longer();
    let target: usize = env_or("BENCH_DASHBOARD_RECORDS", 10_000_000);
    let secs: u64 = env_or("BENCH_SECS", 10u64).max(1);
    let connections: u64 = env_or("BENCH_CONNECTIONS", 8u64).max(1);
    let wrk_bin = std::env::var("WRK").unwrap_or_else(|_| "wrk".into());
    let dir = bench_dir();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LEAKWATCH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let memory = env_or("BENCH_MEMORY_MIB", 1024usize) << 20;
    rt.block_on(async {
        let new_records: usize = env_or("BENCH_NEW_RECORDS", 100_000);
        let day_devices = Some(env_or("BENCH_DAY_DEVICES", 60u32));
        let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "boots,day-long,pages".into());
        let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
        for (part, kind, name, devices) in [
            ("boots", FleetKind::Boots, "four-minute boots", None),
            ("day-long", FleetKind::DayLong, "day-long fleet", day_devices),
        ] {
            if parts.contains(&part) {
                refresh_figures(dir.path(), kind, name, devices, target, new_records, memory).await;
            }
        }
        if !parts.contains(&"pages") {
            return;
        }
        // The collector's data directory: copies as flushed files, and its
        // log's watermark above them.
        let data = DataDir::new(dir.path().join("collector"));
        let Copies { rows, copies, base_rows, bytes, elapsed } =
            replicate(dir.path(), &data.store().join("flows"), target).await;
        let log = DurableLog::open(&data.log()).expect("log");
        log.set_flush_intent(1, copies as u64).expect("flush intent");
        log.commit_flush(copies as u64).expect("watermark");
        drop(log);
        println!(
            "dashboard: {rows} records ({copies} copies of the {base_rows}-record simulated fleet), {:.1} MB of Parquet, written in {elapsed:.0?}",
            bytes as f64 / 1e6,
        );

        let mut config = ServeConfig::loopback(dir.path().join("collector"));
        config.dashboard = DashboardConfig { requests_per_second: 1_000_000, ..DashboardConfig::default() };
        config.query.memory_limit_bytes = memory;
        config.query.total_memory = QueryMemory::at_least(memory);
        let server = Server::start(config).await.expect("start collector");
        // A first refresh (it answers the one the start requested, or
        // waits for it to end), then one more, timed alone (the work a
        // flush with new rows triggers). A refresh that fails ends the
        // benchmark, saying why (the collector would keep trying).
        if let Err(e) = server.dashboard.refresh().await {
            println!("  aggregates: the refresh failed: {e}");
            server.shutdown().await.expect("shutdown");
            std::process::exit(1);
        }
        let t0 = Instant::now();
        server.dashboard.refresh().await.expect("refresh");
        let refresh = t0.elapsed();
        let published = server.dashboard.published();
        let snapshot = &published.snapshot;
        println!(
            "  aggregates refreshed in {refresh:.1?}: {} findings, {} models, {} destinations published",
            snapshot.findings.len(),
            snapshot.models.len(),
            snapshot.destinations.len()
        );
        let Some(finding) = snapshot.findings.iter().find(|f| !f.model.is_empty()) else {
            panic!("no model finding published at {rows} records");
        };

        let pages = [
            ("home", "/".to_string()),
            ("model", model_href(&finding.vendor, &finding.model)),
            ("finding", finding_href(&finding.id)),
            ("API findings", "/api/findings".to_string()),
            ("API model", format!("/api{}", model_href(&finding.vendor, &finding.model))),
            // Built per request from the aggregates in memory.
            ("list dnsmasq", "/lists/dnsmasq.conf".to_string()),
            ("list RPZ", "/lists/rpz.zone".to_string()),
            ("feed", "/feeds/findings.atom".to_string()),
            ("MUD file", leakwatch_dashboard::mud::mud_href(&finding.vendor, &finding.model)),
        ];
        let script = dir.path().join("figures.lua");
        std::fs::write(&script, WRK_SCRIPT).expect("wrk script");
        let addr = server.http_addr;
        println!(
            "  {:<13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}   (wrk, 1 thread, {connections} connections, {secs} s each; goal p95 <= 50 ms)",
            "page", "bytes", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors"
        );
        for (name, path) in &pages {
            let (status, bytes) = tokio::task::spawn_blocking({
                let path = path.clone();
                move || get(addr, &path)
            })
            .await
            .expect("get")
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert_eq!(status, 200, "GET {path}");
            let url = format!("http://{addr}{path}");
            let run = tokio::task::spawn_blocking({
                let (wrk_bin, script) = (wrk_bin.clone(), script.clone());
                move || wrk(&wrk_bin, &script, &url, secs, connections)
            })
            .await
            .expect("wrk");
            match run {
                Ok(f) => println!(
                    "  {name:<13} {bytes:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.0} {:>7}{}",
                    f.p50_ms,
                    f.p95_ms,
                    f.p99_ms,
                    f.per_second,
                    f.errors,
                    if f.requests == 0 { "   (no requests completed)" } else { "" }
                ),
                Err(e) => {
                    println!("  {name:<13} wrk failed: {e}");
                    break;
                }
            }
        }
        server.shutdown().await.expect("shutdown");
    });
}
