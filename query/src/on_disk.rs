//! Tables of a query's steps that do not fit its memory, kept on disk.
//!
//! A common table expression computed once (see [`crate::materialise`])
//! is held in memory while it fits the session's memory limit. One that
//! does not is written, as it is computed, to a Parquet file in the
//! session's spill directory (DataFusion's disk manager, the directory
//! spilling operators use), and every reference reads that file: the query
//! computes it once still, instead of once per reference. The file goes when
//! the query's steps are dropped and the last read of it ended. A file
//! may take at most [`DISK_PER_MEMORY`] times the session's memory limit:
//! a step larger than that is given up (the query then runs as written),
//! so that no query fills the disk the collector's log is on.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SpillFile, TaskContext};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;

use crate::{Error, Result};

/// Rows a read of a table on disk hands out at a time.
const READ_BATCH_ROWS: usize = 8192;

/// Bytes of Parquet a step table on disk may take, per byte of the
/// session's memory limit.
pub(crate) const DISK_PER_MEMORY: usize = 8;

/// A step table being written to disk.
pub(crate) struct Writing {
    file: Arc<dyn SpillFile>,
    writer: ArrowWriter<Box<dyn datafusion::execution::SpillWriter>>,
    schema: SchemaRef,
    rows: usize,
    /// Bytes the file may take.
    limit: usize,
}

/// Why a step table was not kept on disk either.
#[derive(Debug)]
pub(crate) enum NotKept {
    /// It would take more than its share of the disk, bytes.
    TooLarge(usize),
    /// Writing it failed.
    Failed(Error),
}

impl From<Error> for NotKept {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

impl Writing {
    /// A new file in `ctx`'s spill directory for batches of `schema`, of
    /// at most `limit` bytes; `what` names the table in errors.
    pub(crate) fn create(ctx: &SessionContext, schema: SchemaRef, limit: usize, what: &str) -> Result<Self> {
        let file = ctx.runtime_env().disk_manager.create_tmp_file(what)?;
        if file.path().is_none() {
            return Err(Error::Internal(format!("{what}: the spill directory holds no local files")));
        }
        // Fast to write: the file is read back once or twice and deleted.
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(parquet_error(what))?))
            .build();
        let writer =
            ArrowWriter::try_new(file.open_writer()?, schema.clone(), Some(properties)).map_err(parquet_error(what))?;
        Ok(Self { file, writer, schema, rows: 0, limit })
    }

    /// Adds `batch`, unless the file would take more than its limit.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), NotKept> {
        self.rows += batch.num_rows();
        self.writer.write(batch).map_err(parquet_error("a step table on disk"))?;
        let bytes = self.writer.bytes_written() + self.writer.in_progress_size();
        if bytes > self.limit {
            return Err(NotKept::TooLarge(bytes));
        }
        Ok(())
    }

    /// The written file as a table each scan of which reads it again.
    pub(crate) fn finish(self) -> Result<(StreamingTable, usize)> {
        let Self { file, writer, schema, rows, .. } = self;
        let mut out = writer.into_inner().map_err(parquet_error("a step table on disk"))?;
        out.finish()?;
        let partition: Arc<dyn PartitionStream> = Arc::new(OnDisk { file, schema: schema.clone() });
        Ok((StreamingTable::try_new(schema, vec![partition])?, rows))
    }
}

fn parquet_error(what: &str) -> impl Fn(datafusion::parquet::errors::ParquetError) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

/// A finished file: the table's one partition.
struct OnDisk {
    file: Arc<dyn SpillFile>,
    schema: SchemaRef,
}

impl std::fmt::Debug for OnDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDisk").field("path", &self.file.path()).finish()
    }
}

impl PartitionStream for OnDisk {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStream::builder(self.schema.clone(), 2);
        let (tx, file) = (builder.tx(), self.file.clone());
        builder.spawn_blocking(move || {
            // Held until the read ends: the file outlives its table while
            // a scan reads it.
            let path = file.path().ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("a step table on disk has no path".into())
            })?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path)?)?
                .with_batch_size(READ_BATCH_ROWS)
                .build()?;
            for batch in reader {
                let batch = batch.map_err(datafusion::error::DataFusionError::from);
                let failed = batch.is_err();
                // The scan dropped (the query ended early or failed): stop.
                if tx.blocking_send(batch).is_err() || failed {
                    break;
                }
            }
            Ok(())
        });
        builder.build()
    }
}
