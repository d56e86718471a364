//! Files written by the tools volunteers already run, read into what the
//! agent reports: PCAPdroid's connection export (`import --from
//! pcapdroid-csv`), and readers of the iOS App Privacy Report and Zeek's
//! logs not yet wired to `import`.

pub mod ios_privacy;
pub mod pcapdroid_csv;
pub mod zeek;

use std::io::{BufRead, Read as _};
use std::path::Path;

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
