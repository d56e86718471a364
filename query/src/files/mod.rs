//! The Parquet file contract: where the flushed files of `flows` live,
//! how they are written, how their rows are sorted and what their footers
//! hold. The collector writes by it and every reader reads by it; nothing
//! else spells a file name or a writer setting.
//!
//! - **Paths** ([`FlowFile`]): `[PREFIX/][COLLECTOR/]flows/day=YYYY-MM-DD/{from:020}-{to:020}.parquet`,
//!   where `from..=to` is the range of log sequence numbers the file holds
//!   (a compaction's file covers exactly its inputs' ranges). `COLLECTOR`
//!   is present in a shared store only. A file whose footer does not read
//!   is moved to `quarantine/day=YYYY-MM-DD/` under the same name.
//! - **Writer settings** ([`writer_properties`], [`flow_writer`]): zstd,
//!   dictionaries for strings, each measured number in the encoding that
//!   stores it smallest ([`ENCODED_COLUMNS`]), times as whole
//!   microseconds, no Arrow schema in the footer.
//! - **Sort order** ([`SORT_KEYS`]).
//! - **Footer keys**: [`BATCHES_KEY`], a shared store's list of the
//!   file's batches.

mod order;
mod writer;

use object_store::path::Path as StorePath;

pub use order::{SORT_KEYS, rules_order, sorted_for_rules, sorted_slice};
pub use writer::{
    ENCODED_COLUMNS, FlowWriter, NO_STATISTICS, ROW_GROUP_ROWS, WriteError, conform, flow_writer, writer_properties,
};

/// Parquet key-value metadata key that lists a file's batches (see
/// [`crate::batch_list`]).
pub const BATCHES_KEY: &str = "leakwatch.batches";

/// The directory of the `flows` table under a store's (or collector's) root.
pub const FLOWS_DIR: &str = "flows";

/// Where unreadable flushed files are set aside, beside [`FLOWS_DIR`].
pub const QUARANTINE_DIR: &str = "quarantine";

/// One flushed file of `flows`: its day and its range of log sequence
/// numbers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowFile {
    /// `YYYY-MM-DD`, the day of its records' `window_start` (UTC).
    pub day: String,
    /// First log sequence number it holds.
    pub from: u64,
    /// Last one.
    pub to: u64,
}

impl FlowFile {
    /// The file of the records of day `day` from the log entries `from..=to`.
    pub fn new(day: impl Into<String>, from: u64, to: u64) -> Self {
        Self { day: day.into(), from, to }
    }

    /// The day (`YYYY-MM-DD`, UTC) a record with this `window_start` goes in.
    pub fn day_of(window_start_s: i64) -> String {
        chrono::DateTime::from_timestamp(window_start_s, 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| "1970-01-01".into())
    }

    /// The file's name, `{from:020}-{to:020}.parquet`.
    pub fn name(&self) -> String {
        format!("{:020}-{:020}.parquet", self.from, self.to)
    }

    /// Its key under `root` (a store's or a collector's root).
    pub fn key(&self, root: &StorePath) -> StorePath {
        self.key_in(root, FLOWS_DIR)
    }

    /// Its key under `root` once set aside ([`QUARANTINE_DIR`]).
    pub fn quarantine_key(&self, root: &StorePath) -> StorePath {
        self.key_in(root, QUARANTINE_DIR)
    }

    fn key_in(&self, root: &StorePath, dir: &str) -> StorePath {
        root.clone().join(dir).join(format!("day={}", self.day).as_str()).join(self.name().as_str())
    }

    /// The file a key names, and the parts of the key before `flows/`
    /// (the collector's directory in a shared store; nothing in a local
    /// one): `None` for any other key.
    pub fn parse<S: AsRef<str>>(parts: &[S]) -> Option<(&[S], Self)> {
        let [before @ .., flows, day, name] = parts else { return None };
        if flows.as_ref() != FLOWS_DIR {
            return None;
        }
        let day = day.as_ref().strip_prefix("day=")?;
        let (from, to) = flushed_range_of(std::path::Path::new(name.as_ref()))?;
        Some((before, Self::new(day, from, to)))
    }

    /// Whether this file's range lies inside `other`'s (a compaction merged
    /// it into that file).
    pub fn within(&self, other: &Self) -> bool {
        range_within((self.from, self.to), (other.from, other.to))
    }
}

/// The sequence range `(from, to)` a flushed file covers, parsed from its
/// name `{from:020}-{to:020}.parquet`.
pub fn flushed_range_of(path: &std::path::Path) -> Option<(u64, u64)> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".parquet")?;
    let (from, to) = stem.split_once('-')?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

/// True when flushed range `inner` lies inside `outer` (of another file):
/// a compaction merged it into that file. Readers skip such a file, and
/// compaction never merges it again.
pub fn range_within(inner: (u64, u64), outer: (u64, u64)) -> bool {
    outer.0 <= inner.0 && inner.1 <= outer.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_parses_back_to_its_file() {
        let file = FlowFile::new("2026-10-01", 7, 42);
        let root = StorePath::from("fleet/collector-a");
        let key = file.key(&root);
        assert_eq!(
            key.as_ref(),
            "fleet/collector-a/flows/day=2026-10-01/00000000000000000007-00000000000000000042.parquet"
        );
        let parts: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
        let (before, parsed) = FlowFile::parse(&parts).expect("parses");
        assert_eq!((before.join("/"), parsed), ("fleet/collector-a".to_string(), file.clone()));
        assert_eq!(
            file.key(&StorePath::default()).as_ref(),
            "flows/day=2026-10-01/00000000000000000007-00000000000000000042.parquet"
        );
        assert_eq!(
            file.quarantine_key(&StorePath::default()).as_ref(),
            "quarantine/day=2026-10-01/00000000000000000007-00000000000000000042.parquet"
        );
    }

    #[test]
    fn other_keys_are_not_flow_files() {
        for key in [
            "quarantine/day=2026-10-01/00000000000000000001-00000000000000000002.parquet",
            "flows/2026-10-01/00000000000000000001-00000000000000000002.parquet",
            "flows/day=2026-10-01/1-2.csv",
            "flows/day=2026-10-01/notes.parquet",
            "day=2026-10-01/00000000000000000001-00000000000000000002.parquet",
        ] {
            let parts: Vec<&str> = key.split('/').collect();
            assert_eq!(FlowFile::parse(&parts), None, "{key}");
        }
    }

    #[test]
    fn days_are_utc_and_a_time_out_of_range_is_day_zero() {
        assert_eq!(FlowFile::day_of(1_790_000_000), "2026-09-21");
        assert_eq!(FlowFile::day_of(-1), "1969-12-31");
        assert_eq!(FlowFile::day_of(i64::MAX), "1970-01-01");
        assert!(FlowFile::new("d", 3, 4).within(&FlowFile::new("d", 1, 9)));
        assert!(!FlowFile::new("d", 1, 9).within(&FlowFile::new("d", 3, 4)));
    }
}
