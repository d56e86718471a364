//! Ingest and flush counters, exposed at `/metrics` in Prometheus text
//! format. Counters end in `_total`.

use std::sync::atomic::{AtomicU64, Ordering};

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

const REASONS: [&str; 6] = ["unauthenticated", "rate_limited", "busy", "invalid", "conflict", "storage"];

/// Gauges read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
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
}

/// The collector's counters.
#[derive(Debug, Default)]
pub struct IngestMetrics {
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

impl IngestMetrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one refused report.
    pub fn reject(&self, reason: RejectReason) {
        Self::add(&self.reports_rejected[reason as usize], 1);
    }

    /// Prometheus text exposition.
    pub fn render(&self, gauges: Gauges) -> String {
        let rows = [
            (names::BATCHES_ACCEPTED, &self.batches_accepted),
            (names::BATCHES_DUPLICATE, &self.batches_duplicate),
            (names::RECORDS_ACCEPTED, &self.records_accepted),
            (names::BYTES_ACCEPTED, &self.bytes_accepted),
            (names::ROWS_FLUSHED, &self.rows_flushed),
            (names::FILES_FLUSHED, &self.files_flushed),
            (names::FILES_EXPIRED, &self.files_expired),
            (names::BATCH_IDS_EXPIRED, &self.batch_ids_expired),
            (names::LOG_REOPENED, &self.log_reopened),
            (names::FILES_QUARANTINED, &self.files_quarantined),
        ];
        let mut out = String::new();
        for (name, value) in rows {
            out.push_str(&format!("# TYPE {name} counter\n{name} {}\n", value.load(Ordering::Relaxed)));
        }
        let name = names::REPORTS_REJECTED;
        out.push_str(&format!("# TYPE {name} counter\n"));
        for (reason, value) in REASONS.iter().zip(&self.reports_rejected) {
            out.push_str(&format!("{name}{{reason=\"{reason}\"}} {}\n", value.load(Ordering::Relaxed)));
        }
        for (name, value) in [
            (names::FLUSH_LAG_BATCHES, gauges.flush_lag_batches),
            (names::LOG_BYTES, gauges.log_bytes),
            (names::LOG_WAL_BYTES, gauges.log_wal_bytes),
            (names::LOG_WRITE_FAILING, u64::from(gauges.log_write_failing)),
            (names::FILES_UNREADABLE, gauges.files_unreadable),
        ] {
            out.push_str(&format!("# TYPE {name} gauge\n{name} {value}\n"));
        }
        out
    }
}
