//! Copies of one batch stored by two collectors.
//!
//! An agent retries a batch until some collector acknowledges it. When a
//! collector dies after its log made the batch durable but before its
//! answer arrived, the agent's retry can land on another collector, and
//! then both hold the batch (each under the agent id it gave the agent).
//! Every Parquet file of a shared store lists its batches in its footer
//! (key [`crate::files::BATCHES_KEY`], see [`batch_list`]), so a reader finds such
//! copies without scanning rows (of a file without the list it reads the
//! `agent_id` and `batch_id` columns alone). The rule: of the copies of a
//! batch id, the one stored by the collector whose id sorts first counts;
//! the others are left out of `flows`. Every reader applies the same rule
//! to what it sees, so a batch is counted once wherever the query runs.

use std::collections::{BTreeMap, HashSet};

use arrow::array::RecordBatch;

use crate::udf::Strings;

/// The distinct `(agent_id, batch_id)` pairs of `rows` (in `flows` schema,
/// strings of any string type).
pub fn batch_pairs<'a>(rows: impl IntoIterator<Item = &'a RecordBatch>, into: &mut HashSet<(String, String)>) {
    for batch in rows {
        let (Some(agents), Some(ids)) = (batch.column_by_name("agent_id"), batch.column_by_name("batch_id")) else {
            continue;
        };
        let (Ok(agents), Ok(ids)) = (Strings::of(agents), Strings::of(ids)) else { continue };
        let mut last: Option<(&str, &str)> = None;
        for row in 0..agents.len().min(ids.len()) {
            let (Some(agent), Some(id)) = (agents.get(row), ids.get(row)) else { continue };
            // Rows of a batch often sit together: skip the set lookup then.
            if last == Some((agent, id)) {
                continue;
            }
            last = Some((agent, id));
            into.insert((agent.to_string(), id.to_string()));
        }
    }
}

/// The footer value for `pairs`: one line per agent, `agent_id` and its
/// batch ids, space-separated and sorted (an agent's id once, not once per
/// batch: the list is a sizeable part of a small file).
pub fn batch_list(pairs: &HashSet<(String, String)>) -> String {
    let mut sorted: Vec<_> = pairs.iter().collect();
    sorted.sort();
    let mut out = String::with_capacity(sorted.len() * 34);
    let mut agent_now: Option<&str> = None;
    for (agent, id) in sorted {
        if agent_now != Some(agent.as_str()) {
            if agent_now.is_some() {
                out.push('\n');
            }
            out.push_str(agent);
            agent_now = Some(agent);
        }
        out.push(' ');
        out.push_str(id);
    }
    if agent_now.is_some() {
        out.push('\n');
    }
    out
}

/// The pairs of a footer value: lines of an agent id and one or more
/// batch ids (files written before the list was grouped by agent have one
/// batch id per line); lines without a batch id are skipped.
pub fn parse_batch_list(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split(' ').filter(|w| !w.is_empty());
        let Some(agent) = words.next() else { continue };
        out.extend(words.map(|id| (agent.to_string(), id.to_string())));
    }
    out
}

/// Which copies to leave out: given, for each collector, the pairs it
/// holds, the `(agent_id, batch_id)` pairs of every copy of a batch id
/// that a collector sorting first also holds.
pub fn losing_copies<'a>(held: impl IntoIterator<Item = (&'a str, &'a (String, String))>) -> Vec<(String, String)> {
    // batch id -> (collector, agent id) of its first copy so far, and the rest.
    let mut by_batch: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (collector, (agent, id)) in held {
        by_batch.entry(id.as_str()).or_default().push((collector, agent.as_str()));
    }
    let mut out = Vec::new();
    for (id, mut copies) in by_batch {
        copies.sort_unstable();
        copies.dedup();
        let Some(&(winner, _)) = copies.first() else { continue };
        for &(collector, agent) in &copies[1..] {
            // Two agent ids on one collector for one batch id would be two
            // agents choosing the same id: not copies, keep both.
            if collector != winner {
                out.push((agent.to_string(), id.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_collector_sorting_first_keeps_its_copy() {
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        let a = [pair("a1", "x"), pair("a1", "only-a")];
        let b = [pair("b1", "x"), pair("b1", "only-b")];
        let c = [pair("c1", "x")];
        let held = a.iter().map(|p| ("A", p)).chain(b.iter().map(|p| ("B", p))).chain(c.iter().map(|p| ("C", p)));
        let mut losers = losing_copies(held);
        losers.sort();
        assert_eq!(losers, vec![pair("b1", "x"), pair("c1", "x")]);

        let set: HashSet<_> = [pair("b1", "x"), pair("a1", "z"), pair("a1", "y")].into_iter().collect();
        let text = batch_list(&set);
        assert_eq!(text, "a1 y z\nb1 x\n");
        let all = vec![pair("a1", "y"), pair("a1", "z"), pair("b1", "x")];
        assert_eq!(parse_batch_list(&format!("{text}garbage\n\n")), all);
        // Files written before the list was grouped: one pair per line.
        assert_eq!(parse_batch_list("a1 y\na1 z\nb1 x\n"), all);
        assert_eq!(batch_list(&HashSet::new()), "");
    }
}
