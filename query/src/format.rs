//! Rendering query results as a table, CSV or JSON.

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
    /// One JSON object per row, one per line.
    Json,
}

/// A name that is no [`OutputFormat`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?}: use table, csv or json")]
pub struct UnknownFormat(String);

impl std::str::FromStr for OutputFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownFormat> {
        match s {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
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
    }
}
