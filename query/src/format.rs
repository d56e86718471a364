//! Rendering query results as a table, CSV, JSON lines or Markdown.

use arrow::array::RecordBatch;

use crate::{Error, Result};

/// Output format of query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row, one per line (NDJSON).
    Json,
    /// A Markdown (GitHub) table: `|` in a value escaped, a line break
    /// as `<br>`, NULL empty.
    Markdown,
}

impl OutputFormat {
    /// The names [`OutputFormat`] is parsed from (`ndjson` is `json`).
    pub const NAMES: [&str; 5] = ["table", "csv", "json", "ndjson", "markdown"];
}

/// A name that is no [`OutputFormat`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?}: use table, csv, json (or ndjson) or markdown")]
pub struct UnknownFormat(String);

impl std::str::FromStr for OutputFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownFormat> {
        match s {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" | "ndjson" => Ok(Self::Json),
            "markdown" | "md" => Ok(Self::Markdown),
            other => Err(UnknownFormat(other.to_string())),
        }
    }
}

/// Renders `batches` in `format`.
pub fn render(batches: &[RecordBatch], format: OutputFormat) -> Result<String> {
    let internal = |source| Error::Arrow { context: "rendering the result", source };
    match format {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches).map_err(internal)?.to_string()),
        OutputFormat::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut buf);
                for b in batches {
                    w.write(b).map_err(internal)?;
                }
            }
            String::from_utf8(buf).map_err(|e| Error::Internal(format!("rendering the result: {e}")))
        }
        OutputFormat::Json => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                for b in batches {
                    w.write(b).map_err(internal)?;
                }
                w.finish().map_err(internal)?;
            }
            String::from_utf8(buf).map_err(|e| Error::Internal(format!("rendering the result: {e}")))
        }
        OutputFormat::Markdown => markdown(batches).map_err(internal),
    }
}

/// `batches` as a Markdown table (nothing when there is no batch).
fn markdown(batches: &[RecordBatch]) -> std::result::Result<String, arrow::error::ArrowError> {
    let Some(first) = batches.first() else { return Ok(String::new()) };
    let cell =
        |text: &str| text.replace('\\', "\\\\").replace('|', "\\|").replace("\r\n", "<br>").replace('\n', "<br>");
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let schema = first.schema();
    let mut out = line(schema.fields().iter().map(|f| cell(f.name())).collect());
    out.push_str(&line(schema.fields().iter().map(|_| "---".to_string()).collect()));
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells = batch
                .columns()
                .iter()
                .map(|column| match column.is_null(row) {
                    true => Ok(String::new()),
                    false => arrow::util::display::array_value_to_string(column, row).map(|v| cell(&v)),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            out.push_str(&line(cells));
        }
    }
    Ok(out)
}

/// The first `max` rows of `batches` (every row when `max` is 0), and how
/// many rows were left out.
pub fn first_rows(batches: &[RecordBatch], max: usize) -> (Vec<RecordBatch>, usize) {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if max == 0 || total <= max {
        return (batches.to_vec(), 0);
    }
    let mut kept = Vec::new();
    let mut room = max;
    for batch in batches {
        if room == 0 {
            break;
        }
        let take = room.min(batch.num_rows());
        kept.push(batch.slice(0, take));
        room -= take;
    }
    (kept, total - max)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(names: &[Option<&str>], from: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let n: Vec<i64> = (from..from + names.len() as i64).collect();
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(names.to_vec())), Arc::new(Int64Array::from(n))])
            .expect("batch")
    }

    #[test]
    fn markdown_escapes_what_would_break_its_table() {
        let b = batch(&[Some("a|b"), None, Some("two\nlines")], 1);
        assert_eq!(
            render(&[b], OutputFormat::Markdown).expect("render"),
            "| name | n |\n| --- | --- |\n| a\\|b | 1 |\n|  | 2 |\n| two<br>lines | 3 |\n"
        );
        assert_eq!(render(&[], OutputFormat::Markdown).expect("render"), "");
        assert_eq!("ndjson".parse(), Ok(OutputFormat::Json));
        assert_eq!("md".parse(), Ok(OutputFormat::Markdown));
        assert!("xml".parse::<OutputFormat>().expect_err("unknown").to_string().contains("markdown"));
    }

    #[test]
    fn first_rows_keeps_the_first_and_counts_the_rest() {
        let batches = [batch(&[Some("a"), Some("b")], 0), batch(&[Some("c"), Some("d"), Some("e")], 2)];
        let (kept, left) = first_rows(&batches, 3);
        assert_eq!((kept.iter().map(RecordBatch::num_rows).sum::<usize>(), left), (3, 2));
        assert_eq!(render(&kept, OutputFormat::Csv).expect("csv"), "name,n\na,0\nb,1\nc,2\n");
        assert_eq!(first_rows(&batches, 0).1, 0);
        assert_eq!(first_rows(&batches, 5).1, 0);
    }
}
