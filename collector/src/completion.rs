//! Tab completion in the SQL console: backslash commands, and in SQL the
//! tables, their columns, the functions and keywords; after `\rule` the
//! rules, after `\format` the formats, after `\d` the tables. Tables,
//! columns and functions are read once when the console opens, from the
//! session's `information_schema` (on a collector too, over Flight SQL).

use arrow::array::{Array, RecordBatch, StringArray};

use crate::sql::Backend;

/// The console's backslash commands.
pub const COMMANDS: [&str; 9] = ["\\?", "\\d", "\\rules", "\\rule", "\\format", "\\limit", "\\timing", "\\q", "\\help"];

/// SQL keywords offered beside the names (upper case, as typed most).
const KEYWORDS: [&str; 36] = [
    "SELECT", "FROM", "WHERE", "GROUP", "BY", "ORDER", "HAVING", "LIMIT", "OFFSET", "JOIN", "LEFT", "RIGHT", "INNER",
    "OUTER", "ON", "AS", "AND", "OR", "NOT", "IN", "IS", "NULL", "DISTINCT", "COUNT", "CASE", "WHEN", "THEN", "ELSE",
    "END", "WITH", "UNION", "ALL", "ASC", "DESC", "BETWEEN", "LIKE",
];

/// The words the console completes.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    tables: Vec<String>,
    columns: Vec<String>,
    functions: Vec<String>,
    rules: Vec<String>,
}

/// The strings of column `i` of `batches` (any string type), NULLs left out.
fn strings(batches: &[RecordBatch], i: usize) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        let Some(column) = batch.columns().get(i) else { continue };
        let Ok(column) = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8) else { continue };
        let Some(column) = column.as_any().downcast_ref::<StringArray>() else { continue };
        out.extend(column.iter().flatten().map(str::to_string));
    }
    out
}

impl Vocabulary {
    /// The names `backend`'s session knows (none of a kind its
    /// `information_schema` does not answer), and the built-in rules.
    pub async fn load(backend: &Backend) -> Self {
        let mut words = Self {
            rules: leakwatch_query::rules::builtin_rules().iter().map(|r| r.name.clone()).collect(),
            ..Self::default()
        };
        if let Ok(b) = backend
            .query("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")
            .await
        {
            words.tables = strings(&b, 0);
            words.columns = strings(&b, 1);
        }
        if let Ok(b) = backend.query("SELECT DISTINCT routine_name FROM information_schema.routines").await {
            words.functions = strings(&b, 0);
        }
        for list in [&mut words.tables, &mut words.columns, &mut words.functions, &mut words.rules] {
            list.sort();
            list.dedup();
        }
        words
    }

    /// Where the word being typed at `pos` in `line` starts, and the words
    /// it may become (in order, each once).
    pub fn complete(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let before = line.get(..pos).unwrap_or(line);
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '\\'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &before[start..];
        let head = before[..start].trim_end();
        let tables = || self.tables.iter().map(String::as_str).collect::<Vec<_>>();
        let pool: Vec<&str> = if word.starts_with('\\') && head.is_empty() {
            COMMANDS.to_vec()
        } else if head == "\\rule" {
            self.rules.iter().map(String::as_str).collect()
        } else if head == "\\format" {
            leakwatch_query::format::OutputFormat::NAMES.to_vec()
        } else if head == "\\d" {
            tables()
        } else if word.is_empty() || head.starts_with('\\') {
            return (pos, Vec::new());
        } else {
            let mut all = tables();
            all.extend(self.columns.iter().map(String::as_str));
            all.extend(self.functions.iter().map(String::as_str));
            all.extend(KEYWORDS);
            all
        };
        let lower = word.to_lowercase();
        let mut found: Vec<String> =
            pool.into_iter().filter(|w| w.to_lowercase().starts_with(&lower)).map(str::to_string).collect();
        found.sort();
        found.dedup();
        (start, found)
    }
}

/// The console's line editor helper: completion from a [`Vocabulary`].
pub struct ConsoleHelper(pub Vocabulary);

impl rustyline::completion::Completer for ConsoleHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(self.0.complete(line, pos))
    }
}

impl rustyline::hint::Hinter for ConsoleHelper {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for ConsoleHelper {}

impl rustyline::validate::Validator for ConsoleHelper {}

impl rustyline::Helper for ConsoleHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn words() -> Vocabulary {
        Vocabulary {
            tables: vec!["boots".into(), "devices".into(), "flows".into()],
            columns: vec!["device_pseudonym".into(), "domain".into(), "dst_port".into()],
            functions: vec!["date_trunc".into(), "registrable_domain".into()],
            rules: vec!["beaconing".into(), "boot_phone_home".into()],
        }
    }

    #[test]
    fn each_place_completes_its_own_words() {
        let w = words();
        assert_eq!(w.complete("\\ru", 3), (0, vec!["\\rule".into(), "\\rules".into()]));
        assert_eq!(w.complete("\\rule bo", 8), (6, vec!["boot_phone_home".into()]));
        assert_eq!(w.complete("\\format m", 9), (8, vec!["markdown".into()]));
        assert_eq!(w.complete("\\d fl", 5), (3, vec!["flows".into()]));
        assert_eq!(w.complete("SELECT do", 9), (7, vec!["domain".into()]));
        assert_eq!(w.complete("SELECT count(*) FROM f", 22), (21, vec!["FROM".into(), "flows".into()]));
        assert_eq!(w.complete("select registr", 14), (7, vec!["registrable_domain".into()]));
        assert_eq!(w.complete("SELECT flows.dst", 16), (13, vec!["dst_port".into()]));
        assert_eq!(w.complete("sel", 3), (0, vec!["SELECT".into()]));
        // Nothing typed yet, or a word no name starts with: nothing.
        assert_eq!(w.complete("SELECT ", 7), (7, Vec::new()));
        assert_eq!(w.complete("SELECT zzz", 10).1, Vec::<String>::new());
        // The cursor inside the line: the word before it.
        assert_eq!(w.complete("SELECT dev FROM flows", 10), (7, vec!["device_pseudonym".into(), "devices".into()]));
    }
}
