//! Flusher: log entries in, Parquet files out.
//!
//! A flush takes the log entries above the watermark (up to
//! [`DurableLog::durable_upto`]), records the range as a flush intent,
//! writes one Parquet file per day, as `leakwatch_query::files` (the file
//! contract: paths, writer settings, sort order, footer keys) has it,
//! through `object_store` ([`DataStore`]), makes the files durable, and
//! then moves the watermark and deletes the flushed entries in one synced
//! write. [`compaction`] merges small files and [`retention`] deletes old
//! days.
//!
//! A crash before the watermark moves leaves the intent; the next flush
//! redoes exactly that range and so rewrites the same file names with the
//! same rows. Readers use only files whose range ends at or below the
//! watermark, so no row is ever in both the files and the tail, or in
//! neither.

pub mod compaction;
pub mod retention;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use compaction::{COMPACT_MIN_FILES, COMPACT_RUN_LIMIT, KEEP_REPLACED, RunLimit};
use leakwatch_query::files::{FlowFile, flow_writer};
use leakwatch_query::{BATCHES_KEY, FlowBatchBuilder, batch_list};
use parquet::file::metadata::KeyValue;
pub use store::{DataStore, MAX_COLLECTOR_ID_LEN, SharedStore, check_collector_id};

use crate::convert::each_record;
use crate::log::DurableLog;
use crate::metrics::IngestMetrics;
use crate::{Error, Result};

/// Most log entries (batches) per flush.
pub const MAX_BATCHES_PER_FLUSH: u64 = 20_000;

/// Most bytes of log entries per flush, counted uncompressed (more when
/// one entry is larger): a flush holds its rows in memory, several times
/// the entries' size, so a collector that fell behind catches up in steps
/// of this size.
pub const MAX_BYTES_PER_FLUSH: usize = 64 << 20;

/// What one flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Rows written.
    pub rows: u64,
    /// Files written.
    pub files: u64,
    /// Watermark after the flush.
    pub watermark: u64,
}

/// Moves data from the log to Parquet.
#[derive(Debug)]
pub struct Flusher {
    log: Arc<DurableLog>,
    store: DataStore,
    metrics: Arc<IngestMetrics>,
    lock: tokio::sync::Mutex<()>,
    /// Log entries waiting from which flushes run at ingest's priority.
    catch_up_at: u64,
    /// Whether the last flush ran at ingest's priority.
    catching_up: std::sync::atomic::AtomicBool,
    /// Why the last flush failed, until one succeeds.
    failure: std::sync::Mutex<Option<String>>,
}

/// The Parquet file of each day the log entries `from..=to` have records
/// of: (day, file, rows), days in order, each listing its batches when
/// `listed`. Entries are read and converted one at a time.
fn day_files(log: &DurableLog, from: u64, to: u64, listed: bool) -> Result<Vec<(String, Vec<u8>, u64)>> {
    // Per day: its rows, and the entry whose labels its rows carry now.
    let mut days: BTreeMap<String, (FlowBatchBuilder, Option<u64>)> = BTreeMap::new();
    // Each day's name, worked out once per flush: an entry's records may
    // alternate between two days (near midnight), and a flush holds few.
    let mut named: Vec<(i64, String)> = Vec::new();
    log.each_in_range(from, to, |seq, message| {
        each_record(message, |labels, r| {
            let n = r.window_start_s.div_euclid(86_400);
            let day = match named.iter().position(|(m, _)| *m == n) {
                Some(i) => &named[i].1,
                None => {
                    named.push((n, FlowFile::day_of(r.window_start_s)));
                    &named[named.len() - 1].1
                }
            };
            let (builder, labelled) = match days.get_mut(day) {
                Some(entry) => entry,
                None => days.entry(day.clone()).or_insert_with(|| (FlowBatchBuilder::new(), None)),
            };
            if *labelled != Some(seq) {
                builder.start_batch(labels);
                *labelled = Some(seq);
            }
            builder.push_record(r);
        })
        .map_err(|e| match e {
            Error::Corrupt(m) => Error::Corrupt(format!("{m} (log sequence number {seq})")),
            e => e,
        })
    })?;
    days.into_iter()
        .map(|(day, (mut builder, _))| {
            builder.sort_for_rules();
            let rows = builder.len() as u64;
            let pairs = listed.then(|| builder.batch_pairs());
            Ok((day, parquet_bytes(&builder.finish_encoded(), pairs.as_ref())?, rows))
        })
        .collect()
}

/// One Parquet file of `batch` (in either schema [`flow_writer`] takes),
/// its batches `pairs`, if given, listed in the footer ([`BATCHES_KEY`]).
fn parquet_bytes(
    batch: &arrow::array::RecordBatch,
    pairs: Option<&std::collections::HashSet<(String, String)>>,
) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut writer = flow_writer(&mut buf, batch.schema()).map_err(Error::rows("writing a flushed file"))?;
    if let Some(pairs) = pairs {
        writer.append_key_value_metadata(KeyValue::new(BATCHES_KEY.to_string(), batch_list(pairs)));
    }
    writer.write(batch).map_err(Error::rows("writing a flushed file"))?;
    writer.close().map_err(Error::rows("writing a flushed file"))?;
    Ok(buf)
}

impl Flusher {
    /// A flusher from `log` to `store`.
    pub fn new(log: Arc<DurableLog>, store: DataStore, metrics: Arc<IngestMetrics>) -> Self {
        Self {
            log,
            store,
            metrics,
            lock: tokio::sync::Mutex::new(()),
            catch_up_at: u64::MAX,
            catching_up: false.into(),
            failure: std::sync::Mutex::default(),
        }
    }

    /// This flusher, flushing at ingest's priority instead of background
    /// priority while `entries` or more log entries wait: a flusher that
    /// falls behind under sustained load then takes its fair share of the
    /// cores (acks wait a little longer) rather than let the backlog grow
    /// until ingest refuses reports.
    pub fn catching_up_from(mut self, entries: u64) -> Self {
        self.catch_up_at = entries.max(1);
        self
    }

    /// True when the next flush runs at background priority; says so in
    /// the log when that changes. Catching up lasts until the backlog is
    /// half the size it started at, so that the priority does not flap.
    fn lowered(&self) -> bool {
        let waiting = self.log.flush_lag();
        let was = self.catching_up.load(std::sync::atomic::Ordering::Relaxed);
        let catching_up = waiting >= self.catch_up_at || (was && waiting >= self.catch_up_at.div_ceil(2));
        if self.catching_up.swap(catching_up, std::sync::atomic::Ordering::Relaxed) != catching_up {
            match catching_up {
                true => tracing::warn!(
                    waiting,
                    from = self.catch_up_at,
                    "Flusher behind: flushing at ingest's priority until it catches up"
                ),
                false => tracing::info!(waiting, "Flusher caught up: flushing at background priority again"),
            }
        }
        !catching_up
    }

    /// Flushes what is durable now (finishing an interrupted flush first);
    /// repeats until the log holds nothing more to flush. A failure is
    /// kept for [`Self::failure`] until a flush succeeds.
    pub async fn flush(&self) -> Result<FlushOutcome> {
        let flushed = self.flush_all().await;
        *self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            flushed.as_ref().err().map(ToString::to_string);
        flushed
    }

    /// Why the last flush failed (reading the log, writing the store), if
    /// it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    async fn flush_all(&self) -> Result<FlushOutcome> {
        let _guard = self.lock.lock().await;
        let mut total = FlushOutcome::default();
        loop {
            let log = self.log.clone();
            let range = tokio::task::spawn_blocking(move || -> Result<Option<(u64, u64)>> {
                if let Some(intent) = log.flush_intent()? {
                    return Ok(Some(intent));
                }
                let watermark = log.watermark()?;
                let upto = log.durable_upto();
                if upto <= watermark {
                    return Ok(None);
                }
                let to =
                    log.end_within(watermark + 1, upto.min(watermark + MAX_BATCHES_PER_FLUSH), MAX_BYTES_PER_FLUSH)?;
                log.set_flush_intent(watermark + 1, to)?;
                Ok(Some((watermark + 1, to)))
            })
            .await
            .map_err(Error::task("the flush's log write"))??;
            let Some((from, to)) = range else {
                total.watermark = self.log.watermark()?;
                return Ok(total);
            };
            let outcome = self.flush_range(from, to).await?;
            total.rows += outcome.rows;
            total.files += outcome.files;
        }
    }

    async fn flush_range(&self, from: u64, to: u64) -> Result<FlushOutcome> {
        let log = self.log.clone();
        // Reading, converting and encoding take seconds for a large range:
        // on a background thread, not on the runtime that answers agents.
        let listed = self.store.lists_batches();
        let files =
            crate::background::run_at("leakwatch-flush", self.lowered(), move || day_files(&log, from, to, listed))
                .await?;
        let mut outcome = FlushOutcome::default();
        for (day, bytes, rows) in files {
            outcome.rows += rows;
            let path = self.store.flow_file(&FlowFile::new(day.as_str(), from, to));
            self.store.put_durable(&path, bytes).await?;
            self.store.note_rows(&path, rows);
            outcome.files += 1;
        }
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.commit_flush(to))
            .await
            .map_err(Error::task("the flush's log write"))??;
        IngestMetrics::add(&self.metrics.rows_flushed, outcome.rows);
        IngestMetrics::add(&self.metrics.files_flushed, outcome.files);
        tracing::info!(from, to, rows = outcome.rows, files = outcome.files, "Flushed log to Parquet");
        outcome.watermark = to;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests;
