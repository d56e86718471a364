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

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use leakwatch_proto::v1::ReportBatch;
use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

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
/// Format of the log entries this build writes: LZ4-compressed message.
const ENTRY_VERSION: u8 = 2;
/// Format of earlier releases' entries: the message as it is.
const ENTRY_VERSION_PLAIN: u8 = 1;

/// A batch as the log keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredBatch {
    /// Agent that sent it.
    #[prost(string, tag = "1")]
    pub agent_id: String,
    /// When the collector stored it, Unix milliseconds.
    #[prost(int64, tag = "2")]
    pub received_at_ms: i64,
    /// The batch as received.
    #[prost(message, optional, tag = "3")]
    pub batch: Option<ReportBatch>,
}

/// What the log knows of an agent's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentToken {
    /// Never enrolled.
    Unknown,
    /// Revoked by the operator.
    Revoked,
    /// SHA-256 of the valid token.
    Hash(Vec<u8>),
}

/// The outcome of presenting an enrollment code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeUse {
    /// Accepted; one use counted.
    Accepted,
    /// No such code.
    Unknown,
    /// Past its expiry.
    Expired,
    /// All its uses are taken.
    UsedUp,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored under this sequence number.
    Accepted {
        /// Log sequence number.
        seq: u64,
        /// Size of the batch's encoding (the Report message), bytes.
        bytes: u64,
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

fn db_err(e: rocksdb::Error) -> Error {
    Error::Storage(e.to_string())
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The device's part of a batch's digest (see [`EncodedEntry::digest`]).
fn digest_device(h: &mut Sha256, batch: &ReportBatch) {
    if let Some(d) = &batch.device {
        let mut d = d.clone();
        // Map order is not canonical on the wire; sort for the digest.
        let consent: std::collections::BTreeMap<_, _> = d.consent.drain().collect();
        h.update(d.encode_to_vec());
        for (k, v) in consent {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
    }
}

/// Bytes before a log entry's message: version and checksum.
const ENTRY_HEADER: usize = 5;

/// Encodes a log entry (version, checksum, message).
pub fn encode_entry(stored: &StoredBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_HEADER + stored.encoded_len());
    out.extend_from_slice(&[0; ENTRY_HEADER]);
    stored.encode_raw(&mut out);
    seal_entry(out)
}

/// `out`, a message after [`ENTRY_HEADER`] bytes of room, made an entry:
/// the message LZ4-compressed (with its length in front), then the
/// version and the checksum of the compressed bytes written in that room.
///
/// Compressing costs a little CPU on the request path and saves much
/// more disk work: every entry is written to the WAL, to an SST when its
/// memtable is flushed, and deleted again once in Parquet. Flow records
/// repeat names, addresses and fingerprints, so entries shrink several
/// times, and with them the fsyncs acks wait for and the file deletions
/// after each Parquet flush that stalled those fsyncs.
fn seal_entry(mut out: Vec<u8>) -> Vec<u8> {
    let compressed = lz4_flex::block::compress_prepend_size(&out[ENTRY_HEADER..]);
    out.truncate(ENTRY_HEADER);
    out.extend_from_slice(&compressed);
    let crc = crc32fast::hash(&out[ENTRY_HEADER..]);
    out[0] = ENTRY_VERSION;
    out[1..ENTRY_HEADER].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A batch as the log stores it.
#[derive(Debug)]
pub struct EncodedEntry {
    /// The log entry: the bytes of [`encode_entry`] for the
    /// [`StoredBatch`].
    pub entry: Vec<u8>,
    /// The digest that decides whether two batches with one id are the
    /// same: of device and records, not the send time.
    pub digest: [u8; 32],
    /// Size of the batch's own encoding (the Report message), bytes.
    pub batch_bytes: usize,
}

/// The log entry of `batch` received from `agent_id` and the batch's
/// digest, from one encoding of each record (a batch holds up to
/// thousands): the digest hashes the records' bytes in the entry, and no
/// [`StoredBatch`] is built around a copy of the batch.
pub fn encode_entry_of(agent_id: &str, received_at_ms: i64, batch: &ReportBatch) -> EncodedEntry {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, int64, key_len, string};
    // The batch's fields but its records (the last field, so the derived
    // encoder writes them last too).
    let head = ReportBatch {
        batch_id: batch.batch_id.clone(),
        sent_at_unix_ms: batch.sent_at_unix_ms,
        device: batch.device.clone(),
        records: Vec::new(),
    };
    let record_lens: Vec<usize> = batch.records.iter().map(Message::encoded_len).collect();
    let batch_bytes =
        head.encoded_len() + record_lens.iter().map(|&n| key_len(4) + encoded_len_varint(n as u64) + n).sum::<usize>();
    let agent_id = agent_id.to_string();
    let mut out = Vec::with_capacity(
        ENTRY_HEADER + string::encoded_len(1, &agent_id) + int64::encoded_len(2, &received_at_ms) + 11 + batch_bytes,
    );
    out.extend_from_slice(&[0; ENTRY_HEADER]);
    // Field by field as the derived encoder does: proto3 defaults left out.
    if !agent_id.is_empty() {
        string::encode(1, &agent_id, &mut out);
    }
    if received_at_ms != 0 {
        int64::encode(2, &received_at_ms, &mut out);
    }
    encode_key(3, WireType::LengthDelimited, &mut out);
    encode_varint(batch_bytes as u64, &mut out);
    head.encode_raw(&mut out);
    let mut h = Sha256::new();
    digest_device(&mut h, batch);
    for (r, &n) in batch.records.iter().zip(&record_lens) {
        encode_key(4, WireType::LengthDelimited, &mut out);
        encode_varint(n as u64, &mut out);
        let at = out.len();
        r.encode_raw(&mut out);
        h.update(&out[at..]);
    }
    EncodedEntry { entry: seal_entry(out), digest: h.finalize().into(), batch_bytes }
}

/// The message length a compressed entry's body states in front of its
/// LZ4 block (`None` when the body is too short to state one).
fn stated_len(body: &[u8]) -> Option<usize> {
    body.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Bytes of an entry's message once decompressed, as its header states
/// (for budgets; [`decode_entry`] checks it).
pub fn message_len(entry: &[u8]) -> usize {
    match entry.first() {
        Some(&ENTRY_VERSION) => entry.get(ENTRY_HEADER..).and_then(stated_len).unwrap_or(entry.len()),
        _ => entry.len().saturating_sub(ENTRY_HEADER),
    }
}

/// Decodes a log entry, checking version and checksum: this build's
/// compressed entries and the uncompressed ones of earlier releases, which
/// a log written before an upgrade still holds until they are flushed.
pub fn decode_entry(bytes: &[u8]) -> Result<StoredBatch> {
    decode_message(&entry_message(bytes)?)
}

/// The [`StoredBatch`] encoded in a log entry's `message`.
pub fn decode_message(message: &[u8]) -> Result<StoredBatch> {
    StoredBatch::decode(message).map_err(|e| Error::Corrupt(format!("log entry: {e}")))
}

/// A log entry's message, the [`StoredBatch`]'s encoding (decompressed
/// when the entry is), after checking the entry's version and checksum.
pub fn entry_message(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    let (&version, rest) = bytes.split_first().ok_or_else(|| Error::Corrupt("empty log entry".into()))?;
    if version != ENTRY_VERSION && version != ENTRY_VERSION_PLAIN {
        return Err(Error::Corrupt(format!(
            "log entry format {version}, this build reads {ENTRY_VERSION_PLAIN} and {ENTRY_VERSION}"
        )));
    }
    let (crc, body) = rest.split_at_checked(4).ok_or_else(|| Error::Corrupt("log entry too short".into()))?;
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != want {
        return Err(Error::Corrupt("log entry checksum mismatch".into()));
    }
    if version == ENTRY_VERSION_PLAIN {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    // The stated length is checked before anything is allocated for it: no
    // LZ4 block expands more than 255 times.
    let stated = stated_len(body);
    match stated {
        Some(n) if n <= body.len().saturating_mul(255) => {}
        _ => return Err(Error::Corrupt(format!("log entry: compressed length {stated:?} for {} bytes", body.len()))),
    }
    lz4_flex::block::decompress_size_prepended(body)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| Error::Corrupt(format!("log entry: decompressing: {e}")))
}

/// Write options of every log write: synced before it returns.
fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

/// A stored SQL token's holder and expiry (`[expiry: i64 BE][holder]`).
fn sql_token_record(v: &[u8]) -> Result<(String, i64)> {
    let expires = v
        .get(0..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| Error::Corrupt("SQL token record".into()))?;
    Ok((String::from_utf8_lossy(&v[8..]).into_owned(), expires))
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
    /// a few memtables while earlier ones are written out, so a burst does
    /// not stall writes (at most 6 x 64 MiB; memtables exist only while
    /// they hold entries).
    fn cf_options(name: &str) -> Options {
        let mut opts = Options::default();
        if name == CF_BATCHES {
            opts.set_write_buffer_size(64 << 20);
            opts.set_max_write_buffer_number(6);
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
        if let Error::Storage(m) = e {
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
        result.map(|()| AppendOutcome::Accepted { seq, bytes: batch_bytes as u64 })
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

    /// Bytes of the log's WAL files (kept to at most about
    /// [`MAX_TOTAL_WAL_BYTES`]).
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

    /// Registers an agent's token hash.
    pub fn put_agent(&self, agent_id: &str, token_hash: &[u8; 32]) -> Result<()> {
        let db = self.db()?;
        db.put_cf_opt(cf(&db, CF_AGENTS)?, agent_id, token_hash, &synced()).map_err(db_err)
    }

    /// The token hash of an agent.
    pub fn agent_token_hash(&self, agent_id: &str) -> Result<AgentToken> {
        let db = self.db()?;
        Ok(match db.get_cf(cf(&db, CF_AGENTS)?, agent_id).map_err(db_err)? {
            None => AgentToken::Unknown,
            Some(v) if v == REVOKED => AgentToken::Revoked,
            Some(v) => AgentToken::Hash(v),
        })
    }

    /// Revokes an agent; false when it was never enrolled.
    pub fn revoke_agent(&self, agent_id: &str) -> Result<bool> {
        let db = self.db()?;
        let _guard = self.lock();
        if matches!(self.agent_token_hash(agent_id)?, AgentToken::Unknown) {
            return Ok(false);
        }
        db.put_cf_opt(cf(&db, CF_AGENTS)?, agent_id, REVOKED, &synced()).map_err(db_err)?;
        Ok(true)
    }

    /// Stores a new enrollment code (by hash).
    pub fn put_code(&self, code_hash: &[u8; 32], max_uses: u32, expires_at_s: i64) -> Result<()> {
        let db = self.db()?;
        let mut v = max_uses.to_be_bytes().to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&expires_at_s.to_be_bytes());
        db.put_cf_opt(cf(&db, CF_CODES)?, code_hash, v, &synced()).map_err(db_err)
    }

    /// Uses one enrollment of a code, if it is known, unexpired and not
    /// used up.
    pub fn use_code(&self, code_hash: &[u8; 32], now_s: i64) -> Result<CodeUse> {
        let db = self.db()?;
        let _guard = self.lock();
        let Some(v) = db.get_cf(cf(&db, CF_CODES)?, code_hash).map_err(db_err)? else {
            return Ok(CodeUse::Unknown);
        };
        let (Some(max), Some(uses), Some(expires)) = (
            v.get(0..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            v.get(4..8).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            v.get(8..16).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes),
        ) else {
            return Err(Error::Corrupt("enrollment code record".into()));
        };
        if now_s > expires {
            return Ok(CodeUse::Expired);
        }
        if uses >= max {
            return Ok(CodeUse::UsedUp);
        }
        let mut updated = v.clone();
        updated[4..8].copy_from_slice(&(uses + 1).to_be_bytes());
        db.put_cf_opt(cf(&db, CF_CODES)?, code_hash, updated, &synced()).map_err(db_err)?;
        Ok(CodeUse::Accepted)
    }
}

impl DurableLog {
    /// Stores an analyst's SQL token (by hash) with its holder's name.
    pub fn put_sql_token(&self, token_hash: &[u8; 32], name: &str, expires_at_s: i64) -> Result<()> {
        let db = self.db()?;
        let mut v = expires_at_s.to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        db.put_cf_opt(cf(&db, CF_SQL_TOKENS)?, token_hash, v, &synced()).map_err(db_err)
    }

    /// The holder's name of a valid SQL token; `None` when the token is
    /// unknown or expired.
    pub fn sql_token(&self, token_hash: &[u8; 32], now_s: i64) -> Result<Option<String>> {
        let db = self.db()?;
        let Some(v) = db.get_cf(cf(&db, CF_SQL_TOKENS)?, token_hash).map_err(db_err)? else {
            return Ok(None);
        };
        let (name, expires) = sql_token_record(&v)?;
        Ok((now_s <= expires).then_some(name))
    }

    /// Every stored SQL token, expired ones too: (hash, holder, expiry),
    /// in hash order.
    pub fn sql_tokens(&self) -> Result<Vec<([u8; 32], String, i64)>> {
        let db = self.db()?;
        let mut out = Vec::new();
        for item in db.iterator_cf(cf(&db, CF_SQL_TOKENS)?, IteratorMode::Start) {
            let (k, v) = item.map_err(db_err)?;
            let hash = <[u8; 32]>::try_from(&k[..]).map_err(|_| Error::Corrupt("SQL token key".into()))?;
            let (name, expires) = sql_token_record(&v)?;
            out.push((hash, name, expires));
        }
        Ok(out)
    }

    /// Deletes the SQL tokens with these hashes, in one synced write.
    pub fn delete_sql_tokens(&self, hashes: &[[u8; 32]]) -> Result<()> {
        let db = self.db()?;
        let cf = cf(&db, CF_SQL_TOKENS)?;
        let mut wb = WriteBatch::default();
        for hash in hashes {
            wb.delete_cf(cf, hash);
        }
        db.write_opt(wb, &synced()).map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use leakwatch_proto::v1::{DeviceInfo, FlowRecord};

    use super::*;

    fn batch(id: &str, n: usize) -> ReportBatch {
        ReportBatch {
            batch_id: id.into(),
            sent_at_unix_ms: 1,
            device: Some(DeviceInfo { device_pseudonym: "d".into(), ..Default::default() }),
            records: (0..n).map(|i| FlowRecord { dst_port: 443, bytes_out: i as u64, ..Default::default() }).collect(),
        }
    }

    #[test]
    fn a_flush_range_ends_within_its_byte_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DurableLog::open(dir.path()).expect("open");
        let sizes: Vec<usize> = (1..=3)
            .map(|i| {
                let b = batch(&format!("b{i}"), i * 10);
                log.append("a", &b, 5).expect("append");
                let entry = encode_entry_of("a", 5, &b).entry;
                assert_eq!(message_len(&entry), decode_entry(&entry).expect("decodes").encoded_len());
                message_len(&entry)
            })
            .collect();
        assert_eq!(log.end_within(1, 3, usize::MAX).expect("all"), 3);
        assert_eq!(log.end_within(1, 3, sizes[0] + sizes[1]).expect("two"), 2);
        assert_eq!(log.end_within(1, 3, sizes[0] + sizes[1] - 1).expect("one"), 1);
        // The first entry goes in even when it alone is over the budget.
        assert_eq!(log.end_within(2, 3, 0).expect("at least one"), 2);
        assert_eq!(log.end_within(1, 2, usize::MAX).expect("up to `to`"), 2);
    }

    #[test]
    fn append_dedups_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = DurableLog::open(dir.path()).expect("open");
            assert!(matches!(
                log.append("a", &batch("b1", 3), 5).expect("append"),
                AppendOutcome::Accepted { seq: 1, .. }
            ));
            let mut resent = batch("b1", 3);
            resent.sent_at_unix_ms = 99;
            assert_eq!(log.append("a", &resent, 6).expect("dup"), AppendOutcome::Duplicate { records: 3 });
            assert!(matches!(log.append("a", &batch("b1", 4), 7), Err(Error::Conflict(_))));
            assert!(matches!(
                log.append("a", &batch("b2", 1), 8).expect("append"),
                AppendOutcome::Accepted { seq: 2, .. }
            ));
            assert_eq!(log.durable_upto(), 2);
        }
        let log = DurableLog::open(dir.path()).expect("reopen");
        let (wm, tail) = log.tail().expect("tail");
        assert_eq!((wm, tail.len()), (0, 2));
        log.commit_flush(1).expect("commit");
        let (wm, tail) = log.tail().expect("tail");
        assert_eq!((wm, tail.len()), (1, 1));
        assert_eq!(
            log.append("a", &batch("b1", 3), 9).expect("dup after flush"),
            AppendOutcome::Duplicate { records: 3 }
        );
        assert!(matches!(
            log.append("a", &batch("b3", 1), 10).expect("append"),
            AppendOutcome::Accepted { seq: 3, .. }
        ));
    }

    /// Issue 29, point 9: batch ids are the agent's choice, so another
    /// agent's batch with the same id is its own batch, neither answered
    /// `duplicate` (before, it was) nor able to make the first agent's
    /// batch a conflict.
    #[test]
    fn issue29_batch_ids_are_unique_per_agent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DurableLog::open(dir.path()).expect("open");
        let mut other = batch("b1", 2);
        other.records[0].bytes_out = 99;
        assert!(matches!(log.append("agent-b", &other, 1).expect("b first"), AppendOutcome::Accepted { .. }));
        assert!(matches!(log.append("agent-a", &batch("b1", 3), 2).expect("a"), AppendOutcome::Accepted { .. }));
        assert_eq!(log.append("agent-b", &other, 3).expect("b retry"), AppendOutcome::Duplicate { records: 2 });
        assert_eq!(
            log.append("agent-a", &batch("b1", 3), 4).expect("a retry"),
            AppendOutcome::Duplicate { records: 3 }
        );
        assert!(matches!(log.append("agent-a", &other, 5), Err(Error::Conflict(_))), "a's own id, other content");
        // An agent that enrolled again (a new agent id) resends its batch.
        assert_eq!(log.append("agent-b2", &other, 6).expect("re-enrolled"), AppendOutcome::Duplicate { records: 2 });
        // An id an earlier release stored alone: the same content is a
        // duplicate, other content is another agent's batch.
        let digest = encode_entry_of("x", 0, &batch("old", 1)).digest;
        let mut v = 9u64.to_be_bytes().to_vec();
        v.extend_from_slice(&digest);
        v.extend_from_slice(&1u32.to_be_bytes());
        log.db().expect("db").put_cf(cf(&log.db().expect("db"), CF_BATCH_IDS).expect("cf"), "old", v).expect("put");
        assert_eq!(
            log.append("agent-a", &batch("old", 1), 6).expect("legacy"),
            AppendOutcome::Duplicate { records: 1 }
        );
        assert!(matches!(log.append("agent-c", &batch("old", 2), 7).expect("other"), AppendOutcome::Accepted { .. }));
    }

    /// The date `n` days after 1970-01-01.
    fn day(n: i64) -> chrono::NaiveDate {
        let epoch = chrono::DateTime::UNIX_EPOCH.date_naive();
        epoch.checked_add_signed(chrono::TimeDelta::days(n)).expect("a date")
    }

    /// A batch whose newest record starts at `day` (days since 1970).
    fn batch_of_day(id: &str, day: i64) -> ReportBatch {
        let mut b = batch(id, 2);
        b.records[0].window_start_unix_s = day * 86_400 - 86_400;
        b.records[1].window_start_unix_s = day * 86_400 + 86_399;
        b
    }

    #[test]
    fn ids_of_flushed_batches_whose_days_retention_deleted_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DurableLog::open(dir.path()).expect("open");
        let accepted =
            |b: &ReportBatch| matches!(log.append("a", b, 1).expect("append"), AppendOutcome::Accepted { .. });
        for (id, day) in [("old", 100), ("edge", 109), ("kept", 110), ("legacy", 50), ("unflushed", 90)] {
            assert!(accepted(&batch_of_day(id, day)), "{id}");
        }
        // "legacy" stands for an id stored before batch days were: no entry.
        let legacy = batch_day_key(newest_day(&batch_of_day("legacy", 50)), &batch_id_key("a", "legacy"));
        log.db()
            .expect("db")
            .delete_cf(cf(&log.db().expect("db"), CF_BATCH_DAYS).expect("cf"), legacy)
            .expect("delete");
        log.commit_flush(4).expect("commit");

        // Only batches up to the watermark read before retention go.
        assert_eq!(log.expire_batch_ids(day(110), 3, u64::MAX).expect("expire"), 2);
        assert_eq!(log.expire_batch_ids(day(110), 4, u64::MAX).expect("expire"), 0, "the unflushed batch keeps its id");
        for (id, day) in [("kept", 110), ("legacy", 50), ("unflushed", 90)] {
            let dup = log.append("a", &batch_of_day(id, day), 1).expect("dup");
            assert_eq!(dup, AppendOutcome::Duplicate { records: 2 }, "{id}");
        }
        // A retry of a forgotten batch is stored again, and forgotten with
        // the next pass once flushed.
        assert!(accepted(&batch_of_day("old", 100)));
        assert!(accepted(&batch_of_day("edge", 109)));
        log.commit_flush(7).expect("commit");
        // Oldest days first, `limit` at a time.
        assert_eq!(log.expire_batch_ids(day(110), 7, 2).expect("expire"), 2, "unflushed and old");
        assert!(accepted(&batch_of_day("unflushed", 90)));
        assert!(accepted(&batch_of_day("old", 100)));
        let dup = log.append("a", &batch_of_day("edge", 109), 1).expect("dup");
        assert_eq!(dup, AppendOutcome::Duplicate { records: 2 }, "past the limit");
        assert_eq!(log.expire_batch_ids(day(110), 7, u64::MAX).expect("expire"), 1, "edge");
        assert!(accepted(&batch_of_day("edge", 109)));
        assert_eq!(log.expire_batch_ids(day(200), 0, u64::MAX).expect("expire"), 0);
        assert_eq!(log.expire_batch_ids(day(-5), 10, u64::MAX).expect("expire"), 0);
        // Entries stored after a range went are expired by later calls;
        // an unflushed one amid them stays.
        assert!(accepted(&batch_of_day("late", 105)));
        log.commit_flush(10).expect("commit");
        assert_eq!(log.expire_batch_ids(day(110), 10, u64::MAX).expect("expire"), 3, "unflushed, old and edge");
        let left = log
            .db()
            .expect("db")
            .iterator_cf(cf(&log.db().expect("db"), CF_BATCH_DAYS).expect("cf"), IteratorMode::Start)
            .count();
        assert_eq!(left, 2, "the day entries of the kept and the late batch are left");
        log.commit_flush(11).expect("commit");
        assert_eq!(log.expire_batch_ids(day(110), 11, u64::MAX).expect("expire"), 1, "late");
    }

    #[test]
    fn many_ids_expire_in_chunks_and_leave_no_day_entry_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DurableLog::open(dir.path()).expect("open");
        {
            let db = log.db().expect("db");
            let (ids, days) = (cf(&db, CF_BATCH_IDS).expect("cf"), cf(&db, CF_BATCH_DAYS).expect("cf"));
            let mut wb = WriteBatch::default();
            for i in 0..45_000u64 {
                let id = format!("bulk-{i:05}");
                wb.put_cf(ids, &id, [0; 44]);
                // One batch in the middle is not flushed yet.
                let seq = if i == 20_000 { 9u64 } else { 1 };
                wb.put_cf(days, batch_day_key(5 + (i % 3) as u32, &id), seq.to_be_bytes());
            }
            db.write(wb).expect("write");
        }
        log.commit_flush(1).expect("commit");
        assert_eq!(log.expire_batch_ids(day(10), 1, u64::MAX).expect("expire"), 44_999);
        let db = log.db().expect("db");
        let count = |name| db.iterator_cf(cf(&db, name).expect("cf"), IteratorMode::Start).count();
        assert_eq!((count(CF_BATCH_IDS), count(CF_BATCH_DAYS)), (1, 1), "the unflushed batch's id and entry");
    }

    #[test]
    fn entries_and_digests_are_those_of_the_stored_message() {
        let mut b = batch("b1", 5);
        b.records[2].domain = "api.example.com".into();
        // The digest as it was first defined (stored digests must still match).
        let mut h = Sha256::new();
        let mut d = b.device.clone().expect("device");
        d.consent.clear();
        h.update(d.encode_to_vec());
        for r in &b.records {
            h.update(r.encode_to_vec());
        }
        let want: [u8; 32] = h.finalize().into();
        for (agent_id, at) in [("agent-1", 1_700_000_000_123), ("", 0), ("a", -5)] {
            let stored = StoredBatch { agent_id: agent_id.into(), received_at_ms: at, batch: Some(b.clone()) };
            let encoded = encode_entry_of(agent_id, at, &b);
            assert_eq!(encoded.entry, encode_entry(&stored), "{agent_id:?} {at}");
            assert_eq!(encoded.digest, want, "{agent_id:?} {at}");
            assert_eq!(encoded.batch_bytes, b.encoded_len());
        }
    }

    #[test]
    fn corrupt_entries_are_detected() {
        let stored = StoredBatch { agent_id: "a".into(), received_at_ms: 1, batch: Some(batch("x", 1)) };
        let mut bytes = encode_entry(&stored);
        assert_eq!(decode_entry(&bytes).expect("decodes"), stored);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(decode_entry(&bytes), Err(Error::Corrupt(_))));
        assert!(matches!(decode_entry(&[]), Err(Error::Corrupt(_))));
    }

    /// `message` sealed with `version` and a valid checksum, uncompressed.
    fn raw_entry(version: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![version];
        out.extend_from_slice(&crc32fast::hash(message).to_le_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn the_wal_stays_near_its_limit_and_nothing_is_lost() {
        // Incompressible records, 6 MiB in all, against a 1 MiB limit.
        let dir = tempfile::tempdir().expect("tempdir");
        let limit = 1u64 << 20;
        let batches: Vec<ReportBatch> = (0..48)
            .map(|i| {
                let mut b = batch(&format!("b{i}"), 64);
                for r in &mut b.records {
                    r.domain = hex::encode(rand::random::<[u8; 1024]>());
                }
                b
            })
            .collect();
        {
            let log = DurableLog::open_with(dir.path(), &DurableLog::options_with(limit)).expect("open");
            for b in &batches {
                log.append("agent", b, 1).expect("append");
            }
            // Flushes run in the background: the old files go shortly after.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while log.wal_bytes() > 3 * limit && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert!(log.wal_bytes() <= 3 * limit, "{} bytes of WAL", log.wal_bytes());
            assert!(log.wal_bytes() > 0);
        }
        let log = DurableLog::open(dir.path()).expect("reopen");
        let (_, tail) = log.tail().expect("tail");
        assert_eq!(tail.len(), batches.len());
        for (stored, sent) in tail.iter().zip(&batches) {
            assert_eq!(stored.batch.as_ref(), Some(sent));
        }
    }

    #[test]
    fn entries_are_compressed_and_earlier_plain_entries_still_read() {
        let mut b = batch("b1", 1000);
        for r in &mut b.records {
            r.domain = "telemetry.vendor.example.com".into();
            r.dst_ip = "203.0.113.7".into();
        }
        let stored = StoredBatch { agent_id: "agent-1".into(), received_at_ms: 5, batch: Some(b.clone()) };
        let entry = encode_entry(&stored);
        assert_eq!(entry[0], ENTRY_VERSION);
        assert!(
            entry.len() * 4 < stored.encoded_len(),
            "{} bytes for a {}-byte message",
            entry.len(),
            stored.encoded_len()
        );
        assert_eq!(decode_entry(&entry).expect("compressed"), stored);

        // A log written by an earlier release holds plain entries: they are
        // read, from the log itself too, and flushed like new ones.
        let plain = raw_entry(ENTRY_VERSION_PLAIN, &stored.encode_to_vec());
        assert_eq!(decode_entry(&plain).expect("plain"), stored);
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = DurableLog::open(dir.path()).expect("open");
            log.db()
                .expect("db")
                .put_cf(cf(&log.db().expect("db"), CF_BATCHES).expect("cf"), 1u64.to_be_bytes(), &plain)
                .expect("put");
        }
        let log = DurableLog::open(dir.path()).expect("reopen");
        log.append("agent-2", &batch("b2", 3), 6).expect("append");
        let (_, tail) = log.tail().expect("tail");
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0], stored);
        assert_eq!(tail[1].batch.as_ref().map(|b| b.batch_id.as_str()), Some("b2"));
    }

    #[test]
    fn hostile_compressed_entries_are_corrupt_not_a_panic_or_a_huge_allocation() {
        let stored = StoredBatch { agent_id: "a".into(), received_at_ms: 1, batch: Some(batch("x", 10)) };
        let entry = encode_entry(&stored);
        let body = &entry[ENTRY_HEADER..];
        // A stated length of 4 GiB on a few bytes: refused before allocating.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&body[4..]);
        // Truncated, garbage after a plausible length, no length at all.
        let truncated = body[..body.len() / 2].to_vec();
        let mut garbage = body[..4].to_vec();
        garbage.extend_from_slice(&[0xff; 40]);
        for (what, message) in [("huge", huge), ("truncated", truncated), ("garbage", garbage), ("short", vec![1, 2])] {
            let e = decode_entry(&raw_entry(ENTRY_VERSION, &message)).expect_err(what);
            assert!(matches!(e, Error::Corrupt(_)), "{what}: {e}");
        }
        let e = decode_entry(&raw_entry(9, b"x")).expect_err("unknown format");
        assert!(e.to_string().contains("format 9"), "{e}");
    }

    #[test]
    fn sql_tokens_expire_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hash = [7u8; 32];
        {
            let log = DurableLog::open(dir.path()).expect("open");
            log.put_sql_token(&hash, "alice", 100).expect("put");
        }
        let log = DurableLog::open(dir.path()).expect("reopen");
        assert_eq!(log.sql_token(&hash, 100).expect("get"), Some("alice".to_string()));
        assert_eq!(log.sql_token(&hash, 101).expect("expired"), None);
        assert_eq!(log.sql_token(&[8u8; 32], 1).expect("unknown"), None);

        log.put_sql_token(&[9u8; 32], "bob", 200).expect("put");
        let listed = log.sql_tokens().expect("list");
        assert_eq!(listed, vec![(hash, "alice".to_string(), 100), ([9u8; 32], "bob".to_string(), 200)]);
        log.delete_sql_tokens(&[hash]).expect("delete");
        drop(log);
        let log = DurableLog::open(dir.path()).expect("reopen");
        assert_eq!(log.sql_token(&hash, 1).expect("revoked"), None);
        assert_eq!(log.sql_token(&[9u8; 32], 1).expect("kept"), Some("bob".to_string()));
    }
}
