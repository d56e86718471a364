//! The collector's metrics at `/metrics`, written by `prometheus-client`
//! and served as Prometheus's text format (version 0.0.4, which
//! `promtool check metrics` checks; its `# UNIT` and `# EOF` lines are
//! comments there), each with HELP and TYPE: ingest and flush
//! counters (named with `_total`), gauges read at scrape time, histograms
//! of ack latency (whole and by stage), Flight SQL query time and dashboard
//! refresh time, the
//! age of the published aggregates, and build info.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Counter names.
pub mod names {
    /// Batches stored.
    pub const BATCHES_ACCEPTED: &str = "leakwatch_batches_accepted_total";
    /// Batches answered `duplicate`.
    pub const BATCHES_DUPLICATE: &str = "leakwatch_batches_duplicate_total";
    /// Records stored.
    pub const RECORDS_ACCEPTED: &str = "leakwatch_records_accepted_total";
    /// Bytes of the stored batches (encoded protobuf, as decoded).
    pub const BYTES_ACCEPTED: &str = "leakwatch_bytes_accepted_total";
    /// Reports refused, by `reason`.
    pub const REPORTS_REJECTED: &str = "leakwatch_reports_rejected_total";
    /// Log entries (batches) acknowledged but not yet in Parquet.
    pub const FLUSH_LAG_BATCHES: &str = "leakwatch_flush_lag_batches";
    /// Bytes of the RocksDB log's SST files and memtables.
    pub const LOG_BYTES: &str = "leakwatch_log_bytes";
    /// Bytes of the log's WAL files: what a restart reads again.
    pub const LOG_WAL_BYTES: &str = "leakwatch_log_wal_bytes";
    /// 1 while the log cannot be written (reports are refused), else 0.
    pub const LOG_WRITE_FAILING: &str = "leakwatch_log_write_failing";
    /// Times the log was opened again after a write failed.
    pub const LOG_REOPENED: &str = "leakwatch_log_reopened_total";
    /// Flushed files set aside (moved to `quarantine/`) because their
    /// footer does not read; answers leave their rows out.
    pub const FILES_QUARANTINED: &str = "leakwatch_files_quarantined_total";
    /// Flushed files queries leave out now because they do not read.
    pub const FILES_UNREADABLE: &str = "leakwatch_files_unreadable";
    /// Rows written to Parquet.
    pub const ROWS_FLUSHED: &str = "leakwatch_rows_flushed_total";
    /// Parquet files written.
    pub const FILES_FLUSHED: &str = "leakwatch_files_flushed_total";
    /// Parquet files retention deleted.
    pub const FILES_EXPIRED: &str = "leakwatch_files_expired_total";
    /// Batch ids retention forgot (their retries are stored again).
    pub const BATCH_IDS_EXPIRED: &str = "leakwatch_batch_ids_expired_total";
    /// Queries that stopped making progress and were planned again on one
    /// partition (see `leakwatch_query::watch`).
    pub const QUERIES_REPLANNED: &str = "leakwatch_queries_replanned_total";
    /// Seconds since the published aggregates were computed.
    pub const PUBLISHED_AGE_SECONDS: &str = "leakwatch_published_age_seconds";
    /// Dashboard refreshes that failed since the last that succeeded.
    pub const REFRESH_FAILURES: &str = "leakwatch_dashboard_refresh_failures";
    /// Rows of the digests the last refresh read (the unflushed tail's
    /// included).
    pub const DIGEST_ROWS: &str = "leakwatch_dashboard_digest_rows";
    /// Flushed files the last refresh read as they are (no digest: their
    /// records share too few groups).
    pub const REFRESH_FILES_UNDIGESTED: &str = "leakwatch_dashboard_refresh_files_undigested";
    /// 1 when the last refresh answered the dashboard's own figures from
    /// the aggregates merged from the digests, 0 when by their SQL.
    pub const REFRESH_MERGED: &str = "leakwatch_dashboard_refresh_merged";
}

/// Observes a query's time in [`IngestMetrics::query_seconds`] under its
/// `front_end` when dropped (at the query's end, however it ends).
#[derive(Debug)]
pub struct QueryTimer {
    metrics: Option<Arc<IngestMetrics>>,
    front_end: &'static str,
    started: std::time::Instant,
}

impl QueryTimer {
    /// Times a query of `front_end` from now (into `metrics`, when given).
    pub fn start(metrics: Option<Arc<IngestMetrics>>, front_end: &'static str) -> Self {
        Self { metrics, front_end, started: std::time::Instant::now() }
    }
}

impl Drop for QueryTimer {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.query_seconds
                .get_or_create(&vec![("front_end".to_string(), self.front_end.to_string())])
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

/// Why a report was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// No, unknown or revoked token.
    Unauthenticated = 0,
    /// Over the agent's rate limit.
    RateLimited = 1,
    /// Too many reports in flight.
    Busy = 2,
    /// A field failed validation.
    Invalid = 3,
    /// A batch id reused with other content.
    Conflict = 4,
    /// The log could not be written (a full disk, an I/O error).
    Storage = 5,
}

/// A part of the time from a report's arrival to its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStage {
    /// Checking the batch, then waiting for a thread that may block.
    Queued = 0,
    /// Waiting for the log's lock and looking the batch id up.
    Lookup = 1,
    /// The synced RocksDB write (WAL append and fsync).
    Write = 2,
    /// From the write to the answer.
    Answer = 3,
}

impl AckStage {
    /// Every stage, in the order a report goes through them.
    pub const ALL: [Self; 4] = [Self::Queued, Self::Lookup, Self::Write, Self::Answer];

    /// The stage's `stage` label.
    pub fn label(self) -> &'static str {
        ["queued", "lookup", "write", "answer"][self as usize]
    }
}

const REASONS: [&str; 6] = ["unauthenticated", "rate_limited", "busy", "invalid", "conflict", "storage"];

/// Gauges read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Seconds since the published aggregates were computed (None before
    /// the first refresh).
    pub published_age_seconds: Option<i64>,
    /// See [`names::FLUSH_LAG_BATCHES`].
    pub flush_lag_batches: u64,
    /// See [`names::LOG_BYTES`].
    pub log_bytes: u64,
    /// See [`names::LOG_WAL_BYTES`].
    pub log_wal_bytes: u64,
    /// See [`names::LOG_WRITE_FAILING`].
    pub log_write_failing: bool,
    /// See [`names::FILES_UNREADABLE`].
    pub files_unreadable: u64,
    /// See [`names::REFRESH_FAILURES`].
    pub refresh_failures: u32,
    /// What the last refresh read of the flushed files, once one ended.
    pub digested: Option<leakwatch_query::digest::DigestStats>,
}

/// Seconds from 0.5 ms doubling to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Seconds from 10 ms doubling to about 3 h (a refresh of a large store).
fn long_latency() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

/// Histograms by one label (`front_end`, `stage`).
pub type ByLabel = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;

/// The collector's counters and histograms.
#[derive(Debug)]
pub struct IngestMetrics {
    /// Seconds from a report's arrival to its acknowledgement (accepted or
    /// duplicate).
    pub ack_seconds: Histogram,
    /// The parts of [`Self::ack_seconds`] of stored reports, by `stage`
    /// ([`AckStage::label`]; see [`Self::ack_stage`]).
    pub ack_stage_seconds: ByLabel,
    /// Its histogram of each stage, by [`AckStage`], made once: observing
    /// one on each ack builds no label.
    ack_stages: [Histogram; 4],
    /// Seconds a query took, by `front_end` (`flight_sql`, `postgres`; see
    /// [`QueryTimer`]).
    pub query_seconds: ByLabel,
    /// Seconds a dashboard refresh took.
    pub refresh_seconds: Histogram,
    /// See [`names::BATCHES_ACCEPTED`].
    pub batches_accepted: AtomicU64,
    /// See [`names::BATCHES_DUPLICATE`].
    pub batches_duplicate: AtomicU64,
    /// See [`names::RECORDS_ACCEPTED`].
    pub records_accepted: AtomicU64,
    /// See [`names::BYTES_ACCEPTED`].
    pub bytes_accepted: AtomicU64,
    /// See [`names::REPORTS_REJECTED`], by [`RejectReason`].
    pub reports_rejected: [AtomicU64; 6],
    /// See [`names::ROWS_FLUSHED`].
    pub rows_flushed: AtomicU64,
    /// See [`names::FILES_FLUSHED`].
    pub files_flushed: AtomicU64,
    /// See [`names::FILES_EXPIRED`].
    pub files_expired: AtomicU64,
    /// See [`names::BATCH_IDS_EXPIRED`].
    pub batch_ids_expired: AtomicU64,
    /// See [`names::LOG_REOPENED`].
    pub log_reopened: AtomicU64,
    /// See [`names::FILES_QUARANTINED`].
    pub files_quarantined: AtomicU64,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        let ack_stage_seconds: ByLabel = Family::new_with_constructor(latency);
        // A clone of a histogram counts into the same buckets.
        let ack_stages = AckStage::ALL
            .map(|stage| ack_stage_seconds.get_or_create(&vec![("stage".into(), stage.label().into())]).clone());
        Self {
            ack_seconds: latency(),
            ack_stage_seconds,
            ack_stages,
            query_seconds: Family::new_with_constructor(latency),
            refresh_seconds: long_latency(),
            batches_accepted: AtomicU64::default(),
            batches_duplicate: AtomicU64::default(),
            records_accepted: AtomicU64::default(),
            bytes_accepted: AtomicU64::default(),
            reports_rejected: Default::default(),
            rows_flushed: AtomicU64::default(),
            files_flushed: AtomicU64::default(),
            files_expired: AtomicU64::default(),
            batch_ids_expired: AtomicU64::default(),
            log_reopened: AtomicU64::default(),
            files_quarantined: AtomicU64::default(),
        }
    }
}

/// The counters and gauges of one scrape.
#[derive(Debug)]
struct Scrape {
    counters: Vec<(&'static str, &'static str, u64)>,
    rejected: Vec<(&'static str, u64)>,
    gauges: Vec<(&'static str, &'static str, i64)>,
}

/// A counter as Prometheus's text format has it: the family named with
/// `_total`, like its sample (OpenMetrics names the family without it,
/// which Prometheus's text parser and `promtool check metrics` take for a
/// metric of no type and no help).
#[derive(Debug)]
struct TextCounter(u64);

impl prometheus_client::encoding::EncodeMetric for TextCounter {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&i64::try_from(self.0).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

impl Collector for Scrape {
    // The registry ends the help of what is registered with it with a full
    // stop; these texts have none, and get it here.
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, value) in &self.counters {
            let counter = TextCounter(*value);
            let help = format!("{help}.");
            let metric = encoder.encode_descriptor(name, &help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let mut family = encoder.encode_descriptor(
            names::REPORTS_REJECTED,
            "Reports refused, by reason (unauthenticated, rate_limited, busy, invalid, conflict, storage).",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, value) in &self.rejected {
            let labels = [("reason", *reason)];
            TextCounter(*value).encode(family.encode_family(&labels)?)?;
        }
        // Build info as a gauge of 1 with labels (the OpenMetrics `info`
        // type is unknown to Prometheus's text format and its promtool).
        let mut build = encoder.encode_descriptor(
            "leakwatch_build_info",
            "The collector's version.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(build.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        for (name, help, value) in &self.gauges {
            let gauge = ConstGauge::new(*value);
            let help = format!("{help}.");
            let metric = encoder.encode_descriptor(name, &help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

impl IngestMetrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Observes `seconds` of `stage` of a stored report.
    pub fn ack_stage(&self, stage: AckStage, seconds: f64) {
        self.ack_stages[stage as usize].observe(seconds);
    }

    /// Counts one refused report.
    pub fn reject(&self, reason: RejectReason) {
        Self::add(&self.reports_rejected[reason as usize], 1);
    }

    /// The OpenMetrics text exposition (HELP and TYPE for each metric).
    pub fn render(&self, gauges: Gauges) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = vec![
            (names::BATCHES_ACCEPTED, "Batches stored", load(&self.batches_accepted)),
            (names::BATCHES_DUPLICATE, "Batches answered duplicate (already stored)", load(&self.batches_duplicate)),
            (names::RECORDS_ACCEPTED, "Records stored", load(&self.records_accepted)),
            (names::BYTES_ACCEPTED, "Bytes of the stored batches, encoded", load(&self.bytes_accepted)),
            (names::ROWS_FLUSHED, "Rows written to Parquet", load(&self.rows_flushed)),
            (names::FILES_FLUSHED, "Parquet files written", load(&self.files_flushed)),
            (names::FILES_EXPIRED, "Parquet files retention deleted", load(&self.files_expired)),
            (names::BATCH_IDS_EXPIRED, "Batch ids retention forgot", load(&self.batch_ids_expired)),
            (names::LOG_REOPENED, "Times the log was opened again after a write failed", load(&self.log_reopened)),
            (
                names::FILES_QUARANTINED,
                "Flushed files set aside because their footer does not read",
                load(&self.files_quarantined),
            ),
            (
                names::QUERIES_REPLANNED,
                "Queries that stopped making progress and were planned again on one partition",
                leakwatch_query::watch::stalled_queries_replanned(),
            ),
        ];
        let rejected = REASONS.iter().zip(&self.reports_rejected).map(|(r, v)| (*r, load(v))).collect();
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut gauge_rows = vec![
            (names::FLUSH_LAG_BATCHES, "Acknowledged batches not yet in Parquet", int(gauges.flush_lag_batches)),
            (names::LOG_BYTES, "Bytes of the log's SST files and memtables", int(gauges.log_bytes)),
            (
                names::LOG_WAL_BYTES,
                "Bytes of the log's WAL files (what a restart reads again)",
                int(gauges.log_wal_bytes),
            ),
            (
                names::LOG_WRITE_FAILING,
                "1 while the log cannot be written and reports are refused",
                i64::from(gauges.log_write_failing),
            ),
            (
                names::FILES_UNREADABLE,
                "Flushed files queries leave out because they do not read",
                int(gauges.files_unreadable),
            ),
            (
                names::REFRESH_FAILURES,
                "Dashboard refreshes that failed since the last that succeeded (each is tried again)",
                i64::from(gauges.refresh_failures),
            ),
        ];
        if let Some(digested) = gauges.digested {
            gauge_rows.push((
                names::DIGEST_ROWS,
                "Rows of the flushed files' digests (and of the unflushed records') the last dashboard refresh \
                 read",
                int(digested.rows),
            ));
            gauge_rows.push((
                names::REFRESH_FILES_UNDIGESTED,
                "Flushed files the last dashboard refresh read as they are (their records share too few groups \
                 for a digest)",
                int(digested.raw as u64),
            ));
            gauge_rows.push((
                names::REFRESH_MERGED,
                "1 when the last dashboard refresh took its own figures from the aggregates merged from the \
                 digests, 0 when it ran their SQL (a file read as it is, or that state over a quarter of the \
                 query memory)",
                i64::from(digested.merged),
            ));
        }
        if let Some(age) = gauges.published_age_seconds {
            gauge_rows.push((
                names::PUBLISHED_AGE_SECONDS,
                "Seconds since the public dashboard's aggregates were computed",
                age,
            ));
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape { counters, rejected, gauges: gauge_rows }));
        registry.register_with_unit(
            "leakwatch_ack",
            "Time from a report's arrival to its acknowledgement (accepted or duplicate)",
            Unit::Seconds,
            self.ack_seconds.clone(),
        );
        registry.register_with_unit(
            "leakwatch_ack_stage",
            "The parts of the time to acknowledge a stored report, by stage: queued (checked, waiting for a \
             thread), lookup (the log's lock and the batch id's lookup), write (the synced RocksDB write), \
             answer",
            Unit::Seconds,
            self.ack_stage_seconds.clone(),
        );
        registry.register_with_unit(
            "leakwatch_query",
            "Time a query took, by front end (flight_sql)",
            Unit::Seconds,
            self.query_seconds.clone(),
        );
        registry.register_with_unit(
            "leakwatch_dashboard_refresh",
            "Time a refresh of the public dashboard's aggregates took",
            Unit::Seconds,
            self.refresh_seconds.clone(),
        );
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
