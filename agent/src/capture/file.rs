//! Reading pcap and pcapng files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use pcap_parser::pcapng::Block;
use pcap_parser::{Linktype, PcapBlockOwned, PcapError, create_reader};
use std::io::{IsTerminal as _, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{Error, Result};

/// The largest block (one packet record) a capture may hold. Real snap
/// lengths stay at or below 256 KiB; a record header claiming more than this
/// is taken as damage, the read stops there and what came before is kept.
pub const MAX_BLOCK_BYTES: usize = 4 * 1024 * 1024;

/// One captured frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Capture timestamp, microseconds since the Unix epoch; `None` for
    /// pcapng simple packet blocks, which carry no timestamp.
    pub ts_us: Option<i64>,
    /// Link type of the interface the frame was captured on.
    pub linktype: i32,
    /// The captured bytes (possibly shorter than the frame on the wire).
    pub data: &'a [u8],
}

/// What a capture read saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames handed to the caller.
    pub frames: u64,
    /// Frames or blocks skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Why the read stopped before the end of the file, if it did.
    pub stopped_by: Option<String>,
    /// Times capture time went back by more than [`TIME_BACK_US`] (files
    /// joined end to end, as `mergecap -a` writes them).
    pub time_went_back: u64,
}

/// A step back in capture time larger than this is a join of two captures
/// (a minute: the idle timeout of UDP; packets merged from two interfaces
/// are out of order by far less).
pub const TIME_BACK_US: i64 = 60_000_000;

impl CaptureStats {
    /// Counts one skipped item under `reason`.
    pub fn skip(&mut self, reason: impl Into<String>) {
        *self.skipped.entry(reason.into()).or_default() += 1;
    }

    /// Total skipped items.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// "capture time went back N times ...", or `None` when it never did.
    pub fn time_went_back_summary(&self) -> Option<String> {
        (self.time_went_back > 0).then(|| {
            format!(
                "capture time went back {} time{} (captures joined end to end?): each time the open connections were ended",
                self.time_went_back,
                if self.time_went_back == 1 { "" } else { "s" }
            )
        })
    }

    /// "N skipped: n1 reason1, n2 reason2", or `None` when nothing was skipped.
    pub fn skipped_summary(&self) -> Option<String> {
        let total = self.skipped_total();
        (total > 0).then(|| {
            let reasons: Vec<String> = self.skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
            format!("{total} skipped: {}", reasons.join(", "))
        })
    }
}

struct Interface {
    linktype: i32,
    /// Timestamp units per second.
    resolution: u64,
    offset: i64,
}

/// Reads every frame of the capture at `path` and hands it to `on_frame`.
///
/// Fails only when the file cannot be opened or is not a pcap/pcapng file;
/// damage later in the file ends the read with `stopped_by` set.
pub fn read_capture_file(path: &Path, on_frame: impl FnMut(Frame<'_>, &mut CaptureStats)) -> Result<CaptureStats> {
    read_capture_file_in(path, READ_AHEAD_FROM, READ_AHEAD_CHUNK, on_frame)
}

/// [`read_capture_file`], read ahead on a second thread in chunks of
/// `chunk` bytes when the file holds at least `read_ahead_from`.
fn read_capture_file_in(
    path: &Path,
    read_ahead_from: u64,
    chunk: usize,
    on_frame: impl FnMut(Frame<'_>, &mut CaptureStats),
) -> Result<CaptureStats> {
    let file = File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    if total < read_ahead_from {
        return read_frames(path, total, file, on_frame);
    }
    // A second thread reads the file ahead (the copy out of the page cache
    // is a good part of the cost of a large capture) while this one parses.
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD_CHUNKS);
        let (back_tx, back_rx) = std::sync::mpsc::sync_channel(2);
        s.spawn(move || read_ahead_in(file, chunk, &tx, &back_rx));
        let input = ReadAhead { chunks: rx, back: back_tx, current: Vec::new(), len: 0, pos: 0, pending_error: None };
        read_frames(path, total, input, on_frame)
    })
}

/// Files at least this large are read ahead on a second thread (a smaller
/// file is read in a fraction of a second, not worth the thread's memory).
const READ_AHEAD_FROM: u64 = 128 << 20;
/// Bytes per read-ahead chunk.
const READ_AHEAD_CHUNK: usize = 1 << 20;
/// Chunks read ahead at most.
const READ_AHEAD_CHUNKS: usize = 4;

/// A chunk of the file and how much of it holds data, or the read error.
type Chunk = std::io::Result<(Vec<u8>, usize)>;

/// Reads `file` in chunks of `chunk` bytes into `chunks` until its end, an error, or the
/// reader's end of the channel is gone; reuses the chunks sent `back`.
fn read_ahead_in(
    mut file: File,
    chunk: usize,
    chunks: &std::sync::mpsc::SyncSender<Chunk>,
    back: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    loop {
        let mut buf = back.try_recv().unwrap_or_else(|_| vec![0; chunk.max(1)]);
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = chunks.send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 || chunks.send(Ok((buf, filled))).is_err() {
            return;
        }
    }
}

/// The reading end of [`read_ahead_in`].
struct ReadAhead {
    chunks: std::sync::mpsc::Receiver<Chunk>,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
    pos: usize,
    pending_error: Option<std::io::Error>,
}

impl Read for ReadAhead {
    /// Fills `out` across chunks, as a read of the file itself would: short
    /// only at the end of the file (the parser takes a short read for a
    /// file that ends in the middle of a record).
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < out.len() {
            if self.pos == self.len {
                let used = std::mem::take(&mut self.current);
                if !used.is_empty() {
                    let _ = self.back.try_send(used);
                }
                match self.chunks.recv() {
                    Ok(Ok((chunk, len))) => (self.current, self.len, self.pos) = (chunk, len, 0),
                    Ok(Err(e)) if n == 0 => return Err(e),
                    // What was read first; the error comes with the next read.
                    Ok(Err(e)) => {
                        self.pending_error = Some(e);
                        break;
                    }
                    // The reading thread is done: the end of the file.
                    Err(_) => break,
                }
                continue;
            }
            let take = (out.len() - n).min(self.len - self.pos);
            out[n..n + take].copy_from_slice(&self.current[self.pos..self.pos + take]);
            self.pos += take;
            n += take;
        }
        if n == 0
            && let Some(e) = self.pending_error.take()
        {
            return Err(e);
        }
        Ok(n)
    }
}

/// Parses the frames of `input` (the file at `path`, `total` bytes long).
fn read_frames<R: Read + Send>(
    path: &Path,
    total: u64,
    input: R,
    mut on_frame: impl FnMut(Frame<'_>, &mut CaptureStats),
) -> Result<CaptureStats> {
    let read_bytes = Arc::new(AtomicU64::new(0));
    let mut progress = Progress::new(path, total);
    let counted = CountingReader { inner: input, count: read_bytes.clone() };
    let mut stats = CaptureStats::default();
    let mut reader = match create_reader(64 * 1024, counted) {
        Ok(reader) => reader,
        Err(PcapError::Eof) => {
            return Err(Error::NotACapture { path: path.to_path_buf(), reason: "the file is empty".into() });
        }
        Err(e) => {
            return Err(Error::NotACapture { path: path.to_path_buf(), reason: format!("{e:?}") });
        }
    };
    let mut legacy_linktype: Option<(i32, bool)> = None;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut buffer_size = 64 * 1024;
    let mut stalled = false;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                stalled = false;
                if stats.frames % 4096 == 0 {
                    progress.tick(read_bytes.load(Ordering::Relaxed));
                }
                match block {
                    PcapBlockOwned::LegacyHeader(header) => {
                        legacy_linktype = Some((header.network.0, header.is_nanosecond_precision()));
                    }
                    PcapBlockOwned::Legacy(packet) => {
                        let (linktype, nanos) = legacy_linktype.unwrap_or((Linktype::ETHERNET.0, false));
                        let frac = if nanos { i64::from(packet.ts_usec) / 1000 } else { i64::from(packet.ts_usec) };
                        let ts_us = i64::from(packet.ts_sec) * 1_000_000 + frac;
                        stats.frames += 1;
                        on_frame(Frame { ts_us: Some(ts_us), linktype, data: packet.data }, &mut stats);
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(Interface {
                            linktype: idb.linktype.0,
                            resolution: idb.ts_resolution().unwrap_or(1_000_000),
                            offset: idb.ts_offset(),
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        match usize::try_from(epb.if_id).ok().and_then(|i| interfaces.get(i)) {
                            Some(iface) => {
                                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                let ts_us = ticks_to_us(ticks, iface.resolution) + iface.offset * 1_000_000;
                                let data = &epb.data[..(epb.caplen as usize).min(epb.data.len())];
                                stats.frames += 1;
                                on_frame(Frame { ts_us: Some(ts_us), linktype: iface.linktype, data }, &mut stats);
                            }
                            None => stats.skip("packet for an undeclared pcapng interface"),
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => match interfaces.first() {
                        Some(iface) => {
                            let linktype = iface.linktype;
                            stats.frames += 1;
                            on_frame(Frame { ts_us: None, linktype, data: spb.data }, &mut stats);
                        }
                        None => stats.skip("packet for an undeclared pcapng interface"),
                    },
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if stalled {
                    stats.stopped_by = Some("the file ends in the middle of a record (truncated capture)".into());
                    break;
                }
                stalled = true;
                if reader.refill().is_err() {
                    stats.stopped_by = Some("read error while refilling the buffer".into());
                    break;
                }
            }
            Err(PcapError::BufferTooSmall) => {
                if buffer_size >= MAX_BLOCK_BYTES {
                    stats.stopped_by =
                        Some(format!("a record is larger than the {MAX_BLOCK_BYTES}-byte limit (damaged capture)"));
                    break;
                }
                buffer_size = (buffer_size * 2).min(MAX_BLOCK_BYTES);
                if !reader.grow(buffer_size) {
                    stats.stopped_by = Some("could not grow the read buffer".into());
                    break;
                }
                stalled = false;
            }
            Err(PcapError::UnexpectedEof) => {
                stats.stopped_by = Some("the file ends in the middle of a record (truncated capture)".into());
                break;
            }
            Err(e) => {
                stats.stopped_by = Some(format!("damaged record: {e:?}"));
                break;
            }
        }
    }
    Ok(stats)
}

/// Counts the bytes read from a file, for the progress bar.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A progress bar on stderr for reads that take more than a second; never
/// drawn when stderr is not a terminal.
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    total: u64,
    name: String,
}

impl Progress {
    fn new(path: &Path, total: u64) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self { bar: None, started: Instant::now(), total, name }
    }

    fn tick(&mut self, done: u64) {
        if self.bar.is_none() && self.started.elapsed() > Duration::from_secs(1) && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(self.total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.name.clone());
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn ticks_to_us(ticks: u64, resolution: u64) -> i64 {
    if resolution == 0 {
        return 0;
    }
    let us = u128::from(ticks) * 1_000_000 / u128::from(resolution);
    i64::try_from(us).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_conversion_handles_common_resolutions() {
        assert_eq!(ticks_to_us(1_500_000_000, 1_000_000_000), 1_500_000);
        assert_eq!(ticks_to_us(1_500_000, 1_000_000), 1_500_000);
        assert_eq!(ticks_to_us(7, 0), 0);
    }

    /// A classic pcap of `n` Ethernet frames of varied lengths.
    fn pcap_of(n: usize) -> Vec<u8> {
        // Header: magic, version 2.4, zone and sigfigs, snaplen, Ethernet.
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65_535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for i in 0..n {
            let len = 60 + (i * 37) % 1400;
            out.extend_from_slice(&(1_700_000_000 + i as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend((0..len).map(|j| (i + j) as u8));
        }
        out
    }

    #[test]
    fn reading_ahead_in_chunks_reads_what_a_plain_read_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.pcap");
        let bytes = pcap_of(3000);
        std::fs::write(&path, &bytes).expect("write");
        let frames = |read_ahead: Option<usize>| {
            let mut seen = Vec::new();
            // Read ahead from 0 bytes in chunks of `chunk`, or never.
            let (from, chunk) = read_ahead.map_or((u64::MAX, 1), |chunk| (0, chunk));
            let stats =
                read_capture_file_in(&path, from, chunk, |f, _| seen.push((f.ts_us, f.data.to_vec()))).expect("read");
            (stats, seen)
        };
        let (plain_stats, plain) = frames(None);
        assert_eq!(plain.len(), 3000);
        assert_eq!(plain_stats.stopped_by, None);
        // Chunks that end inside records, smaller and larger than one.
        for chunk in [1, 333, 4096, 100_000] {
            let (stats, seen) = frames(Some(chunk));
            assert_eq!(stats, plain_stats, "chunk {chunk}");
            assert!(seen == plain, "chunk {chunk}: other frames");
        }
        // A file cut inside its last record is reported as truncated either way.
        std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("write");
        let (plain_stats, plain) = frames(None);
        assert_eq!(plain.len(), 2999);
        assert!(plain_stats.stopped_by.as_deref().is_some_and(|s| s.contains("truncated")), "{plain_stats:?}");
        let (stats, seen) = frames(Some(333));
        assert_eq!(stats, plain_stats);
        assert_eq!(seen.len(), 2999);
    }

    #[test]
    fn non_capture_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, b"this is not a capture at all, just text").expect("write");
        let err = read_capture_file(&path, |_, _| {}).expect_err("must fail");
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }
}
