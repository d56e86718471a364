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
    /// Reports refused as invalid or unauthenticated.
    pub const REPORTS_REJECTED: &str = "leakwatch_reports_rejected_total";
    /// Rows written to Parquet.
    pub const ROWS_FLUSHED: &str = "leakwatch_rows_flushed_total";
    /// Parquet files written.
    pub const FILES_FLUSHED: &str = "leakwatch_files_flushed_total";
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
    /// See [`names::REPORTS_REJECTED`].
    pub reports_rejected: AtomicU64,
    /// See [`names::ROWS_FLUSHED`].
    pub rows_flushed: AtomicU64,
    /// See [`names::FILES_FLUSHED`].
    pub files_flushed: AtomicU64,
}

impl IngestMetrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let rows = [
            (names::BATCHES_ACCEPTED, &self.batches_accepted),
            (names::BATCHES_DUPLICATE, &self.batches_duplicate),
            (names::RECORDS_ACCEPTED, &self.records_accepted),
            (names::REPORTS_REJECTED, &self.reports_rejected),
            (names::ROWS_FLUSHED, &self.rows_flushed),
            (names::FILES_FLUSHED, &self.files_flushed),
        ];
        let mut out = String::new();
        for (name, value) in rows {
            out.push_str(&format!("# TYPE {name} counter\n{name} {}\n", value.load(Ordering::Relaxed)));
        }
        out
    }
}
