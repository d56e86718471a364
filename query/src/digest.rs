//! Digests: what is refreshed on a schedule (the public dashboard) reads
//! each flushed file once.
//!
//! A file's digest is its records grouped by every column the dashboard's
//! queries and the rules group, join or filter on (`digest.sql`), with
//! the rest kept as the one figure those queries take of it: the first
//! and last window, the first second after boot, the sums of bytes and
//! connections, the largest timer interval. The digests of all files,
//! read together as `flows`, answer those queries as the records would:
//! every figure they take merges across digest rows (a minimum of
//! minima, a sum of sums, distinct values of distinct values). Where a
//! query filters records on a column it then sums or takes the maximum
//! of, the digest keeps records that pass apart from those that do not:
//! by whether `bytes_out` and `bytes_in` are null (`heavy_upload` sums
//! the bytes of records holding both), and by whether a record measured a
//! timer (`beaconing` reads `interval_cv` only of those; the digest leaves
//! it null for the others). Records are grouped by day too, for the
//! destinations' days.
//!
//! A digest is a Parquet file in the digests' own store (a directory, or
//! memory), named by a hash of the flushed file's key and size and of the
//! copies of batches in it that another collector's copy outranks (see
//! [`crate::copies`]), which the digest leaves out. A file whose digest
//! would keep more than [`Digests::raw_share`] of its rows (each record
//! its own group, as when every record is a boot's contact with one
//! destination) gets none: its records are read as they are, each the
//! digest of itself (`digest_raw.sql`), and a marker says so. Whether it
//! would is judged from its first [`Digests::sample_records`] records
//! first: a file whose sample does not merge is not digested further.
//!
//! A refresh digests the files it has no digest for (a flush, the output
//! of a compaction, a file whose left-out copies changed), deletes the
//! digests of files no longer listed (the inputs of a compaction, files
//! past retention), and digests the tail afresh: its cost follows the new
//! data, and what it answers is what digesting every file again would
//! answer (a property test in the dashboard checks this over random flush
//! histories). Digests in a directory outlive the process. While they fit
//! in a quarter of the query memory limit they are also held in memory
//! between refreshes (a refresh reads only the new ones) and the
//! refresh's queries read them there; when not, each query reads their
//! files.
//!
//! Aggregates kept up to date from digest rows ([`Merge`], the
//! dashboard's) are told of each file's digest rows when the file comes
//! and again when it goes, and of the tail's for one refresh: what they
//! hold is then what the refresh's `flows` hold, at the cost of the rows
//! that changed ([`DigestStats::merged`]). They are emptied, and the
//! refresh answers from SQL alone, while any file is read as it is (its
//! rows could not be taken away once it is gone), when a digest does not
//! read, and while they would take more than a quarter of the query
//! memory limit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::MemTable;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use futures::StreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use sha2::{Digest as _, Sha256};

use crate::session::{QuerySession, in_schema, not_a_losing_copy, view_schema};
use crate::store::{FlowStore, Listed};
use crate::{Error, Result};

/// The digest query; `${input}` names the table it reads.
const DIGEST_SQL: &str = include_str!("digest.sql");

/// Records in the digest's form, each its own group.
const RAW_SQL: &str = include_str!("digest_raw.sql");

/// The table a digest reads while it is computed.
const INPUT: &str = "digest_input";

/// Where sessions find the digests' store.
const DIGESTS_URL: &str = "leakwatch-digests://digests";

/// Default of [`Digests::sample_records`]: records of a flushed file
/// digested first, as a sample. A file whose sample's digest keeps more
/// than [`Digests::raw_share`] of them is read as it is, and the rest of
/// it is never digested (each file of four-minute boots, whose records
/// hardly merge, cost a whole digest to learn that). A row group of a
/// flushed file.
pub const SAMPLE_RECORDS: usize = 128 * 1024;

/// Default of [`Digests::raw_share`].
pub const DEFAULT_RAW_SHARE: f64 = 0.5;

/// Aggregates kept up to date from digest rows (see the module doc).
pub trait Merge: Send {
    /// Adds the digest rows `rows` (`sign` 1) or takes them away (-1). An
    /// error (rows taken that were never added, a column of another type)
    /// empties the aggregates for this refresh.
    fn merge(&mut self, rows: &RecordBatch, sign: i64) -> std::result::Result<(), String>;
    /// Forgets every row.
    fn clear(&mut self);
    /// About how many bytes it holds.
    fn size(&self) -> usize;
}

/// What a [`Merge`] holds: the files whose digests it took, by name, with
/// the digest's key; and the tail it took last.
#[derive(Default)]
struct MergeBook {
    files: HashMap<String, Path>,
    tail: Vec<RecordBatch>,
    /// Digest rows at which the aggregates were last too large: they are
    /// not built again until there are fewer.
    too_large_at: Option<u64>,
}

/// What one file has.
#[derive(Debug, Clone)]
enum Kept {
    /// A digest of `rows` rows at this key of the digests' store.
    Digest { key: Path, rows: u64, bytes: u64 },
    /// None: its records are read as they are.
    Raw,
}

/// The digests of flushed files, kept between refreshes.
pub struct Digests {
    store: Arc<dyn ObjectStore>,
    raw_share: f64,
    sample_records: usize,
    files: Mutex<HashMap<String, Kept>>,
    merge: Option<Arc<Mutex<dyn Merge>>>,
    book: Mutex<MergeBook>,
    /// Digests read into memory, by name, kept while they fit (see
    /// [`Digests::held_in_memory`]).
    held: Mutex<HashMap<String, Vec<RecordBatch>>>,
}

impl std::fmt::Debug for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digests").field("store", &self.store.to_string()).field("raw_share", &self.raw_share).finish()
    }
}

impl Default for Digests {
    fn default() -> Self {
        Self::in_memory()
    }
}

/// What one refresh of the digests did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DigestStats {
    /// Files read now (new, or their left-out copies changed).
    pub digested: usize,
    /// Files whose digest was there already.
    pub kept: usize,
    /// Of all files, those read as they are (their digest would not be
    /// smaller).
    pub raw: usize,
    /// Digests deleted: their files are no longer listed.
    pub forgotten: usize,
    /// Rows of the digests, the tail's included.
    pub rows: u64,
    /// Bytes of the digests' Parquet.
    pub bytes: u64,
    /// Whether the [`Merge`] given to [`Digests::merging`] holds this
    /// refresh's `flows` (all digest rows, the tail's included).
    pub merged: bool,
    /// About how many bytes the [`Merge`] holds.
    pub merged_bytes: u64,
}

impl Digests {
    /// Digests held in memory (gone with the process).
    pub fn in_memory() -> Self {
        Self::in_store(Arc::new(object_store::memory::InMemory::new()))
    }

    /// Digests in the directory `dir` (created when missing), which a
    /// later process reads again.
    pub fn in_dir(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Invalid(format!("digests: {}: {e}", dir.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|source| Error::ObjectStore { context: format!("digests in {}", dir.display()), source })?;
        Ok(Self::in_store(Arc::new(store)))
    }

    fn in_store(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            raw_share: DEFAULT_RAW_SHARE,
            sample_records: SAMPLE_RECORDS,
            files: Mutex::default(),
            merge: None,
            book: Mutex::default(),
            held: Mutex::default(),
        }
    }

    /// The same, keeping `merge` up to date with the digest rows at each
    /// refresh (see the module doc).
    #[must_use]
    pub fn merging(self, merge: Arc<Mutex<dyn Merge>>) -> Self {
        Self { merge: Some(merge), ..self }
    }

    /// The same, judging a file by its first `records` records
    /// ([`SAMPLE_RECORDS`] unless set; at least one).
    pub fn sample_records(self, records: usize) -> Self {
        Self { sample_records: records.max(1), ..self }
    }

    /// The same, a file whose digest keeps more than `share` of its rows
    /// read as it is (0: every file; above 1: none).
    #[must_use]
    pub fn raw_share(self, share: f64) -> Self {
        Self { raw_share: share, ..self }
    }

    /// Files with a digest or a marker.
    pub fn len(&self) -> usize {
        self.files.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no file has one.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Brings the digests up to `files` (less the copies in `losers`) and
    /// digests `tail`; registers all of them as `flows` in `session`.
    pub(crate) async fn update(
        &self,
        session: &QuerySession,
        store: &FlowStore,
        files: &[Listed],
        losers: &[(String, String)],
        tail: DataFrame,
    ) -> Result<DigestStats> {
        let ctx = session.context();
        let url = ObjectStoreUrl::parse(DIGESTS_URL)?;
        ctx.runtime_env().register_object_store(url.as_ref(), self.store.clone());
        let schema = digest_schema(session).await?;
        let losers: HashSet<&(String, String)> = losers.iter().collect();
        let mut stats = DigestStats::default();
        let (mut digests, mut raw) = (Vec::new(), Vec::new());
        let mut live = HashSet::with_capacity(files.len());
        let mut live_digests: Vec<(String, Path)> = Vec::with_capacity(files.len());
        for file in files {
            let left_out: Vec<(String, String)> = if losers.is_empty() {
                Vec::new()
            } else {
                let mut left_out: Vec<(String, String)> = store
                    .batches_listed(file)
                    .map(|pairs| pairs.iter().filter(|p| losers.contains(p)).cloned().collect())
                    .unwrap_or_default();
                left_out.sort();
                left_out
            };
            let name = name_of(file, &left_out);
            let held = self.files.lock().unwrap_or_else(PoisonError::into_inner).get(&name).cloned();
            let kept = match held {
                Some(kept) => {
                    stats.kept += 1;
                    kept
                }
                None => {
                    let kept = match self.found(&name).await? {
                        Some(kept) => {
                            stats.kept += 1;
                            kept
                        }
                        None => {
                            stats.digested += 1;
                            self.digest_file(session, file, &left_out, &name, &schema).await?
                        }
                    };
                    self.files.lock().unwrap_or_else(PoisonError::into_inner).insert(name.clone(), kept.clone());
                    kept
                }
            };
            match kept {
                Kept::Digest { key, rows, bytes } => {
                    stats.rows += rows;
                    stats.bytes += bytes;
                    digests.push(ListingTableUrl::parse(format!("{DIGESTS_URL}/{key}"))?);
                    live_digests.push((name.clone(), key));
                }
                Kept::Raw => {
                    stats.raw += 1;
                    raw.push((file, left_out));
                }
            }
            live.insert(name);
        }
        let viewed = view_schema(&schema);
        let held = self.held_in_memory(&live_digests, quarter_of_memory(session), &viewed).await;
        // Before the digests of files gone are deleted: they are taken
        // away from the merged aggregates.
        let merging = self.merge_files(session, &live_digests, stats.raw == 0, stats.rows).await;
        self.held.lock().unwrap_or_else(PoisonError::into_inner).retain(|name, _| live.contains(name));
        stats.forgotten = self.forget(&live).await;

        let mut parts: Vec<DataFrame> = Vec::new();
        if !digests.is_empty() {
            parts.push(match held {
                Some(batches) => {
                    let parts = crate::session::spread(batches, ctx.copied_config().target_partitions());
                    ctx.read_table(Arc::new(MemTable::try_new(viewed.clone(), parts)?))?
                }
                None => {
                    let options =
                        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
                    let config = ListingTableConfig::new_with_multi_paths(digests)
                        .with_listing_options(options)
                        .with_schema(viewed.clone());
                    ctx.read_table(Arc::new(ListingTable::try_new(config)?))?
                }
            });
        }
        if !raw.is_empty() {
            // One table of them all: a left-out copy's agent id is its
            // collector's own, so no other file holds that pair.
            let left_out: Vec<(String, String)> = raw.iter().flat_map(|(_, l)| l.iter().cloned()).collect();
            let files: Vec<&Listed> = raw.iter().map(|(f, _)| *f).collect();
            parts.push(raw_of(session, records_of(session, &files, &left_out)?).await?);
        }
        let mut tail = digest_of(session, tail).await?;
        tail.retain(|b| b.num_rows() > 0);
        stats.rows += tail.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        stats.merged = merging && self.merge_tail(&tail);
        if let Some(merge) = &self.merge {
            stats.merged_bytes = merge.lock().unwrap_or_else(PoisonError::into_inner).size() as u64;
        }
        if !tail.is_empty() || parts.is_empty() {
            // In the view types the files are read in: the union then
            // casts no column of theirs.
            let viewed = view_schema(&schema);
            let tail = tail.into_iter().map(|b| in_schema(b, &viewed)).collect::<Result<Vec<_>>>()?;
            parts.push(ctx.read_table(Arc::new(MemTable::try_new(viewed, vec![tail])?))?);
        }
        let mut parts = parts.into_iter();
        let Some(mut flows) = parts.next() else { return Err(Error::Internal("digests: no table".into())) };
        for part in parts {
            flows = flows.union(part)?;
        }
        ctx.register_table("flows", flows.into_view())?;
        Ok(stats)
    }

    /// Brings the [`Merge`] up to the digests `live` (name and key of each
    /// live file's digest; `all_digested`: no file is read as it is), the
    /// last tail taken away; whether it holds them.
    async fn merge_files(
        &self,
        session: &QuerySession,
        live: &[(String, Path)],
        all_digested: bool,
        rows: u64,
    ) -> bool {
        let Some(merge) = &self.merge else { return false };
        let clear = || {
            merge.lock().unwrap_or_else(PoisonError::into_inner).clear();
            let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
            book.files.clear();
            book.tail.clear();
        };
        let too_large =
            self.book.lock().unwrap_or_else(PoisonError::into_inner).too_large_at.is_some_and(|at| rows >= at);
        if !all_digested || too_large {
            clear();
            return false;
        }
        let (gone, tail): (Vec<(String, Path)>, Vec<RecordBatch>) = {
            let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
            let names: HashSet<&str> = live.iter().map(|(n, _)| n.as_str()).collect();
            let gone = book
                .files
                .iter()
                .filter(|(n, _)| !names.contains(n.as_str()))
                .map(|(n, k)| (n.clone(), k.clone()))
                .collect();
            book.files.retain(|n, _| names.contains(n.as_str()));
            (gone, std::mem::take(&mut book.tail))
        };
        let new: Vec<(String, Path)> = {
            let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
            live.iter().filter(|(n, _)| !book.files.contains_key(n)).cloned().collect()
        };
        let cap = quarter_of_memory(session);
        let merged = async {
            let apply = |batches: &[RecordBatch], sign: i64| -> Result<(), String> {
                let mut merge = merge.lock().unwrap_or_else(PoisonError::into_inner);
                batches.iter().try_for_each(|b| merge.merge(b, sign))
            };
            apply(&tail, -1)?;
            for (name, key) in &gone {
                apply(&self.decoded(name, key).await?, -1)?;
            }
            for (name, key) in &new {
                apply(&self.decoded(name, key).await?, 1)?;
                self.book.lock().unwrap_or_else(PoisonError::into_inner).files.insert(name.clone(), key.clone());
                if merge.lock().unwrap_or_else(PoisonError::into_inner).size() > cap {
                    return Err(format!("over a quarter of the query memory limit ({cap} bytes)"));
                }
            }
            Ok::<(), String>(())
        };
        match merged.await {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(
                    reason = %reason,
                    "The merged aggregates are emptied; this refresh computes them from the digests"
                );
                clear();
                if reason.starts_with("over a quarter") {
                    self.book.lock().unwrap_or_else(PoisonError::into_inner).too_large_at = Some(rows);
                }
                false
            }
        }
    }

    /// Adds the tail's digest rows to the [`Merge`] (taken away at the next
    /// refresh); whether it took them.
    fn merge_tail(&self, tail: &[RecordBatch]) -> bool {
        let Some(merge) = &self.merge else { return false };
        let taken = {
            let mut merge = merge.lock().unwrap_or_else(PoisonError::into_inner);
            let taken = tail.iter().try_for_each(|b| merge.merge(b, 1));
            if taken.is_err() {
                merge.clear();
            }
            taken
        };
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        match taken {
            Ok(()) => {
                book.tail = tail.to_vec();
                true
            }
            Err(reason) => {
                // The files go with it: the next refresh builds the
                // aggregates afresh.
                tracing::warn!(
                    reason = %reason,
                    "The merged aggregates are emptied; this refresh computes them from the digests"
                );
                book.files.clear();
                book.tail.clear();
                false
            }
        }
    }

    /// The live digests (name and key of each) read into memory, for the
    /// refresh's many queries: from memory where an earlier refresh read
    /// them, else from their files; `None` when together they take more
    /// than `cap` bytes (none is held then, and each query reads their
    /// files) or one does not read.
    async fn held_in_memory(
        &self,
        live: &[(String, Path)],
        cap: usize,
        schema: &SchemaRef,
    ) -> Option<Vec<RecordBatch>> {
        let (mut out, mut bytes, mut read) = (Vec::new(), 0usize, Vec::new());
        for (name, key) in live {
            let cached = self.held.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned();
            let batches = match cached {
                Some(batches) => batches,
                None => {
                    let batches: Vec<RecordBatch> = self
                        .read_digest(key)
                        .await
                        .and_then(|b| b.into_iter().map(|b| in_schema(b, schema).map_err(|e| e.to_string())).collect())
                        .inspect_err(|e| tracing::warn!(error = %e, "A digest does not read into memory"))
                        .ok()?;
                    read.push((name.clone(), batches.clone()));
                    batches
                }
            };
            bytes += batches.iter().map(RecordBatch::get_array_memory_size).sum::<usize>();
            if bytes > cap {
                self.held.lock().unwrap_or_else(PoisonError::into_inner).clear();
                return None;
            }
            out.extend(batches);
        }
        self.held.lock().unwrap_or_else(PoisonError::into_inner).extend(read);
        Some(out)
    }

    /// The rows of the digest `name` at `key`: held in memory, or read.
    async fn decoded(&self, name: &str, key: &Path) -> Result<Vec<RecordBatch>, String> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned();
        match held {
            Some(batches) => Ok(batches),
            None => self.read_digest(key).await,
        }
    }

    /// The rows of the digest at `key`.
    async fn read_digest(&self, key: &Path) -> Result<Vec<RecordBatch>, String> {
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let bytes = async { self.store.get(key).await?.bytes().await }
            .await
            .map_err(|e| format!("reading the digest {key}: {e}"))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| format!("reading the digest {key}: {e}"))?;
        reader.collect::<Result<Vec<_>, _>>().map_err(|e| format!("reading the digest {key}: {e}"))
    }

    /// What a digest directory holds for `name` from an earlier process.
    async fn found(&self, name: &str) -> Result<Option<Kept>> {
        let raw = Path::from(format!("{name}.raw"));
        if self.store.head(&raw).await.is_ok() {
            return Ok(Some(Kept::Raw));
        }
        let key = Path::from(format!("{name}.parquet"));
        let Ok(meta) = self.store.head(&key).await else { return Ok(None) };
        // One that does not read (a damaged disk) is made again.
        match crate::store::footer_of(self.store.as_ref(), &meta).await {
            Ok(footer) => {
                Ok(Some(Kept::Digest { key, rows: footer.file_metadata().num_rows().max(0) as u64, bytes: meta.size }))
            }
            Err(e) => {
                tracing::warn!(digest = %key, error = %e, "A digest does not read; the file is digested again");
                Ok(None)
            }
        }
    }

    /// Digests `file` (its copies in `left_out` left out) into the
    /// digests' store as `name`, or marks it to be read as it is.
    async fn digest_file(
        &self,
        session: &QuerySession,
        file: &Listed,
        left_out: &[(String, String)],
        name: &str,
        schema: &SchemaRef,
    ) -> Result<Kept> {
        let digested = async {
            // A sample first: when its records hardly merge, the file is
            // read as it is without digesting the rest.
            let sample = records_of(session, &[file], left_out)?.limit(0, Some(self.sample_records))?;
            let sample = digest_of(session, sample).await?;
            let counts = |batches: &[RecordBatch]| {
                (batches.iter().map(|b| b.num_rows() as u64).sum::<u64>(), batches.iter().map(records_in).sum::<u64>())
            };
            let (rows, records) = counts(&sample);
            let batches = match rows as f64 > self.raw_share * records as f64 || records < self.sample_records as u64 {
                // Raw by its sample, or the sample was the whole file.
                true => sample,
                false => digest_of(session, records_of(session, &[file], left_out)?).await?,
            };
            let (rows, records) = counts(&batches);
            if rows as f64 > self.raw_share * records as f64 {
                let key = Path::from(format!("{name}.raw"));
                self.put(&key, PutPayload::new()).await?;
                return Ok(Kept::Raw);
            }
            let key = Path::from(format!("{name}.parquet"));
            let bytes = parquet_of(schema, &batches)?;
            let size = bytes.len() as u64;
            self.put(&key, bytes.into()).await?;
            Ok(Kept::Digest { key, rows, bytes: size })
        };
        digested.await.inspect_err(|e| {
            tracing::error!(file = %file.meta.location, error = %e, "Digesting a flushed file failed");
        })
    }

    async fn put(&self, key: &Path, payload: PutPayload) -> Result<()> {
        self.store
            .put(key, payload)
            .await
            .map(drop)
            .map_err(|source| Error::ObjectStore { context: format!("writing the digest {key}"), source })
    }

    /// Deletes the digests and markers not named in `live`; how many.
    async fn forget(&self, live: &HashSet<String>) -> usize {
        self.files.lock().unwrap_or_else(PoisonError::into_inner).retain(|name, _| live.contains(name));
        let mut gone = 0;
        let mut listing = self.store.list(None);
        let mut stale = Vec::new();
        while let Some(meta) = listing.next().await {
            let Ok(meta) = meta else { continue };
            let name = meta.location.filename().and_then(|f| f.split('.').next()).unwrap_or_default().to_string();
            if !live.contains(&name) {
                stale.push(meta.location);
            }
        }
        for key in stale {
            match self.store.delete(&key).await {
                Ok(()) => gone += 1,
                Err(e) => tracing::warn!(digest = %key, error = %e, "Deleting a digest no file needs failed"),
            }
        }
        gone
    }
}

/// The name of `file`'s digest: a hash of its key, its size and the copies
/// left out of it.
fn name_of(file: &Listed, left_out: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(file.meta.location.as_ref().as_bytes());
    h.update([0]);
    h.update(file.meta.size.to_le_bytes());
    for (agent, batch) in left_out {
        h.update(agent.as_bytes());
        h.update([0]);
        h.update(batch.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The records of `files`, the copies in `left_out` left out.
fn records_of(session: &QuerySession, files: &[&Listed], left_out: &[(String, String)]) -> Result<DataFrame> {
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(files.iter().map(|f| f.url.clone()).collect())
        .with_listing_options(options)
        .with_schema(view_schema(&crate::schema::flows_schema()));
    let rows = session.context().read_table(Arc::new(ListingTable::try_new(config)?))?;
    Ok(if left_out.is_empty() { rows } else { rows.filter(not_a_losing_copy(left_out))? })
}

/// The records a digest row stands for: the sum of its `records` column.
fn records_in(batch: &RecordBatch) -> u64 {
    use arrow::array::AsArray as _;
    batch
        .column_by_name("records")
        .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>())
        .map_or(0, |c| c.iter().flatten().map(|n| n.max(0) as u64).sum())
}

/// `batches` (in `schema`) as a Parquet file.
fn parquet_of(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let failed = |e: datafusion::parquet::errors::ParquetError| Error::Parquet {
        context: "writing a digest".into(),
        source: datafusion::error::DataFusionError::from(e),
    };
    let props =
        WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(failed)?)).build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema.clone(), Some(props)).map_err(failed)?;
    for batch in batches {
        writer.write(batch).map_err(failed)?;
    }
    writer.close().map_err(failed)?;
    Ok(out)
}

/// The columns of a digest.
async fn digest_schema(session: &QuerySession) -> Result<SchemaRef> {
    let ctx = session.context();
    let empty = MemTable::try_new(view_schema(&crate::schema::flows_schema()), vec![Vec::new()])?;
    ctx.register_table(INPUT, Arc::new(empty))?;
    let planned = session.plan(&DIGEST_SQL.replace("${input}", INPUT)).await;
    ctx.deregister_table(INPUT)?;
    Ok(QuerySession::result_schema(&planned?))
}

/// A quarter of the session's memory limit: what the digests held in
/// memory, and the merged aggregates, may each take.
fn quarter_of_memory(session: &QuerySession) -> usize {
    use datafusion::execution::memory_pool::MemoryLimit;
    match session.context().runtime_env().memory_pool.memory_limit() {
        MemoryLimit::Finite(limit) => limit / 4,
        _ => usize::MAX,
    }
}

/// The digest of `rows`, computed within the session's limits.
async fn digest_of(session: &QuerySession, rows: DataFrame) -> Result<Vec<RecordBatch>> {
    let ctx = session.context();
    ctx.register_table(INPUT, rows.into_view())?;
    let digest = session.sql(&DIGEST_SQL.replace("${input}", INPUT)).await;
    ctx.deregister_table(INPUT)?;
    digest
}

/// `rows` in the digest's form, each record its own group.
async fn raw_of(session: &QuerySession, rows: DataFrame) -> Result<DataFrame> {
    let ctx = session.context();
    ctx.register_table(INPUT, rows.into_view())?;
    let raw = ctx.sql(&RAW_SQL.replace("${input}", INPUT)).await;
    ctx.deregister_table(INPUT)?;
    // Planned: the frame holds its own plan of the input.
    Ok(raw?)
}
