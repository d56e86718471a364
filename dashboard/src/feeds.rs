//! Atom feeds (RFC 4287) of new and changed findings: all, per vendor,
//! per model. An entry's id is its finding's permanent address, so a
//! reader shows a finding once and again only when it changed.
//!
//! When a finding was first published and last changed outlives a
//! restart: [`History`] keeps, per finding id, a digest of what a reader
//! sees (the claim and its figures, not the day of the last record, which
//! moves daily) with both times, in the dashboard's state directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::aggregate::Finding;
use crate::aggregate::Snapshot;
use crate::lists::Scope;
use crate::pages::finding_href;

/// Entries a feed carries at most, the most recently changed.
pub const MAX_ENTRIES: usize = 200;

/// The history file's name in the state directory.
const FILE: &str = "feed-history.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stamp {
    digest: String,
    published: String,
    updated: String,
}

/// When each finding was first published and last changed.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct History {
    findings: BTreeMap<String, Stamp>,
    #[serde(skip)]
    path: Option<PathBuf>,
}

fn digest(f: &Finding) -> String {
    let mut h = Sha256::new();
    let counts =
        |c: &[crate::aggregate::Count]| c.iter().map(|c| format!("{}={}", c.value, c.devices)).collect::<Vec<_>>();
    let parts = [
        f.claim.clone(),
        f.devices.to_string(),
        f.volunteers.to_string(),
        f.population_devices.to_string(),
        f.firmware_min.clone().unwrap_or_default(),
        f.firmware_max.clone().unwrap_or_default(),
        counts(&f.consent).join(";"),
        counts(&f.sources).join(";"),
    ];
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

impl History {
    /// The history kept in `dir`, empty when there is none yet. One that
    /// cannot be read is logged and started afresh: the feeds then date
    /// every finding from now, and nothing else depends on it.
    pub fn load(dir: Option<&Path>) -> Self {
        let Some(dir) = dir else { return Self::default() };
        let path = dir.join(FILE);
        let mut history = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            read => read
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<Self>(&bytes).map_err(|e| e.to_string()))
                .unwrap_or_else(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "Feed history unreadable; starting a new one");
                    Self::default()
                }),
        };
        history.path = Some(path);
        history
    }

    /// Sets each finding's `published` and `updated` (RFC 3339): kept for
    /// one a reader would see unchanged, `now` for a new or changed one;
    /// then writes the history when it changed.
    pub fn stamp(&mut self, findings: &mut [Finding], now: &str) {
        let mut changed = false;
        for f in findings.iter_mut() {
            let d = digest(f);
            let stamp = self.findings.entry(f.id.clone()).or_insert_with(|| {
                changed = true;
                Stamp { digest: d.clone(), published: now.to_string(), updated: now.to_string() }
            });
            if stamp.digest != d {
                stamp.digest = d;
                stamp.updated = now.to_string();
                changed = true;
            }
            f.published = stamp.published.clone();
            f.updated = stamp.updated.clone();
        }
        if changed
            && let Some(path) = &self.path
            && let Err(e) = self.save(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "Feed history not saved");
        }
    }

    fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}

/// XML text or attribute value.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The path of `scope`'s feed (scopes of one finding have none).
pub fn feed_href(scope: &Scope) -> String {
    use crate::pages::enc;
    match scope {
        Scope::Vendor(v) => format!("/feeds/vendors/{}.atom", enc(v)),
        Scope::Model(v, m) => format!("/feeds/models/{}/{}.atom", enc(v), enc(m)),
        Scope::All | Scope::Finding(_) => "/feeds/findings.atom".into(),
    }
}

/// The feed of `scope`'s findings.
pub fn render(s: &Snapshot, scope: &Scope, findings: &[&Finding]) -> String {
    let (base, licence) = (s.site.base.as_str(), &s.site.licence);
    let mut entries: Vec<&Finding> = findings.to_vec();
    entries.sort_by(|a, b| b.updated.cmp(&a.updated).then(a.id.cmp(&b.id)));
    entries.truncate(MAX_ENTRIES);
    let updated = entries.iter().map(|f| f.updated.as_str()).max().unwrap_or("1970-01-01T00:00:00Z");
    let alternate = match scope {
        Scope::Model(v, m) => crate::pages::model_href(v, m),
        Scope::Vendor(v) => format!("/?vendor={}", crate::pages::enc(v)),
        _ => "/".into(),
    };
    let self_href = format!("{base}{}", feed_href(scope));
    let t = s.thresholds;
    let mut out = String::new();
    let _ = writeln!(out, "<?xml version=\"1.0\" encoding=\"utf-8\"?>");
    let _ = writeln!(out, "<feed xmlns=\"http://www.w3.org/2005/Atom\">");
    let _ = writeln!(out, "  <id>{}</id>", xml(&self_href));
    let _ = writeln!(out, "  <title>leakwatch: {}</title>", xml(&scope.describe(s)));
    let _ = writeln!(
        out,
        "  <subtitle>New and changed findings of what devices send home; each rests on at least {} devices of {} volunteers.</subtitle>",
        t.min_devices, t.min_volunteers
    );
    let _ = writeln!(out, "  <updated>{}</updated>", xml(updated));
    let _ = writeln!(out, "  <link rel=\"self\" type=\"application/atom+xml\" href=\"{}\"/>", xml(&self_href));
    let _ =
        writeln!(out, "  <link rel=\"alternate\" type=\"text/html\" href=\"{}\"/>", xml(&format!("{base}{alternate}")));
    let _ = writeln!(out, "  <link rel=\"license\" href=\"{}\"/>", xml(&licence.url));
    let _ = writeln!(out, "  <rights>Data licence: {} ({})</rights>", xml(&licence.name), xml(&licence.url));
    let _ = writeln!(out, "  <author><name>leakwatch</name><uri>{}</uri></author>", xml(&format!("{base}/")));
    for f in entries {
        let url = format!("{base}{}", finding_href(&f.id));
        let model =
            if f.model.is_empty() { format!("{} (all models)", f.vendor) } else { format!("{} {}", f.vendor, f.model) };
        let summary = format!(
            "{model}: {} of {} devices ({:.0} %), {} volunteers; {}; seen {} to {}.",
            f.devices,
            f.population_devices,
            f.share * 100.0,
            f.volunteers,
            f.rule_title,
            f.first_seen,
            f.last_seen
        );
        let _ = writeln!(out, "  <entry>");
        let _ = writeln!(out, "    <id>{}</id>", xml(&url));
        let _ = writeln!(out, "    <title>{}</title>", xml(&f.claim));
        let _ = writeln!(out, "    <published>{}</published>", xml(&f.published));
        let _ = writeln!(out, "    <updated>{}</updated>", xml(&f.updated));
        let _ = writeln!(out, "    <link rel=\"alternate\" type=\"text/html\" href=\"{}\"/>", xml(&url));
        let _ = writeln!(out, "    <category term=\"{}\" label=\"{}\"/>", xml(&f.rule), xml(&f.rule_title));
        let _ = writeln!(out, "    <summary>{}</summary>", xml(&summary));
        let _ = writeln!(out, "  </entry>");
    }
    out.push_str("</feed>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_markup_are_escaped() {
        assert_eq!(xml("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos; ");
    }

    #[test]
    fn a_finding_keeps_its_dates_until_what_a_reader_sees_changes_and_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = crate::aggregate::tests::finding("Xiaomi", "Redmi 1S", "xiaomi.com");
        let mut history = History::load(Some(dir.path()));
        history.stamp(std::slice::from_mut(&mut f), "2026-01-01T00:00:00Z");
        assert_eq!((f.published.as_str(), f.updated.as_str()), ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"));
        // A new last day alone is no change.
        f.last_seen = "2026-01-02".into();
        let mut history = History::load(Some(dir.path()));
        history.stamp(std::slice::from_mut(&mut f), "2026-01-02T00:00:00Z");
        assert_eq!(f.updated, "2026-01-01T00:00:00Z");
        // More devices is.
        f.devices += 1;
        history.stamp(std::slice::from_mut(&mut f), "2026-01-03T00:00:00Z");
        assert_eq!((f.published.as_str(), f.updated.as_str()), ("2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"));
        // An unreadable history starts afresh.
        std::fs::write(dir.path().join(FILE), b"{not json").expect("write");
        let mut history = History::load(Some(dir.path()));
        history.stamp(std::slice::from_mut(&mut f), "2026-01-04T00:00:00Z");
        assert_eq!(f.published, "2026-01-04T00:00:00Z");
    }
}
