//! Compaction: a day's small flushed files merged into fewer, in runs,
//! their inputs deleted once no query can still be reading them.

use std::collections::BTreeMap;
use std::sync::Arc;

use leakwatch_query::files::{FlowFile, ROW_GROUP_ROWS, conform, flow_writer};
use leakwatch_query::{BATCHES_KEY, batch_list, batch_pairs, flows_schema, rules_order, sorted_slice};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::file::metadata::KeyValue;

use super::DataStore;
use crate::{Error, Result};

/// Compaction merges a run of a day's files once it has this many.
pub const COMPACT_MIN_FILES: usize = 8;

/// How large a compaction's inputs may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimit {
    /// Bytes: files this large stay as they are, and a merge's inputs
    /// total at most this.
    pub bytes: u64,
    /// Rows, likewise.
    pub rows: u64,
}

/// Compaction leaves files of 8 MiB or 1 Mi rows or more as they are, and
/// merges runs of smaller files whose totals stay within both. Many small
/// files slow queries down; files of a million rows (eight row groups) do
/// not, and a busy collector's flushes are that large already, so they are
/// not decoded and encoded again (nor is a day rewritten whole again and
/// again), and a merge holds a bounded amount in memory.
pub const COMPACT_RUN_LIMIT: RunLimit = RunLimit { bytes: 8 << 20, rows: 1 << 20 };

/// How long the inputs of a compaction stay after the merged file is
/// written, so that queries that listed them finish (the default query
/// timeout is one minute).
pub const KEEP_REPLACED: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl DataStore {
    /// Merges a day's flushed files (those at or below the watermark) in
    /// runs: consecutive files, each under `limit` and together within it,
    /// are merged once at least `min_files` of them are there. A
    /// merged file's range covers exactly its inputs.
    /// Readers skip files whose range lies inside another's, so the inputs
    /// stay readable until `keep` has passed since the merged file was
    /// written: a query that listed them before the merge (in this process
    /// or in a `leakwatch sql` on the same directory) still finds them. A
    /// later call deletes them, as it does the inputs of a compaction a
    /// crash interrupted; covered files never go into a merge again.
    /// Returns the number of files deleted.
    pub async fn compact(
        &self,
        watermark: u64,
        min_files: usize,
        limit: RunLimit,
        keep: std::time::Duration,
    ) -> Result<u64> {
        // Per day: each file's flushed range, and its key, time written and size.
        type Flushed = (u64, u64, object_store::ObjectMeta);
        let mut days: BTreeMap<String, Vec<Flushed>> = BTreeMap::new();
        for (file, meta) in self.flow_files().await? {
            if file.to <= watermark {
                days.entry(file.day).or_default().push((file.from, file.to, meta));
            }
        }
        let kept_since = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let mut deleted = 0;
        for (day, all) in days {
            // Files inside another's range were merged into it: delete
            // them once the merged file is older than `keep`.
            let mut files = Vec::new();
            for (from, to, meta) in &all {
                let coverers: Vec<&Flushed> = all
                    .iter()
                    .filter(|(f, t, m)| {
                        m.location != meta.location && leakwatch_query::range_within((*from, *to), (*f, *t))
                    })
                    .collect();
                if coverers.is_empty() {
                    files.push((*from, *to, meta));
                } else if coverers.iter().any(|(_, _, m)| m.last_modified <= kept_since)
                    && self.delete(&meta.location).await?
                {
                    deleted += 1;
                }
            }
            files.sort_by_key(|(from, ..)| *from);
            let mut sized = Vec::with_capacity(files.len());
            for (from, to, meta) in files {
                // Only files under the byte limit can be merged: count rows of those.
                let rows = if meta.size < limit.bytes { self.rows_of(meta).await? } else { u64::MAX };
                sized.push((from, to, meta.location.clone(), Size { bytes: meta.size, rows }));
            }
            for run in runs_to_merge(sized, limit) {
                if run.len() < min_files.max(2) {
                    continue;
                }
                deleted += self.merge_run(&day, &run, keep).await?;
            }
        }
        Ok(deleted)
    }

    /// Merges `files` (consecutive flushed files of `day`) into one file;
    /// deletes them when `keep` is zero and returns how many went.
    async fn merge_run(
        &self,
        day: &str,
        files: &[(u64, u64, StorePath, Size)],
        keep: std::time::Duration,
    ) -> Result<u64> {
        let from = files.iter().map(|f| f.0).min().unwrap_or(0);
        let to = files.iter().map(|f| f.1).max().unwrap_or(0);
        // Decoding and encoding a day's rows takes seconds: on a
        // background thread, which reads the files through this runtime.
        let (store, runtime) = (self.store.clone(), tokio::runtime::Handle::current());
        let paths: Vec<StorePath> = files.iter().map(|(_, _, path, _)| path.clone()).collect();
        let listed = self.lists_batches();
        let buf =
            crate::background::run("leakwatch-compact", move || merge_files(&store, &runtime, &paths, listed)).await?;
        let merged = self.flow_file(&FlowFile::new(day, from, to));
        self.put_durable(&merged, buf).await?;
        self.note_rows(&merged, files.iter().map(|f| f.3.rows).sum());
        let mut deleted = 0;
        if keep.is_zero() {
            for (_, _, path, _) in files {
                if self.delete(path).await? {
                    deleted += 1;
                }
            }
        }
        tracing::info!(day = %day, files = files.len(), from, to, "Compacted day partition");
        Ok(deleted)
    }
}

/// A flushed file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    bytes: u64,
    rows: u64,
}

/// `files` (range, key and size, in order) cut into runs that may be
/// merged: each file under `limit`, each run's totals within it.
fn runs_to_merge(files: Vec<(u64, u64, StorePath, Size)>, limit: RunLimit) -> Vec<Vec<(u64, u64, StorePath, Size)>> {
    let mut runs = vec![Vec::new()];
    let mut total = Size { bytes: 0, rows: 0 };
    for file in files {
        let size = file.3;
        let alone = size.bytes >= limit.bytes || size.rows >= limit.rows;
        if alone
            || total.bytes.saturating_add(size.bytes) > limit.bytes
            || total.rows.saturating_add(size.rows) > limit.rows
        {
            runs.push(Vec::new());
            total = Size { bytes: 0, rows: 0 };
            if alone {
                continue;
            }
        }
        total.bytes += size.bytes;
        total.rows += size.rows;
        if let Some(run) = runs.last_mut() {
            run.push(file);
        }
    }
    runs.retain(|run| !run.is_empty());
    runs
}

/// One Parquet file of the rows of `paths` (each read through `runtime`),
/// in today's `flows` schema, sorted as a flush sorts its rows, listing
/// all their batches when `listed`. It holds the run's rows in memory
/// while it sorts them (at most [`COMPACT_RUN_LIMIT`]'s rows), and one
/// row group of them sorted.
fn merge_files(
    store: &Arc<dyn ObjectStore>,
    runtime: &tokio::runtime::Handle,
    paths: &[StorePath],
    listed: bool,
) -> Result<Vec<u8>> {
    let mut batches = Vec::new();
    let mut pairs = std::collections::HashSet::new();
    for path in paths {
        let bytes = runtime
            .block_on(async { store.get(path).await?.bytes().await })
            .map_err(Error::store(format!("reading {path}")))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(Error::parquet(format!("reading {path}")))?;
        for batch in reader {
            let batch = batch.map_err(Error::rows(format!("reading {path}")))?;
            let batch = conform(&batch).map_err(Error::rows(format!("reading {path} into today's schema")))?;
            if listed {
                batch_pairs([&batch], &mut pairs);
            }
            batches.push(batch);
        }
    }
    let order = rules_order(&batches).map_err(Error::rows("sorting merged rows"))?;
    let mut buf = Vec::new();
    let mut writer = flow_writer(&mut buf, flows_schema()).map_err(Error::rows("writing merged rows"))?;
    // A row group's rows at a time: the sorted copy is never whole.
    for pairs in order.chunks(ROW_GROUP_ROWS) {
        let rows = sorted_slice(&batches, pairs).map_err(Error::rows("sorting merged rows"))?;
        writer.write(&rows).map_err(Error::rows("writing merged rows"))?;
    }
    if listed {
        writer.append_key_value_metadata(KeyValue::new(BATCHES_KEY.to_string(), batch_list(&pairs)));
    }
    writer.close().map_err(Error::rows("writing merged rows"))?;
    Ok(buf)
}
