//! How flushed files are written.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_writer::ArrowWriterOptions;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use crate::schema::{flows_schema, stored_schema, to_stored};

/// A flushed file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The rows could not be put in their stored form.
    #[error("storing rows: {0}")]
    Arrow(#[from] ArrowError),
    /// Parquet refused them.
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ParquetError),
}

/// Columns of random identifiers: their minimum and maximum in a page or a
/// row group span nearly the whole range, so statistics would cost every
/// value a comparison, and the footer and page index their bytes, and
/// never let a reader skip anything.
pub const NO_STATISTICS: [&str; 4] = ["agent_id", "batch_id", "device_pseudonym", "boot_pseudonym"];

/// Rows per row group of the files written.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The numeric columns that are not dictionary-encoded, each with the
/// encoding that took the fewest bytes after zstd when each column of both
/// benchmark fleets' flushed files was written alone as a dictionary,
/// plain, as deltas and byte-stream split (`benches/results`, 2026-12-07):
///
/// - `seconds_since_boot`: deltas. Rows are sorted by device and time
///   since boot within a destination, so each value is near the last.
/// - Counts, sizes, `duration_s` and `received_at`: the byte-stream split
///   (each value's first bytes together, then its second bytes, ...),
///   whose runs of equal high bytes zstd compresses to almost nothing.
///   Unsorted `duration_s` took more as deltas than as itself.
/// - `window_start`, `interval_mean_s`, `interval_cv`: plain, the least
///   of the four on both fleets together (deltas took less for the window
///   starts of the day-long fleet alone, and more for the four-minute
///   boots'; the doubles took more split).
pub const ENCODED_COLUMNS: [(&str, Encoding); 11] = [
    ("seconds_since_boot", Encoding::DELTA_BINARY_PACKED),
    ("duration_s", Encoding::BYTE_STREAM_SPLIT),
    ("received_at", Encoding::BYTE_STREAM_SPLIT),
    ("bytes_out", Encoding::BYTE_STREAM_SPLIT),
    ("bytes_in", Encoding::BYTE_STREAM_SPLIT),
    ("packets_out", Encoding::BYTE_STREAM_SPLIT),
    ("packets_in", Encoding::BYTE_STREAM_SPLIT),
    ("connections", Encoding::BYTE_STREAM_SPLIT),
    ("window_start", Encoding::PLAIN),
    ("interval_mean_s", Encoding::PLAIN),
    ("interval_cv", Encoding::PLAIN),
];

/// How flushed Parquet files are written: zstd 3, 128 Ki-row row groups,
/// dictionaries for the strings, ports and flags, [`ENCODED_COLUMNS`] in
/// their own encodings ([`crate::MICROSECOND_COLUMNS`] as whole
/// microseconds), and statistics but for [`NO_STATISTICS`].
pub fn writer_properties() -> Result<WriterProperties, WriteError> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_dictionary_enabled(true)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for (column, encoding) in ENCODED_COLUMNS {
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), encoding);
    }
    for column in NO_STATISTICS {
        props = props.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    Ok(props.build())
}

/// A Parquet writer of `flows` rows as the collector stores them
/// ([`flow_writer`]).
pub struct FlowWriter<W: std::io::Write + Send> {
    inner: ArrowWriter<W>,
}

impl<W: std::io::Write + Send> std::fmt::Debug for FlowWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowWriter").finish_non_exhaustive()
    }
}

impl<W: std::io::Write + Send> FlowWriter<W> {
    /// Writes `batch` (in the schema the writer was made for), its
    /// [`crate::MICROSECOND_COLUMNS`] as whole microseconds.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        Ok(self.inner.write(&to_stored(batch)?)?)
    }

    /// Adds `kv` to the footer.
    pub fn append_key_value_metadata(&mut self, kv: KeyValue) {
        self.inner.append_key_value_metadata(kv);
    }

    /// Writes the footer.
    pub fn close(self) -> Result<(), WriteError> {
        self.inner.close().map(drop).map_err(WriteError::from)
    }
}

/// A writer into `out` of batches in `schema` (`flows`, or
/// [`crate::flows_encoded_schema`], which Parquet stores the same way) as
/// [`stored_schema`] has them: [`writer_properties`], and no copy of the
/// Arrow schema in the footer (readers take the `flows` schema, to which
/// the Parquet schema alone casts without loss).
pub fn flow_writer<W: std::io::Write + Send>(out: W, schema: SchemaRef) -> Result<FlowWriter<W>, WriteError> {
    let options = ArrowWriterOptions::new().with_properties(writer_properties()?).with_skip_arrow_metadata(true);
    let inner = ArrowWriter::try_new_with_options(out, stored_schema(&schema), options)?;
    Ok(FlowWriter { inner })
}

/// A batch from an older file in today's `flows` schema: columns added
/// since are NULL.
pub fn conform(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = flows_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(col) if col.data_type() == field.data_type() => Ok(col.clone()),
            Some(col) => arrow::compute::cast(col, field.data_type()),
            None => Ok(arrow::array::new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}
