//! Parsing one statement within bounds, before DataFusion plans it.
//!
//! The SQL parser builds chains of binary operators (`1+1+...+1`), casts
//! and set operations (`... UNION ...`) in a loop, so their depth is not
//! limited by its recursion limit; DataFusion's planner, its optimizer and
//! dropping the syntax tree then recurse once per level, and a 20 KB query
//! of 10,000 terms overflowed a thread's stack, which aborts the whole
//! process. Here a statement is parsed on a thread with a stack large
//! enough for the deepest tree the longest accepted text can make
//! ([`MAX_SQL_BYTES`], [`PARSE_STACK`]), and refused with a clear error
//! when it nests deeper than [`MAX_EXPR_DEPTH`], chains more than
//! [`MAX_SET_OPERATIONS`] or reads more than [`MAX_TABLE_REFERENCES`]
//! tables; only a statement within those bounds leaves that thread.

use std::ops::ControlFlow;

use datafusion::config::Dialect;
use datafusion::execution::SessionState;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{Expr, Query, SetExpr, TableFactor, Visit, Visitor};

use crate::{Error, Result};

/// Longest SQL text accepted, bytes.
pub const MAX_SQL_BYTES: usize = 256 * 1024;
/// Deepest nesting of expressions accepted (operators, casts, function
/// arguments and subqueries each add a level).
pub const MAX_EXPR_DEPTH: usize = 128;
/// Most set operations (`UNION`, `INTERSECT`, `EXCEPT`) in one query.
pub const MAX_SET_OPERATIONS: usize = 128;
/// Most table references (tables, views, subqueries in `FROM`) in one
/// statement: each join is a level of the plan.
pub const MAX_TABLE_REFERENCES: usize = 256;
/// Stack of the parsing thread: a tree from [`MAX_SQL_BYTES`] of text is
/// at most one level per two bytes, and dropping it recurses once per
/// level; the deepest one overflowed 4 MiB and fitted in 16 MiB in a debug
/// build (a test drops it), so this leaves room. Only the pages touched
/// are used.
const PARSE_STACK: usize = 64 << 20;

/// Parses `sql` with the session's dialect and checks its bounds.
pub(crate) fn parse_bounded(state: &SessionState, sql: &str) -> Result<Statement> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(Error::Invalid(format!("query: {} bytes, at most {MAX_SQL_BYTES}", sql.len())));
    }
    let dialect: Dialect = state.config().options().sql_parser.dialect;
    std::thread::scope(|scope| {
        let parse = std::thread::Builder::new()
            .name("leakwatch-parse".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(scope, || {
                let statement = state.sql_to_statement(sql, &dialect)?;
                check(&statement)?;
                Ok(statement)
                // A statement refused is dropped here, on this stack.
            })
            .map_err(|e| Error::Internal(format!("starting the SQL parser's thread: {e}")))?;
        parse.join().map_err(|_| Error::Internal("the SQL parser panicked".into()))?
    })
}

/// Checks a parsed statement's bounds.
fn check(statement: &Statement) -> Result<()> {
    match statement {
        Statement::Statement(s) => match s.visit(&mut Bounds::default()) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(e) => Err(e),
        },
        Statement::Explain(explain) => check(&explain.statement),
        Statement::CreateExternalTable(_) => Err(Error::ReadOnly("CREATE EXTERNAL TABLE".into())),
        Statement::CopyTo(_) => Err(Error::ReadOnly("COPY".into())),
        Statement::Reset(_) => Err(Error::ReadOnly("RESET".into())),
    }
}

/// Counts while visiting a syntax tree; breaks at the first bound passed,
/// so that the visit itself never goes deeper than the bounds.
#[derive(Default)]
struct Bounds {
    depth: usize,
    tables: usize,
}

impl Visitor for Bounds {
    type Break = Error;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Error> {
        // Before the visit descends into the chain: counted with a stack.
        let mut operations = 0usize;
        let mut pending = vec![query.body.as_ref()];
        while let Some(body) = pending.pop() {
            if let SetExpr::SetOperation { left, right, .. } = body {
                operations += 1;
                if operations > MAX_SET_OPERATIONS {
                    return ControlFlow::Break(Error::Invalid(format!(
                        "query: more than {MAX_SET_OPERATIONS} set operations (UNION, INTERSECT, EXCEPT) \
                         in one query, at most {MAX_SET_OPERATIONS}"
                    )));
                }
                pending.extend([left.as_ref(), right.as_ref()]);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, _table: &TableFactor) -> ControlFlow<Error> {
        self.tables += 1;
        if self.tables > MAX_TABLE_REFERENCES {
            return ControlFlow::Break(Error::Invalid(format!(
                "query: more than {MAX_TABLE_REFERENCES} table references, at most {MAX_TABLE_REFERENCES}"
            )));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<Error> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return ControlFlow::Break(Error::Invalid(format!(
                "query: expressions nested more than {MAX_EXPR_DEPTH} levels deep (operators, casts, \
                 function calls and subqueries each add one), at most {MAX_EXPR_DEPTH}"
            )));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<Error> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    fn parse(sql: &str) -> Result<Statement> {
        parse_bounded(&SessionContext::new().state(), sql)
    }

    fn chain(op: &str, n: usize) -> String {
        format!("SELECT 1{}", format!(" {op} 1").repeat(n - 1))
    }

    #[test]
    fn deep_chains_are_refused_naming_the_bound_and_shallow_ones_pass() {
        assert!(parse(&chain("+", MAX_EXPR_DEPTH)).is_ok());
        for sql in [chain("+", MAX_EXPR_DEPTH + 2), chain("+", 10_000), chain("AND", 10_000)] {
            let err = parse(&sql).expect_err("too deep").to_string();
            assert!(err.contains("nested more than 128 levels deep"), "{err}");
        }
        let casts = format!("SELECT 1{}", "::int".repeat(10_000));
        assert!(parse(&casts).expect_err("too deep").to_string().contains("nested more than 128"));
        let unions = format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(10_000));
        assert!(parse(&unions).expect_err("too many").to_string().contains("more than 128 set operations"));
        let joins = format!("SELECT 1 FROM t0{}", (1..1000).map(|i| format!(", t{i}")).collect::<String>());
        assert!(parse(&joins).expect_err("too many").to_string().contains("more than 256 table references"));
    }

    #[test]
    fn the_longest_text_of_the_deepest_shape_is_refused_without_overflowing() {
        // One level per two bytes: the deepest tree the length allows.
        let sql = format!("SELECT 1{}", "+1".repeat((MAX_SQL_BYTES - 8) / 2));
        assert!(sql.len() <= MAX_SQL_BYTES);
        assert!(parse(&sql).expect_err("too deep").to_string().contains("nested more than"));
        let err = parse(&format!("{sql}+1+1")).expect_err("too long").to_string();
        assert!(err.contains(&format!("bytes, at most {MAX_SQL_BYTES}")), "{err}");
    }
}
