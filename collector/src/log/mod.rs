//! The durable log: acknowledged batches in RocksDB until they are flushed
//! to Parquet.
//!
//! # On-disk format (version 3)
//!
//! One RocksDB database (`DATA_DIR/log`) with column families:
//!
//! - `batches`: key = log sequence number (u64 big-endian), value = entry:
//!   `[format version: u8 = 2][crc32 of the rest: u32 LE][length of the
//!   StoredBatch: u32 LE][the StoredBatch, LZ4 block-compressed]`, where
//!   `StoredBatch` is a protobuf message holding the agent id, the receive
//!   time and the `ReportBatch` as received. Entries of format 1 (earlier
//!   releases) are `[1][crc32 of the rest: u32 LE][StoredBatch]`; they are
//!   still read.
//! - `batch_ids`: key = `{agent id}/{batch id}` (batch ids are the
//!   agent's choice, unique per agent only), and the batch id alone for
//!   the first batch stored with it (what releases before version 3
//!   wrote for every batch), value = `[seq: u64 BE][sha256 of the batch's
//!   device and records: 32 bytes][record count: u32 BE]`. A batch is a
//!   duplicate when either key holds its digest (the id alone answers the
//!   retry of an agent that enrolled again), a conflict when its agent's
//!   key holds another digest, and another agent's batch when only the
//!   id alone does. Kept
//!   after the flush, so a retried batch is answered `duplicate`, until
//!   retention has deleted every record of the batch
//!   ([`DurableLog::expire_batch_ids`]).
//! - `batch_days`: key = `[day of the batch's newest record: u32 BE, days
//!   since 1970-01-01][its agent's batch_ids key]` (the id alone of its
//!   first use goes with it; releases before version 3 wrote the id alone
//!   here), value = `[seq: u64 BE]`: the batch ids
//!   by the day after which retention has deleted all of their records.
//!   Ids stored by releases before it have no entry and are kept.
//! - `meta`: `watermark` = highest sequence number in Parquet (u64 BE);
//!   `flush_intent` = `[from: u64 BE][to: u64 BE]` while a flush is under
//!   way.
//! - `agents`: key = agent id, value = sha256 of its token, or `revoked`.
//! - `codes`: key = sha256 of an enrollment code, value = `[max uses: u32
//!   BE][uses: u32 BE][expires: i64 BE Unix seconds]`.
//!
//! # Durability
//!
//! [`DurableLog::append`] writes the entry and its batch id in one
//! `WriteBatch` with `sync = true` and returns only then; concurrent
//! appends are grouped by RocksDB's write path into one fsync (group
//! commit). Sequence numbers are handed out under a short lock; entries may
//! commit out of order, so [`DurableLog::durable_upto`] is the highest
//! number below which every append has finished, and the flusher never
//! goes past it.

mod credentials;
mod entry;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use leakwatch_proto::v1::ReportBatch;
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions};

use crate::{Error, Result};

pub use credentials::{AgentEntry, AgentToken, CodeUse};
#[cfg(test)]
use entry::{ENTRY_HEADER, seal_entry};
pub use entry::{
    EncodedEntry, StoredBatch, decode_entry, decode_message, encode_entry, encode_entry_of, entry_message, message_len,
};

const CF_BATCHES: &str = "batches";
const CF_BATCH_IDS: &str = "batch_ids";
const CF_BATCH_DAYS: &str = "batch_days";
const CF_META: &str = "meta";
const CF_AGENTS: &str = "agents";
const CF_CODES: &str = "codes";
const CF_SQL_TOKENS: &str = "sql_tokens";
const COLUMN_FAMILIES: [&str; 7] =
    [CF_BATCHES, CF_BATCH_IDS, CF_BATCH_DAYS, CF_META, CF_AGENTS, CF_CODES, CF_SQL_TOKENS];
/// Value stored for a revoked agent in place of its token hash.
const REVOKED: &[u8] = b"revoked";
const KEY_WATERMARK: &[u8] = b"watermark";
const KEY_FLUSH_INTENT: &[u8] = b"flush_intent";

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under this sequence number.
    Accepted {
        /// Log sequence number.
        seq: u64,
        /// Size of the batch's encoding (the Report message), bytes.
        bytes: u64,
        /// How long the lock and the batch id's lookup took.
        lookup: std::time::Duration,
        /// How long the synced write took.
        write: std::time::Duration,
    },
    /// The batch id was stored before, with the same content.
    Duplicate {
        /// Records stored back then.
        records: u32,
    },
}

#[derive(Debug, Default)]
struct Inflight {
    next_seq: u64,
    seqs: BTreeSet<u64>,
    batch_ids: HashSet<String>,
}

/// The RocksDB log.
pub struct DurableLog {
    /// The database; `None` while it is being opened again after a write
    /// failed (see [`DurableLog::reopen`]).
    db: RwLock<Option<DB>>,
    /// Where it lives.
    path: std::path::PathBuf,
    /// The options it was opened with (and is opened again with).
    options: Options,
    inflight: Mutex<Inflight>,
    read_only: bool,
    /// The write error that put the database out of service, until it is
    /// opened again.
    failed: Mutex<Option<String>>,
}

impl std::fmt::Debug for DurableLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableLog")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .field("failed", &self.failure())
            .finish_non_exhaustive()
    }
}

/// The database, read-locked while in use (so that [`DurableLog::reopen`]
/// waits for every user to finish).
struct Db<'a>(std::sync::RwLockReadGuard<'a, Option<DB>>);

impl std::ops::Deref for Db<'_> {
    type Target = DB;
    fn deref(&self) -> &DB {
        match self.0.as_ref() {
            Some(db) => db,
            None => unreachable!("Db is only made for an open database"),
        }
    }
}

/// A column family of `db`.
fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("column family {name} is missing")))
}

fn db_err(source: rocksdb::Error) -> Error {
    Error::Log { context: "the log (RocksDB)".into(), source }
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Write options of every log write: synced before it returns.
fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

/// The WAL files of the log at `path`: how many, and their bytes (none
/// when it cannot be read). It works on a log no one has open.
pub fn wal_files(path: &Path) -> (usize, u64) {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.metadata().map(|m| m.len()).unwrap_or(0)))
}

/// The day (since 1970-01-01) of `batch`'s newest record: after it,
/// retention has deleted all of the batch's records.
fn newest_day(batch: &ReportBatch) -> u32 {
    let newest = batch.records.iter().map(|r| r.window_start_unix_s).max().unwrap_or(0);
    u32::try_from(newest.div_euclid(86_400)).unwrap_or(if newest < 0 { 0 } else { u32::MAX })
}

/// The `batch_days` key of batch `id` whose newest record is of `day`.
/// The `batch_ids` key of agent `agent_id`'s batch `batch_id`: an agent
/// chooses its batch ids, so they are unique per agent only.
fn batch_id_key(agent_id: &str, batch_id: &str) -> String {
    format!("{agent_id}/{batch_id}")
}

fn batch_day_key(day: u32, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + id.len());
    key.extend_from_slice(&day.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The most bytes a second RocksDB's flushes and compactions of the log
/// write (see [`DurableLog::options`]).
pub const BACKGROUND_WRITE_BYTES_PER_SEC: i64 = 128 << 20;

/// WAL files the log keeps to write over again (see [`DurableLog::options`]).
pub const RECYCLED_WAL_FILES: usize = 2;

/// Total size of the log's WAL files past which RocksDB flushes the
/// column families that keep the oldest one.
pub const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;

impl DurableLog {
    fn options() -> Options {
        Self::options_with(MAX_TOTAL_WAL_BYTES)
    }

    fn options_with(max_total_wal_bytes: u64) -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        // Flushes and compactions write SST files in 1 MiB steps instead of
        // leaving tens of MiB dirty for one fsync at the end, which held up
        // the WAL fsyncs that acknowledgements wait for.
        opts.set_bytes_per_sync(1 << 20);
        // And they write at a pace, not in a burst: a 64 MiB memtable went
        // out in about 0.1 s, and the WAL fsyncs behind it took 100 to 150
        // ms (the ingest benchmark's `write` stage of acks). The limit tunes
        // itself between a twentieth of this and this, rising while flushes
        // and compactions keep it busy, so that they keep up with ingest.
        opts.set_auto_tuned_ratelimiter(BACKGROUND_WRITE_BYTES_PER_SEC, 100_000, 10);
        // WAL files are written over again instead of deleted and made
        // anew: an fdatasync of a file whose blocks and size are set needs
        // no journal commit, so it no longer waits behind the deletion of
        // tens of MiB of SST or WAL files (the spells of 100 to 150 ms acks
        // left after pacing the flushes). Up to this many old WAL files
        // wait for reuse (see `wal_bytes`).
        opts.set_recycle_log_file_num(RECYCLED_WAL_FILES);
        // A WAL file is kept until every column family with data in it is
        // flushed. The batch ids and the watermark are small and were
        // written with every batch, so without a limit their memtables
        // kept every WAL file since they were last flushed: on the ingest
        // bench, 0.9 GB after a minute, and all of it read again at the
        // next start. Past this size RocksDB flushes the column families
        // holding the oldest WAL file, so it can go.
        opts.set_max_total_wal_size(max_total_wal_bytes);
        opts.set_max_background_jobs(4);
        opts
    }

    /// The batches column family takes every acknowledged entry: room for
    /// memtables while earlier ones are written out, so a burst does not
    /// stall writes (at most 24 x 16 MiB; memtables exist only while they
    /// hold entries). Its SST files are as small: once in Parquet, their
    /// entries are deleted and a compaction deletes the files, and a
    /// file's deletion held up the acks' WAL fsyncs in proportion to its
    /// size (a filesystem that discards freed blocks at each journal
    /// commit: 40 ms for 64 MiB).
    fn cf_options(name: &str) -> Options {
        let mut opts = Options::default();
        if name == CF_BATCHES {
            opts.set_write_buffer_size(16 << 20);
            opts.set_max_write_buffer_number(24);
            opts.set_target_file_size_base(16 << 20);
            // Four times the default L0 files before writes slow or stop,
            // as the files are a quarter of the default size.
            opts.set_level_zero_slowdown_writes_trigger(80);
            opts.set_level_zero_stop_writes_trigger(144);
        }
        opts
    }

    /// Opens (creating if needed) the log at `path` for writing.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, &Self::options())
    }

    /// The database at `path` with every column family, for writing.
    fn open_db(path: &Path, options: &Options) -> Result<DB> {
        let cfs = COLUMN_FAMILIES.iter().map(|n| ColumnFamilyDescriptor::new(*n, Self::cf_options(n)));
        DB::open_cf_descriptors(options, path, cfs).map_err(db_err)
    }

    fn open_with(path: &Path, options: &Options) -> Result<Self> {
        let log = Self {
            db: RwLock::new(Some(Self::open_db(path, options)?)),
            path: path.to_path_buf(),
            options: options.clone(),
            inflight: Mutex::new(Inflight::default()),
            read_only: false,
            failed: Mutex::default(),
        };
        let last = log.last_seq()?;
        let watermark = log.watermark()?;
        log.lock().next_seq = last.max(watermark) + 1;
        Ok(log)
    }

    /// Opens the log at `path` as a RocksDB secondary instance (its own
    /// files in `secondary_dir`), which works while a server writes to
    /// `path`. [`Self::tail`] replays the primary's new writes first.
    pub fn open_secondary(path: &Path, secondary_dir: &Path) -> Result<Self> {
        if !path.join("CURRENT").exists() {
            return Err(Error::NoData(path.to_path_buf()));
        }
        let mut opts = Self::options();
        opts.set_max_open_files(-1);
        // A log last written by an older collector may lack newer column
        // families; open the ones it has.
        let existing = DB::list_cf(&opts, path).map_err(db_err)?;
        let cfs = COLUMN_FAMILIES.iter().filter(|n| existing.iter().any(|e| e == *n));
        let db = DB::open_cf_as_secondary(&opts, path, secondary_dir, cfs).map_err(db_err)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            options: opts,
            inflight: Mutex::new(Inflight::default()),
            read_only: true,
            failed: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inflight> {
        match self.inflight.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The write error that put the log out of service, while it is (see
    /// [`Self::reopen`]).
    pub fn failure(&self) -> Option<String> {
        self.failed().clone()
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        match self.failed.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Notes a failed write: RocksDB refuses every write after one that
    /// failed on the disk (a full disk, an I/O error) until the database
    /// is opened again, which [`Self::reopen`] does.
    fn note_write_error(&self, e: &Error) {
        if e.is_storage() {
            let m = e.to_string();
            let mut failed = self.failed();
            if failed.is_none() {
                tracing::error!(error = %m, path = %self.path.display(), "The log cannot be written; reports are refused until it can");
                *failed = Some(m.clone());
            }
        }
    }

    /// Opens the database again after a write failed (see
    /// [`Self::failure`]), once every read and write in progress finished:
    /// RocksDB then replays its write-ahead log, and writes succeed again
    /// if the cause (a full disk) is gone. `Ok(false)`: nothing had
    /// failed. An error leaves the log out of service for the next try.
    pub fn reopen(&self) -> Result<bool> {
        if self.read_only || self.failure().is_none() {
            return Ok(false);
        }
        let mut guard = match self.db.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Closed before it is opened again: RocksDB locks its directory.
        drop(guard.take());
        let db = Self::open_db(&self.path, &self.options)?;
        // A probe write: the disk takes writes again.
        db.put_cf_opt(cf(&db, CF_META)?, b"probe", [], &synced()).map_err(db_err)?;
        db.delete_cf_opt(cf(&db, CF_META)?, b"probe", &synced()).map_err(db_err)?;
        *guard = Some(db);
        drop(guard);
        *self.failed() = None;
        tracing::warn!(path = %self.path.display(), "The log was opened again and takes writes");
        Ok(true)
    }

    /// The open database.
    fn db(&self) -> Result<Db<'_>> {
        let guard = match self.db.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match guard.as_ref() {
            Some(_) => Ok(Db(guard)),
            None => Err(Error::Storage(format!(
                "the log at {} is being opened again after a write failed: {}",
                self.path.display(),
                self.failure().unwrap_or_default()
            ))),
        }
    }

    fn last_seq(&self) -> Result<u64> {
        let db = self.db()?;
        let mut it = db.iterator_cf(cf(&db, CF_BATCHES)?, IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (k, _) = item.map_err(db_err)?;
                u64_at(&k, 0).ok_or_else(|| Error::Corrupt("bad sequence key".into()))
            }
            None => Ok(0),
        }
    }

    /// Highest sequence number already in Parquet (0 when none).
    pub fn watermark(&self) -> Result<u64> {
        let db = self.db()?;
        Ok(db.get_cf(cf(&db, CF_META)?, KEY_WATERMARK).map_err(db_err)?.and_then(|v| u64_at(&v, 0)).unwrap_or(0))
    }

    /// The flush under way, if a previous run stopped in the middle of one.
    pub fn flush_intent(&self) -> Result<Option<(u64, u64)>> {
        let db = self.db()?;
        Ok(db
            .get_cf(cf(&db, CF_META)?, KEY_FLUSH_INTENT)
            .map_err(db_err)?
            .and_then(|v| Some((u64_at(&v, 0)?, u64_at(&v, 8)?))))
    }

    /// Records that sequence numbers `from..=to` are being flushed.
    pub fn set_flush_intent(&self, from: u64, to: u64) -> Result<()> {
        let db = self.db()?;
        let mut value = from.to_be_bytes().to_vec();
        value.extend_from_slice(&to.to_be_bytes());
        db.put_cf_opt(cf(&db, CF_META)?, KEY_FLUSH_INTENT, value, &synced()).map_err(db_err)
    }

    /// Marks `..=to` as flushed and deletes those entries, atomically.
    pub fn commit_flush(&self, to: u64) -> Result<()> {
        let db = self.db()?;
        let mut wb = WriteBatch::default();
        wb.put_cf(cf(&db, CF_META)?, KEY_WATERMARK, to.to_be_bytes());
        wb.delete_cf(cf(&db, CF_META)?, KEY_FLUSH_INTENT);
        wb.delete_range_cf(cf(&db, CF_BATCHES)?, 0u64.to_be_bytes(), (to + 1).to_be_bytes());
        let written = db.write_opt(wb, &synced()).map_err(db_err);
        drop(db);
        if let Err(e) = &written {
            self.note_write_error(e);
        }
        written
    }

    /// Highest sequence number below which every append has finished.
    pub fn durable_upto(&self) -> u64 {
        let g = self.lock();
        match g.seqs.first() {
            Some(&s) => s - 1,
            None => g.next_seq.saturating_sub(1),
        }
    }

    /// Appends a batch; returns once it is on disk (fsync).
    pub fn append(&self, agent_id: &str, batch: &ReportBatch, received_at_ms: i64) -> Result<AppendOutcome> {
        let db = self.db()?;
        if self.read_only {
            return Err(Error::Storage("the log is open read-only".into()));
        }
        let EncodedEntry { entry, digest, batch_bytes } = encode_entry_of(agent_id, received_at_ms, batch);
        let ids = cf(&db, CF_BATCH_IDS)?;
        let key = batch_id_key(agent_id, &batch.batch_id);
        let records_of = |v: &[u8]| v.get(40..44).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let started = std::time::Instant::now();
        let (seq, first_use) = {
            let mut g = self.lock();
            if g.batch_ids.contains(&key) {
                return Err(Error::InFlight(batch.batch_id.clone()));
            }
            if let Some(v) = db.get_cf(ids, &key).map_err(db_err)? {
                if v.get(8..40) != Some(&digest[..]) {
                    return Err(Error::Conflict(batch.batch_id.clone()));
                }
                return Ok(AppendOutcome::Duplicate { records: records_of(&v) });
            }
            // The id alone, as the first agent to use it stored it: the
            // same content is this batch stored before (also when its agent
            // enrolled again since, under a new agent id); other content is
            // another agent's batch, stored under its own key.
            let first_use = match db.get_cf(ids, &batch.batch_id).map_err(db_err)? {
                Some(v) if v.get(8..40) == Some(&digest[..]) => {
                    return Ok(AppendOutcome::Duplicate { records: records_of(&v) });
                }
                Some(_) => false,
                None => true,
            };
            let seq = g.next_seq;
            g.next_seq += 1;
            g.seqs.insert(seq);
            g.batch_ids.insert(key.clone());
            (seq, first_use)
        };
        let looked_up = std::time::Instant::now();
        let result = (|| {
            let mut id_value = seq.to_be_bytes().to_vec();
            id_value.extend_from_slice(&digest);
            id_value.extend_from_slice(&(batch.records.len() as u32).to_be_bytes());
            let mut wb = WriteBatch::default();
            wb.put_cf(cf(&db, CF_BATCHES)?, seq.to_be_bytes(), entry);
            let day = newest_day(batch);
            // The id alone expires with the agent's key (same sequence number).
            if first_use {
                wb.put_cf(ids, &batch.batch_id, &id_value);
            }
            wb.put_cf(ids, &key, id_value);
            wb.put_cf(cf(&db, CF_BATCH_DAYS)?, batch_day_key(day, &key), seq.to_be_bytes());
            db.write_opt(wb, &synced()).map_err(db_err)
        })();
        let mut g = self.lock();
        g.seqs.remove(&seq);
        g.batch_ids.remove(&key);
        drop(g);
        if let Err(e) = &result {
            self.note_write_error(e);
        }
        result.map(|()| AppendOutcome::Accepted {
            seq,
            bytes: batch_bytes as u64,
            lookup: looked_up - started,
            write: looked_up.elapsed(),
        })
    }

    /// Deletes the ids of the batches up to sequence number `flushed`
    /// whose records all lie before the day `cutoff`, so that the ids of batches retention has deleted do not pile up for
    /// ever; at most `limit` of them, oldest days first (the rest go with
    /// later calls); returns how many went. Call it only after retention
    /// has deleted the day partitions before `cutoff`, with the
    /// watermark read before retention began: every record of those
    /// batches is gone then, so a retry of one is stored again (and goes
    /// with the next retention pass) without meeting a first copy. Later
    /// batches keep their ids: their records may still be in the log or in
    /// a file retention had not seen.
    ///
    /// The `batch_days` entries of expired ids go as ranges, so that later
    /// calls skip them without stepping over a tombstone per id (a day of
    /// a busy collector is tens of millions of batches). A range may also
    /// delete the entry of an old-day batch stored during the call, whose
    /// id is then kept: never deleting an id that should stay is what
    /// matters.
    pub fn expire_batch_ids(&self, cutoff: chrono::NaiveDate, flushed: u64, limit: u64) -> Result<u64> {
        let watermark = flushed.min(self.watermark()?);
        let db = self.db()?;
        // `cutoff` as a `batch_days` day, as `newest_day` counts them.
        let before_day = cutoff.signed_duration_since(chrono::DateTime::UNIX_EPOCH.date_naive()).num_days();
        let Ok(before) = u32::try_from(before_day.max(0)) else { return Ok(0) };
        let (ids, days) = (cf(&db, CF_BATCH_IDS)?, cf(&db, CF_BATCH_DAYS)?);
        let end = before.to_be_bytes().to_vec();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.clone());
        let mut it = db.raw_iterator_cf_opt(days, opts);
        it.seek_to_first();
        // `from`: the first key of the run of expired entries not yet deleted.
        let (mut wb, mut expired, mut from) = (WriteBatch::default(), 0u64, None::<Vec<u8>>);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if expired >= limit {
                break;
            }
            let seq = u64_at(v, 0).ok_or_else(|| Error::Corrupt("bad batch day entry".into()))?;
            if seq <= watermark {
                let id = &k[4..];
                wb.delete_cf(ids, id);
                // The id alone, when this batch was its first use.
                if let Some(slash) = id.iter().position(|&b| b == b'/') {
                    let bare = &id[slash + 1..];
                    if db.get_cf(ids, bare).map_err(db_err)?.and_then(|v| u64_at(&v, 0)) == Some(seq) {
                        wb.delete_cf(ids, bare);
                    }
                }
                from.get_or_insert_with(|| k.to_vec());
                expired += 1;
            } else if let Some(from) = from.take() {
                wb.delete_range_cf(days, from, k.to_vec());
            }
            if wb.len() >= 20_000 {
                if let Some(from) = from.take() {
                    let mut past = k.to_vec();
                    past.push(0); // the smallest key after `k`
                    wb.delete_range_cf(days, from, past);
                }
                db.write(std::mem::take(&mut wb)).map_err(db_err)?;
            }
            it.next();
        }
        it.status().map_err(db_err)?;
        if let Some(from) = from {
            // Up to the entry the limit stopped at, or to `cutoff`.
            wb.delete_range_cf(days, from, it.key().map_or(end, <[u8]>::to_vec));
        }
        db.write(wb).map_err(db_err)?;
        Ok(expired)
    }

    /// The last sequence number of the entries from `from` on (up to `to`)
    /// whose messages hold at most `max_bytes` together, uncompressed (what
    /// a flush decodes); at least `from`.
    pub fn end_within(&self, from: u64, to: u64, max_bytes: usize) -> Result<u64> {
        let db = self.db()?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound((to.saturating_add(1)).to_be_bytes().to_vec());
        let mut it = db.raw_iterator_cf_opt(cf(&db, CF_BATCHES)?, opts);
        it.seek(from.to_be_bytes());
        let (mut end, mut total) = (from, 0usize);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let seq = u64_at(k, 0).ok_or_else(|| Error::Corrupt("bad sequence key".into()))?;
            total = total.saturating_add(message_len(v));
            if total > max_bytes && seq > from {
                break;
            }
            end = seq;
            it.next();
        }
        it.status().map_err(db_err)?;
        Ok(end)
    }

    /// Calls `f` with each entry with a sequence number in `from..=to`, in
    /// order, one at a time: its message ([`entry_message`], checked and
    /// decompressed), stopping at the first error, `f`'s or the log's.
    pub fn each_in_range(&self, from: u64, to: u64, mut f: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        let db = self.db()?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound((to.saturating_add(1)).to_be_bytes().to_vec());
        let start = from.to_be_bytes();
        let it = db.iterator_cf_opt(cf(&db, CF_BATCHES)?, opts, IteratorMode::From(&start, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(db_err)?;
            let seq = u64_at(&k, 0).ok_or_else(|| Error::Corrupt("bad sequence key".into()))?;
            f(seq, &entry_message(&v)?)?;
        }
        Ok(())
    }

    /// Stores `message` as the entry `seq` as this build seals entries,
    /// whatever its layout (for tests of readers).
    #[cfg(test)]
    pub(crate) fn put_message(&self, seq: u64, message: &[u8]) -> Result<()> {
        let db = self.db()?;
        let entry = seal_entry([&[0; ENTRY_HEADER][..], message].concat());
        db.put_cf(cf(&db, CF_BATCHES)?, seq.to_be_bytes(), entry).map_err(db_err)
    }

    /// The entries [`Self::each_in_tail`] passes, decoded, and the
    /// watermark (for tests).
    #[cfg(test)]
    pub(crate) fn tail(&self) -> Result<(u64, Vec<StoredBatch>)> {
        let mut out = Vec::new();
        let watermark = self.each_in_tail(|message| {
            out.push(decode_message(message)?);
            Ok(())
        })?;
        Ok((watermark, out))
    }

    /// A consistent view: calls `f` with the message ([`entry_message`])
    /// of every entry above the watermark, in order, and returns the
    /// watermark. A secondary instance first replays what the primary
    /// wrote; it does not support snapshots, but its view changes only on
    /// catch-up, which is serialised with the read.
    pub fn each_in_tail(&self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let db = self.db()?;
        if self.read_only {
            let _view = self.lock();
            db.try_catch_up_with_primary().map_err(db_err)?;
            let watermark =
                db.get_cf(cf(&db, CF_META)?, KEY_WATERMARK).map_err(db_err)?.and_then(|v| u64_at(&v, 0)).unwrap_or(0);
            let start = (watermark + 1).to_be_bytes();
            for item in db.iterator_cf(cf(&db, CF_BATCHES)?, IteratorMode::From(&start, Direction::Forward)) {
                let (_, v) = item.map_err(db_err)?;
                f(&entry_message(&v)?)?;
            }
            return Ok(watermark);
        }
        let snap = db.snapshot();
        let watermark =
            snap.get_cf(cf(&db, CF_META)?, KEY_WATERMARK).map_err(db_err)?.and_then(|v| u64_at(&v, 0)).unwrap_or(0);
        let start = (watermark + 1).to_be_bytes();
        for item in snap.iterator_cf(cf(&db, CF_BATCHES)?, IteratorMode::From(&start, Direction::Forward)) {
            let (_, v) = item.map_err(db_err)?;
            f(&entry_message(&v)?)?;
        }
        Ok(watermark)
    }

    /// Bytes of the log's WAL files: those in use (kept to at most about
    /// [`MAX_TOTAL_WAL_BYTES`]) and up to [`RECYCLED_WAL_FILES`] old ones
    /// waiting to be written over (which a restart does not read).
    pub fn wal_bytes(&self) -> u64 {
        let Ok(db) = self.db() else { return 0 };
        wal_files(db.path()).1
    }

    /// Bytes of the log: SST files plus memtables.
    pub fn size_bytes(&self) -> u64 {
        let Ok(db) = self.db() else { return 0 };
        COLUMN_FAMILIES
            .iter()
            .filter_map(|name| db.cf_handle(name))
            .map(|cf| {
                let prop = |p: &str| db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
                prop("rocksdb.total-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables")
            })
            .sum()
    }

    /// Acknowledged batches not yet in Parquet.
    pub fn flush_lag(&self) -> u64 {
        self.durable_upto().saturating_sub(self.watermark().unwrap_or(0))
    }
}
