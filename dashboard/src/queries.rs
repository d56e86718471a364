//! The dashboard's queries: SQL files in `sql/`, shipped in the binary,
//! like the detection rules.
//!
//! Each file begins with a header:
//!
//! ```text
//! -- name: models
//! -- What it computes (any comment lines).
//! -- columns: vendor text, model text, devices int
//! ```
//!
//! `columns` declares the result's columns in order, each as `text`,
//! `int` (timestamps become epoch seconds) or `float`; the result must
//! have exactly these, and code reads them by name ([`Row`]). In the SQL,
//! `${min_devices}` and `${min_volunteers}` are the publication
//! thresholds, `${dest_flows}` is the fragment in `dest_flows.sql` (flows
//! with a destination name), and a query may take further fixed
//! fragments of the dashboard's own (never text from a request).

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use leakwatch_query::QuerySession;

use crate::aggregate::Thresholds;
use crate::{Error, Result};

/// The query files.
const FILES: &[&str] = &[
    include_str!("sql/models.sql"),
    include_str!("sql/model_hosts.sql"),
    include_str!("sql/model_destinations.sql"),
    include_str!("sql/model_ports.sql"),
    include_str!("sql/firmware.sql"),
    include_str!("sql/firmware_destinations.sql"),
    include_str!("sql/destinations.sql"),
    include_str!("sql/destination_trend.sql"),
    include_str!("sql/evidence.sql"),
];

/// Flows with a destination name (`${dest_flows}`).
const DEST_FLOWS: &str = include_str!("sql/dest_flows.sql");

/// One dashboard query.
#[derive(Debug, Clone)]
pub struct Query {
    /// Its name (the file's).
    pub name: &'static str,
    /// Declared result columns, in order, with the type each is read as.
    pub columns: Vec<(&'static str, DataType)>,
    /// The SQL, placeholders unfilled.
    sql: &'static str,
}

/// Body of an SQL file: its lines after the leading comments.
fn body(file: &'static str) -> &'static str {
    let mut rest = file;
    while let Some(line) = rest.lines().next()
        && line.starts_with("--")
    {
        rest = rest.get(line.len()..).unwrap_or("").trim_start_matches(['\r', '\n']);
    }
    rest
}

fn header<'a>(file: &'a str, key: &str) -> Option<&'a str> {
    file.lines()
        .take_while(|l| l.starts_with("--"))
        .find_map(|l| l.strip_prefix("--").map(str::trim).and_then(|l| l.strip_prefix(key)))
        .map(|v| v.trim_start_matches(':').trim())
}

impl Query {
    fn parse(file: &'static str) -> Result<Self> {
        let bad = |reason: String| Error::QueryFile(reason);
        let name = header(file, "name").ok_or_else(|| bad("no `-- name:` line".into()))?;
        let columns = header(file, "columns")
            .ok_or_else(|| bad(format!("{name}: no `-- columns:` line")))?
            .split(',')
            .map(|c| {
                let (column, ty) =
                    c.trim().split_once(' ').ok_or_else(|| bad(format!("{name}: column {c:?} has no type")))?;
                let ty = match ty.trim() {
                    "text" => DataType::Utf8,
                    "int" => DataType::Int64,
                    "float" => DataType::Float64,
                    other => {
                        return Err(bad(format!("{name}: column {column}: type {other:?} is not text, int or float")));
                    }
                };
                Ok((column, ty))
            })
            .collect::<Result<_>>()?;
        Ok(Self { name, columns, sql: body(file) })
    }

    /// The SQL with the thresholds, `${dest_flows}` and `fragments` put in.
    pub fn render(&self, thresholds: Thresholds, fragments: &[(&str, &str)]) -> String {
        let dest_flows = body(DEST_FLOWS).trim_end();
        let (devices, volunteers) = (thresholds.min_devices.to_string(), thresholds.min_volunteers.to_string());
        let mut sql = self.sql.to_string();
        for (key, value) in
            [("min_devices", devices.as_str()), ("min_volunteers", volunteers.as_str()), ("dest_flows", dest_flows)]
                .into_iter()
                .chain(fragments.iter().copied())
        {
            sql = sql.replace(&format!("${{{key}}}"), value);
        }
        sql
    }

    /// Runs the query on `session`, logging its time
    /// (`LEAKWATCH_LOG=leakwatch_dashboard=debug`), and reads its result.
    pub async fn run(
        &self,
        session: &QuerySession,
        thresholds: Thresholds,
        fragments: &[(&str, &str)],
    ) -> Result<Rows> {
        self.read(&timed(session, self.name, &self.render(thresholds, fragments)).await?)
    }

    /// The declared columns of `batches`, cast to their declared types.
    pub(crate) fn read(&self, batches: &[RecordBatch]) -> Result<Rows> {
        let mut read = Vec::with_capacity(batches.len());
        for batch in batches {
            let got: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
            let want: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
            if got != want {
                return Err(Error::Shape { query: self.name, want: want.join(", "), got: got.join(", ") });
            }
            let cast = |(col, (name, ty)): (&ArrayRef, &(&str, DataType))| {
                let col = match (col.data_type(), ty) {
                    (DataType::Timestamp(..), DataType::Int64) => {
                        arrow::compute::cast(col, &DataType::Timestamp(TimeUnit::Second, None))
                            .and_then(|secs| arrow::compute::cast(&secs, ty))
                    }
                    _ => arrow::compute::cast(col, ty),
                };
                col.map_err(|source| Error::Arrow {
                    context: format!("dashboard query {}: column {name}", self.name),
                    source,
                })
            };
            read.push((batch.num_rows(), batch.columns().iter().zip(&self.columns).map(cast).collect::<Result<_>>()?));
        }
        Ok(Rows { query: self.clone(), batches: read })
    }
}

/// A query's result, read.
#[derive(Debug)]
pub struct Rows {
    query: Query,
    batches: Vec<(usize, Vec<ArrayRef>)>,
}

impl Rows {
    /// How many rows.
    pub(crate) fn len(&self) -> usize {
        self.batches.iter().map(|(rows, _)| rows).sum()
    }

    /// Calls `f` for each row.
    pub fn each(&self, mut f: impl FnMut(Row<'_>)) {
        for (rows, cols) in &self.batches {
            for i in 0..*rows {
                f(Row { query: &self.query, cols, i });
            }
        }
    }
}

#[cfg(test)]
impl Rows {
    /// Each row as text, `NULL` for a null and floats to the last bit, in
    /// sorted order: results compared whatever order their rows came in.
    pub(crate) fn lines(&self) -> Vec<String> {
        use arrow::util::display::{ArrayFormatter, FormatOptions};
        let options = FormatOptions::default().with_null("NULL");
        let mut lines = Vec::new();
        for (rows, cols) in &self.batches {
            let formatters: Vec<ArrayFormatter<'_>> =
                cols.iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter")).collect();
            for i in 0..*rows {
                lines.push(
                    formatters.iter().map(|f| format!("{:?}", f.value(i).to_string())).collect::<Vec<_>>().join(","),
                );
            }
        }
        lines.sort();
        lines
    }
}

/// One row of a query's result; its columns by name.
#[derive(Debug)]
pub struct Row<'a> {
    query: &'a Query,
    cols: &'a [ArrayRef],
    i: usize,
}

impl<'a> Row<'a> {
    /// The column `name`, which the query's file must declare (a test runs
    /// every file, and reading an undeclared column is a bug: debug builds
    /// stop on it, release builds read null).
    fn column(&self, name: &str) -> Option<&'a ArrayRef> {
        let found = self.query.columns.iter().position(|(c, _)| *c == name).and_then(|p| self.cols.get(p));
        debug_assert!(found.is_some(), "dashboard query {} declares no column {name}", self.query.name);
        found
    }

    /// A text column (empty when null).
    pub fn text(&self, name: &str) -> String {
        self.opt_text(name).unwrap_or_default()
    }

    /// A text column as the result holds it (empty when null).
    pub fn str(&self, name: &str) -> &'a str {
        match self.column(name).and_then(|c| c.as_string_opt::<i32>()) {
            Some(a) if !a.is_null(self.i) => a.value(self.i),
            _ => "",
        }
    }

    /// A text column.
    pub fn opt_text(&self, name: &str) -> Option<String> {
        let a = self.column(name)?.as_string_opt::<i32>()?;
        (!a.is_null(self.i)).then(|| a.value(self.i).to_string())
    }

    /// A float column (NaN when null).
    pub fn float(&self, name: &str) -> f64 {
        match self.column(name).and_then(|c| c.as_primitive_opt::<Float64Type>()) {
            Some(a) if !a.is_null(self.i) => a.value(self.i),
            _ => f64::NAN,
        }
    }

    /// An integer column.
    pub fn opt_int(&self, name: &str) -> Option<i64> {
        let a = self.column(name)?.as_primitive_opt::<Int64Type>()?;
        (!a.is_null(self.i)).then(|| a.value(self.i))
    }

    /// An integer column (0 when null).
    pub fn int(&self, name: &str) -> i64 {
        match self.column(name).and_then(|c| c.as_primitive_opt::<Int64Type>()) {
            Some(a) if !a.is_null(self.i) => a.value(self.i),
            _ => 0,
        }
    }

    /// A count column (0 when null or negative).
    pub fn count(&self, name: &str) -> u64 {
        u64::try_from(self.int(name)).unwrap_or(0)
    }
}

/// Runs `sql` (the dashboard query `what`) on `session`, logging its time
/// (`LEAKWATCH_LOG=leakwatch_dashboard=debug`).
pub(crate) async fn timed(session: &QuerySession, what: &str, sql: &str) -> Result<Vec<RecordBatch>> {
    let started = std::time::Instant::now();
    let batches = session.sql(sql).await;
    tracing::debug!(query = what, elapsed_ms = started.elapsed().as_millis() as u64, "Dashboard query");
    batches.map_err(|source| Error::InQuery { query: what.to_string(), source: Box::new(source) })
}

/// The query `name` of `queries`.
pub fn named<'a>(queries: &'a BTreeMap<&'static str, Query>, name: &str) -> Result<&'a Query> {
    queries.get(name).ok_or_else(|| Error::QueryFile(format!("no query {name}")))
}

/// Every query, by name.
pub fn queries() -> BTreeMap<&'static str, Query> {
    FILES
        .iter()
        .map(|file| {
            // The files are part of the binary; a test parses each.
            let query = Query::parse(file).unwrap_or_else(|e| panic!("dashboard query file: {e}"));
            (query.name, query)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use leakwatch_query::digest::Digests;
    use leakwatch_query::{FilesOnly, FlowStore, QueryConfig, SessionFactory};

    use super::*;

    #[test]
    fn every_file_parses_and_fills_every_placeholder() {
        for file in FILES {
            let query = Query::parse(file).expect("parses");
            let sql = query.render(Thresholds::default(), &[("destination", "f.domain"), ("hits", "hits")]);
            assert!(!sql.contains("${"), "{}: a placeholder is left: {sql}", query.name);
            assert!(!sql.trim_start().starts_with("--"), "{}: header in the body", query.name);
        }
        assert_eq!(queries().len(), FILES.len(), "two files share a name");
    }

    #[test]
    fn a_bad_header_names_the_file_and_the_fault() {
        let e = Query::parse("-- name: q\n-- columns: a text, b number\nSELECT 1").expect_err("type").to_string();
        assert!(e.contains("q: column b: type \"number\""), "{e}");
        let e = Query::parse("-- name: q\nSELECT 1").expect_err("no columns").to_string();
        assert!(e.contains("q: no `-- columns:`"), "{e}");
    }

    /// A refresh that runs out of memory says which query did, and which
    /// setting to raise: 20,000 devices' records under a 256 KiB limit.
    #[tokio::test]
    async fn a_query_out_of_memory_is_named_with_the_setting_to_raise() {
        use leakwatch_query::{FlowBatchBuilder, FlowRow};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FlowStore::local(dir.path()).expect("store");
        let config = QueryConfig { memory_limit_bytes: 256 << 10, ..QueryConfig::default() };
        let factory = SessionFactory::new(config, store, Arc::new(FilesOnly));
        let (session, _) = factory.digest_session(&Digests::default()).await.expect("session");
        let mut rows = FlowBatchBuilder::new();
        for device in 0..20_000 {
            rows.push(FlowRow {
                agent_id: format!("agent-{}", device % 7),
                device_pseudonym: format!("device-{device:08}"),
                vendor: "Acme".into(),
                model: "Cam".into(),
                domain: "api.acme.example".into(),
                ..FlowRow::default()
            });
        }
        let ctx = session.context();
        let _ = ctx.deregister_table("flows").expect("deregister");
        ctx.register_batch("flows", rows.finish()).expect("register");
        let e = crate::aggregate::compute(&session, Thresholds::default(), None)
            .await
            .expect_err("over 256 KiB")
            .to_string();
        assert!(e.starts_with("dashboard query models: query needs more memory than allowed"), "{e}");
        assert!(e.contains("--query-memory-mib: 256.0 KB"), "{e}");
    }

    /// Each file runs on the digest of the flows and answers exactly the
    /// columns it declares: the names code reads are the query's.
    #[tokio::test]
    async fn every_query_answers_the_columns_it_declares() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FlowStore::local(dir.path()).expect("store");
        let factory = SessionFactory::new(QueryConfig::default(), store, Arc::new(FilesOnly));
        let (session, _) = factory.digest_session(&Digests::default()).await.expect("session");
        let hits = RecordBatch::new_empty(crate::aggregate::hits_schema());
        session.context().register_batch("hits", hits).expect("hits");
        for query in queries().values() {
            let sql = query.render(Thresholds::default(), &[("destination", "f.domain"), ("hits", "hits")]);
            let batches = session.sql(&sql).await.unwrap_or_else(|e| panic!("{}: {e}", query.name));
            let schema = match batches.first() {
                Some(b) => b.schema(),
                None => session.context().sql(&sql).await.expect("plan").schema().inner().clone(),
            };
            let got: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let want: Vec<&str> = query.columns.iter().map(|(c, _)| *c).collect();
            assert_eq!(got, want, "{}", query.name);
            query.read(&[RecordBatch::new_empty(schema)]).unwrap_or_else(|e| panic!("{}: {e}", query.name));
        }
    }
}
