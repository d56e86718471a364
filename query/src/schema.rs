//! The `flows` table: one row per flow record, with its batch's device
//! labels; and its stored form (times as whole microseconds).

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};

/// The Arrow schema of `flows` (also the schema of the Parquet files).
pub fn flows_schema() -> SchemaRef {
    let utc = Some(Arc::from("UTC"));
    let s = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let i = |name: &str| Field::new(name, DataType::Int64, false);
    Arc::new(Schema::new(vec![
        s("agent_id", false),
        s("batch_id", false),
        Field::new("received_at", DataType::Timestamp(TimeUnit::Millisecond, utc.clone()), false),
        s("device_pseudonym", false),
        s("boot_pseudonym", false),
        s("boot_source", false),
        s("vendor", false),
        s("model", false),
        s("os_version", false),
        s("consent", false),
        // NULL when the source cannot know it (see `source`): the time
        // since boot from a DNS log or the iOS report, the port from the
        // iOS report, bytes from either.
        Field::new("seconds_since_boot", DataType::Float64, true),
        Field::new("window_start", DataType::Timestamp(TimeUnit::Second, utc), false),
        s("transport", false),
        s("dst_ip", false),
        Field::new("dst_port", DataType::Int32, true),
        s("domain", true),
        s("domain_source", false),
        Field::new("bytes_out", DataType::Int64, true),
        Field::new("bytes_in", DataType::Int64, true),
        i("packets_out"),
        Field::new("packets_in", DataType::Int64, true),
        s("app", true),
        s("tls_sni", true),
        s("tls_alpn", true),
        s("tls_fingerprint", true),
        Field::new("duration_s", DataType::Float64, false),
        // Added after the first release: nullable, so older files read as NULL.
        Field::new("encrypted_dns", DataType::Boolean, true),
        // Connection timing, added later still: NULL when the agent did not
        // state it.
        Field::new("connections", DataType::Int64, true),
        Field::new("interval_mean_s", DataType::Float64, true),
        Field::new("interval_cv", DataType::Float64, true),
        // What the agent read the records from (`capture`, `live`, ...):
        // NULL in files of earlier releases.
        s("source", true),
        // A lookup the DNS server blocked: true or false from sources that
        // know (Pi-hole), NULL from the others and in older files.
        Field::new("blocked", DataType::Boolean, true),
        // Who started a contact (`app`, `user`) and whether a website
        // shown in the app made it: from the iOS report, NULL otherwise.
        s("initiated_by", true),
        Field::new("via_website", DataType::Boolean, true),
    ]))
}

/// The columns of `flows` that hold a batch's labels: the same value on
/// each of a batch's rows.
pub const LABEL_COLUMNS: [&str; 10] = [
    "agent_id",
    "batch_id",
    "device_pseudonym",
    "boot_pseudonym",
    "boot_source",
    "vendor",
    "model",
    "os_version",
    "consent",
    "source",
];

/// The schema of [`FlowBatchBuilder::finish_encoded`]: `flows` with the
/// [`LABEL_COLUMNS`] as dictionaries (`UInt32` keys, `Utf8` values). In
/// Parquet (written without the Arrow schema) it is the same as
/// [`flows_schema`], and reads back as it.
pub fn flows_encoded_schema() -> SchemaRef {
    let dictionary = DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8));
    retyped(&flows_schema(), &LABEL_COLUMNS, &dictionary)
}

/// `schema` with the fields named in `columns` of type `to`.
fn retyped(schema: &Schema, columns: &[&str], to: &DataType) -> SchemaRef {
    let field = |f: &FieldRef| {
        if columns.contains(&f.name().as_str()) {
            Arc::new(Field::new(f.name(), to.clone(), f.is_nullable()))
        } else {
            f.clone()
        }
    };
    Arc::new(Schema::new(schema.fields().iter().map(field).collect::<Vec<_>>()))
}

/// Columns of times in seconds that agents measure to the microsecond.
/// Rows hold them rounded to it ([`to_microsecond`]), and Parquet stores
/// them as `DECIMAL(18, 6)`: whole microseconds in an INT64 (encoded as
/// [`crate::files::ENCODED_COLUMNS`] says), which takes about a third of
/// a double's bytes after zstd (the values of
/// a double's low mantissa bits hardly compress). They read back as
/// `DOUBLE`, exactly the values the rows held; files of earlier releases
/// hold doubles and read the same.
pub const MICROSECOND_COLUMNS: [&str; 2] = ["seconds_since_boot", "duration_s"];

/// How [`MICROSECOND_COLUMNS`] are stored in Parquet.
pub const MICROSECOND_STORED: DataType = DataType::Decimal128(18, 6);

/// `seconds` to the nearest microsecond: the double nearest to a whole
/// number of microseconds, which stores as that number and reads back as
/// this double again (below 2^53 microseconds, 285 years; validation
/// allows ten).
pub fn to_microsecond(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e6
}

/// `schema` (`flows`, or [`flows_encoded_schema`]) as Parquet stores it:
/// [`MICROSECOND_COLUMNS`] as [`MICROSECOND_STORED`].
pub fn stored_schema(schema: &Schema) -> SchemaRef {
    retyped(schema, &MICROSECOND_COLUMNS, &MICROSECOND_STORED)
}

/// `batch` (in `flows` or [`flows_encoded_schema`]) in its
/// [`stored_schema`]: [`MICROSECOND_COLUMNS`] cast to whole microseconds
/// (an error, not NULL, for a value out of range).
pub fn to_stored(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = stored_schema(&batch.schema());
    let options = arrow::compute::CastOptions { safe: false, ..Default::default() };
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                arrow::compute::cast_with_options(column, field.data_type(), &options)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}
