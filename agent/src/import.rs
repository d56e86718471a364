//! The import pipeline: one capture file in, the batches that describe that
//! boot of the device out (capture → flow table → anonymiser → batches).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use leakwatch_proto::codec::{MAX_FUTURE_S, MIN_WINDOW_START_S};
use leakwatch_proto::v1::{BootSource, DeviceInfo, FlowRecord, ReportBatch};
use sha2::{Digest as _, Sha256};

use crate::anonymiser::{self, AnonymiserStats};
use crate::capture::{self, CaptureStats};
use crate::flow::{DnsLookup, FlowSummary, FlowSums, FlowTable, InitiatorCounts};
use crate::state::AgentState;
use crate::{Error, Result, io_error};

/// Records per batch by default.
pub const DEFAULT_BATCH_RECORDS: usize = 1000;

/// What the volunteer declared about the device a capture comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceLabels {
    /// The volunteer's own name for the device; turned into the device
    /// pseudonym, never sent.
    pub device_id: Option<String>,
    /// Vendor, e.g. "Xiaomi".
    pub vendor: String,
    /// Model, e.g. "Redmi 1S".
    pub model: String,
    /// Firmware or OS version.
    pub firmware: String,
    /// Declared consent settings.
    pub consent: BTreeMap<String, String>,
    /// Boot time, microseconds since the Unix epoch; `None` takes the
    /// capture's first packet.
    pub boot_time_us: Option<i64>,
    /// Application name to put on every record, if known.
    pub app: Option<String>,
}

/// The pseudonym of the device `device_label` names, and of the boot a
/// file at `path` holds: the device's with the file's content, so that
/// importing the same file again is the same boot.
pub(crate) fn file_pseudonyms(state: &AgentState, device_label: &str, path: &Path) -> Result<(String, String)> {
    let device_pseudonym = state.pseudonym("device", device_label.as_bytes());
    let mut boot_input = device_pseudonym.clone().into_bytes();
    boot_input.extend_from_slice(&hash_file(path)?);
    let boot_pseudonym = state.pseudonym("boot", &boot_input);
    Ok((device_pseudonym, boot_pseudonym))
}

impl DeviceLabels {
    /// The boot time, microseconds since the Unix epoch, and how it was
    /// obtained: `--boot-time`, else `first_us` (a file's first packet or
    /// connection), else 0.
    pub(crate) fn boot(&self, first_us: Option<i64>) -> (i64, BootSource) {
        match (self.boot_time_us, first_us) {
            (Some(t), _) => (t, BootSource::Explicit),
            (None, Some(t)) => (t, BootSource::FirstPacket),
            (None, None) => (0, BootSource::FirstPacket),
        }
    }

    /// The device block of a batch for these labels.
    pub(crate) fn device_info(
        &self,
        device_pseudonym: String,
        boot_pseudonym: String,
        boot_source: BootSource,
    ) -> DeviceInfo {
        DeviceInfo {
            device_pseudonym,
            vendor: self.vendor.clone(),
            model: self.model.clone(),
            os_version: self.firmware.clone(),
            consent: self.consent.clone().into_iter().collect(),
            boot_pseudonym,
            boot_source: boot_source as i32,
            source: leakwatch_proto::v1::RecordSource::Capture as i32,
        }
    }
}

/// The result of importing one capture.
#[derive(Debug, Clone)]
pub struct ImportedCapture {
    /// The capture file.
    pub path: PathBuf,
    /// What the capture reader saw.
    pub capture: CaptureStats,
    /// What the anonymiser removed.
    pub anonymiser: AnonymiserStats,
    /// Which boot time was used.
    pub boot_source: BootSource,
    /// The batches to send, in order; their ids are stable for this capture
    /// and install, so re-importing it is answered `duplicate`.
    pub batches: Vec<ReportBatch>,
    /// Connections left out because the flow table was full.
    pub untracked_connections: u64,
}

impl ImportedCapture {
    /// What every boot read from `path` shares before its own batches:
    /// what the reader saw and the connections it could not track.
    pub fn of_file(path: &Path, capture: CaptureStats, untracked_connections: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            capture,
            anonymiser: AnonymiserStats::default(),
            boot_source: BootSource::Unspecified,
            batches: Vec::new(),
            untracked_connections,
        }
    }

    /// Records across all batches.
    pub fn record_count(&self) -> usize {
        self.batches.iter().map(|b| b.records.len()).sum()
    }
}

/// A capture read into a flow table.
#[derive(Debug)]
pub struct ReadCapture {
    /// The flows.
    pub table: FlowTable,
    /// What the reader saw.
    pub stats: CaptureStats,
}

/// Reads every packet of `path` into a flow table. Fails when the file is
/// not a capture or nothing in it could be read.
pub fn read_capture(path: &Path) -> Result<ReadCapture> {
    let mut table = FlowTable::new();
    let (stats, _) = read_packets(path, &mut table, |_, _, _| {})?;
    Ok(ReadCapture { table, stats })
}

/// Adds every packet of `path` to `table`, calling `before` with the
/// table, the frame's capture time and whether time went back before it
/// (by more than [`capture::TIME_BACK_US`] from the latest time so far)
/// ahead of each frame. Returns what the reader saw and the first packet's
/// time; fails when the file is not a capture or nothing in it could be
/// read.
fn read_packets(
    path: &Path,
    table: &mut FlowTable,
    mut before: impl FnMut(&mut FlowTable, i64, bool),
) -> Result<(CaptureStats, Option<i64>)> {
    let mut first_ts: Option<i64> = None;
    let mut last_ts = 0i64;
    let mut latest: Option<i64> = None;
    let stats = capture::read_capture_file(path, |frame, stats| {
        let mut went_back = false;
        if let Some(ts) = frame.ts_us {
            first_ts.get_or_insert(ts);
            last_ts = ts;
            went_back = latest.is_some_and(|l| ts < l.saturating_sub(capture::TIME_BACK_US));
            if went_back {
                stats.time_went_back += 1;
                latest = Some(ts);
            } else {
                latest = Some(latest.map_or(ts, |l| l.max(ts)));
            }
        }
        before(table, last_ts, went_back);
        // A PCAPdroid capture names each packet's app in a trailer.
        let app = if frame.linktype == 1 { crate::live::pcapdroid_app(frame.data) } else { None };
        if let Some(mut packet) = capture::decode(frame, last_ts, stats) {
            packet.app = app.as_deref();
            table.add(&packet);
        }
    })?;
    if stats.frames == 0
        && let Some(reason) = &stats.stopped_by
    {
        return Err(Error::NotACapture { path: path.to_path_buf(), reason: reason.clone() });
    }
    Ok((stats, first_ts))
}

/// Capture time between two sweeps of idle connections while a file is
/// read: at least this much, and until [`SWEEP_AFTER_CONNECTIONS`] new
/// connections came in or [`SWEEP_AT_LEAST_EVERY_US`] passed, so that a
/// quiet capture is not swept a thousand times a day for a handful of
/// connections.
const SWEEP_EVERY_US: i64 = 60_000_000;
/// See [`SWEEP_EVERY_US`].
const SWEEP_AFTER_CONNECTIONS: usize = 512;
/// See [`SWEEP_EVERY_US`].
const SWEEP_AT_LEAST_EVERY_US: i64 = 600_000_000;

/// Reads every packet of `path` and hands its connections to `on_done` as
/// they go idle (see [`FlowTable::drain_idle`]), so memory holds the open
/// connections only, however long the capture; the rest at the end.
/// `on_done` gets the table still being filled (open connections, DHCP
/// handshakes since the last sweep) and the finished part, which carries
/// the DNS lookups seen since the last sweep. Returns what the reader saw
/// and the first packet's time.
pub fn read_capture_swept(
    path: &Path,
    mut on_done: impl FnMut(&FlowTable, FlowTable),
) -> Result<(CaptureStats, Option<i64>)> {
    let mut table = FlowTable::new();
    let mut swept_at: Option<i64> = None;
    let mut held_after_sweep = 0;
    let (stats, first_ts) = read_packets(path, &mut table, |table, now, went_back| {
        if went_back {
            // Another capture joined end to end begins: the connections
            // open so far are of the one before, and would never look idle
            // to times before their last packet.
            let done = table.drain_finished(i64::MAX, true);
            on_done(table, done);
            (swept_at, held_after_sweep) = (Some(now), 0);
            return;
        }
        let since = *swept_at.get_or_insert(now);
        let elapsed = now - since;
        if elapsed >= SWEEP_EVERY_US
            && (table.connection_count() >= held_after_sweep + SWEEP_AFTER_CONNECTIONS
                || elapsed >= SWEEP_AT_LEAST_EVERY_US)
        {
            swept_at = Some(now);
            let done = table.drain_idle(now);
            held_after_sweep = table.connection_count();
            on_done(table, done);
        }
    })?;
    let done = table.drain_finished(i64::MAX, true);
    on_done(&table, done);
    Ok((stats, first_ts))
}

/// Reads `path` and builds its batches.
pub fn import_capture(
    path: &Path,
    labels: &DeviceLabels,
    state: &AgentState,
    batch_records: usize,
) -> Result<ImportedCapture> {
    let mut flows = FlowSums::default();
    let mut lookups = Vec::new();
    let mut initiators = InitiatorCounts::default();
    let mut untracked_connections = 0;
    let (stats, first_ts) = read_capture_swept(path, |_, mut done| {
        flows.add(&done, |_, _| Some(()));
        initiators.add(&done);
        lookups.extend(done.take_lookups());
        untracked_connections += done.untracked_connections;
    })?;
    let (boot_us, boot_source) = labels.boot(first_ts);
    let hint = initiators.hint();
    let device_label = match (&labels.device_id, hint.mac, hint.addr) {
        (Some(id), _, _) => format!("label:{id}"),
        (None, Some(mac), _) => format!("mac:{}", hex::encode(mac)),
        (None, None, Some(addr)) => format!("addr:{addr}"),
        (None, None, None) => "unknown".to_string(),
    };
    let (device_pseudonym, boot_pseudonym) = file_pseudonyms(state, &device_label, path)?;

    let mut anon = AnonymiserStats::default();
    untracked_connections += flows.untracked_connections;
    let flows = flows.finish().remove(&()).unwrap_or_default();
    let records = boot_records(&flows, &lookups, boot_us, labels.app.as_deref(), &mut anon);
    drop(flows);
    let device = labels.device_info(device_pseudonym, boot_pseudonym, boot_source);
    let batches = build_batches(records, &device, state, batch_records, None);
    Ok(ImportedCapture {
        path: path.to_path_buf(),
        capture: stats,
        anonymiser: anon,
        boot_source,
        batches,
        untracked_connections,
    })
}

/// One boot's records: its flows and its DNS lookups (merged per name)
/// through the anonymiser; `app` names flows whose capture source did not.
pub(crate) fn boot_records(
    flows: &[FlowSummary],
    lookups: &[DnsLookup],
    boot_us: i64,
    app: Option<&str>,
    anon: &mut AnonymiserStats,
) -> Vec<FlowRecord> {
    let mut records: Vec<FlowRecord> =
        flows.iter().filter_map(|f| anonymiser::anonymise(f, boot_us, app, anon)).collect();
    let lookups = merge_lookups(lookups.iter());
    records.extend(lookups.iter().filter_map(|l| anonymiser::anonymise_lookup(l, boot_us, anon)));
    // Times the collector accepts: a capture dated 1970 (a device without
    // a clock) or 2103 would be refused whole, and its batches dropped.
    let latest = chrono::Utc::now().timestamp() + MAX_FUTURE_S;
    let before = records.len();
    records.retain(|r| (MIN_WINDOW_START_S..=latest).contains(&r.window_start_unix_s));
    anon.dropped_out_of_time += (before - records.len()) as u64;
    records
}

/// Lookups of the same name merged (a device may ask over IPv4 and IPv6);
/// each app's apart, those its DNS server blocked apart from those it
/// answered, and contacts the iOS report tells apart (who started them)
/// apart.
pub(crate) fn merge_lookups<'a>(lookups: impl Iterator<Item = &'a DnsLookup>) -> Vec<DnsLookup> {
    let mut out: Vec<DnsLookup> = Vec::new();
    type Key = (String, Option<String>, bool, crate::flow::LookupContext);
    let mut index: std::collections::HashMap<Key, usize> = std::collections::HashMap::new();
    for l in lookups {
        let key = (l.name.to_ascii_lowercase(), l.app.clone(), l.blocked, l.context);
        match index.get(&key) {
            Some(&i) => {
                let m = &mut out[i];
                m.first_us = m.first_us.min(l.first_us);
                m.last_us = m.last_us.max(l.last_us);
                m.queries += l.queries;
            }
            None => {
                index.insert(key, out.len());
                out.push(l.clone());
            }
        }
    }
    out
}

/// Splits one boot's records (sorted by time since boot here) into
/// batches whose ids are stable for that boot and install (and `part`, the
/// report interval of a live capture).
pub(crate) fn build_batches(
    mut records: Vec<FlowRecord>,
    device: &DeviceInfo,
    state: &AgentState,
    batch_records: usize,
    part: Option<u64>,
) -> Vec<ReportBatch> {
    records.sort_by(|a, b| a.seconds_since_boot.total_cmp(&b.seconds_since_boot));
    let sent_at_unix_ms = chrono::Utc::now().timestamp_millis();
    let per_batch = batch_records.max(1);
    let mut out = Vec::with_capacity(records.len().div_ceil(per_batch));
    let mut rest = records.into_iter();
    // Moves the records into their batches (no second copy of them).
    for i in 0.. {
        let mut chunk: Vec<FlowRecord> = Vec::with_capacity(per_batch.min(rest.len()));
        chunk.extend(rest.by_ref().take(per_batch));
        if chunk.is_empty() {
            break;
        }
        out.push(ReportBatch {
            batch_id: state.pseudonym(
                "batch",
                match part {
                    None => format!("{}:{i}", device.boot_pseudonym),
                    Some(p) => format!("{}:{p}:{i}", device.boot_pseudonym),
                }
                .as_bytes(),
            ),
            sent_at_unix_ms,
            device: Some(device.clone()),
            records: chunk,
        });
    }
    out
}

/// Identifies a capture's content: SHA-256 of its length and of its first
/// and last MiB (which hold the first and last packets' timestamps). Cheap
/// on large captures, and stable, so re-importing a file gives the same
/// boot and batch ids.
pub(crate) fn hash_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    const EDGE: u64 = 1 << 20;
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let len = file.metadata().map_err(io_error(path))?.len();
    let mut hasher = Sha256::new();
    hasher.update(len.to_be_bytes());
    // Streamed into the hasher: the edges are not held in memory.
    std::io::copy(&mut (&mut file).take(EDGE), &mut hasher).map_err(io_error(path))?;
    if len > 2 * EDGE {
        file.seek(SeekFrom::Start(len - EDGE)).map_err(io_error(path))?;
        std::io::copy(&mut file.take(EDGE), &mut hasher).map_err(io_error(path))?;
    } else {
        std::io::copy(&mut file, &mut hasher).map_err(io_error(path))?;
    }
    Ok(hasher.finalize().to_vec())
}

/// Parses a boot time given as RFC 3339 or as Unix seconds (fractions
/// allowed); returns microseconds since the Unix epoch.
pub fn parse_boot_time(text: &str) -> Result<i64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>()
        && secs.is_finite()
        && (0.0..1e11).contains(&secs)
    {
        return Ok((secs * 1e6).round() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_micros()).map_err(|_| Error::InvalidArgument {
        field: "--boot-time".into(),
        reason: format!("{text:?} is neither RFC 3339 (2014-08-10T09:00:00Z) nor Unix seconds"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_formats() {
        assert_eq!(parse_boot_time("1407661200").expect("epoch"), 1_407_661_200_000_000);
        assert_eq!(parse_boot_time("2014-08-10T09:00:00Z").expect("rfc3339"), 1_407_661_200_000_000);
        let err = parse_boot_time("yesterday").expect_err("invalid");
        assert!(err.to_string().contains("--boot-time"), "{err}");
    }
}
