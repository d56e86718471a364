//! Ingest benchmark (`make bench`): sustained records/s with fsynced acks
//! from 50 concurrent gRPC clients sending 1,000-record batches to an
//! in-process collector, p50/p99 ack latency (at full load and at half of
//! it), the raw RocksDB `sync=true` write ceiling on the same disk with the
//! same payloads, their ratio, and Parquet bytes per record on the
//! simulated fleet. Goals: >= 1,000,000 records/s, >= 0.5 of the raw
//! ceiling, p99 <= 50 ms at half load, <= 10 bytes per record.
//!
//! Environment: `BENCH_SECS` (default 10) per phase, `BENCH_DIR` (default
//! the system temp dir) for the data, `BENCH_FLUSH_SECS` (default 5) the
//! collector's flush interval (a long one keeps the flusher out of the
//! phases, to see what it costs them), `LEAKWATCH_LOG` (e.g. `info`) the
//! collector's log on stderr, `BENCH_SPELLS` (set: print each phase's
//! spells of slow acks), `BENCH_KEEP` (set: keep the data directory, with
//! RocksDB's LOG).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use leakwatch_collector::grpc::GrpcLimits;
use leakwatch_collector::server::{ServeConfig, Server};
use leakwatch_proto::v1::collector_client::CollectorClient;
use leakwatch_proto::v1::{DeviceInfo, EnrollRequest, FlowRecord, ReportAck, ReportBatch, TlsInfo};
use prost::Message as _;

// The benches' shared parts (and the collector binary's allocator); this
// one uses the bench directory, the environment reader and the Parquet
// sizes.
#[allow(dead_code)]
mod common;

use common::{bench_dir, env_or, parquet_sizes};
use leakwatch::demo::FleetKind;

const CLIENTS: usize = 50;
const RECORDS: usize = 1000;

fn records(client: usize, n: u64) -> Vec<FlowRecord> {
    let now = chrono::Utc::now().timestamp() / 60 * 60;
    (0..RECORDS)
        .map(|i| {
            let d = (i * 7 + client) % 60;
            FlowRecord {
                seconds_since_boot: i as f64 * 0.37 + n as f64,
                window_start_unix_s: now - 3600 + (i as i64 % 60) * 60,
                transport: 1 + (i % 2) as i32,
                dst_ip: format!("93.184.{}.{}", d, (i % 250) + 1),
                dst_port: [443, 80, 853, 5228][i % 4],
                domain: format!("api{d}.vendor{}.example.com", d % 9),
                domain_source: 3,
                bytes_out: 300 + (i as u64 * 37) % 5000,
                bytes_in: 900 + (i as u64 * 91) % 40_000,
                packets_out: 3 + (i as u64 % 20),
                packets_in: 4 + (i as u64 % 40),
                tls: (i % 3 == 0).then(|| TlsInfo {
                    sni: format!("api{d}.vendor{}.example.com", d % 9),
                    alpn: vec!["h2".into(), "http/1.1".into()],
                    client_fingerprint: String::new(),
                }),
                duration_s: (i % 30) as f64 * 0.5,
                connections: 1,
                ..Default::default()
            }
        })
        .collect()
}

fn batch(client: usize, n: u64) -> ReportBatch {
    ReportBatch {
        batch_id: Encoded::batch_id(client, n),
        sent_at_unix_ms: 0,
        device: Some(DeviceInfo {
            device_pseudonym: format!("{client:032x}"),
            vendor: ["Xiaomi", "Samsung", "Google", "Amazon"][client % 4].into(),
            model: format!("Model {}", client % 7),
            os_version: "1.0".into(),
            boot_pseudonym: Encoded::boot(client, n),
            boot_source: 2,
            ..Default::default()
        }),
        records: records(client, n),
    }
}

/// Client `c`'s batch, encoded once, with where its batch id and boot
/// pseudonym are (both fixed-width, so a new pair fits in their place).
struct Encoded {
    bytes: Vec<u8>,
    batch_id_at: usize,
    boot_at: usize,
}

impl Encoded {
    fn batch_id(c: usize, n: u64) -> String {
        format!("bench-{c:03}-{n:016}")
    }

    fn boot(c: usize, n: u64) -> String {
        format!("{:032x}", c as u64 * 1_000_000_000 + n)
    }

    fn new(c: usize) -> Self {
        let b = batch(c, 0);
        let bytes = b.encode_to_vec();
        let find = |s: &str| bytes.windows(s.len()).position(|w| w == s.as_bytes()).expect("field in the encoding");
        let (batch_id_at, boot_at) = (find(&b.batch_id), find(&Self::boot(c, 0)));
        Self { bytes, batch_id_at, boot_at }
    }

    /// The bytes of batch `n`.
    fn next(&mut self, c: usize, n: u64) -> prost::bytes::Bytes {
        let (id, boot) = (Self::batch_id(c, n), Self::boot(c, n));
        self.bytes[self.batch_id_at..self.batch_id_at + id.len()].copy_from_slice(id.as_bytes());
        self.bytes[self.boot_at..self.boot_at + boot.len()].copy_from_slice(boot.as_bytes());
        prost::bytes::Bytes::copy_from_slice(&self.bytes)
    }
}

/// The client side of `Report` on encoded batches: sends the bytes as
/// they are, decodes the acknowledgement.
#[derive(Debug, Clone, Copy)]
struct RawReport;

impl tonic::codec::Codec for RawReport {
    type Encode = prost::bytes::Bytes;
    type Decode = ReportAck;
    type Encoder = RawReport;
    type Decoder = RawReport;

    fn encoder(&mut self) -> Self::Encoder {
        RawReport
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawReport
    }
}

impl tonic::codec::Encoder for RawReport {
    type Item = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Self::Error> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawReport {
    type Item = ReportAck;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        ReportAck::decode(src).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The collector's `leakwatch_ack_stage_seconds` buckets: for each stage,
/// the cumulative count of stored reports at each bucket's upper bound.
fn stage_buckets(server: &Server) -> Vec<(String, Vec<(f64, u64)>)> {
    let text = server.metrics.render(Default::default());
    let mut stages: Vec<(String, Vec<(f64, u64)>)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("leakwatch_ack_stage_seconds_bucket{")) {
        let label = |name: &str| line.split(&format!("{name}=\"")).nth(1)?.split('"').next();
        let (Some(stage), Some(le), Some(count)) = (label("stage"), label("le"), line.rsplit(' ').next()) else {
            continue;
        };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        let count = count.parse().unwrap_or(0);
        match stages.iter_mut().find(|(s, _)| s == stage) {
            Some((_, buckets)) => buckets.push((le, count)),
            None => stages.push((stage.to_string(), vec![(le, count)])),
        }
    }
    stages
}

/// Where the acks of a phase spent their time, from the stage buckets
/// before and after it: each stage's p99 (the bucket it falls in) and how
/// many reports it held for more than 50 ms.
fn stage_line(before: &[(String, Vec<(f64, u64)>)], after: &[(String, Vec<(f64, u64)>)]) -> String {
    let parts = after.iter().map(|(stage, buckets)| {
        let earlier = before.iter().find(|(s, _)| s == stage).map(|(_, b)| b.as_slice()).unwrap_or(&[]);
        let counts: Vec<(f64, u64)> = buckets
            .iter()
            .map(|&(le, n)| (le, n - earlier.iter().find(|(l, _)| *l == le).map_or(0, |(_, m)| *m)))
            .collect();
        let total = counts.last().map_or(0, |(_, n)| *n);
        let p99 = counts.iter().find(|(_, n)| *n as f64 >= total as f64 * 0.99).map_or(0.0, |(le, _)| *le);
        let within_64ms = counts.iter().take_while(|(le, _)| *le <= 0.064).last().map_or(0, |(_, n)| *n);
        format!("{stage} p99 <= {:.1} ms, {} over 64 ms", p99 * 1e3, total - within_64ms)
    });
    format!("    ack stages: {}", parts.collect::<Vec<_>>().join("; "))
}

/// Sends for `secs` from 50 clients; `per_client_rate` batches/s paces each
/// client (None: as fast as acks come). Returns (records/s, latencies).
async fn load(
    url: &str,
    tokens: &[String],
    secs: f64,
    per_client_rate: Option<f64>,
    phase: u64,
) -> (f64, Vec<Duration>) {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let records = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, token) in tokens.iter().enumerate() {
        let (url, token, records) = (url.to_string(), token.clone(), records.clone());
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(url).expect("url").connect().await.expect("connect");
            let mut grpc = tonic::client::Grpc::new(channel);
            // Each client sends its batch's bytes again and again with a new
            // batch id and boot pseudonym written over the old ones (the
            // clients share the collector's two cores: cloning and encoding
            // 1,000 records for every request would measure the clients).
            let mut template = Encoded::new(c);
            let mut lat = Vec::new();
            let mut n = phase * 1_000_000;
            // Paced clients start spread over one interval, as agents do
            // (all 50 sending at the same instants would measure bursts).
            let offset = per_client_rate.map_or(0.0, |rate| c as f64 / CLIENTS as f64 / rate);
            let started = Instant::now() + Duration::from_secs_f64(offset);
            let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
            while Instant::now() < stop {
                if let Some(rate) = per_client_rate {
                    let due = started + Duration::from_secs_f64((n - phase * 1_000_000) as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let mut req = tonic::Request::new(template.next(c, n));
                req.metadata_mut().insert("authorization", bearer.clone());
                let t = Instant::now();
                grpc.ready().await.expect("ready");
                let path = tonic::codegen::http::uri::PathAndQuery::from_static("/leakwatch.v1.Collector/Report");
                match grpc.unary::<_, ReportAck, _>(req, path, RawReport).await {
                    Ok(_) => {
                        lat.push((t, t.elapsed()));
                        records.fetch_add(RECORDS as u64, Ordering::Relaxed);
                    }
                    Err(s) => eprintln!("client {c}: {s}"),
                }
                n += 1;
            }
            lat
        }));
    }
    let t0 = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if std::env::var_os("BENCH_SPELLS").is_some() {
        print_slow_spells(t0, &all);
    }
    let mut latencies: Vec<Duration> = all.into_iter().map(|(_, l)| l).collect();
    latencies.sort();
    (records.load(Ordering::Relaxed) as f64 / elapsed, latencies)
}

/// Prints, per 100 ms of a phase (by when the request was sent), the acks
/// and the slowest of them, where that was over 20 ms: the spells of slow
/// acks behind a p99, to line up with the collector's log or RocksDB's
/// LOG (the phase's start is printed as a UTC time).
fn print_slow_spells(t0: Instant, acks: &[(Instant, Duration)]) {
    const SLOW: Duration = Duration::from_millis(20);
    let started = chrono::Utc::now() - chrono::Duration::from_std(t0.elapsed()).unwrap_or_default();
    println!("    phase started at {started}; spells of slow acks (> {} ms), per 100 ms:", SLOW.as_millis());
    let mut spells: std::collections::BTreeMap<u128, (usize, usize, Duration)> = Default::default();
    for &(sent, latency) in acks {
        let spell = spells.entry(sent.saturating_duration_since(t0).as_millis() / 100).or_default();
        spell.0 += 1;
        spell.1 += usize::from(latency > SLOW);
        spell.2 = spell.2.max(latency);
    }
    for (at, (acks, slow, max)) in spells.into_iter().filter(|(_, (_, _, max))| *max > SLOW) {
        println!(
            "      at {:>4.1} s: {slow:>4} of {acks:>4} acks slow, slowest {:.1} ms",
            at as f64 / 10.0,
            max.as_secs_f64() * 1e3
        );
    }
}

/// The raw ceiling: 50 threads writing the same payloads to a RocksDB with
/// `sync=true` WriteBatches, as the collector does (entry + id key).
fn raw_ceiling(dir: &std::path::Path, secs: f64) -> f64 {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = Arc::new(rocksdb::DB::open(&opts, dir).expect("open rocksdb"));
    let payloads: Vec<Vec<u8>> = (0..CLIENTS).map(|c| batch(c, 0).encode_to_vec()).collect();
    let payloads = Arc::new(payloads);
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let seq = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (db, payloads, seq) = (db.clone(), payloads.clone(), seq.clone());
            std::thread::spawn(move || {
                let mut wo = rocksdb::WriteOptions::default();
                wo.set_sync(true);
                let mut n = 0u64;
                while Instant::now() < stop {
                    let s = seq.fetch_add(1, Ordering::Relaxed);
                    let mut wb = rocksdb::WriteBatch::default();
                    wb.put(s.to_be_bytes(), &payloads[c]);
                    wb.put(format!("id-{c}-{n}"), s.to_be_bytes());
                    db.write_opt(wb, &wo).expect("write");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let batches: u64 = threads.into_iter().map(|t| t.join().expect("writer")).sum();
    batches as f64 * RECORDS as f64 / t0.elapsed().as_secs_f64()
}

/// Flushes what the log still holds, with no load, and prints how fast
/// (the rows the collector's periodic flush wrote meanwhile count too).
async fn flush_rest(server: &Server) {
    let before = server.metrics.rows_flushed.load(Ordering::Relaxed);
    let started = Instant::now();
    server.flusher.flush().await.expect("flush");
    let secs = started.elapsed().as_secs_f64();
    let rows = server.metrics.rows_flushed.load(Ordering::Relaxed) - before;
    println!(
        "    then, with no load, the rest:  {rows:>12} rows in {secs:.1} s ({:.0} rows/s)",
        rows as f64 / secs.max(1e-9)
    );
}

/// The most of `samples` (one a second) in each window of `window`
/// samples, comma-separated.
fn backlog_trend(samples: &[u64], window: usize) -> String {
    let most: Vec<String> =
        samples.chunks(window.max(1)).map(|w| w.iter().max().copied().unwrap_or(0).to_string()).collect();
    if most.is_empty() { "no sample".into() } else { most.join(", ") }
}

fn main() {
    // The binary's allocator setting (see `src/main.rs`).
    leakwatch_collector::allocator::keep_freed_memory_longer();
    // `LEAKWATCH_LOG=info` shows the collector's log (flushes, compactions).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("LEAKWATCH_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let secs: f64 = env_or("BENCH_SECS", 10.0);
    let flush_secs: u64 = env_or("BENCH_FLUSH_SECS", 5);
    let dir = bench_dir();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        // The clients stand for agents on as many addresses, but all
        // connect from loopback: no per-address bound.
        let grpc = GrpcLimits { per_client: usize::MAX, ..GrpcLimits::default() };
        let config = ServeConfig {
            flush_interval: Duration::from_secs(flush_secs),
            grpc,
            ..ServeConfig::loopback(dir.path().join("collector"))
        };
        let server = Server::start(config).await.expect("start collector");
        let url = format!("http://{}", server.grpc_addr);
        let mut enroll = CollectorClient::connect(url.clone()).await.expect("connect");
        let mut tokens = Vec::new();
        for _ in 0..CLIENTS {
            let r = enroll
                .enroll(EnrollRequest { enrollment_code: String::new(), agent_version: "bench".into() })
                .await
                .expect("enroll")
                .into_inner();
            tokens.push(r.agent_token);
        }
        let payload = batch(0, 0).encoded_len();
        let entry = leakwatch_collector::log::encode_entry_of("agent", 0, &batch(0, 0)).entry.len();
        println!(
            "ingest: {CLIENTS} clients, {RECORDS}-record batches ({payload} bytes each, {entry} in the log), {secs:.0} s per phase"
        );
        // What the flusher did during a phase: rows written to Parquet, and
        // the batches still waiting in the log at its end.
        let flushed = || server.metrics.rows_flushed.load(Ordering::Relaxed);
        let flusher_line = |rows: u64| {
            format!(
                "    flushed meanwhile:             {rows:>12} rows  (log entries not yet flushed at the end: {})",
                server.log.flush_lag()
            )
        };
        let before = flushed();
        let stages = stage_buckets(&server);
        let (full, lat) = load(&url, &tokens, secs, None, 1).await;
        println!(
            "  sustained ingest, fsynced acks:  {full:>12.0} records/s  (ack p50 {:.1} ms, p99 {:.1} ms; goal >= 1,000,000 records/s)",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
        println!("{}", stage_line(&stages, &stage_buckets(&server)));
        println!("{}", flusher_line(flushed() - before));
        // The next phase starts with the log flushed, as the first did.
        flush_rest(&server).await;
        let half_rate = full / 2.0 / CLIENTS as f64 / RECORDS as f64;
        let before = flushed();
        let stages = stage_buckets(&server);
        let (half, lat) = load(&url, &tokens, secs, Some(half_rate), 2).await;
        println!(
            "  at half that load:               {half:>12.0} records/s  (ack p50 {:.1} ms, p99 {:.1} ms; goal p99 <= 50 ms)",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
        println!("{}", stage_line(&stages, &stage_buckets(&server)));
        println!("{}", flusher_line(flushed() - before));
        flush_rest(&server).await;
        // Optionally, a long phase at a set rate: does the flusher keep up
        // with it (the log's backlog stays flat), or fall behind?
        let steady: f64 = env_or("BENCH_STEADY", 0.0);
        if steady > 0.0 {
            let steady_secs: f64 = env_or("BENCH_STEADY_SECS", 60.0);
            let log = server.log.clone();
            // The backlog each second: whether it stays flat or grows
            // shows whether the flusher keeps up, which its size at one
            // moment (it swings with each flush) does not.
            let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
            let sampler = tokio::spawn({
                let samples = samples.clone();
                async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        samples.lock().expect("samples").push(log.flush_lag());
                    }
                }
            });
            let before = flushed();
            let (rate, lat) =
                load(&url, &tokens, steady_secs, Some(steady / CLIENTS as f64 / RECORDS as f64), 3).await;
            sampler.abort();
            let samples = samples.lock().expect("samples").clone();
            println!(
                "  steady {steady:.0} records/s for {steady_secs:.0} s: {rate:>9.0} records/s  (ack p50 {:.1} ms, p99 {:.1} ms)",
                percentile(&lat, 0.5).as_secs_f64() * 1e3,
                percentile(&lat, 0.99).as_secs_f64() * 1e3,
            );
            println!("    log entries waiting, most in each 10 s: {}", backlog_trend(&samples, 10));
            println!("{}", flusher_line(flushed() - before));
            flush_rest(&server).await;
        }
        server.shutdown().await.expect("shutdown");
        let raw = tokio::task::spawn_blocking({
            let path = dir.path().join("raw");
            move || raw_ceiling(&path, secs)
        })
        .await
        .expect("raw");
        println!("  raw RocksDB sync=true ceiling:   {raw:>12.0} records/s  (same payloads, {CLIENTS} writer threads)");
        println!("  ingest / raw ceiling:            {:>12.2}  (goal >= 0.5)", full / raw);

        // Parquet bytes per record on the simulated fleet, and on the same
        // fleet on for a day and reported every 15 minutes.
        let mut fleets = Vec::new();
        for (kind, name, devices) in [
            (FleetKind::Boots, "simulated fleet", None),
            (FleetKind::DayLong, "day-long fleet", Some(env_or("BENCH_DAY_DEVICES", 60u32))),
        ] {
            let data = dir.path().join(format!("fleet-{kind:?}"));
            let server = Server::start(ServeConfig::loopback(data.join("collector"))).await.expect("start collector");
            let report = leakwatch::demo::run_fleet(&[&server], &data.join("work"), kind, devices, None)
                .await
                .expect("fleet");
            server.shutdown().await.expect("shutdown");
            let sizes = parquet_sizes(&data.join("collector/store"));
            println!(
                "  Parquet on the {name}: {:>9.1} bytes/record ({} bytes, {} records of {} captures; goal <= 10)",
                sizes.per_record(sizes.bytes),
                sizes.bytes,
                sizes.rows,
                report.captures
            );
            fleets.push(sizes);
        }
        println!("    bytes per record by column        simulated  day-long");
        for (column, bytes) in &fleets[0].columns {
            let day = fleets[1].columns.iter().find(|(c, _)| c == column).map_or(0, |(_, b)| *b);
            println!(
                "      {column:<30} {:>9.2} {:>9.2}",
                fleets[0].per_record(*bytes),
                fleets[1].per_record(day)
            );
        }
        println!(
            "      {:<30} {:>9.2} {:>9.2}",
            "(footers, page indexes)",
            fleets[0].per_record(fleets[0].rest()),
            fleets[1].per_record(fleets[1].rest())
        );
    });
    // What a restart of the first collector reads again: the WAL files it
    // left, and how long its log takes to open over them (once the
    // runtime, and every handle its tasks held, is gone).
    drop(rt);
    let log_dir = dir.path().join("collector/log");
    let (wal_files, wal_bytes) = leakwatch_collector::log::wal_files(&log_dir);
    let start = Instant::now();
    drop(leakwatch_collector::log::DurableLog::open(&log_dir).expect("reopen log"));
    println!(
        "  WAL left at shutdown:            {:>12.0} MB in {wal_files} files  (log reopened in {:.2} s; flushed past {} MiB)",
        wal_bytes as f64 / 1e6,
        start.elapsed().as_secs_f64(),
        leakwatch_collector::log::MAX_TOTAL_WAL_BYTES >> 20
    );
}
