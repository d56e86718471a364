//! Everything a visitor downloads: the published findings as CSV and
//! Parquet (built once per refresh), and the blocklists, feeds and MUD
//! files made of them (built per request from the aggregates in memory).
//! Each names the data licence: in its head, its metadata or a column (and
//! every response in a `Link: <...>; rel="license"` header).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::aggregate::Finding;
use super::lists::{ListFormat, Scope};
use super::{Dashboard, DataLicence, feeds, lists, mud};
use crate::{Error, Result};

fn text(findings: &[Finding], f: impl Fn(&Finding) -> Option<String>) -> ArrayRef {
    Arc::new(findings.iter().map(f).collect::<StringArray>())
}

/// The findings as one record batch, each row naming the data licence.
pub fn batch(findings: &[Finding], licence: &DataLicence) -> Result<RecordBatch> {
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
        utf8("licence", false),
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
        text(findings, |_| Some(format!("{} ({})", licence.name, licence.url))),
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
pub fn findings(findings: &[Finding], licence: &DataLicence) -> Result<(Vec<u8>, Vec<u8>)> {
    let batch = batch(findings, licence)?;
    let mut csv = Vec::new();
    {
        let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut csv);
        writer.write(&spreadsheet_safe_batch(&batch)?).map_err(export_failed)?;
    }
    let mut parquet = Vec::new();
    {
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(vec![
                parquet::file::metadata::KeyValue::new("licence".into(), licence.name.clone()),
                parquet::file::metadata::KeyValue::new("licence_url".into(), licence.url.clone()),
            ]))
            .build();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut parquet, batch.schema(), Some(properties))?;
        writer.write(&batch)?;
        writer.close()?;
    }
    Ok((csv, parquet))
}

/// A download named `name` (`inline` for what a browser may show).
fn download(bytes: impl Into<axum::body::Bytes>, content_type: &'static str, name: &str, inline: bool) -> Response {
    let disposition = if inline { "inline" } else { "attachment" };
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, format!("{disposition}; filename=\"{name}\"")),
        ],
        bytes.into(),
    )
        .into_response()
}

/// `GET /export/findings.csv`.
pub async fn csv(State(d): State<Dashboard>) -> Response {
    let p = d.published();
    download(p.csv.clone(), "text/csv; charset=utf-8", "leakwatch-findings.csv", false)
}

/// `GET /export/findings.parquet`.
pub async fn parquet(State(d): State<Dashboard>) -> Response {
    let p = d.published();
    download(p.parquet.clone(), "application/vnd.apache.parquet", "leakwatch-findings.parquet", false)
}

fn not_published(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("{what} is not published: nothing about it passes the thresholds\n"))
        .into_response()
}

/// A list of `scope`'s findings in the format its file name names.
fn list(d: &Dashboard, scope: Scope, file: &str) -> Response {
    let Some(format) = ListFormat::from_file(file) else {
        let known: Vec<&str> = ListFormat::ALL.iter().map(|f| f.file()).collect();
        return (StatusCode::NOT_FOUND, format!("no list format {file:?}; there are {}\n", known.join(", ")))
            .into_response();
    };
    let p = d.published();
    let s = &p.snapshot;
    let Some(findings) = scope.findings(s) else { return not_published(&scope.name()) };
    let body = lists::render(s, &scope, &findings, format);
    let name = format!("leakwatch-{}", format.file());
    download(body, "text/plain; charset=utf-8", &name, true)
}

/// `GET /lists/{file}`: all findings.
pub async fn list_all(State(d): State<Dashboard>, Path(file): Path<String>) -> Response {
    list(&d, Scope::All, &file)
}

/// `GET /lists/vendors/{vendor}/{file}`.
pub async fn list_vendor(State(d): State<Dashboard>, Path((vendor, file)): Path<(String, String)>) -> Response {
    list(&d, Scope::Vendor(vendor), &file)
}

/// `GET /lists/models/{vendor}/{model}/{file}`.
pub async fn list_model(
    State(d): State<Dashboard>,
    Path((vendor, model, file)): Path<(String, String, String)>,
) -> Response {
    list(&d, Scope::Model(vendor, model), &file)
}

/// `GET /lists/findings/{id}/{file}`.
pub async fn list_finding(State(d): State<Dashboard>, Path((id, file)): Path<(String, String)>) -> Response {
    list(&d, Scope::Finding(id), &file)
}

fn feed(d: &Dashboard, scope: Option<Scope>) -> Response {
    let p = d.published();
    let s = &p.snapshot;
    let Some(scope) = scope else { return not_published("that feed") };
    let Some(findings) = scope.findings(s) else { return not_published(&scope.name()) };
    let body = feeds::render(s, &scope, &findings);
    download(body, "application/atom+xml; charset=utf-8", "leakwatch.atom", true)
}

/// `GET /feeds/findings.atom`.
pub async fn feed_all(State(d): State<Dashboard>) -> Response {
    feed(&d, Some(Scope::All))
}

/// `GET /feeds/vendors/{vendor}.atom`.
pub async fn feed_vendor(State(d): State<Dashboard>, Path(file): Path<String>) -> Response {
    feed(&d, file.strip_suffix(".atom").map(|v| Scope::Vendor(v.to_string())))
}

/// `GET /feeds/models/{vendor}/{model}.atom`.
pub async fn feed_model(State(d): State<Dashboard>, Path((vendor, file)): Path<(String, String)>) -> Response {
    feed(&d, file.strip_suffix(".atom").map(|m| Scope::Model(vendor, m.to_string())))
}

/// `GET /mud/{vendor}/{model}.json`: the model's MUD file as observed.
pub async fn mud_file(State(d): State<Dashboard>, Path((vendor, file)): Path<(String, String)>) -> Response {
    let p = d.published();
    let s = &p.snapshot;
    let Some(page) = file.strip_suffix(".json").and_then(|model| s.model(&vendor, model)) else {
        return not_published(&format!("the model {vendor} {file}"));
    };
    let body = serde_json::to_vec_pretty(&mud::render(s, page)).unwrap_or_default();
    download(body, "application/mud+json", "mud.json", true)
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
