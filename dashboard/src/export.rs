//! Open data: the published findings as CSV and Parquet, built once per
//! refresh.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::Dashboard;
use super::aggregate::Finding;
use crate::{Error, Result};

fn text(findings: &[Finding], f: impl Fn(&Finding) -> Option<String>) -> ArrayRef {
    Arc::new(findings.iter().map(f).collect::<StringArray>())
}

/// The findings as one record batch.
pub fn batch(findings: &[Finding]) -> Result<RecordBatch> {
    let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let schema = Schema::new(vec![
        utf8("id", false),
        utf8("rule", false),
        utf8("vendor", false),
        utf8("model", false),
        utf8("models", false),
        utf8("domain", false),
        utf8("destination", false),
        utf8("claim", false),
        utf8("firmware_min", true),
        utf8("firmware_max", true),
        Field::new("devices", DataType::UInt64, false),
        Field::new("volunteers", DataType::UInt64, false),
        Field::new("population_devices", DataType::UInt64, false),
        Field::new("share", DataType::Float64, false),
        Field::new("median_s_after_boot", DataType::Float64, true),
        utf8("consent", false),
        utf8("sources", false),
        utf8("first_seen", false),
        utf8("last_seen", false),
        utf8("command", false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        text(findings, |f| Some(f.id.clone())),
        text(findings, |f| Some(f.rule.clone())),
        text(findings, |f| Some(f.vendor.clone())),
        text(findings, |f| Some(f.model.clone())),
        text(findings, |f| Some(f.models.join(", "))),
        text(findings, |f| Some(f.domain.clone())),
        text(findings, |f| Some(f.destination.clone())),
        text(findings, |f| Some(f.claim.clone())),
        text(findings, |f| f.firmware_min.clone()),
        text(findings, |f| f.firmware_max.clone()),
        Arc::new(findings.iter().map(|f| f.devices).collect::<UInt64Array>()),
        Arc::new(findings.iter().map(|f| f.volunteers).collect::<UInt64Array>()),
        Arc::new(findings.iter().map(|f| f.population_devices).collect::<UInt64Array>()),
        Arc::new(findings.iter().map(|f| f.share).collect::<Float64Array>()),
        Arc::new(findings.iter().map(|f| f.median_s_after_boot).collect::<Float64Array>()),
        text(findings, |f| {
            Some(
                f.consent.iter().map(|c| format!("{} ({} devices)", c.value, c.devices)).collect::<Vec<_>>().join("; "),
            )
        }),
        text(findings, |f| {
            Some(
                f.sources.iter().map(|c| format!("{} ({} devices)", c.value, c.devices)).collect::<Vec<_>>().join("; "),
            )
        }),
        text(findings, |f| Some(f.first_seen.clone())),
        text(findings, |f| Some(f.last_seen.clone())),
        text(findings, |f| Some(f.command.clone())),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).map_err(export_failed)
}

fn export_failed(source: arrow::error::ArrowError) -> Error {
    Error::Arrow { context: "findings export".into(), source }
}

/// A text cell as a spreadsheet may open it without running it: a cell
/// that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is a
/// formula to Excel, LibreOffice and Google Sheets (`=HYPERLINK(...)` in a
/// device label), so it gets a leading `'`, as OWASP advises for CSV
/// exports (the CSV writer then quotes what needs quoting).
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// `batch` with every text cell made [`spreadsheet_safe`].
fn spreadsheet_safe_batch(batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.as_any().downcast_ref::<StringArray>() {
            Some(text) => Arc::new(text.iter().map(|v| v.map(spreadsheet_safe)).collect::<StringArray>()) as ArrayRef,
            None => c.clone(),
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns).map_err(export_failed)
}

/// CSV and Parquet bytes of `findings`; the CSV's text cells are
/// [`spreadsheet_safe`], the Parquet's are the values as they are.
pub fn findings(findings: &[Finding]) -> Result<(Vec<u8>, Vec<u8>)> {
    let batch = batch(findings)?;
    let mut csv = Vec::new();
    {
        let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut csv);
        writer.write(&spreadsheet_safe_batch(&batch)?).map_err(export_failed)?;
    }
    let mut parquet = Vec::new();
    {
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut parquet, batch.schema(), None)?;
        writer.write(&batch)?;
        writer.close()?;
    }
    Ok((csv, parquet))
}

fn download(bytes: axum::body::Bytes, content_type: &'static str, name: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /export/findings.csv`.
pub async fn csv(State(d): State<Dashboard>) -> Response {
    download(d.published().csv.clone(), "text/csv; charset=utf-8", "leakwatch-findings.csv")
}

/// `GET /export/findings.parquet`.
pub async fn parquet(State(d): State<Dashboard>) -> Response {
    download(d.published().parquet.clone(), "application/vnd.apache.parquet", "leakwatch-findings.parquet")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cells a spreadsheet would run as formulas.
    #[test]
    fn csv_cells_that_spreadsheets_run_are_neutralised() {
        for (cell, want) in [
            ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"),
            ("+1", "'+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("Xiaomi", "Xiaomi"),
            ("a=b", "a=b"),
        ] {
            assert_eq!(spreadsheet_safe(cell), want);
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("label", DataType::Utf8, true),
            Field::new("n", DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("=1+1"), None])) as ArrayRef,
                Arc::new(UInt64Array::from(vec![1, 2])) as ArrayRef,
            ],
        )
        .expect("batch");
        let mut csv = Vec::new();
        arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut csv)
            .write(&spreadsheet_safe_batch(&batch).expect("safe"))
            .expect("csv");
        assert_eq!(String::from_utf8(csv).expect("utf-8"), "label,n\n'=1+1,1\n,2\n");
    }
}
