//! Blocklists of the published findings, in the formats that DNS filters
//! load: a hosts file, dnsmasq, unbound `local-zone`, an RPZ zone (BIND,
//! Knot, PowerDNS, unbound) and plain domains (the adlist of Pi-hole and
//! AdGuard Home). One per finding, model, vendor, and one of all.
//!
//! Only published findings are listed, so only groups that pass the
//! thresholds. Each list is headed by what it is, its data licence and its
//! dashboard address; each entry follows a comment naming its findings'
//! evidence pages. Names are those the agents reported, so a name that is
//! not a plain DNS name (a space, a newline, a quote: anything that could
//! turn into a configuration line of its own) is left out and counted in
//! the head. A destination no name was seen for is listed by its network
//! where the format takes addresses (RPZ `rpz-ip`), and named in a comment
//! elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::aggregate::{Finding, Snapshot};
use crate::pages::finding_href;

/// The formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    /// `0.0.0.0 name` lines (`/etc/hosts`, and any filter that reads one).
    Hosts,
    /// `address=/name/` lines, NXDOMAIN for the name and its subdomains.
    Dnsmasq,
    /// `local-zone: "name." always_nxdomain` in a `server:` clause.
    Unbound,
    /// A response policy zone: `name CNAME .` and `*.name CNAME .`, and
    /// `rpz-ip` triggers for unnamed networks.
    Rpz,
    /// One name per line.
    Domains,
}

impl ListFormat {
    /// Every format, in the order pages list them.
    pub const ALL: [Self; 5] = [Self::Hosts, Self::Dnsmasq, Self::Unbound, Self::Rpz, Self::Domains];

    /// Its file name in the list's address.
    pub fn file(self) -> &'static str {
        match self {
            Self::Hosts => "hosts.txt",
            Self::Dnsmasq => "dnsmasq.conf",
            Self::Unbound => "unbound.conf",
            Self::Rpz => "rpz.zone",
            Self::Domains => "domains.txt",
        }
    }

    /// The format named by a file name, if any.
    pub fn from_file(file: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.file() == file)
    }

    /// What a reader calls it.
    pub fn title(self) -> &'static str {
        match self {
            Self::Hosts => "hosts file",
            Self::Dnsmasq => "dnsmasq",
            Self::Unbound => "unbound",
            Self::Rpz => "RPZ zone",
            Self::Domains => "domain list (Pi-hole, AdGuard)",
        }
    }

    fn comment(self) -> &'static str {
        if self == Self::Rpz { ";" } else { "#" }
    }

    /// Whether an entry also blocks the name's subdomains (else the
    /// findings' host names under it are listed one by one).
    fn covers_subdomains(self) -> bool {
        matches!(self, Self::Dnsmasq | Self::Unbound | Self::Rpz)
    }
}

/// Which findings a list holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every published finding.
    All,
    /// A vendor's findings.
    Vendor(String),
    /// A model's findings, its vendor's findings about all its models
    /// among them.
    Model(String, String),
    /// One finding.
    Finding(String),
}

impl Scope {
    /// Whether `f` is in scope.
    pub fn holds(&self, f: &Finding) -> bool {
        match self {
            Self::All => true,
            Self::Vendor(v) => &f.vendor == v,
            Self::Model(v, m) => &f.vendor == v && (&f.model == m || f.models.contains(m)),
            Self::Finding(id) => &f.id == id,
        }
    }

    /// The scope's published findings, or `None` when what it names is
    /// not published (a page would be a 404).
    pub fn findings<'a>(&self, s: &'a Snapshot) -> Option<Vec<&'a Finding>> {
        let known = match self {
            Self::All => true,
            Self::Vendor(v) => s.models.iter().any(|m| &m.vendor == v),
            Self::Model(v, m) => s.model(v, m).is_some(),
            Self::Finding(id) => s.finding(id).is_some(),
        };
        known.then(|| s.findings.iter().filter(|f| self.holds(f)).collect())
    }

    /// What it names, for a message that it is not published.
    pub fn name(&self) -> String {
        match self {
            Self::All => "all findings".into(),
            Self::Vendor(v) => format!("the vendor {v}"),
            Self::Model(v, m) => format!("the model {v} {m}"),
            Self::Finding(id) => format!("the finding {id}"),
        }
    }

    /// In words, for a list's head or a feed's title.
    pub fn describe(&self, s: &Snapshot) -> String {
        match self {
            Self::All => "all published findings".into(),
            Self::Vendor(v) => format!("the published findings about {v} devices"),
            Self::Model(v, m) => format!("the published findings about the {v} {m}"),
            Self::Finding(id) => s.finding(id).map_or_else(|| format!("finding {id}"), |f| f.claim.clone()),
        }
    }

    /// The path of the scope's list in `format`.
    pub fn list_href(&self, format: ListFormat) -> String {
        use crate::pages::enc;
        let file = format.file();
        match self {
            Self::All => format!("/lists/{file}"),
            Self::Vendor(v) => format!("/lists/vendors/{}/{file}", enc(v)),
            Self::Model(v, m) => format!("/lists/models/{}/{}/{file}", enc(v), enc(m)),
            Self::Finding(id) => format!("/lists/findings/{}/{file}", enc(id)),
        }
    }
}

/// Longest DNS name, in characters without the final dot.
const MAX_NAME: usize = 253;

/// Whether `name` is a plain DNS name a list may carry: labels of ASCII
/// letters, digits, `-` and `_` (service names), 1 to 63 long, not
/// starting or ending with `-`, at least two of them, 253 characters at
/// most. Anything else (a space, a newline, `/`, `"`, `*`) could change
/// the meaning of the line it is written into.
pub fn is_listable(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.contains('.')
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The network of an unnamed destination's key (`91.212.186.0/24
/// (unnamed)`), as an RPZ `rpz-ip` owner name (`24.0.186.212.91.rpz-ip`).
fn rpz_ip(destination: &str) -> Option<String> {
    let net = destination.strip_suffix(" (unnamed)")?;
    let (addr, len) = net.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    if let Ok(v4) = addr.parse::<Ipv4Addr>() {
        let [a, b, c, d] = v4.octets();
        return (len <= 32).then(|| format!("{len}.{d}.{c}.{b}.{a}.rpz-ip"));
    }
    let v6 = addr.parse::<Ipv6Addr>().ok()?;
    if len > 128 {
        return None;
    }
    // Groups lowest first, the longest run of zero groups as `zz`.
    let groups: Vec<String> = v6.segments().iter().rev().map(|g| format!("{g:x}")).collect();
    let (mut best, mut run) = ((0, 0), (0, 0));
    for (i, g) in groups.iter().enumerate() {
        if g == "0" {
            run = if run.1 > 0 && run.0 + run.1 == i { (run.0, run.1 + 1) } else { (i, 1) };
            if run.1 > best.1 {
                best = run;
            }
        }
    }
    let mut labels: Vec<String> = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        if best.1 > 1 && i == best.0 {
            labels.push("zz".into());
            i += best.1;
        } else {
            labels.push(groups[i].clone());
            i += 1;
        }
    }
    Some(format!("{len}.{}.rpz-ip", labels.join(".")))
}

/// What is said after a comment mark: one line, no control characters.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// An entry: a name (or an `rpz-ip` owner) and the findings behind it.
struct Entry<'a> {
    owner: String,
    findings: Vec<&'a Finding>,
}

/// The list of `scope`'s findings in `format`.
pub fn render(s: &Snapshot, scope: &Scope, findings: &[&Finding], format: ListFormat) -> String {
    let (base, licence) = (&s.site.base, &s.site.licence);
    let mut names: BTreeMap<String, Entry<'_>> = BTreeMap::new();
    let mut unlisted: Vec<&Finding> = Vec::new();
    let mut refused = 0usize;
    for &f in findings {
        let mut owners: Vec<String> = Vec::new();
        if f.domain.ends_with(" (unnamed)") {
            match (format, rpz_ip(&f.domain)) {
                (ListFormat::Rpz, Some(owner)) => owners.push(owner),
                _ => unlisted.push(f),
            }
        } else {
            let domain = f.domain.to_ascii_lowercase();
            owners.push(domain.clone());
            if !format.covers_subdomains() {
                owners.extend(hosts_under(s, f, &domain));
            }
        }
        for owner in owners {
            if !(owner.ends_with(".rpz-ip") || is_listable(&owner)) {
                refused += 1;
                continue;
            }
            let entry = names.entry(owner.clone()).or_insert_with(|| Entry { owner, findings: Vec::new() });
            if !entry.findings.iter().any(|x| x.id == f.id) {
                entry.findings.push(f);
            }
        }
    }
    if format.covers_subdomains() {
        // A name under another listed name adds no line; its findings
        // join that name's comment.
        let listed: Vec<String> = names.keys().cloned().collect();
        for name in &listed {
            let Some(cover) = listed.iter().find(|other| name.ends_with(&format!(".{other}"))) else { continue };
            if let Some(entry) = names.remove(name)
                && let Some(into) = names.get_mut(cover)
            {
                for f in entry.findings {
                    if !into.findings.iter().any(|x| x.id == f.id) {
                        into.findings.push(f);
                    }
                }
            }
        }
    }

    let c = format.comment();
    let mut out = String::new();
    let t = s.thresholds;
    let scope_text = one_line(&scope.describe(s));
    let _ = writeln!(out, "{c} leakwatch blocklist ({}): {scope_text}", format.title());
    let _ = writeln!(out, "{c} {} entries; from the aggregates of {}.", names.len(), s.refreshed_at);
    let _ = writeln!(out, "{c} Source: {}{}", base, scope.list_href(format));
    let _ = writeln!(out, "{c} Dashboard: {}/", base);
    let _ = writeln!(out, "{c} Licence: {} ({}); attribute \"leakwatch, {}\".", licence.name, licence.url, base);
    let _ = writeln!(
        out,
        "{c} Only findings seen from at least {} devices of {} volunteers are listed.",
        t.min_devices, t.min_volunteers
    );
    let mut unnamed: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for f in &unlisted {
        unnamed.entry(&f.domain).or_default().push(format!("{}{}", base, finding_href(&f.id)));
    }
    for (destination, pages) in unnamed {
        let _ =
            writeln!(out, "{c} Not listed here: {} has no name to block ({}).", one_line(destination), pages.join(" "));
    }
    if refused > 0 {
        let _ = writeln!(out, "{c} {refused} names left out: not plain DNS names.");
    }
    match format {
        ListFormat::Unbound => out.push_str("server:\n"),
        ListFormat::Rpz => {
            let serial = u32::try_from(s.refreshed_unix.max(1)).unwrap_or(u32::MAX);
            let _ = writeln!(out, "$TTL 300");
            let _ = writeln!(out, "@ SOA localhost. root.localhost. {serial} 3600 600 86400 300");
            let _ = writeln!(out, "@ NS localhost.");
        }
        _ => {}
    }
    for entry in names.values() {
        let pages: Vec<String> = entry.findings.iter().map(|f| format!("{}{}", base, finding_href(&f.id))).collect();
        let claims: Vec<String> = entry.findings.iter().map(|f| one_line(&f.claim)).collect();
        let _ = writeln!(out, "{c} {} {}", pages.join(" "), claims.join(" "));
        let name = &entry.owner;
        let _ = match format {
            ListFormat::Hosts => writeln!(out, "0.0.0.0 {name}"),
            ListFormat::Dnsmasq => writeln!(out, "address=/{name}/"),
            ListFormat::Unbound => writeln!(out, "    local-zone: \"{name}.\" always_nxdomain"),
            ListFormat::Rpz if name.ends_with(".rpz-ip") => writeln!(out, "{name} CNAME ."),
            ListFormat::Rpz => writeln!(out, "{name} CNAME .\n*.{name} CNAME ."),
            ListFormat::Domains => writeln!(out, "{name}"),
        };
    }
    out
}

/// The published host names under `domain` of the finding's models.
fn hosts_under(s: &Snapshot, f: &Finding, domain: &str) -> Vec<String> {
    let models: Vec<&str> =
        if f.model.is_empty() { f.models.iter().map(String::as_str).collect() } else { vec![&f.model] };
    let suffix = format!(".{domain}");
    models
        .into_iter()
        .filter_map(|m| s.model(&f.vendor, m))
        .flat_map(|page| page.destinations.iter().filter(|d| d.destination == f.destination))
        .flat_map(|d| d.hosts.iter())
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| h.ends_with(&suffix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_dns_names_are_listable() {
        for ok in ["xiaomi.com", "api.account.xiaomi.com", "_dns.resolver.arpa", "a-b.c0.example"] {
            assert!(is_listable(ok), "{ok}");
        }
        for bad in [
            "localhost",
            "evil.com\naddress=/google.com/1.2.3.4",
            "a b.com",
            "x\".com",
            "*.x.com",
            "-a.com",
            "a..com",
            "a/b.com",
            &format!("{}.com", "a".repeat(64)),
            &format!("{}com", "a.".repeat(127)),
        ] {
            assert!(!is_listable(bad), "{bad:?}");
        }
    }

    /// A name k devices of m volunteers reported that is no DNS name (an
    /// attacker's line break and directive) never becomes a line of its own.
    #[test]
    fn a_reported_name_that_is_no_dns_name_is_left_out_and_counted() {
        let s = Snapshot {
            site: crate::Site { base: "https://leaks.example.org".into(), licence: crate::DataLicence::default() },
            ..Snapshot::default()
        };
        let finding = crate::aggregate::tests::finding;
        let bad = finding("Evil", "E1", "evil.com\naddress=/google.com/1.2.3.4");
        let quote = finding("Evil", "E1", "x.com\" always_transparent\nlocal-zone: \"google.com.");
        let good = finding("Evil", "E1", "api.evil-cloud.com");
        for format in ListFormat::ALL {
            let out = render(&s, &Scope::All, &[&bad, &quote, &good], format);
            assert!(out.contains("2 names left out: not plain DNS names."), "{format:?}:\n{out}");
            assert!(out.contains("api.evil-cloud.com"), "{format:?}:\n{out}");
            let c = format.comment();
            for line in out.lines().filter(|l| !l.starts_with(c)) {
                assert!(!line.contains("google.com"), "{format:?}: {line:?}\n{out}");
            }
        }
    }

    #[test]
    fn unnamed_networks_become_rpz_ip_triggers() {
        assert_eq!(rpz_ip("91.212.186.0/24 (unnamed)").as_deref(), Some("24.0.186.212.91.rpz-ip"));
        assert_eq!(rpz_ip("2001:db8:1::/48 (unnamed)").as_deref(), Some("48.zz.1.db8.2001.rpz-ip"));
        assert_eq!(rpz_ip("tcp/8886 (unnamed)"), None);
        assert_eq!(rpz_ip("91.212.186.0/33 (unnamed)"), None);
    }

    #[test]
    fn file_names_name_their_formats() {
        for f in ListFormat::ALL {
            assert_eq!(ListFormat::from_file(f.file()), Some(f));
        }
        assert_eq!(ListFormat::from_file("x.conf"), None);
    }
}
