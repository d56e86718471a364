//! Common table expressions computed once.
//!
//! DataFusion plans a CTE again at every reference (apache/datafusion issue
//! 8777), so a rule whose `settings` CTE is joined four times reads and
//! de-duplicates the flows four times. [`split`] turns one query into steps:
//! each CTE referenced more than once is run once into a table of the
//! session, under a name no analyst's query uses, and the query then reads
//! that table. The SQL
//! an analyst sees and runs stays as written; only its execution changes.
//! The tables count against the session's memory limit while the query
//! runs and are dropped after it. A CTE that only filters and projects
//! rows (no grouping, de-duplicating, joins, windows, sorts or subqueries)
//! becomes a view instead: reading it again costs what reading a computed
//! copy would, and a copy of every row it passes would take memory.

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Ident, ObjectName, ObjectNamePart, Query, Statement, TableAlias, TableFactor, Visit, VisitMut, Visitor, VisitorMut,
    With, visit_relations,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// One query as steps: tables to compute first, in order, then the query
/// reading them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps {
    /// (table name, SQL computing it), in order; later ones may read
    /// earlier ones.
    pub tables: Vec<(String, String)>,
    /// The query itself, reading those tables.
    pub query: String,
}

/// How DataFusion resolves a name: unquoted identifiers in lower case.
fn normalised(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The name of a one-part relation reference.
fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => Some(normalised(ident)),
        _ => None,
    }
}

/// The steps of `sql`, or `None` when it is not a single query with CTEs
/// worth computing once (it then runs as it is). `prefix` starts the table
/// names (unique per query run).
pub fn split(sql: &str, prefix: &str) -> Option<Steps> {
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Statement::Query(mut query) = statements.pop()? else { return None };
    let with = query.with.as_ref()?;
    if with.recursive {
        return None;
    }
    // References to each CTE name anywhere in the query (a nested CTE of
    // the same name would be counted too: then nothing is materialised).
    let names: Vec<String> = with.cte_tables.iter().map(|c| normalised(&c.alias.name)).collect();
    if names.iter().enumerate().any(|(i, n)| names[..i].contains(n)) {
        return None;
    }
    let mut references: HashMap<String, usize> = HashMap::new();
    let _ = visit_relations(&query, |name: &ObjectName| {
        if let Some(n) = single_name(name) {
            *references.entry(n).or_default() += 1;
        }
        ControlFlow::<()>::Continue(())
    });
    let nested_ctes = nested_cte_names(&query);
    let chosen: Vec<String> = with
        .cte_tables
        .iter()
        .zip(names)
        .filter(|(c, n)| c.alias.columns.is_empty() && references.get(n).copied().unwrap_or(0) >= 2)
        .map(|(_, n)| n)
        .collect();
    if chosen.is_empty() || nested_ctes.iter().any(|n| chosen.contains(n)) {
        return None;
    }
    let table_of: HashMap<String, String> =
        chosen.iter().enumerate().map(|(i, n)| (n.clone(), format!("{prefix}_{i}_{n}"))).collect();
    // Every reference to a chosen CTE now reads its table, under the CTE's
    // name where it had no alias of its own (for qualified columns).
    struct Rename<'a>(&'a HashMap<String, String>);
    impl VisitorMut for Rename<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, alias, args: None, .. } = factor
                && let [ObjectNamePart::Identifier(ident)] = name.0.as_slice()
                && let Some(table) = self.0.get(&normalised(ident))
            {
                let ident = ident.clone();
                alias.get_or_insert(TableAlias { explicit: true, name: ident, columns: Vec::new(), at: None });
                *name = ObjectName::from(vec![Ident::with_quote('"', table.clone())]);
            }
            ControlFlow::Continue(())
        }
    }
    let _ = VisitMut::visit(&mut *query, &mut Rename(&table_of));
    let With { with_token, cte_tables, .. } = query.with.take()?;
    let with = |cte_tables| With { with_token: with_token.clone(), recursive: false, cte_tables };
    let mut kept = Vec::new();
    let mut tables = Vec::new();
    for cte in cte_tables {
        let name = normalised(&cte.alias.name);
        match table_of.get(&name) {
            Some(table) => {
                // The CTE's own query, with the CTEs before it that stay.
                let mut body: Query = *cte.query;
                if !kept.is_empty() {
                    let mut own = body.with.take().map(|w| w.cte_tables).unwrap_or_default();
                    let mut ctes = kept.clone();
                    ctes.append(&mut own);
                    body.with = Some(with(ctes));
                }
                tables.push((table.clone(), body.to_string()));
            }
            None => kept.push(cte),
        }
    }
    query.with = match kept.is_empty() {
        true => None,
        false => Some(with(kept)),
    };
    Some(Steps { tables, query: query.to_string() })
}

/// Names of the CTEs that queries nested in `query` define.
fn nested_cte_names(query: &Query) -> Vec<String> {
    struct Names(Vec<String>);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                self.0.extend(with.cte_tables.iter().map(|c| normalised(&c.alias.name)));
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names(Vec::new());
    let _ = query.visit(&mut names);
    // The first query visited is `query` itself.
    let own = query.with.as_ref().map_or(0, |w| w.cte_tables.len());
    names.0.split_off(own.min(names.0.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctes_referenced_twice_become_steps() {
        let sql = "WITH a AS (SELECT x FROM flows), b AS (SELECT x FROM a WHERE x > 1), \
                   c AS (SELECT x FROM a) SELECT * FROM b JOIN c ON b.x = c.x JOIN b AS b2 ON b2.x = c.x";
        let steps = split(sql, "__t").expect("steps");
        assert_eq!(
            steps.tables,
            vec![
                ("__t_0_a".to_string(), "SELECT x FROM flows".to_string()),
                ("__t_1_b".to_string(), "SELECT x FROM \"__t_0_a\" AS a WHERE x > 1".to_string()),
            ]
        );
        assert_eq!(
            steps.query,
            "WITH c AS (SELECT x FROM \"__t_0_a\" AS a) SELECT * FROM \"__t_1_b\" AS b JOIN c ON b.x = c.x \
             JOIN \"__t_1_b\" AS b2 ON b2.x = c.x"
        );
    }

    #[test]
    fn queries_without_repeated_ctes_run_as_written() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
            "WITH RECURSIVE a AS (SELECT 1 AS x) SELECT * FROM a, a AS a2",
            "WITH a(y) AS (SELECT 1 AS x) SELECT * FROM a, a AS a2",
            "WITH a AS (SELECT 1 AS x) SELECT * FROM a, (WITH a AS (SELECT 2 AS x) SELECT * FROM a) AS n",
            "SELECT 1; SELECT 2",
            "not sql",
        ] {
            assert_eq!(split(sql, "__t"), None, "{sql}");
        }
    }
}
