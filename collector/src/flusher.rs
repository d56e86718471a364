//! Flusher: log entries in, Parquet files out.
//!
//! A flush takes the log entries above the watermark (up to
//! [`DurableLog::durable_upto`]), records the range as a flush intent,
//! writes one Parquet file per day (`flows/day=YYYY-MM-DD/{from}-{to}.parquet`,
//! zero-padded sequence numbers; zstd, dictionary-encoded strings, times
//! as whole microseconds (see `leakwatch_query::MICROSECOND_COLUMNS`), rows
//! sorted by vendor, model, domain, device and time since boot; in a
//! shared store the footer lists the file's batches, see
//! `leakwatch_query::BATCHES_KEY`) through
//! `object_store`, makes the files durable, and then moves the watermark
//! and deletes the flushed entries in one synced write.
//!
//! A crash before the watermark moves leaves the intent; the next flush
//! redoes exactly that range and so rewrites the same file names with the
//! same rows. Readers use only files whose range ends at or below the
//! watermark, so no row is ever in both the files and the tail, or in
//! neither.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use leakwatch_query::{
    BATCHES_KEY, FlowBatchBuilder, FlowStore, MICROSECOND_COLUMNS, S3Options, batch_list, batch_pairs, flows_schema,
    parse_s3_url, rules_order, s3_store, sorted_slice, stored_schema, to_stored,
};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::convert::each_record;
use crate::log::DurableLog;
use crate::metrics::IngestMetrics;
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

/// An S3-compatible store shared by collectors: `s3://BUCKET/PREFIX`,
/// each collector writing under `PREFIX/COLLECTOR_ID/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedStore {
    /// `s3://BUCKET/PREFIX`.
    pub url: String,
    /// Endpoint URL for stores other than AWS (else `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Region (else `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// This collector's directory under the prefix.
    pub collector_id: String,
    /// Access key id and secret in place of the AWS environment's (for
    /// embedding; never recorded in the data directory).
    #[serde(skip)]
    pub credentials: Option<(String, String)>,
}

/// Longest collector id.
pub const MAX_COLLECTOR_ID_LEN: usize = 64;

/// Checks a collector id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, not
/// starting with a dot.
pub fn check_collector_id(id: &str) -> Result<()> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_COLLECTOR_ID_LEN || !id.chars().all(valid) || id.starts_with('.') {
        return Err(Error::Config(format!(
            "--collector-id {id:?}: must be 1 to {MAX_COLLECTOR_ID_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'"
        )));
    }
    Ok(())
}

impl SharedStore {
    fn options(&self) -> S3Options {
        S3Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            credentials: self.credentials.clone(),
        }
    }

    /// Where this collector's files are read from by SQL: every
    /// collector's files under the prefix, the watermark applying to this
    /// one's.
    pub fn flow_store(&self) -> Result<FlowStore> {
        FlowStore::s3(&self.url, &self.options(), Some(&self.collector_id)).map_err(Error::Config)
    }
}

/// Where Parquet files go, through `object_store`: a local directory
/// (default) or a prefix of an S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct DataStore {
    store: Arc<dyn ObjectStore>,
    /// Key prefix of `flows/` (empty for a local directory).
    prefix: StorePath,
    /// The local directory, whose writes need an explicit fsync.
    local: Option<PathBuf>,
    /// The store as SQL reads it.
    flows: FlowStore,
    /// Rows of the files compaction has looked at or this process wrote
    /// (files never change once written; an entry goes with its file).
    rows: Arc<std::sync::Mutex<std::collections::HashMap<StorePath, u64>>>,
}

impl DataStore {
    /// A local store rooted at `root` (created if missing).
    pub fn local(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&root).map_err(|e| Error::Storage(format!("{}: {e}", root.display())))?;
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| Error::Storage(e.to_string()))?;
        let flows = FlowStore::local(&root).map_err(Error::Storage)?;
        Ok(Self {
            store: Arc::new(store),
            prefix: StorePath::default(),
            local: Some(root),
            flows,
            rows: Arc::default(),
        })
    }

    /// This collector's directory in a shared S3-compatible store.
    pub fn shared(shared: &SharedStore) -> Result<Self> {
        check_collector_id(&shared.collector_id)?;
        let (bucket, prefix) = parse_s3_url(&shared.url).map_err(Error::Config)?;
        let store = s3_store(&bucket, &shared.options()).map_err(Error::Config)?;
        let flows =
            FlowStore::in_bucket(store.clone(), &bucket, &prefix, Some(&shared.collector_id)).map_err(Error::Config)?;
        let prefix = StorePath::from(prefix.as_str()).join(shared.collector_id.as_str());
        Ok(Self { store, prefix, local: None, flows, rows: Arc::default() })
    }

    /// The store as SQL reads it.
    pub fn flow_store(&self) -> FlowStore {
        self.flows.clone()
    }

    /// Whether the files written here list their batches in the footer
    /// ([`BATCHES_KEY`]): only in a shared store, whose readers look for
    /// a batch two collectors stored; in a local one the list would
    /// repeat the `batch_id` and `agent_id` columns for no reader (with a
    /// batch per boot, a seventh of the file).
    pub fn lists_batches(&self) -> bool {
        self.local.is_none()
    }

    /// The key of `flows/day={day}/{from}-{to}.parquet`.
    fn flow_file(&self, day: &str, from: u64, to: u64) -> StorePath {
        let name = format!("{from:020}-{to:020}.parquet");
        self.prefix.clone().join("flows").join(format!("day={day}").as_str()).join(name.as_str())
    }

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
        for (day, meta) in self.flow_files().await? {
            let name = meta.location.filename().unwrap_or_default().to_string();
            let Some((from, to)) = leakwatch_query::flushed_range_of(std::path::Path::new(&name)) else { continue };
            if to <= watermark {
                days.entry(day).or_default().push((from, to, meta));
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
                } else if coverers.iter().any(|(_, _, m)| m.last_modified <= kept_since) {
                    self.delete(&meta.location).await?;
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
        let merged = self.flow_file(day, from, to);
        self.put_durable(&merged, buf).await?;
        self.note_rows(&merged, files.iter().map(|f| f.3.rows).sum());
        let mut deleted = 0;
        if keep.is_zero() {
            for (_, _, path, _) in files {
                self.delete(path).await?;
                deleted += 1;
            }
        }
        tracing::info!(day = %day, files = files.len(), from, to, "Compacted day partition");
        Ok(deleted)
    }

    /// Records that the file at `path` holds `rows` rows.
    fn note_rows(&self, path: &StorePath, rows: u64) {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(path.clone(), rows);
    }

    /// The rows of the file `meta` names, from its footer (ranged reads)
    /// the first time.
    async fn rows_of(&self, meta: &object_store::ObjectMeta) -> Result<u64> {
        let path = &meta.location;
        if let Some(&rows) = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(path) {
            return Ok(rows);
        }
        let footer =
            leakwatch_query::footer_of(self.store.as_ref(), meta).await.map_err(|e| Error::Storage(e.to_string()))?;
        let rows = u64::try_from(footer.file_metadata().num_rows()).unwrap_or(0);
        self.note_rows(path, rows);
        Ok(rows)
    }

    /// Every file of the `flows` table with its day (`YYYY-MM-DD`).
    async fn flow_files(&self) -> Result<Vec<(String, object_store::ObjectMeta)>> {
        use futures::TryStreamExt as _;
        let files: Vec<_> = self
            .store
            .list(Some(&self.prefix.clone().join("flows")))
            .try_collect()
            .await
            .map_err(|e| Error::Storage(format!("listing flows: {e}")))?;
        Ok(files
            .into_iter()
            .filter_map(|meta| {
                let day = meta.location.parts().find_map(|p| p.as_ref().strip_prefix("day=").map(str::to_string))?;
                Some((day, meta))
            })
            .collect())
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        self.store.delete(path).await.map_err(|e| Error::Storage(format!("deleting {path}: {e}")))?;
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(path);
        Ok(())
    }

    /// Moves this collector's flushed files whose footer does not read
    /// (found by queries, see `FlowStore::unreadable`) from
    /// `flows/day=D/` to `quarantine/day=D/`, where no query lists them
    /// and their bytes stay for whoever can repair them; returns how many
    /// went. Their rows are left out of every answer from then on (the
    /// log no longer holds them once flushed).
    pub async fn set_aside_unreadable(&self) -> Result<u64> {
        let mut moved = 0;
        for (file, why) in self.flows.unreadable() {
            let Some(key) = self.own_key(&file) else { continue };
            let parts: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
            let Some(at) = parts.iter().rposition(|p| p == "flows") else { continue };
            let mut to = self.prefix.clone();
            for part in std::iter::once("quarantine").chain(parts[at + 1..].iter().map(String::as_str)) {
                to = to.clone().join(part);
            }
            self.store
                .rename(&key, &to)
                .await
                .map_err(|e| Error::Storage(format!("setting aside the unreadable file {key}: {e}")))?;
            self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
            self.flows.set_aside(&file);
            tracing::error!(file = %key, to = %to, reason = %why, "Set aside an unreadable flushed file; answers leave its rows out");
            moved += 1;
        }
        Ok(moved)
    }

    /// The key in this store of `file` (a key as queries list it), when it
    /// is one of this collector's flushed files.
    fn own_key(&self, file: &StorePath) -> Option<StorePath> {
        match &self.local {
            Some(root) => {
                let abs = std::path::absolute(root).ok()?;
                let root = StorePath::from_absolute_path(&abs).ok()?;
                let rest: Vec<_> = file.prefix_match(&root)?.collect();
                (rest.first().map(|p| p.as_ref()) == Some("flows")).then(|| StorePath::from_iter(rest))
            }
            None => file.prefix_match(&self.prefix.clone().join("flows")).map(|_| file.clone()),
        }
    }

    /// Deletes the day partitions before `cutoff`; returns how many files
    /// went.
    pub async fn apply_retention(&self, cutoff: chrono::NaiveDate) -> Result<u64> {
        let mut deleted = 0;
        for (day, meta) in self.flow_files().await? {
            if chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d").is_ok_and(|d| d < cutoff) {
                self.delete(&meta.location).await?;
                deleted += 1;
            }
        }
        // The local store leaves empty day directories behind.
        if let Some(root) = &self.local
            && let Ok(days) = std::fs::read_dir(root.join("flows"))
        {
            for day in days.flatten() {
                let _ = std::fs::remove_dir(day.path()); // only succeeds when empty
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, cutoff = %cutoff, "Retention deleted old partitions");
        }
        Ok(deleted)
    }

    async fn put_durable(&self, path: &StorePath, bytes: Vec<u8>) -> Result<()> {
        self.store.put(path, bytes.into()).await.map_err(|e| Error::Storage(format!("writing {path}: {e}")))?;
        // An S3 PUT is durable once answered. The local store renames a
        // temporary file into place but does not fsync; the log entries
        // are deleted after this, so make the file and its directory
        // entries durable first.
        let Some(root) = &self.local else { return Ok(()) };
        let local = root.join(path.as_ref());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&local)?.sync_all()?;
            let mut dir = local.parent();
            for _ in 0..3 {
                let Some(d) = dir else { break };
                std::fs::File::open(d)?.sync_all()?;
                dir = d.parent();
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
        .map_err(|e| Error::Storage(format!("syncing {path}: {e}")))
    }
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
}

fn day_of(window_start_s: i64) -> String {
    chrono::DateTime::from_timestamp(window_start_s, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into())
}

/// A batch from an older file in today's `flows` schema: columns added
/// since are NULL.
fn conform(
    batch: &arrow::array::RecordBatch,
) -> std::result::Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let schema = flows_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(col) if col.data_type() == field.data_type() => Ok(col.clone()),
            Some(col) => arrow::compute::cast(col, field.data_type()),
            None => Ok(arrow::array::new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    arrow::array::RecordBatch::try_new(schema, columns)
}

/// Columns of random identifiers: their minimum and maximum in a page or a
/// row group span nearly the whole range, so statistics would cost every
/// value a comparison, and the footer and page index their bytes, and
/// never let a reader skip anything.
const NO_STATISTICS: [&str; 4] = ["agent_id", "batch_id", "device_pseudonym", "boot_pseudonym"];

/// Rows per row group of the files written.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// How flushed Parquet files are written: zstd 3, 128 Ki-row row groups,
/// dictionaries but for the measured times ([`MICROSECOND_COLUMNS`], nearly
/// every value distinct: a dictionary would hold each value once more,
/// beside its index), which are delta-encoded whole microseconds instead,
/// and statistics but for [`NO_STATISTICS`].
pub fn writer_properties() -> Result<WriterProperties> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| Error::Storage(e.to_string()))?))
        .set_dictionary_enabled(true)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for column in MICROSECOND_COLUMNS {
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    for column in NO_STATISTICS {
        props = props.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    Ok(props.build())
}

/// A Parquet writer of `flows` rows as the collector stores them
/// ([`flow_writer`]).
pub struct FlowWriter<W: std::io::Write + Send> {
    inner: ArrowWriter<W>,
}

impl<W: std::io::Write + Send> FlowWriter<W> {
    /// Writes `batch` (in the schema the writer was made for), its
    /// [`MICROSECOND_COLUMNS`] as whole microseconds.
    pub fn write(&mut self, batch: &arrow::array::RecordBatch) -> Result<()> {
        let stored = to_stored(batch).map_err(|e| Error::Storage(format!("storing rows: {e}")))?;
        self.inner.write(&stored).map_err(|e| Error::Storage(e.to_string()))
    }

    /// Adds `kv` to the footer.
    pub fn append_key_value_metadata(&mut self, kv: KeyValue) {
        self.inner.append_key_value_metadata(kv);
    }

    /// Writes the footer.
    pub fn close(self) -> Result<()> {
        self.inner.close().map(drop).map_err(|e| Error::Storage(e.to_string()))
    }
}

/// A writer into `out` of batches in `schema` (`flows`, or
/// [`leakwatch_query::flows_encoded_schema`], which Parquet stores the same
/// way) as [`stored_schema`] has them: [`writer_properties`], and no copy
/// of the Arrow schema in the footer (readers take the `flows` schema, to
/// which the Parquet schema alone casts without loss).
pub fn flow_writer<W: std::io::Write + Send>(out: W, schema: SchemaRef) -> Result<FlowWriter<W>> {
    let options = ArrowWriterOptions::new().with_properties(writer_properties()?).with_skip_arrow_metadata(true);
    let inner = ArrowWriter::try_new_with_options(out, stored_schema(&schema), options)
        .map_err(|e| Error::Storage(e.to_string()))?;
    Ok(FlowWriter { inner })
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
                    named.push((n, day_of(r.window_start_s)));
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
    let mut writer = flow_writer(&mut buf, batch.schema())?;
    if let Some(pairs) = pairs {
        writer.append_key_value_metadata(KeyValue::new(BATCHES_KEY.to_string(), batch_list(pairs)));
    }
    writer.write(batch)?;
    writer.close()?;
    Ok(buf)
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
            .map_err(|e| Error::Storage(format!("reading {path}: {e}")))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| Error::Storage(format!("reading {path}: {e}")))?;
        for batch in reader {
            let batch = batch.map_err(|e| Error::Storage(format!("reading {path}: {e}")))?;
            let batch = conform(&batch).map_err(|e| Error::Storage(format!("{path}: {e}")))?;
            if listed {
                batch_pairs([&batch], &mut pairs);
            }
            batches.push(batch);
        }
    }
    let order = rules_order(&batches).map_err(|e| Error::Storage(format!("sorting merged rows: {e}")))?;
    let mut buf = Vec::new();
    let mut writer = flow_writer(&mut buf, flows_schema())?;
    // A row group's rows at a time: the sorted copy is never whole.
    for pairs in order.chunks(ROW_GROUP_ROWS) {
        let rows = sorted_slice(&batches, pairs).map_err(|e| Error::Storage(format!("sorting merged rows: {e}")))?;
        writer.write(&rows)?;
    }
    if listed {
        writer.append_key_value_metadata(KeyValue::new(BATCHES_KEY.to_string(), batch_list(&pairs)));
    }
    writer.close()?;
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
    /// repeats until the log holds nothing more to flush.
    pub async fn flush(&self) -> Result<FlushOutcome> {
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
            .map_err(|e| Error::Storage(e.to_string()))??;
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
            let path = self.store.flow_file(&day, from, to);
            self.store.put_durable(&path, bytes).await?;
            self.store.note_rows(&path, rows);
            outcome.files += 1;
        }
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.commit_flush(to))
            .await
            .map_err(|e| Error::Storage(e.to_string()))??;
        IngestMetrics::add(&self.metrics.rows_flushed, outcome.rows);
        IngestMetrics::add(&self.metrics.files_flushed, outcome.files);
        tracing::info!(from, to, rows = outcome.rows, files = outcome.files, "Flushed log to Parquet");
        outcome.watermark = to;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rows(n: usize) -> arrow::array::RecordBatch {
        let mut b = FlowBatchBuilder::new();
        for i in 0..n {
            b.push(leakwatch_query::FlowRow { device_pseudonym: format!("d{i}"), ..Default::default() });
        }
        b.finish()
    }

    /// A flushed file of `batch` (in the `flows` schema), listing its
    /// batches.
    fn file_bytes(batch: &arrow::array::RecordBatch) -> Vec<u8> {
        let mut pairs = std::collections::HashSet::new();
        batch_pairs([batch], &mut pairs);
        parquet_bytes(batch, Some(&pairs)).expect("parquet")
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The rows of the Parquet file at `path`, in the `flows` schema.
    fn read_file(path: &std::path::Path) -> arrow::array::RecordBatch {
        let file = std::fs::File::open(path).expect("open");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("read")
            .build()
            .expect("reader");
        let batches: Vec<_> = reader.map(|b| conform(&b.expect("batch")).expect("flows schema")).collect();
        arrow::compute::concat_batches(&flows_schema(), &batches).expect("concat")
    }

    fn rows_in(path: &std::path::Path) -> usize {
        read_file(path).num_rows()
    }

    #[test]
    fn entries_laid_out_otherwise_flush_as_the_same_rows() {
        use leakwatch_proto::v1::{DeviceInfo, FlowRecord, ReportBatch};
        use prost::Message as _;
        let batch = |id: &str| ReportBatch {
            batch_id: id.into(),
            sent_at_unix_ms: 1,
            device: Some(DeviceInfo {
                device_pseudonym: format!("d-{id}"),
                vendor: "Acme".into(),
                ..Default::default()
            }),
            records: (0..5)
                .map(|i| FlowRecord {
                    window_start_unix_s: 1_790_000_000 + i * 40_000,
                    domain: format!("api{i}.example.com"),
                    bytes_out: i as u64,
                    ..Default::default()
                })
                .collect(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let (usual, odd) = (DurableLog::open(&a).expect("log"), DurableLog::open(&b).expect("log"));
        for (seq, id) in [(1, "x"), (2, "y")] {
            let whole = batch(id);
            usual.append("agent", &whole, 7).expect("append");
            // The batch in two parts (prost merges them): its records
            // first, then its other fields.
            let records = ReportBatch { records: whole.records.clone(), ..Default::default() };
            let rest = ReportBatch { records: Vec::new(), ..whole };
            let mut message =
                crate::log::StoredBatch { agent_id: "agent".into(), received_at_ms: 7, batch: Some(records) }
                    .encode_to_vec();
            prost::encoding::message::encode(3, &rest, &mut message);
            assert!(crate::convert::split_stored(&message).is_none(), "read whole, not in place");
            odd.put_message(seq, &message).expect("put");
        }
        let usual = day_files(&usual, 1, 2, true).expect("flush");
        let odd = day_files(&odd, 1, 2, true).expect("flush");
        assert_eq!(usual.len(), 3, "records of three days");
        assert_eq!(odd, usual);
    }

    #[tokio::test]
    async fn a_flusher_behind_flushes_at_ingests_priority_until_it_catches_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(DurableLog::open(&dir.path().join("log")).expect("log"));
        let store = DataStore::local(dir.path().join("store")).expect("store");
        let metrics = Arc::new(IngestMetrics::default());
        let flusher = Flusher::new(log.clone(), store.clone(), metrics.clone()).catching_up_from(4);
        let never = Flusher::new(log.clone(), store, metrics);
        let sent = std::cell::Cell::new(0);
        let append = |n: usize| {
            for _ in 0..n {
                sent.set(sent.get() + 1);
                let batch =
                    leakwatch_proto::v1::ReportBatch { batch_id: format!("b{}", sent.get()), ..Default::default() };
                log.append("agent", &batch, 1).expect("append");
            }
        };
        append(3);
        assert!(flusher.lowered(), "3 waiting: background priority");
        append(1);
        assert!(!flusher.lowered(), "4 waiting: ingest's priority");
        assert!(never.lowered(), "by default always background priority");
        flusher.flush().await.expect("flush");
        append(2);
        assert!(!flusher.lowered(), "2 waiting, half of 4: still catching up");
        append(1);
        flusher.flush().await.expect("flush");
        assert!(flusher.lowered(), "caught up: background priority again");
        append(3);
        assert!(flusher.lowered(), "3 waiting once caught up: background priority");
    }

    #[tokio::test]
    async fn compaction_keeps_its_inputs_for_running_queries_and_never_merges_them_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DataStore::local(dir.path().to_path_buf()).expect("store");
        let put = async |from: u64, to: u64, n: usize| {
            let path = StorePath::from(format!("flows/day=2026-10-01/{from:020}-{to:020}.parquet"));
            store.put_durable(&path, file_bytes(&rows(n))).await.expect("put");
        };
        put(1, 1, 2).await;
        put(2, 2, 3).await;
        let hour = Duration::from_secs(3600);
        // Merged, but the inputs stay for queries that listed them.
        assert_eq!(store.compact(2, 2, COMPACT_RUN_LIMIT, hour).await.expect("compact"), 0);
        let day = dir.path().join("flows/day=2026-10-01");
        assert_eq!(names(&day).len(), 3);
        // A later flush: the next merge takes the merged file and the new
        // one, never the inputs it already holds.
        put(3, 3, 4).await;
        assert_eq!(store.compact(3, 2, COMPACT_RUN_LIMIT, hour).await.expect("compact"), 0);
        assert_eq!(rows_in(&day.join("00000000000000000001-00000000000000000003.parquet")), 9);
        // Once the keep period is over, every covered file goes.
        assert_eq!(store.compact(3, 8, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("cleanup"), 4);
        assert_eq!(names(&day), ["00000000000000000001-00000000000000000003.parquet"]);
    }

    #[tokio::test]
    async fn compaction_merges_flushed_files_of_a_day_and_keeps_every_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DataStore::local(dir.path().to_path_buf()).expect("store");
        for (range, n) in [((1, 1), 2), ((2, 3), 3), ((4, 4), 4), ((5, 5), 7)] {
            let path = StorePath::from(format!("flows/day=2026-10-01/{:020}-{:020}.parquet", range.0, range.1));
            store.put_durable(&path, file_bytes(&rows(n))).await.expect("put");
        }
        // Watermark 4: the file of range 5 belongs to a flush in progress.
        assert_eq!(store.compact(4, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 3);
        let day = dir.path().join("flows/day=2026-10-01");
        assert_eq!(
            names(&day),
            ["00000000000000000001-00000000000000000004.parquet", "00000000000000000005-00000000000000000005.parquet"]
        );
        assert_eq!(rows_in(&day.join("00000000000000000001-00000000000000000004.parquet")), 9);
        // Too few files: nothing to do. Leftover inputs of an interrupted
        // compaction are deleted.
        assert_eq!(store.compact(5, 8, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 0);
        let stale = StorePath::from("flows/day=2026-10-01/00000000000000000002-00000000000000000003.parquet");
        store.put_durable(&stale, file_bytes(&rows(3))).await.expect("put");
        assert_eq!(store.compact(4, 8, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("cleanup"), 1);
        assert_eq!(names(&day).len(), 2);
    }

    #[tokio::test]
    async fn compaction_leaves_large_files_and_merges_runs_of_small_ones_within_the_size_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DataStore::local(dir.path().to_path_buf()).expect("store");
        let (small, large) = (file_bytes(&rows(3)), file_bytes(&rows(5000)));
        // Two small files fit in the limit, three do not; the large file
        // is over it.
        let max_bytes = 2 * small.len() as u64 + small.len() as u64 / 2;
        assert!(large.len() as u64 >= max_bytes);
        for (n, bytes) in [(1, &small), (2, &small), (3, &small), (4, &large), (5, &small), (6, &small)] {
            let path = StorePath::from(format!("flows/day=2026-10-01/{n:020}-{n:020}.parquet"));
            store.put_durable(&path, bytes.clone()).await.expect("put");
        }
        let limit = RunLimit { bytes: max_bytes, rows: u64::MAX };
        assert_eq!(store.compact(6, 2, limit, Duration::ZERO).await.expect("compact"), 4);
        let day = dir.path().join("flows/day=2026-10-01");
        let name = |from: u64, to: u64| format!("{from:020}-{to:020}.parquet");
        assert_eq!(names(&day), [name(1, 2), name(3, 3), name(4, 4), name(5, 6)]);
        assert_eq!(rows_in(&day.join(name(1, 2))), 6);
        assert_eq!(rows_in(&day.join(name(4, 4))), 5000);
        assert_eq!(rows_in(&day.join(name(5, 6))), 6);
    }

    #[tokio::test]
    async fn compaction_counts_rows_too_and_leaves_files_of_many_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DataStore::local(dir.path().to_path_buf()).expect("store");
        // Rows from the files' footers: a store that did not write them.
        for (n, rows_n) in [(1, 3), (2, 3), (3, 3), (4, 10), (5, 2), (6, 2)] {
            let path = StorePath::from(format!("flows/day=2026-10-01/{n:020}-{n:020}.parquet"));
            std::fs::create_dir_all(dir.path().join("flows/day=2026-10-01")).expect("dir");
            std::fs::write(dir.path().join(path.as_ref()), file_bytes(&rows(rows_n))).expect("write");
        }
        let limit = RunLimit { bytes: u64::MAX, rows: 7 };
        assert_eq!(store.compact(6, 2, limit, Duration::ZERO).await.expect("compact"), 4);
        let day = dir.path().join("flows/day=2026-10-01");
        let name = |from: u64, to: u64| format!("{from:020}-{to:020}.parquet");
        assert_eq!(names(&day), [name(1, 2), name(3, 3), name(4, 4), name(5, 6)]);
        // The merged files' rows are known without reading them: 6 + 3 > 7.
        assert_eq!(store.compact(6, 2, limit, Duration::ZERO).await.expect("compact"), 0);
        assert_eq!(rows_in(&day.join(name(5, 6))), 4);
    }

    #[tokio::test]
    async fn compaction_writes_a_run_sorted_as_a_flush_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DataStore::local(dir.path().to_path_buf()).expect("store");
        // Two flushed files, each sorted, whose rows interleave.
        let file = |vendors: &[&str], times: &[f64]| {
            let mut b = FlowBatchBuilder::new();
            for (i, v) in vendors.iter().enumerate() {
                for &t in times {
                    b.push(leakwatch_query::FlowRow {
                        vendor: (*v).into(),
                        device_pseudonym: format!("d{i}"),
                        domain: if i % 2 == 0 { "a.example".into() } else { String::new() },
                        seconds_since_boot: t,
                        ..Default::default()
                    });
                }
            }
            b.sort_for_rules();
            b.finish()
        };
        let (first, second) = (file(&["Xiaomi", "Amazon"], &[9.0, 1.0]), file(&["Sonos", "Apple", "Xiaomi"], &[5.0]));
        for (n, rows) in [(1, &first), (2, &second)] {
            let path = StorePath::from(format!("flows/day=2026-10-01/{n:020}-{n:020}.parquet"));
            store.put_durable(&path, file_bytes(rows)).await.expect("put");
        }
        assert_eq!(store.compact(2, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 2);
        let merged = dir.path().join("flows/day=2026-10-01/00000000000000000001-00000000000000000002.parquet");
        let read = read_file(&merged);
        let column = |name: &str| -> Vec<String> {
            let c = arrow::compute::cast(read.column_by_name(name).expect("column"), &arrow::datatypes::DataType::Utf8)
                .expect("cast");
            let c = c.as_any().downcast_ref::<arrow::array::StringArray>().expect("strings");
            c.iter().map(|v| v.unwrap_or("NULL").to_string()).collect()
        };
        assert_eq!(column("vendor"), ["Amazon", "Amazon", "Apple", "Sonos", "Xiaomi", "Xiaomi", "Xiaomi"]);
        assert_eq!(column("domain"), ["NULL", "NULL", "NULL", "a.example", "a.example", "a.example", "a.example"]);
        assert_eq!(column("device_pseudonym"), ["d1", "d1", "d1", "d0", "d0", "d0", "d2"]);
        assert_eq!(column("seconds_since_boot"), ["1.0", "9.0", "5.0", "5.0", "1.0", "9.0", "5.0"]);
    }

    /// The batch list in the footer of the file at `path`, if any.
    fn listed_batches(path: &std::path::Path) -> Option<String> {
        use parquet::file::reader::FileReader as _;
        let file =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path).expect("open")).expect("reader");
        let kv = file.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
        kv.into_iter().find(|kv| kv.key == BATCHES_KEY).and_then(|kv| kv.value)
    }

    #[tokio::test]
    async fn only_a_shared_stores_files_list_their_batches() {
        use leakwatch_proto::v1::{FlowRecord, ReportBatch};
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(DurableLog::open(&dir.path().join("log")).expect("log"));
        for id in ["x", "y"] {
            let records = vec![FlowRecord { window_start_unix_s: 1_790_000_000, ..Default::default() }];
            log.append("agent", &ReportBatch { batch_id: id.into(), records, ..Default::default() }, 7)
                .expect("append");
        }
        // What a flush to a shared store writes: the list of its batches.
        let shared = day_files(&log, 1, 2, true).expect("flush");
        let path = dir.path().join("shared.parquet");
        std::fs::write(&path, &shared[0].1).expect("write");
        assert_eq!(listed_batches(&path).as_deref(), Some("agent x y\n"));
        std::fs::write(&path, &day_files(&log, 1, 2, false).expect("flush")[0].1).expect("write");
        assert_eq!(listed_batches(&path), None);

        // A local store's flush and compaction list none (here its inputs
        // listed theirs, as a file from a shared store would).
        let store = DataStore::local(dir.path().join("store")).expect("store");
        assert!(!store.lists_batches());
        let flusher = Flusher::new(log.clone(), store.clone(), Arc::new(IngestMetrics::default()));
        flusher.flush().await.expect("flush");
        let day = dir.path().join("store/flows/day=2026-09-21");
        assert_eq!(names(&day), ["00000000000000000001-00000000000000000002.parquet"]);
        assert_eq!(listed_batches(&day.join("00000000000000000001-00000000000000000002.parquet")), None);
        let listed = StorePath::from("flows/day=2026-09-21/00000000000000000003-00000000000000000003.parquet");
        store.put_durable(&listed, file_bytes(&rows(2))).await.expect("put");
        assert!(listed_batches(&day.join("00000000000000000003-00000000000000000003.parquet")).is_some());
        assert_eq!(store.compact(3, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 2);
        let merged = day.join("00000000000000000001-00000000000000000003.parquet");
        assert_eq!(rows_in(&merged), 4);
        assert_eq!(listed_batches(&merged), None);
    }

    #[tokio::test]
    async fn measured_times_are_stored_as_microseconds_and_compaction_merges_files_of_doubles_with_them() {
        use rand::Rng as _;
        let mut rng = rand::rng();
        // Times to the microsecond up to validation's ten years, and some
        // finer ones, which rows hold rounded to the microsecond.
        let times: Vec<(f64, f64)> = (0..2000)
            .map(|i| {
                let mut micros = |max: u64| rng.random_range(0..max) as f64 / 1e6;
                match i % 4 {
                    0 => (micros(1_000_000_000) + 1e-7, micros(1_000_000) * 0.999_999_9),
                    1 => (micros(315_360_000_000_000), micros(1_000_000)),
                    _ => (micros(600_000_000), micros(60_000_000)),
                }
            })
            .collect();
        let build = |range: std::ops::Range<usize>| {
            let mut b = FlowBatchBuilder::new();
            for &(t, d) in &times[range] {
                b.push(leakwatch_query::FlowRow { seconds_since_boot: t, duration_s: d, ..Default::default() });
            }
            b.finish()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DataStore::local(dir.path().to_path_buf()).expect("store");
        let day = dir.path().join("flows/day=2026-10-01");
        // An earlier release's file of doubles, then the flusher's files.
        let mut old = Vec::new();
        let mut w = ArrowWriter::try_new(&mut old, flows_schema(), None).expect("writer");
        w.write(&build(0..500)).expect("write");
        w.close().expect("close");
        store
            .put_durable(&StorePath::from(format!("flows/day=2026-10-01/{:020}-{:020}.parquet", 1, 1)), old)
            .await
            .expect("put");
        for (n, range) in [(2, 500..1200), (3, 1200..2000)] {
            let path = StorePath::from(format!("flows/day=2026-10-01/{n:020}-{n:020}.parquet"));
            store.put_durable(&path, file_bytes(&build(range))).await.expect("put");
        }
        let file = parquet::file::reader::SerializedFileReader::new(
            std::fs::File::open(day.join(format!("{:020}-{:020}.parquet", 2, 2))).expect("open"),
        )
        .expect("reader");
        use parquet::basic::ConvertedType;
        use parquet::file::reader::FileReader as _;
        for column in file.metadata().row_group(0).columns() {
            let name = column.column_path().string();
            if MICROSECOND_COLUMNS.contains(&name.as_str()) {
                assert_eq!(column.column_type(), parquet::basic::Type::INT64, "{name}");
                assert!(column.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED), "{name}");
                let d = column.column_descr();
                assert_eq!((d.converted_type(), d.type_precision(), d.type_scale()), (ConvertedType::DECIMAL, 18, 6));
            }
        }
        // A flushed file reads back as the rows SQL saw in the tail.
        assert_eq!(read_file(&day.join(format!("{:020}-{:020}.parquet", 2, 2))), build(500..1200));
        assert_eq!(store.compact(3, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 3);
        let merged = read_file(&day.join(format!("{:020}-{:020}.parquet", 1, 3)));
        let column = |name: &str| -> Vec<u64> {
            let c = merged.column_by_name(name).expect("column");
            let c = c.as_any().downcast_ref::<arrow::array::Float64Array>().expect("doubles");
            let mut v: Vec<u64> = c.values().iter().map(|x| x.to_bits()).collect();
            v.sort_unstable();
            v
        };
        let want = |f: fn(&(f64, f64)) -> f64| -> Vec<u64> {
            let mut v: Vec<u64> = times.iter().map(|x| leakwatch_query::to_microsecond(f(x)).to_bits()).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(column("seconds_since_boot"), want(|x| x.0), "every time, to the bit");
        assert_eq!(column("duration_s"), want(|x| x.1));
    }

    #[test]
    fn a_flushed_file_holds_the_builders_rows_and_batches_with_labels_encoded_once_per_batch() {
        let build = || {
            let mut b = FlowBatchBuilder::new();
            for (batch, (vendor, rows)) in [("Xiaomi", 3), ("Amazon", 2), ("Xiaomi", 4)].into_iter().enumerate() {
                for i in 0..rows {
                    b.push(leakwatch_query::FlowRow {
                        agent_id: format!("agent{}", batch % 2),
                        batch_id: format!("batch{batch}"),
                        vendor: vendor.into(),
                        model: format!("m{i}"),
                        device_pseudonym: format!("d{batch}"),
                        consent: "cloud=off".into(),
                        domain: if i % 2 == 0 { "a.example".into() } else { String::new() },
                        seconds_since_boot: f64::from(i) * 1.5,
                        ..Default::default()
                    });
                }
            }
            b.sort_for_rules();
            b
        };
        let encoded = build();
        let pairs = encoded.batch_pairs();
        let batch = encoded.finish_encoded();
        assert_eq!(batch.schema(), leakwatch_query::flows_encoded_schema());
        let bytes = parquet_bytes(&batch, Some(&pairs)).expect("parquet");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.parquet");
        std::fs::write(&path, &bytes).expect("write");
        let plain = build().finish();
        assert_eq!(read_file(&path), plain, "reads back as the plain rows");

        let file = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).expect("open"))
            .expect("reader");
        use parquet::file::reader::FileReader as _;
        let meta = file.metadata();
        let mut from_rows = std::collections::HashSet::new();
        batch_pairs([&plain], &mut from_rows);
        assert_eq!(pairs, from_rows);
        assert_eq!(listed_batches(&path), Some(batch_list(&from_rows)));
        for column in meta.row_group(0).columns() {
            let name = column.column_path().string();
            let has_stats = column.statistics().is_some_and(|s| s.min_bytes_opt().is_some());
            if NO_STATISTICS.contains(&name.as_str()) {
                assert!(!has_stats, "{name}");
            } else if ["vendor", "model", "domain", "seconds_since_boot"].contains(&name.as_str()) {
                assert!(has_stats, "{name}");
            }
        }
    }

    #[tokio::test]
    async fn retention_deletes_only_old_day_partitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DataStore::local(dir.path().to_path_buf()).expect("store");
        for day in ["2026-01-01", "2026-03-01", "2026-03-20"] {
            let path = StorePath::from(format!("flows/day={day}/00000000000000000001-00000000000000000001.parquet"));
            store.put_durable(&path, b"x".to_vec()).await.expect("put");
        }
        let today = chrono::NaiveDate::from_ymd_opt(2026, 3, 21).expect("date");
        let cutoff = today.checked_sub_days(chrono::Days::new(30)).expect("30 days before");
        assert_eq!(store.apply_retention(cutoff).await.expect("retention"), 1);
        let left: Vec<String> = std::fs::read_dir(dir.path().join("flows"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(left, ["day=2026-03-01", "day=2026-03-20"]);
    }
}
