//! Detection rules: SQL files with a header, shipped in the binary.
//!
//! Header lines at the top of each file, before the SQL:
//!
//! ```text
//! -- name: boot_phone_home
//! -- title: One line
//! -- description: What it finds and why.
//! -- param: window_s = 60 | what the parameter means
//! -- columns: vendor, model, ...
//! -- public: median_s, ...
//! -- needs: seconds_since_boot
//! ```
//!
//! `public` names the result columns whose numbers are computed over the
//! row's own devices alone: the group whose device and volunteer counts
//! the public dashboard checks against its thresholds before it publishes
//! the row. The dashboard publishes those numbers and no other of the
//! rule's columns (a share over another group, such as the devices that
//! left a setting on, may rest on a single device).
//!
//! `needs` names the `flows` columns a rule cannot do without; some
//! sources cannot know them (NULL: the time since boot from a DNS
//! server's log), and the rule leaves such records out, also of its
//! counts of a model's devices.
//!
//! Parameters are numbers; `${name}` in the SQL is replaced by the value
//! (given or default), after checking that it parses as a number, so a
//! parameter cannot inject SQL.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// Rule files compiled into the binary.
const RULE_FILES: &[&str] = &[
    include_str!("boot_phone_home.sql"),
    include_str!("consent_off_traffic.sql"),
    include_str!("new_after_update.sql"),
    include_str!("model_exclusive.sql"),
    include_str!("heavy_upload.sql"),
    include_str!("beaconing.sql"),
    include_str!("outside_mud.sql"),
];

/// A rule parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Name used in `${name}` and `--param name=value`.
    pub name: String,
    /// Default value.
    pub default: f64,
    /// What it means.
    pub description: String,
}

/// A detection rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Short name, e.g. `boot_phone_home`.
    pub name: String,
    /// One-line title.
    pub title: String,
    /// What it finds.
    pub description: String,
    /// Parameters with defaults.
    pub params: Vec<Param>,
    /// Columns of its result.
    pub columns: Vec<String>,
    /// Columns computed over the row's own devices alone, which the public
    /// dashboard may publish (see the module doc).
    pub public: Vec<String>,
    /// Columns of `flows` it needs: records where they are NULL are left
    /// out (see the module doc).
    pub needs: Vec<String>,
    /// The SQL with `${param}` placeholders.
    pub sql: String,
}

/// A rule file whose header does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule file: {0}")]
pub struct RuleFileError(String);

fn parse_rule(text: &str) -> std::result::Result<Rule, RuleFileError> {
    let bad = RuleFileError;
    let mut rule = Rule {
        name: String::new(),
        title: String::new(),
        description: String::new(),
        params: Vec::new(),
        columns: Vec::new(),
        public: Vec::new(),
        needs: Vec::new(),
        sql: String::new(),
    };
    let mut body = Vec::new();
    let mut in_header = true;
    for line in text.lines() {
        let header = line.strip_prefix("-- ").and_then(|l| l.split_once(": "));
        match (in_header, header) {
            (true, Some((key, value))) => match key {
                "name" => rule.name = value.trim().to_string(),
                "title" => rule.title = value.trim().to_string(),
                "description" => rule.description = value.trim().to_string(),
                "columns" => rule.columns = value.split(',').map(|c| c.trim().to_string()).collect(),
                "public" => rule.public = value.split(',').map(|c| c.trim().to_string()).collect(),
                "needs" => rule.needs = value.split(',').map(|c| c.trim().to_string()).collect(),
                "param" => {
                    let (decl, description) = value.split_once('|').unwrap_or((value, ""));
                    let (name, default) =
                        decl.split_once('=').ok_or_else(|| bad(format!("param line {value:?} has no '='")))?;
                    rule.params.push(Param {
                        name: name.trim().to_string(),
                        default: default
                            .trim()
                            .parse()
                            .map_err(|_| bad(format!("param {name:?}: default is not a number")))?,
                        description: description.trim().to_string(),
                    });
                }
                other => return Err(bad(format!("unknown header key {other:?}"))),
            },
            _ => {
                in_header = false;
                body.push(line);
            }
        }
    }
    rule.sql = body.join("\n");
    if rule.name.is_empty() || rule.sql.trim().is_empty() {
        return Err(bad("a rule needs a name and SQL".into()));
    }
    if let Some(c) = rule.public.iter().find(|c| !rule.columns.contains(c)) {
        return Err(bad(format!("public column {c:?} is not one of the rule's columns")));
    }
    let schema = crate::schema::flows_schema();
    if let Some(c) = rule.needs.iter().find(|c| schema.field_with_name(c).is_err()) {
        return Err(bad(format!("needs {c:?}, which is no column of flows")));
    }
    if let Some(c) = rule.needs.iter().find(|c| !rule.sql.contains(&format!("{c} IS NOT NULL"))) {
        return Err(bad(format!("needs {c:?} but never leaves out the records where it is NULL")));
    }
    Ok(rule)
}

/// Every built-in rule.
pub fn builtin_rules() -> Vec<Rule> {
    RULE_FILES
        .iter()
        .map(|text| match parse_rule(text) {
            Ok(rule) => rule,
            Err(e) => unreachable!("built-in rule files are checked by tests: {e}"),
        })
        .collect()
}

/// The built-in rule called `name`.
pub fn rule(name: &str) -> Result<Rule> {
    builtin_rules().into_iter().find(|r| r.name == name).ok_or_else(|| {
        let names: Vec<String> = builtin_rules().into_iter().map(|r| r.name).collect();
        Error::Invalid(format!("unknown rule {name:?}; rules: {}", names.join(", ")))
    })
}

impl Rule {
    /// The SQL with parameters filled in from `given` (name → value text)
    /// and defaults.
    pub fn render(&self, given: &BTreeMap<String, String>) -> Result<String> {
        for name in given.keys() {
            if !self.params.iter().any(|p| &p.name == name) {
                let known: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                return Err(Error::Invalid(format!(
                    "rule {} has no parameter {name:?}; parameters: {}",
                    self.name,
                    known.join(", ")
                )));
            }
        }
        let mut sql = self.sql.clone();
        for p in &self.params {
            let value = match given.get(&p.name) {
                Some(text) => text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| Error::Invalid(format!("parameter {}: {text:?} is not a number", p.name)))?,
                None => p.default,
            };
            sql = sql.replace(&format!("${{{}}}", p.name), &value.to_string());
        }
        Ok(sql)
    }

    /// A human description for `--rules`.
    pub fn describe(&self) -> String {
        let mut s = format!("{}\n  {}\n  {}\n", self.name, self.title, self.description);
        for p in &self.params {
            s.push_str(&format!("  --param {}={}  {}\n", p.name, p.default, p.description));
        }
        s.push_str(&format!("  columns: {}\n", self.columns.join(", ")));
        if !self.needs.is_empty() {
            s.push_str(&format!(
                "  needs: {} (records without it, as from Pi-hole or the iOS report, are left out)\n",
                self.needs.join(", ")
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_parse_and_render() {
        let rules: Vec<Rule> = RULE_FILES.iter().map(|t| parse_rule(t).expect("rule parses")).collect();
        assert!(rules.iter().any(|r| r.name == "boot_phone_home"));
        let r = rule("boot_phone_home").expect("rule");
        let sql = r.render(&BTreeMap::new()).expect("render");
        assert!(!sql.contains("${"), "{sql}");
        let bad = BTreeMap::from([("window_s".to_string(), "60; DROP TABLE x".to_string())]);
        assert!(r.render(&bad).expect_err("not a number").to_string().contains("window_s"));
        let unknown = BTreeMap::from([("nope".to_string(), "1".to_string())]);
        assert!(r.render(&unknown).is_err());
    }

    #[test]
    fn a_rule_says_what_it_needs_and_leaves_out_records_without_it() {
        let needs = |name: &str| rule(name).expect("rule").needs;
        assert_eq!(needs("boot_phone_home"), ["seconds_since_boot"]);
        assert_eq!(needs("heavy_upload"), ["bytes_out", "bytes_in"]);
        assert_eq!(needs("beaconing"), ["connections", "interval_mean_s", "interval_cv"]);
        assert!(needs("model_exclusive").is_empty());
        let listed = rule("heavy_upload").expect("rule").describe();
        assert!(listed.contains("needs: bytes_out, bytes_in (records without it"), "{listed}");
        let head = "-- name: r\n-- columns: a\n";
        let err = parse_rule(&format!("{head}-- needs: nope\nSELECT 1 AS a")).expect_err("no such column");
        assert!(err.to_string().contains("\"nope\", which is no column"), "{err}");
        let err = parse_rule(&format!("{head}-- needs: bytes_out\nSELECT sum(bytes_out) AS a FROM flows"))
            .expect_err("keeps NULL records");
        assert!(err.to_string().contains("never leaves out"), "{err}");
    }
}
