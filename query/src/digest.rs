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
//! [`Digests`] keeps each file's digest between refreshes, keyed by the
//! file's key and size and by the copies of batches in it that another
//! collector's copy outranks (see [`crate::copies`]), which the digest
//! leaves out. A refresh digests the files it has not seen (a flush, or
//! the output of a compaction), forgets those no longer listed (the
//! inputs of a compaction, files past retention), digests again a file
//! whose left-out copies changed, and digests the tail afresh: its cost
//! follows the new data, and what it answers is what digesting every file
//! again would answer (a property test in the dashboard checks this over
//! random flush histories).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use object_store::path::Path;

use crate::Result;
use crate::session::{QuerySession, not_a_losing_copy};
use crate::store::{FlowStore, Listed};

/// The digest query; `${input}` names the table it reads.
const DIGEST_SQL: &str = include_str!("digest.sql");

/// The table a digest reads while it is computed.
const INPUT: &str = "digest_input";

/// The digest query over the table `input`.
fn digest_sql(input: &str) -> String {
    DIGEST_SQL.replace("${input}", input)
}

/// One file's digest.
#[derive(Debug)]
struct FileDigest {
    /// The copies of batches in it left out, sorted.
    left_out: Vec<(String, String)>,
    batches: Vec<RecordBatch>,
}

/// The digests of flushed files, kept between refreshes.
#[derive(Debug, Default)]
pub struct Digests {
    files: Mutex<HashMap<(Path, u64), Arc<FileDigest>>>,
}

/// What one refresh of the digests did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DigestStats {
    /// Files read now (new, or their left-out copies changed).
    pub digested: usize,
    /// Files whose digest was kept.
    pub kept: usize,
    /// Digests forgotten: their files are no longer listed.
    pub forgotten: usize,
    /// Rows of every digest, the tail's included.
    pub rows: usize,
    /// Bytes they hold in memory.
    pub bytes: usize,
}

impl Digests {
    /// Files with a digest.
    pub fn len(&self) -> usize {
        self.files.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no file has a digest.
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
        let losers: HashSet<&(String, String)> = losers.iter().collect();
        let mut stats = DigestStats::default();
        let mut digests: Vec<Arc<FileDigest>> = Vec::with_capacity(files.len());
        let mut live = HashSet::with_capacity(files.len());
        for file in files {
            let key = (file.meta.location.clone(), file.meta.size);
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
            let kept = self.files.lock().unwrap_or_else(PoisonError::into_inner).get(&key).cloned();
            let digest = match kept {
                Some(digest) if digest.left_out == left_out => {
                    stats.kept += 1;
                    digest
                }
                _ => {
                    let digest = Arc::new(digest_file(session, file, left_out).await?);
                    self.files.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), digest.clone());
                    stats.digested += 1;
                    digest
                }
            };
            live.insert(key);
            digests.push(digest);
        }
        {
            let mut held = self.files.lock().unwrap_or_else(PoisonError::into_inner);
            let before = held.len();
            held.retain(|key, _| live.contains(key));
            stats.forgotten = before - held.len();
        }
        let tail = digest_of(session, tail).await?;
        let mut batches: Vec<RecordBatch> =
            digests.iter().flat_map(|d| d.batches.iter().cloned()).chain(tail).collect();
        batches.retain(|b| b.num_rows() > 0);
        stats.rows = batches.iter().map(RecordBatch::num_rows).sum();
        stats.bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => {
                let schema = crate::session::view_schema(&crate::schema::flows_schema());
                session.context().register_table(INPUT, Arc::new(MemTable::try_new(schema, vec![Vec::new()])?))?;
                let planned = session.plan(&digest_sql(INPUT)).await;
                session.context().deregister_table(INPUT)?;
                QuerySession::result_schema(&planned?)
            }
        };
        let partitions = session.context().copied_config().target_partitions().max(1);
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
        for (i, batch) in batches.into_iter().enumerate() {
            parts[i % partitions].push(batch);
        }
        session.context().register_table("flows", Arc::new(MemTable::try_new(schema, parts)?))?;
        Ok(stats)
    }
}

/// The digest of `file`, its copies in `left_out` left out.
async fn digest_file(session: &QuerySession, file: &Listed, left_out: Vec<(String, String)>) -> Result<FileDigest> {
    let ctx = session.context();
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(file.url.clone())
        .with_listing_options(options)
        .with_schema(crate::session::view_schema(&crate::schema::flows_schema()));
    let mut rows = ctx.read_table(Arc::new(ListingTable::try_new(config)?))?;
    if !left_out.is_empty() {
        rows = rows.filter(not_a_losing_copy(&left_out))?;
    }
    let batches = digest_of(session, rows).await.inspect_err(|e| {
        tracing::error!(file = %file.meta.location, error = %e, "Digesting a flushed file failed");
    })?;
    Ok(FileDigest { left_out, batches })
}

/// The digest of `rows`, computed within the session's limits.
async fn digest_of(session: &QuerySession, rows: DataFrame) -> Result<Vec<RecordBatch>> {
    let ctx = session.context();
    ctx.register_table(INPUT, rows.into_view())?;
    let digest = session.sql(&digest_sql(INPUT)).await;
    ctx.deregister_table(INPUT)?;
    digest
}
