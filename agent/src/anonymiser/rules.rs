//! The privacy rules, one function each.

use std::net::IpAddr;

use leakwatch_proto::codec::{MAX_BYTES_PER_RECORD, MAX_CONNECTIONS_PER_RECORD, MAX_PACKETS_PER_RECORD};
use leakwatch_proto::v1::{DomainSource, FlowRecord, TlsInfo, Transport as WireTransport};

use crate::capture::Transport;
use crate::flow::{DnsLookup, FlowSummary, NameSource};

/// Longest domain name sent (DNS limit).
pub const MAX_DOMAIN_BYTES: usize = 253;

/// What the anonymiser removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnonymiserStats {
    /// Flows dropped because the destination is not a public address.
    pub dropped_non_public: u64,
    /// Hostname labels replaced by `*`.
    pub scrubbed_labels: u64,
    /// DNS lookups of local names (`.local`, single-label, reverse lookups
    /// of private ranges) dropped.
    pub dropped_local_names: u64,
    /// Reverse lookups of public addresses (`in-addr.arpa`, `ip6.arpa`)
    /// dropped: they ask a name for an address and contact no destination.
    pub dropped_reverse_lookups: u64,
    /// Records dated before 2000 or more than a day ahead (a capture whose
    /// clock was wrong), which the collector would refuse.
    pub dropped_out_of_time: u64,
}

/// Rule 2: destinations that must never be reported: the one address
/// rule the collector and the SQL function `is_private_ip` apply too.
pub use leakwatch_core::address::is_non_public;

/// Rule 3: true for a hostname label that looks like an embedded identifier
/// (a device id, account id or session token) rather than a name: a UUID,
/// a hex run of 12+ characters with a digit, 8+ consecutive digits, or a
/// base32/base64-looking run of 16+ characters mixing letters with digits
/// or with upper and lower case (look before lower-casing).
pub fn looks_like_identifier(label: &str) -> bool {
    let len = label.len();
    if len == 0 {
        return false;
    }
    let digits = label.bytes().filter(u8::is_ascii_digit).count();
    let letters = label.bytes().filter(u8::is_ascii_alphabetic).count();
    let mut run = 0usize;
    let mut longest_digit_run = 0usize;
    for b in label.bytes() {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        longest_digit_run = longest_digit_run.max(run);
    }
    let is_uuid = len == 36
        && label.bytes().enumerate().all(
            |(i, b)| {
                if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() }
            },
        );
    let hex_run = len >= 12 && digits > 0 && label.bytes().all(|b| b.is_ascii_hexdigit());
    let upper = label.bytes().filter(u8::is_ascii_uppercase).count();
    let mixed_case = upper > 0 && upper < letters;
    let token = len >= 16
        && letters >= 3
        && (digits >= 3 || mixed_case || (len >= 24 && digits >= 1))
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    is_uuid || hex_run || longest_digit_run >= 8 || token || len > 63
}

/// Rule 3: lower-cases `domain`, strips a trailing dot, and replaces
/// identifier-like labels by `*`. Returns the scrubbed name and how many
/// labels were replaced; `None` for a name that is not a plausible DNS name
/// (empty, too long, or with characters outside letters, digits, `-`, `_`).
pub fn scrub_domain(domain: &str) -> Option<(String, u64)> {
    // Case is looked at before lowering it: a mixed-case label is a token.
    let domain = domain.trim_end_matches('.');
    // An address written as a name (a query for "10.47.7.30", an HTTP Host
    // of an address) names nothing, and may be the volunteer's own.
    if domain.is_empty() || domain.len() > MAX_DOMAIN_BYTES || domain.parse::<IpAddr>().is_ok() {
        return None;
    }
    let mut scrubbed = 0;
    let mut labels = Vec::new();
    for label in domain.split('.') {
        if label.is_empty() || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        if looks_like_identifier(label) {
            scrubbed += 1;
            labels.push("*".to_string());
        } else {
            labels.push(label.to_ascii_lowercase());
        }
    }
    Some((labels.join("."), scrubbed))
}

/// Rule 1 for names: true for names of the volunteer's own network that a
/// DNS lookup must never reveal: single-label names, mDNS `.local` and the
/// usual home-network suffixes, and reverse lookups of non-public addresses.
pub fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if !name.contains('.') {
        return true;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return is_non_public(ip);
    }
    const LOCAL_SUFFIXES: [&str; 7] =
        [".local", ".lan", ".home", ".internal", ".home.arpa", ".localdomain", ".localhost"];
    if LOCAL_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return true;
    }
    if let Some(rev) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<&str> = rev.split('.').collect();
        octets.reverse();
        let ip = octets.join(".").parse::<std::net::Ipv4Addr>();
        // Partial (zone) lookups of private prefixes are local too.
        return ip.map_or(true, |ip| is_non_public(IpAddr::V4(ip)));
    }
    if let Some(rev) = name.strip_suffix(".ip6.arpa") {
        let nibbles: Vec<&str> = rev.split('.').collect();
        if nibbles.len() != 32 {
            return true;
        }
        let hex: String = nibbles.iter().rev().copied().collect();
        let groups: Vec<String> = hex.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        return groups.join(":").parse::<std::net::Ipv6Addr>().map_or(true, |ip| is_non_public(IpAddr::V6(ip)));
    }
    false
}

/// True for reverse lookups (`PTR` queries under `in-addr.arpa` or
/// `ip6.arpa`, and those zones themselves): a device asking the name of an
/// address, at boot often its own, contacts no destination by it.
pub fn is_reverse_lookup(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    ["in-addr.arpa", "ip6.arpa"]
        .iter()
        .any(|zone| name == *zone || name.strip_suffix(zone).is_some_and(|n| n.ends_with('.')))
}

/// Applies every rule to one DNS lookup; `None` when it must not be sent.
/// The resolver is kept only when it is a public address.
pub fn anonymise_lookup(lookup: &DnsLookup, boot_us: i64, stats: &mut AnonymiserStats) -> Option<FlowRecord> {
    if is_local_name(&lookup.name) {
        stats.dropped_local_names += 1;
        return None;
    }
    if is_reverse_lookup(&lookup.name) {
        stats.dropped_reverse_lookups += 1;
        return None;
    }
    let (domain, n) = scrub_domain(&lookup.name)?;
    stats.scrubbed_labels += n;
    let first_s = lookup.first_us.div_euclid(1_000_000);
    Some(FlowRecord {
        seconds_since_boot: (lookup.first_us - boot_us).max(0) as f64 / 1e6,
        window_start_unix_s: first_s - first_s.rem_euclid(60),
        transport: WireTransport::Dns as i32,
        dst_ip: if is_non_public(lookup.resolver) { String::new() } else { lookup.resolver.to_string() },
        dst_port: 53,
        domain,
        domain_source: DomainSource::Dns as i32,
        bytes_out: 0,
        bytes_in: 0,
        packets_out: lookup.queries,
        packets_in: 0,
        app: lookup.app.as_deref().unwrap_or_default().chars().take(128).collect(),
        tls: None,
        duration_s: (lookup.last_us - lookup.first_us).max(0) as f64 / 1e6,
        encrypted_dns: false,
        connections: 1,
        interval_mean_s: 0.0,
        interval_cv: 0.0,
        blocked: lookup.blocked,
        initiator: match lookup.context.app_initiated {
            None => leakwatch_proto::v1::Initiator::Unspecified,
            Some(true) => leakwatch_proto::v1::Initiator::App,
            Some(false) => leakwatch_proto::v1::Initiator::User,
        } as i32,
        via_website: lookup.context.via_website,
    })
}

/// Applies every rule to one flow; `None` when the flow must not be sent.
/// `boot_us` is the device's boot time, microseconds since the Unix epoch.
pub fn anonymise(
    flow: &FlowSummary,
    boot_us: i64,
    app: Option<&str>,
    stats: &mut AnonymiserStats,
) -> Option<FlowRecord> {
    // Rule 2.
    if is_non_public(flow.dst_ip) {
        stats.dropped_non_public += 1;
        return None;
    }
    if flow.dst_port == 0 {
        return None;
    }
    // Rule 3.
    let mut scrub = |name: &Option<String>| -> Option<String> {
        let (name, n) = scrub_domain(name.as_deref()?)?;
        stats.scrubbed_labels += n;
        Some(name)
    };
    let domain = scrub(&flow.domain);
    let sni = scrub(&flow.sni);
    let domain_source = match (&domain, flow.name_source) {
        (None, _) | (_, NameSource::None) => DomainSource::None,
        (_, NameSource::Dns) => DomainSource::Dns,
        (_, NameSource::Socks) => DomainSource::Socks,
        (_, NameSource::Cert) => DomainSource::Cert,
        (_, NameSource::Http) => DomainSource::Http,
        (_, NameSource::Quic) => DomainSource::Quic,
        (_, NameSource::Sni) => DomainSource::Sni,
    };
    // Rule 4: exact offset from boot, wall clock to the minute.
    let since_boot_us = (flow.first_us - boot_us).max(0);
    let first_s = flow.first_us.div_euclid(1_000_000);
    let tls = sni.map(|sni| TlsInfo {
        sni,
        alpn: flow
            .alpn
            .iter()
            .filter(|p| !p.is_empty() && p.len() <= 32 && p.bytes().all(|b| b.is_ascii_graphic()))
            .take(16)
            .cloned()
            .collect(),
        // A fingerprint names a TLS library, never a person or device.
        client_fingerprint: flow.fingerprint.clone().filter(|f| f.len() <= 64).unwrap_or_default(),
    });
    Some(FlowRecord {
        seconds_since_boot: since_boot_us as f64 / 1e6,
        window_start_unix_s: first_s - first_s.rem_euclid(60),
        transport: match flow.transport {
            Transport::Tcp => WireTransport::Tcp,
            Transport::Udp => WireTransport::Udp,
        } as i32,
        dst_ip: flow.dst_ip.to_string(),
        dst_port: u32::from(flow.dst_port),
        domain: domain.unwrap_or_default(),
        domain_source: domain_source as i32,
        // Counts within what one record may hold (the collector refuses
        // more: a sum of them could wrap).
        bytes_out: flow.bytes_out.min(MAX_BYTES_PER_RECORD),
        bytes_in: flow.bytes_in.min(MAX_BYTES_PER_RECORD),
        packets_out: flow.packets_out.min(MAX_PACKETS_PER_RECORD),
        packets_in: flow.packets_in.min(MAX_PACKETS_PER_RECORD),
        app: printable_prefix(flow.app.as_deref().or(app).unwrap_or_default(), leakwatch_proto::labels::MAX_APP_BYTES),
        tls,
        duration_s: (flow.last_us - flow.first_us).max(0) as f64 / 1e6,
        encrypted_dns: flow.encrypted_dns,
        connections: u32::try_from(flow.connections).unwrap_or(u32::MAX).min(MAX_CONNECTIONS_PER_RECORD),
        interval_mean_s: flow.interval_mean_s,
        interval_cv: flow.interval_cv,
        blocked: false,
        initiator: 0,
        via_website: false,
    })
}

/// The printable characters of `text` (see `leakwatch_proto::labels`), at
/// most `max` bytes of them, cut at a character boundary.
pub fn printable_prefix(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if !leakwatch_proto::labels::is_printable(c) {
            continue;
        }
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_are_never_reported() {
        for name in
            ["printer", "nas.local", "tv.lan", "1.1.168.192.in-addr.arpa", "168.192.in-addr.arpa", "router.home.arpa"]
        {
            assert!(is_local_name(name), "{name}");
        }
        for name in ["api.account.xiaomi.com", "8.8.8.8.in-addr.arpa", "8.8.8.8"] {
            assert!(!is_local_name(name), "{name}");
        }
        // A LAN address asked for as a name (seen in a real network's
        // dns.log) is the volunteer's own; no address is a domain at all.
        assert!(is_local_name("10.47.7.30") && is_local_name("192.168.1.1."));
        assert_eq!((scrub_domain("10.47.7.30"), scrub_domain("8.8.8.8")), (None, None));
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.ip6.arpa";
        assert!(is_local_name(v6), "link-local reverse");
    }

    /// A reverse lookup of a public address at boot is no destination: it
    /// became `in-addr.arpa`, which `boot_phone_home` reported for a model.
    #[test]
    fn reverse_lookups_of_public_addresses_are_not_destinations() {
        let lookup = |name: &str| DnsLookup {
            origin: crate::flow::Origin { mac: None, ip: "192.168.1.5".parse().expect("ip") },
            name: name.into(),
            resolver: "192.168.1.1".parse().expect("ip"),
            first_us: 1_790_000_000_000_000,
            last_us: 1_790_000_000_000_000,
            queries: 1,
            app: None,
            blocked: false,
            context: Default::default(),
        };
        let mut stats = AnonymiserStats::default();
        for name in [
            "8.8.8.8.in-addr.arpa",
            "34.216.184.93.IN-ADDR.ARPA.",
            "in-addr.arpa",
            "8.8.8.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.8.4.0.6.8.4.1.0.0.2.ip6.arpa",
        ] {
            assert_eq!(anonymise_lookup(&lookup(name), 1_790_000_000_000_000, &mut stats), None, "{name}");
        }
        assert_eq!((stats.dropped_reverse_lookups, stats.dropped_local_names), (4, 0));
        let kept = anonymise_lookup(&lookup("api.arpa-example.com"), 1_790_000_000_000_000, &mut stats);
        assert!(kept.is_some() && !is_reverse_lookup("notin-addr.arpa") && !is_reverse_lookup("xip6.arpa"));
    }

    #[test]
    fn identifier_labels_are_scrubbed_and_names_kept() {
        let cases = [
            ("api.account.xiaomi.com", "api.account.xiaomi.com"),
            ("3f2a9c1e5b7d4a60.device.example.com", "*.device.example.com"),
            ("123e4567-e89b-12d3-a456-426614174000.tracker.io", "*.tracker.io"),
            ("user-4915112345678.push.example.net", "*.push.example.net"),
            ("dGhpc2lzYXRva2VuMTIz.cdn.example.org", "*.cdn.example.org"),
            ("WWW.Example.COM.", "www.example.com"),
            ("r3.sn-4g5e6nsz.googlevideo.com", "r3.sn-4g5e6nsz.googlevideo.com"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub_domain(input).map(|(s, _)| s).as_deref(), Some(want), "{input}");
        }
        assert_eq!(scrub_domain("bad name.com"), None);
        assert_eq!(scrub_domain(""), None);
    }
}
