//! Files written by the tools volunteers already run, read into what the
//! agent reports: PCAPdroid's connection export (`import --from
//! pcapdroid-csv`), and readers of the iOS App Privacy Report and Zeek's
//! logs not yet wired to `import`.

pub mod ios_privacy;
pub mod pcapdroid_csv;
pub mod zeek;

use std::io::{BufRead, Read as _};

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
