//! Files written by the tools volunteers already run, read into what the
//! agent reports: PCAPdroid's connection export (`import --from
//! pcapdroid-csv`), and readers of the iOS App Privacy Report and Zeek's
//! logs not yet wired to `import`.

pub mod ios_privacy;
pub mod pcapdroid_csv;
pub mod pihole;
pub mod zeek;

use std::io::{BufRead, Read as _};
use std::path::Path;

use leakwatch_proto::v1::RecordSource;

use crate::flow::{DnsLookup, FlowSummary};
use crate::import::ImportedCapture;

/// Imports `path`, a file of the tool `from` names (not a capture): the
/// boots read from it, and a line saying what was read, what was left out
/// and why.
pub fn import_file(
    from: crate::cli::ImportFrom,
    path: &Path,
    labels: &crate::import::DeviceLabels,
    state: &crate::state::AgentState,
    batch_records: usize,
) -> crate::Result<(Vec<ImportedCapture>, String)> {
    use crate::cli::ImportFrom;
    let (imported, mut line, bad) = match from {
        ImportFrom::PcapdroidCsv => {
            let (imported, stats) = pcapdroid_csv::import(path, labels, state, batch_records)?;
            let line = format!("{}: {} rows read, {} records", path.display(), stats.rows, imported.record_count());
            (vec![imported], line, stats.bad.summary("rows"))
        }
        ImportFrom::IosPrivacy => {
            let (imported, stats) = ios_privacy::import(path, labels, state, batch_records)?;
            let line = format!(
                "{}: {} lines read, {} records; {} access lines (camera, microphone, location, ...) and the websites visited are not sent",
                path.display(),
                stats.lines,
                imported.record_count(),
                stats.access_lines
            );
            (vec![imported], line, stats.malformed.summary("lines"))
        }
        ImportFrom::Capture | ImportFrom::Zeek | ImportFrom::Pihole => {
            return Err(crate::Error::InvalidArgument {
                field: "--from".into(),
                reason: "captures and Zeek logs are read by the LAN import".into(),
            });
        }
    };
    if let Some(bad) = bad {
        line.push_str(&format!("; {bad}"));
    }
    let dropped: u64 = imported.iter().map(|i| i.anonymiser.dropped_non_public).sum();
    if dropped > 0 {
        line.push_str(&format!("; {dropped} non-public destinations dropped"));
    }
    let local: u64 =
        imported.iter().map(|i| i.anonymiser.dropped_local_names + i.anonymiser.dropped_reverse_lookups).sum();
    if local > 0 {
        line.push_str(&format!("; {local} local names and reverse lookups not sent"));
    }
    Ok((imported, line))
}

/// A file read as one boot of the one device the labels name.
pub(crate) struct OneBoot<'a> {
    /// The file.
    pub path: &'a Path,
    /// The device's labels (its boot: `--boot-time`, else `first_us`).
    pub labels: &'a crate::import::DeviceLabels,
    /// The agent's state, whose key makes the pseudonyms.
    pub state: &'a crate::state::AgentState,
    /// Records per batch.
    pub batch_records: usize,
    /// What the file is.
    pub source: RecordSource,
    /// The file's first time, microseconds since the Unix epoch.
    pub first_us: Option<i64>,
}

/// `flows` and `lookups` read from one file, through the anonymiser, as
/// the batches of one boot of the labelled device (pseudonyms from the
/// device label or the source's name, and the file), saying their source.
pub(crate) fn one_boot(
    boot: OneBoot<'_>,
    flows: &[FlowSummary],
    lookups: &[DnsLookup],
) -> crate::Result<ImportedCapture> {
    let OneBoot { path, labels, state, batch_records, source, first_us } = boot;
    let (boot_us, boot_source) = labels.boot(first_us);
    let device_label = match &labels.device_id {
        Some(id) => format!("label:{id}"),
        None => source.short_name().to_string(),
    };
    let (device_pseudonym, boot_pseudonym) = crate::import::file_pseudonyms(state, &device_label, path)?;
    let mut anonymiser = crate::anonymiser::AnonymiserStats::default();
    let records = crate::import::boot_records(flows, lookups, boot_us, labels.app.as_deref(), &mut anonymiser);
    let mut device = labels.device_info(device_pseudonym, boot_pseudonym, boot_source);
    device.source = source as i32;
    let batches = crate::import::build_batches(records, &device, state, batch_records, None);
    Ok(ImportedCapture { anonymiser, boot_source, batches, ..ImportedCapture::of_file(path, Default::default(), 0) })
}

/// The lines of a file that did not read: how many, and the first few by
/// line number and reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadLines {
    /// Lines counted.
    pub count: u64,
    /// The first [`BadLines::NAMED`]: (line number, reason).
    pub first: Vec<(u64, String)>,
}

impl BadLines {
    /// Bad lines named at most.
    pub const NAMED: usize = 5;

    /// Counts line `line`, naming it while fewer than [`BadLines::NAMED`]
    /// are.
    pub(crate) fn note(&mut self, line: u64, reason: String) {
        self.count += 1;
        if self.first.len() < Self::NAMED {
            self.first.push((line, reason));
        }
    }

    /// The error for a file at `path` none of whose lines read as `what`,
    /// naming its first bad line.
    pub(crate) fn refusal(&self, path: &Path, what: &str) -> crate::Error {
        let (line, reason) = self.first.first().cloned().unwrap_or_default();
        crate::Error::InvalidArgument {
            field: format!("{} line {line}", path.display()),
            reason: format!("not {what} ({reason})"),
        }
    }

    /// "N bad ROWS skipped (line n: why; ...)", when there are any.
    pub fn summary(&self, rows: &str) -> Option<String> {
        let named: Vec<String> = self.first.iter().map(|(n, why)| format!("line {n}: {why}")).collect();
        (self.count > 0).then(|| format!("{} bad {rows} skipped ({})", self.count, named.join("; ")))
    }
}

/// A line of a text file read with a bound on its length.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// The file ended.
    End,
    /// A line in the buffer (its line feed included, when it had one).
    Read,
    /// A line longer than the bound: its start was read, the rest skipped.
    TooLong,
}

/// Reads the next line of `reader` into `buf` (cleared first), holding at
/// most `max` bytes of it whatever the file holds.
pub(crate) fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    buf.clear();
    let n = reader.by_ref().take(max as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.len() > max && !buf.ends_with(b"\n") {
        // Skip the rest of the line, a buffer at a time.
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    reader.consume(i + 1);
                    break;
                }
                None => {
                    let len = chunk.len();
                    reader.consume(len);
                }
            }
        }
        return Ok(Line::TooLong);
    }
    Ok(Line::Read)
}
