//! The order of the rows in a flushed file, which the detection rules'
//! scans benefit from (a model's rows together, a domain's within them).

use arrow::array::{ArrayRef, RecordBatch};

use crate::schema::flows_schema;

/// The columns a flushed file's rows are sorted by, in order: vendor,
/// model, domain (NULL first), device, then time since boot; rows equal in
/// all five keep the order they came in. A flush sorts with
/// [`crate::FlowBatchBuilder::sort_for_rules`], compaction with
/// [`rules_order`]; a test checks that both give this order.
pub const SORT_KEYS: [&str; 5] = ["vendor", "model", "domain", "device_pseudonym", "seconds_since_boot"];

/// The rows of `batches` (in the `flows` schema), as (batch, row) pairs,
/// in the order [`FlowBatchBuilder::sort_for_rules`] writes them: vendor,
/// model, domain (NULL first), device, then time since boot; rows equal in
/// all five keep the order they came in. Compaction merges flushed files
/// through it, so a merged file is as sorted as a flushed one; gathering
/// the rows a slice of the order at a time ([`sorted_slice`]) holds one
/// slice more than the batches themselves.
pub fn rules_order(batches: &[RecordBatch]) -> Result<Vec<(usize, usize)>, arrow::error::ArrowError> {
    use arrow::compute::SortOptions;
    use arrow::row::{RowConverter, SortField};
    let keys = SORT_KEYS;
    let schema = flows_schema();
    let fields = keys
        .iter()
        .map(|name| {
            let field = schema.field_with_name(name)?;
            Ok(SortField::new_with_options(
                field.data_type().clone(),
                SortOptions { descending: false, nulls_first: true },
            ))
        })
        .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
    // Rows compare as bytes: strings in byte order, floats in total order.
    let converter = RowConverter::new(fields)?;
    let total = batches.iter().map(RecordBatch::num_rows).sum();
    let mut rows = converter.empty_rows(total, total * 64);
    let mut order = Vec::with_capacity(total);
    for (i, batch) in batches.iter().enumerate() {
        let columns = keys
            .iter()
            .map(|name| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no column {name}")))
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        converter.append(&mut rows, &columns)?;
        order.extend((0..batch.num_rows()).map(|r| (i, r)));
    }
    let mut by_row: Vec<usize> = (0..total).collect();
    by_row.sort_by(|&a, &b| rows.row(a).cmp(&rows.row(b)));
    Ok(by_row.into_iter().map(|k| order[k]).collect())
}

/// The rows of `batches` at `pairs` (a slice of [`rules_order`]), as one
/// batch in the `flows` schema.
pub fn sorted_slice(
    batches: &[RecordBatch],
    pairs: &[(usize, usize)],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batches.is_empty() || pairs.is_empty() {
        return Ok(RecordBatch::new_empty(flows_schema()));
    }
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    arrow::compute::interleave_record_batch(&refs, pairs)
}

/// The rows of `batches` as one batch, in [`rules_order`].
pub fn sorted_for_rules(batches: &[RecordBatch]) -> Result<RecordBatch, arrow::error::ArrowError> {
    sorted_slice(batches, &rules_order(batches)?)
}
