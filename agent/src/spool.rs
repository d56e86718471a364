//! The spool: a durable, bounded queue of batches between capture and
//! upload. A batch enters the spool before any attempt to send it and
//! leaves only after the collector acknowledged it, so neither a crash of
//! the agent nor an unreachable collector loses what was collected.
//!
//! # On-disk format (version 1)
//!
//! The spool is a directory (`spool/` in the agent's state directory):
//!
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: append-only segment files, named by a
//!   20-digit sequence number. Each starts with the 8-byte marker
//!   `LWSPOOL` followed by the format version byte `1`, then entries:
//!
//!   ```text
//!   len: u32 LE | records: u32 LE | crc: u32 LE | payload: len bytes
//!   ```
//!
//!   `crc` is the CRC-32 (IEEE) of `records` (4 bytes LE) followed by the
//!   payload, `records` is the number of flow records in the payload (for
//!   status and drop counts), and the payload is one encoded
//!   `leakwatch.v1.ReportBatch`. Entries are never empty.
//! - `head`: JSON with the position (segment, offset) of the oldest entry
//!   not yet acknowledged, and the spool's counters (entries dropped when
//!   full, torn entries dropped at recovery). Replaced atomically (write,
//!   fsync, rename).
//! - `lock`: held (advisory lock) by the one process that has the spool open
//!   for writing.
//!
//! # Durability and bounds
//!
//! [`Spool::append`] writes all its entries and fsyncs once (batches of
//! entries share one fsync) before it returns. [`Spool::ack_through`]
//! advances and persists the head, deleting segments that hold only
//! acknowledged entries. At most `max_bytes` (default 64 MiB) of entries
//! (headers included) are queued: when an append would exceed it, the
//! oldest entries are dropped first and counted. Disk use can exceed the
//! bound by the acknowledged part of one segment.
//!
//! # Recovery
//!
//! [`Spool::open`] reads every segment from the head on and checks each
//! entry's length and checksum. The first entry that fails (a write torn
//! by a crash or power loss) ends that segment: the rest of it is cut off
//! and counted in `torn_entries`. Appends after a reopen go to a new
//! segment. A crash between an entry's delivery and the head's update
//! sends that batch again; the collector answers `duplicate` for it (batch
//! ids are stable), so storage stays exactly-once.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_error};

/// Segment marker: `LWSPOOL` and the format version.
const MAGIC: &[u8; 8] = b"LWSPOOL\x01";
/// Bytes of an entry's header.
pub const ENTRY_HEADER: u64 = 12;
/// Default bound on queued bytes.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Bounds of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolConfig {
    /// At most this many bytes of entries (headers included) are queued.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self::with_max_bytes(DEFAULT_MAX_BYTES)
    }
}

impl SpoolConfig {
    /// A spool bounded at `max_bytes`, with segments of an eighth of it
    /// (between 64 KiB and 8 MiB).
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self { max_bytes, segment_bytes: (max_bytes / 8).clamp(64 * 1024, 8 * 1024 * 1024) }
    }
}

/// Position of an entry: segment number and byte offset. Orders entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Segment sequence number.
    pub segment: u64,
    /// Byte offset of the entry's header in the segment.
    pub offset: u64,
}

/// One queued entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where it is; pass to [`Spool::ack_through`] once delivered.
    pub position: Position,
    /// Flow records in the payload.
    pub records: u32,
    /// The payload (an encoded `ReportBatch`).
    pub payload: Vec<u8>,
}

/// Counters kept with the head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolCounters {
    /// Entries dropped, oldest first, because the spool was full.
    pub dropped_entries: u64,
    /// Records in those entries.
    pub dropped_records: u64,
    /// Torn or corrupt entries cut off at recovery.
    pub torn_entries: u64,
    /// Entries acknowledged by the collector and removed.
    pub acked_entries: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Head {
    position: Position,
    #[serde(flatten)]
    counters: SpoolCounters,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    position: Position,
    len: u32,
    records: u32,
}

impl Meta {
    fn size(&self) -> u64 {
        ENTRY_HEADER + u64::from(self.len)
    }
}

/// What a spool holds, read without opening it for writing (see
/// [`Spool::inspect`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolSummary {
    /// Queued entries (batches).
    pub entries: u64,
    /// Records in them.
    pub records: u64,
    /// Their bytes, headers included.
    pub bytes: u64,
    /// The spool's counters.
    pub counters: SpoolCounters,
}

/// An open spool (the only writer of its directory).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    queue: VecDeque<Meta>,
    queued_bytes: u64,
    queued_records: u64,
    /// Segment numbers present on disk, oldest first.
    segments: VecDeque<u64>,
    /// The segment appends go to and its size; created on first append.
    writer: Option<(u64, File, u64)>,
    head: Head,
    _lock: File,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn checksum(records: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&records.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else { continue };
        if let Ok(seq) = stem.parse::<u64>() {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// Reads a segment's valid entries from `from` on. Returns them and, when
/// the segment ends in a torn or corrupt entry, the offset where the valid
/// part ends.
fn scan_segment(path: &Path, seq: u64, from: u64) -> Result<(Vec<Meta>, Option<u64>)> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Error::State {
            path: path.to_path_buf(),
            reason: "not a leakwatch spool segment (version 1 marker missing)".into(),
        });
    }
    let mut metas = Vec::new();
    let mut offset = from.max(MAGIC.len() as u64) as usize;
    while offset < bytes.len() {
        let header = bytes.get(offset..offset + ENTRY_HEADER as usize);
        let parsed = header.and_then(|h| {
            let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let (len, records, crc) = (word(0), word(4), word(8));
            let start = offset + ENTRY_HEADER as usize;
            let payload = bytes.get(start..start.checked_add(len as usize)?)?;
            (len > 0 && checksum(records, payload) == crc).then_some((len, records))
        });
        match parsed {
            Some((len, records)) => {
                metas.push(Meta { position: Position { segment: seq, offset: offset as u64 }, len, records });
                offset += ENTRY_HEADER as usize + len as usize;
            }
            None => return Ok((metas, Some(offset as u64))),
        }
    }
    Ok((metas, None))
}

fn read_head(dir: &Path) -> Result<Option<Head>> {
    let path = dir.join("head");
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::State { path, reason: format!("unreadable spool head: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { path, source: e }),
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovering after a crash.
    /// Fails when another process has it open.
    pub fn open(dir: &Path, config: SpoolConfig) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(Error::State {
                path: dir.to_path_buf(),
                reason: "the spool is in use by another leakwatch-agent process (run, import or flush); \
                         stop it or wait for it to finish"
                    .into(),
            });
        }
        let mut head = read_head(dir)?
            .unwrap_or(Head { position: Position { segment: 0, offset: 0 }, counters: SpoolCounters::default() });
        let mut queue = VecDeque::new();
        let mut segments = VecDeque::new();
        for seq in list_segments(dir)? {
            let path = segment_path(dir, seq);
            if seq < head.position.segment {
                // Fully acknowledged before a crash stopped its deletion.
                fs::remove_file(&path).map_err(io_error(&path))?;
                continue;
            }
            let from = if seq == head.position.segment { head.position.offset } else { 0 };
            let (metas, torn_at) = match scan_segment(&path, seq, from) {
                Ok(found) => found,
                // A segment whose marker was torn before anything else was
                // written to it: nothing in it was ever acknowledged.
                Err(_) if fs::metadata(&path).map(|m| m.len() < MAGIC.len() as u64).unwrap_or(false) => {
                    fs::remove_file(&path).map_err(io_error(&path))?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(at) = torn_at {
                head.counters.torn_entries += 1;
                let file = OpenOptions::new().write(true).open(&path).map_err(io_error(&path))?;
                file.set_len(at).and_then(|()| file.sync_all()).map_err(io_error(&path))?;
                tracing::warn!(segment = %path.display(), offset = at, "Spool: cut off a torn entry");
            }
            queue.extend(metas);
            segments.push_back(seq);
        }
        let mut spool = Self {
            dir: dir.to_path_buf(),
            config,
            queued_bytes: queue.iter().map(Meta::size).sum(),
            queued_records: queue.iter().map(|m| u64::from(m.records)).sum(),
            queue,
            segments,
            writer: None,
            head,
            _lock: lock,
        };
        if let Some(first) = spool.queue.front() {
            spool.head.position = first.position;
        }
        // A bound lowered since the last run applies at once.
        if spool.drop_oldest_until_fits(0) > 0 || spool.head.counters.torn_entries > 0 {
            spool.write_head()?;
        }
        Ok(spool)
    }

    /// What the spool in `dir` holds, without modifying it or taking its
    /// lock (safe while another process writes it).
    pub fn inspect(dir: &Path) -> Result<SpoolSummary> {
        if !dir.exists() {
            return Ok(SpoolSummary::default());
        }
        let head = read_head(dir)?;
        let mut summary = SpoolSummary { counters: head.map(|h| h.counters).unwrap_or_default(), ..Default::default() };
        for seq in list_segments(dir)? {
            let from = match head {
                Some(h) if seq < h.position.segment => continue,
                Some(h) if seq == h.position.segment => h.position.offset,
                _ => 0,
            };
            if let Ok((metas, _)) = scan_segment(&segment_path(dir, seq), seq, from) {
                for m in metas {
                    summary.entries += 1;
                    summary.records += u64::from(m.records);
                    summary.bytes += m.size();
                }
            }
        }
        Ok(summary)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queued entries.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// What the spool holds.
    pub fn summary(&self) -> SpoolSummary {
        SpoolSummary {
            entries: self.queue.len() as u64,
            records: self.queued_records,
            bytes: self.queued_bytes,
            counters: self.head.counters,
        }
    }

    fn drop_oldest_until_fits(&mut self, incoming: u64) -> u64 {
        let mut dropped = 0;
        while self.queued_bytes + incoming > self.config.max_bytes {
            let Some(oldest) = self.queue.pop_front() else { break };
            self.queued_bytes -= oldest.size();
            self.queued_records -= u64::from(oldest.records);
            self.head.counters.dropped_entries += 1;
            self.head.counters.dropped_records += u64::from(oldest.records);
            dropped += 1;
        }
        dropped
    }

    /// Appends entries (`(records, payload)`), then fsyncs once. Drops the
    /// oldest entries when the bound would be exceeded; returns how many.
    /// An entry larger than the whole bound, or an empty one, is refused
    /// before anything is written.
    pub fn append(&mut self, entries: &[(u32, Vec<u8>)]) -> Result<u64> {
        for (_, payload) in entries {
            let size = ENTRY_HEADER + payload.len() as u64;
            if payload.is_empty() || size > self.config.max_bytes || payload.len() > u32::MAX as usize {
                return Err(Error::InvalidArgument {
                    field: "spool entry".into(),
                    reason: format!(
                        "{size} bytes; entries must be non-empty and at most the spool's bound of {} bytes",
                        self.config.max_bytes
                    ),
                });
            }
        }
        let mut dropped = 0;
        let mut touched_segments = false;
        let mut pending: Vec<Meta> = Vec::with_capacity(entries.len());
        let mut buf: Vec<u8> = Vec::new();
        for (records, payload) in entries {
            let size = ENTRY_HEADER + payload.len() as u64;
            let rotate = match &self.writer {
                None => true,
                Some((_, _, len)) => *len > MAGIC.len() as u64 && *len + size > self.config.segment_bytes,
            };
            if rotate {
                self.write_out(&mut buf)?;
                self.start_segment()?;
                touched_segments = true;
            }
            let (seq, _, len) = self.writer.as_mut().ok_or_else(writer_gone)?;
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&records.to_le_bytes());
            buf.extend_from_slice(&checksum(*records, payload).to_le_bytes());
            buf.extend_from_slice(payload);
            pending.push(Meta {
                position: Position { segment: *seq, offset: *len },
                len: payload.len() as u32,
                records: *records,
            });
            *len += size;
        }
        self.write_out(&mut buf)?;
        if touched_segments {
            sync_dir(&self.dir)?;
        }
        for meta in pending {
            dropped += self.drop_oldest_until_fits(meta.size());
            self.queued_bytes += meta.size();
            self.queued_records += u64::from(meta.records);
            self.queue.push_back(meta);
        }
        if dropped > 0 {
            tracing::warn!(dropped, max_bytes = self.config.max_bytes, "Spool full: dropped the oldest batches");
            self.advance_head()?;
        }
        Ok(dropped)
    }

    /// Writes `buf` to the write segment and fsyncs it.
    fn write_out(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        if let Some((seq, file, _)) = &mut self.writer {
            let path = segment_path(&self.dir, *seq);
            file.write_all(buf).and_then(|()| file.sync_data()).map_err(io_error(&path))?;
        }
        buf.clear();
        Ok(())
    }

    fn start_segment(&mut self) -> Result<()> {
        let seq = self.segments.back().map_or(self.head.position.segment, |s| s + 1);
        let path = segment_path(&self.dir, seq);
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_error(&path))?;
        file.write_all(MAGIC).map_err(io_error(&path))?;
        self.segments.push_back(seq);
        self.writer = Some((seq, file, MAGIC.len() as u64));
        Ok(())
    }

    /// The oldest `n` queued entries, oldest first.
    pub fn peek(&self, n: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(n.min(self.queue.len()));
        let mut open: Option<(u64, File)> = None;
        for meta in self.queue.iter().take(n) {
            let path = segment_path(&self.dir, meta.position.segment);
            if open.as_ref().map(|(s, _)| *s) != Some(meta.position.segment) {
                open = Some((meta.position.segment, File::open(&path).map_err(io_error(&path))?));
            }
            let Some((_, file)) = &mut open else { continue };
            let mut bytes = vec![0u8; meta.size() as usize];
            file.seek(SeekFrom::Start(meta.position.offset))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(io_error(&path))?;
            let payload = bytes.split_off(ENTRY_HEADER as usize);
            if checksum(meta.records, &payload).to_le_bytes() != bytes[8..12] {
                return Err(Error::State {
                    path,
                    reason: format!("entry at offset {} changed on disk (checksum mismatch)", meta.position.offset),
                });
            }
            out.push(Entry { position: meta.position, records: meta.records, payload });
        }
        Ok(out)
    }

    /// Removes every queued entry at or before `position` (the collector
    /// acknowledged them) and persists the new head.
    pub fn ack_through(&mut self, position: Position) -> Result<()> {
        let mut acked = 0;
        while let Some(front) = self.queue.front() {
            if front.position > position {
                break;
            }
            self.queued_bytes -= front.size();
            self.queued_records -= u64::from(front.records);
            self.queue.pop_front();
            acked += 1;
        }
        if acked > 0 {
            self.head.counters.acked_entries += acked;
            self.advance_head()?;
        }
        Ok(())
    }

    /// Persists the head at the oldest queued entry (or the end of the
    /// write segment) and deletes segments before it.
    fn advance_head(&mut self) -> Result<()> {
        self.head.position = match (self.queue.front(), &self.writer) {
            (Some(first), _) => first.position,
            (None, Some((seq, _, len))) => Position { segment: *seq, offset: *len },
            (None, None) => Position { segment: self.segments.back().map_or(0, |s| s + 1), offset: 0 },
        };
        self.write_head()?;
        let mut removed = false;
        while let Some(&seq) = self.segments.front() {
            if seq >= self.head.position.segment {
                break;
            }
            let path = segment_path(&self.dir, seq);
            fs::remove_file(&path).map_err(io_error(&path))?;
            self.segments.pop_front();
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn write_head(&self) -> Result<()> {
        let path = self.dir.join("head");
        let bytes = serde_json::to_vec(&self.head)
            .map_err(|e| Error::State { path: path.clone(), reason: format!("cannot encode the spool head: {e}") })?;
        crate::state::write_private(&path, &bytes)?;
        sync_dir(&self.dir)
    }
}

fn writer_gone() -> Error {
    Error::State { path: PathBuf::new(), reason: "spool writer missing after rotation".into() }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    /// The model: a queue of `(records, payload)` with the same bound.
    #[derive(Debug, Default)]
    struct Model {
        queue: VecDeque<(u32, Vec<u8>)>,
        dropped: u64,
        torn: u64,
    }

    impl Model {
        fn bytes(&self) -> u64 {
            self.queue.iter().map(|(_, p)| ENTRY_HEADER + p.len() as u64).sum()
        }

        fn append(&mut self, max: u64, entries: &[(u32, Vec<u8>)]) -> bool {
            if entries.iter().any(|(_, p)| p.is_empty() || ENTRY_HEADER + p.len() as u64 > max) {
                return false;
            }
            for e in entries {
                while self.bytes() + ENTRY_HEADER + e.1.len() as u64 > max {
                    self.queue.pop_front();
                    self.dropped += 1;
                }
                self.queue.push_back(e.clone());
            }
            true
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<(u32, Vec<u8>)>),
        /// Peek this many and acknowledge them.
        Deliver(usize),
        /// Peek this many, "send" them, but crash before the ack.
        Peek(usize),
        Reopen,
        /// A crash in the middle of an append: these bytes reach the newest
        /// segment, the append never returned.
        CrashTorn(Vec<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let entry = (0u32..2000, proptest::collection::vec(any::<u8>(), 0..300));
        prop_oneof![
            4 => proptest::collection::vec(entry, 1..6).prop_map(Op::Append),
            3 => (0usize..5).prop_map(Op::Deliver),
            1 => (0usize..5).prop_map(Op::Peek),
            1 => Just(Op::Reopen),
            1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Op::CrashTorn),
        ]
    }

    fn check(spool: &Spool, model: &Model) {
        let all = spool.peek(usize::MAX).expect("peek all");
        let got: Vec<(u32, Vec<u8>)> = all.into_iter().map(|e| (e.records, e.payload)).collect();
        let want: Vec<(u32, Vec<u8>)> = model.queue.iter().cloned().collect();
        assert_eq!(got, want);
        let s = spool.summary();
        assert_eq!(s.entries, model.queue.len() as u64);
        assert_eq!(s.bytes, model.bytes());
        assert_eq!(s.records, model.queue.iter().map(|(r, _)| u64::from(*r)).sum::<u64>());
        assert_eq!(s.counters.dropped_entries, model.dropped);
        assert_eq!(s.counters.torn_entries, model.torn);
        assert!(s.bytes <= spool.config.max_bytes);
        let inspected = Spool::inspect(spool.dir()).expect("inspect");
        assert_eq!((inspected.entries, inspected.records, inspected.bytes), (s.entries, s.records, s.bytes));
    }

    const CONFIG: SpoolConfig = SpoolConfig { max_bytes: 2000, segment_bytes: 400 };

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// The spool behaves like an in-memory bounded queue, across clean
        /// reopens and crashes that tear an append.
        #[test]
        fn spool_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("spool");
            let mut spool = Spool::open(&path, CONFIG).expect("open");
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Append(entries) => {
                        let accepted = model.append(CONFIG.max_bytes, &entries);
                        prop_assert_eq!(spool.append(&entries).is_ok(), accepted);
                    }
                    Op::Deliver(n) => {
                        let peeked = spool.peek(n).expect("peek");
                        if let Some(last) = peeked.last() {
                            spool.ack_through(last.position).expect("ack");
                        }
                        for _ in 0..peeked.len() {
                            model.queue.pop_front();
                        }
                    }
                    Op::Peek(n) => {
                        let peeked = spool.peek(n).expect("peek");
                        prop_assert_eq!(peeked.len(), n.min(model.queue.len()));
                        drop(spool);
                        spool = Spool::open(&path, CONFIG).expect("reopen after crash");
                    }
                    Op::Reopen => {
                        drop(spool);
                        spool = Spool::open(&path, CONFIG).expect("reopen");
                    }
                    Op::CrashTorn(garbage) => {
                        let newest = list_segments(&path).expect("list").last().copied();
                        drop(spool);
                        if let Some(seq) = newest {
                            let mut f = OpenOptions::new().append(true).open(segment_path(&path, seq)).expect("seg");
                            f.write_all(&garbage).expect("garbage");
                            model.torn += 1;
                        }
                        spool = Spool::open(&path, CONFIG).expect("reopen after torn write");
                    }
                }
                check(&spool, &model);
            }
        }
    }

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Spool::open(dir.path(), SpoolConfig::default()).expect("open");
        let err = Spool::open(dir.path(), SpoolConfig::default()).expect_err("locked");
        assert!(err.to_string().contains("in use by another leakwatch-agent"), "{err}");
    }

    #[test]
    fn oversized_and_empty_entries_are_refused_naming_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), CONFIG).expect("open");
        let err = spool.append(&[(1, vec![0; 2000])]).expect_err("too big");
        assert!(err.to_string().contains("2012 bytes") && err.to_string().contains("2000"), "{err}");
        assert!(spool.append(&[(1, Vec::new())]).is_err());
        assert!(spool.is_empty());
    }

    #[test]
    fn a_corrupted_entry_ends_its_segment_and_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), SpoolConfig::default()).expect("open");
        spool.append(&[(1, b"one".to_vec()), (2, b"two".to_vec()), (3, b"three".to_vec())]).expect("append");
        drop(spool);
        let seg = segment_path(dir.path(), list_segments(dir.path()).expect("list")[0]);
        let mut bytes = fs::read(&seg).expect("read");
        // Flip a payload byte of the second entry.
        let second = MAGIC.len() + ENTRY_HEADER as usize + 3 + ENTRY_HEADER as usize;
        bytes[second] ^= 0xff;
        fs::write(&seg, bytes).expect("write");
        let spool = Spool::open(dir.path(), SpoolConfig::default()).expect("reopen");
        let left: Vec<_> = spool.peek(10).expect("peek").into_iter().map(|e| e.payload).collect();
        assert_eq!(left, vec![b"one".to_vec()]);
        assert_eq!(spool.summary().counters.torn_entries, 1);
    }
}
