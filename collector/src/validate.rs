//! Checks every `Report` before it is stored. A refusal names the field,
//! the value and the limit; it is the caller's fault (`InvalidArgument`).
//!
//! The collector re-checks the privacy rules it can: destinations must be
//! public addresses (by the agent's own rule), names well-formed, times
//! whole minutes.

use std::net::IpAddr;

use leakwatch_core::address::is_non_public;
use leakwatch_proto::Invalid;
use leakwatch_proto::v1::{DomainSource, FlowRecord, Initiator, ReportBatch, Transport};

pub use leakwatch_proto::codec::{
    MAX_BYTES_PER_RECORD, MAX_CONNECTIONS_PER_RECORD, MAX_CONSENT_ENTRIES, MAX_FUTURE_S, MAX_PACKETS_PER_RECORD,
    MAX_RECORDS_PER_BATCH, MIN_WINDOW_START_S,
};
pub use leakwatch_proto::labels::{MAX_APP_BYTES, MAX_LABEL_BYTES};
use leakwatch_proto::labels::{check_consent, check_label, check_printable};
/// Longest domain name.
pub const MAX_DOMAIN_BYTES: usize = 253;
/// Longest time since boot accepted (10 years), seconds.
pub const MAX_SECONDS_SINCE_BOOT: f64 = 315_360_000.0;

/// An [`Invalid`] with a formatted message.
macro_rules! invalid {
    ($($arg:tt)*) => {
        Invalid(format!($($arg)*))
    };
}

/// Checks that `value` has at most `max` bytes. The field's name is an
/// `impl Display` so that callers pass a name built only for the error
/// (thousands of records per batch are checked).
fn check_len(field: impl std::fmt::Display, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        let shown: String = value.chars().take(32).collect();
        return Err(invalid!("{field}: {} bytes ({shown:?}...), at most {max}", value.len()));
    }
    Ok(())
}

/// The name of field `name` of record `i`, written out only when shown.
struct RecordField<'a> {
    i: usize,
    name: &'a str,
    index: Option<usize>,
}

impl std::fmt::Display for RecordField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "records[{}].{}", self.i, self.name)?;
        match self.index {
            Some(j) => write!(f, "[{j}]"),
            None => Ok(()),
        }
    }
}

fn check_record(i: usize, r: &FlowRecord, now_s: i64) -> Result<(), Invalid> {
    let field = |name: &'static str| RecordField { i, name, index: None };
    let f = |name: &'static str| field(name).to_string();
    if !r.seconds_since_boot.is_finite() || !(0.0..=MAX_SECONDS_SINCE_BOOT).contains(&r.seconds_since_boot) {
        return Err(invalid!(
            "{}: {} is outside 0..={MAX_SECONDS_SINCE_BOOT}",
            f("seconds_since_boot"),
            r.seconds_since_boot
        ));
    }
    if !r.duration_s.is_finite() || !(0.0..=MAX_SECONDS_SINCE_BOOT).contains(&r.duration_s) {
        return Err(invalid!("{}: {} is outside 0..={MAX_SECONDS_SINCE_BOOT}", f("duration_s"), r.duration_s));
    }
    if !r.interval_mean_s.is_finite() || !(0.0..=MAX_SECONDS_SINCE_BOOT).contains(&r.interval_mean_s) {
        return Err(invalid!(
            "{}: {} is outside 0..={MAX_SECONDS_SINCE_BOOT}",
            f("interval_mean_s"),
            r.interval_mean_s
        ));
    }
    if !r.interval_cv.is_finite() || !(0.0..=1000.0).contains(&r.interval_cv) {
        return Err(invalid!("{}: {} is outside 0..=1000", f("interval_cv"), r.interval_cv));
    }
    let w = r.window_start_unix_s;
    if w % 60 != 0 {
        return Err(invalid!(
            "{}: {w} is not a whole minute (privacy rule: wall clock is coarsened to the minute)",
            f("window_start_unix_s")
        ));
    }
    if w < MIN_WINDOW_START_S || w > now_s + MAX_FUTURE_S {
        return Err(invalid!(
            "{}: {w} is outside {MIN_WINDOW_START_S}..={} (2000-01-01 to one day from now)",
            f("window_start_unix_s"),
            now_s + MAX_FUTURE_S
        ));
    }
    let transport = match Transport::try_from(r.transport) {
        Ok(t @ (Transport::Tcp | Transport::Udp | Transport::Dns)) => t,
        _ => {
            return Err(invalid!(
                "{}: {} is not TRANSPORT_TCP (1), TRANSPORT_UDP (2) or TRANSPORT_DNS (3)",
                f("transport"),
                r.transport
            ));
        }
    };
    if transport == Transport::Dns && r.domain.is_empty() {
        return Err(invalid!("{}: missing (required for a DNS lookup)", f("domain")));
    }
    // A lookup through a LAN resolver carries no address.
    if !(transport == Transport::Dns && r.dst_ip.is_empty()) {
        let ip: IpAddr = r.dst_ip.parse().map_err(|_| {
            invalid!("{}: {:?} is not an IP address", f("dst_ip"), r.dst_ip.chars().take(64).collect::<String>())
        })?;
        if is_non_public(ip) {
            return Err(invalid!(
                "{}: {ip} is not a public address (privacy rule: such destinations are never reported)",
                f("dst_ip")
            ));
        }
    }
    if !(1..=65_535).contains(&r.dst_port) {
        return Err(invalid!("{}: {} is outside 1..=65535", f("dst_port"), r.dst_port));
    }
    check_len(field("domain"), &r.domain, MAX_DOMAIN_BYTES)?;
    if !r.domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.' | b'*'))
    {
        return Err(invalid!("{}: {:?} has characters outside a-z 0-9 - _ . *", f("domain"), r.domain));
    }
    if DomainSource::try_from(r.domain_source).is_err() {
        return Err(invalid!("{}: {} is not a DomainSource value", f("domain_source"), r.domain_source));
    }
    if Initiator::try_from(r.initiator).is_err() {
        return Err(invalid!("{}: {} is not an Initiator value", f("initiator"), r.initiator));
    }
    check_len(field("app"), &r.app, MAX_APP_BYTES)?;
    check_printable(field("app"), &r.app)?;
    for (name, value, max) in [
        ("bytes_out", r.bytes_out, MAX_BYTES_PER_RECORD),
        ("bytes_in", r.bytes_in, MAX_BYTES_PER_RECORD),
        ("packets_out", r.packets_out, MAX_PACKETS_PER_RECORD),
        ("packets_in", r.packets_in, MAX_PACKETS_PER_RECORD),
        ("connections", u64::from(r.connections), u64::from(MAX_CONNECTIONS_PER_RECORD)),
    ] {
        if value > max {
            return Err(invalid!("{}: {value} is over {max}, the most one record may count", f(name)));
        }
    }
    if let Some(tls) = &r.tls {
        check_len(field("tls.sni"), &tls.sni, MAX_DOMAIN_BYTES)?;
        check_len(field("tls.client_fingerprint"), &tls.client_fingerprint, MAX_LABEL_BYTES)?;
        if tls.alpn.len() > 16 {
            return Err(invalid!("{}: {} entries, at most 16", f("tls.alpn"), tls.alpn.len()));
        }
        for (j, p) in tls.alpn.iter().enumerate() {
            check_len(RecordField { i, name: "tls.alpn", index: Some(j) }, p, 32)?;
        }
    }
    Ok(())
}

/// Checks `batch`; `Err` holds the message for `InvalidArgument`.
pub fn check_batch(batch: &ReportBatch, now_s: i64) -> Result<(), Invalid> {
    let id = &batch.batch_id;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(invalid!(
            "batch_id: {:?} must be 1 to 64 characters of A-Z a-z 0-9 - _",
            id.chars().take(80).collect::<String>()
        ));
    }
    let Some(device) = &batch.device else {
        return Err(Invalid("device: missing (required)".into()));
    };
    if device.device_pseudonym.is_empty() {
        return Err(Invalid("device.device_pseudonym: missing (required)".into()));
    }
    check_label("device.device_pseudonym", &device.device_pseudonym)?;
    check_label("device.boot_pseudonym", &device.boot_pseudonym)?;
    check_label("device.vendor", &device.vendor)?;
    check_label("device.model", &device.model)?;
    check_label("device.os_version", &device.os_version)?;
    if device.consent.len() > MAX_CONSENT_ENTRIES {
        return Err(invalid!("device.consent: {} entries, at most {MAX_CONSENT_ENTRIES}", device.consent.len()));
    }
    for (k, v) in &device.consent {
        check_consent("device.consent", k, v)?;
    }
    if leakwatch_proto::v1::RecordSource::try_from(device.source).is_err() {
        return Err(invalid!("device.source: {} is not a RecordSource value", device.source));
    }
    if batch.records.is_empty() {
        return Err(Invalid("records: empty, need 1 to 10000".into()));
    }
    if batch.records.len() > MAX_RECORDS_PER_BATCH {
        return Err(invalid!("records: {} records, at most {MAX_RECORDS_PER_BATCH}", batch.records.len()));
    }
    for (i, r) in batch.records.iter().enumerate() {
        check_record(i, r, now_s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use leakwatch_proto::v1::{DeviceInfo, TlsInfo};

    use super::*;

    fn good() -> ReportBatch {
        ReportBatch {
            batch_id: "abc".into(),
            sent_at_unix_ms: 0,
            device: Some(DeviceInfo { device_pseudonym: "p".into(), ..Default::default() }),
            records: vec![FlowRecord {
                seconds_since_boot: 1.0,
                window_start_unix_s: 1_700_000_040,
                transport: 1,
                dst_ip: "93.184.216.34".into(),
                dst_port: 443,
                domain: "example.com".into(),
                domain_source: 3,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn errors_name_field_value_and_limit() {
        let now = 1_800_000_000;
        assert_eq!(check_batch(&good(), now), Ok(()));
        type Mutation<'a> = Box<dyn Fn(&mut ReportBatch) + 'a>;
        let cases: Vec<(Mutation<'_>, &str)> = vec![
            (Box::new(|b| b.device = None), "device: missing"),
            (Box::new(|b| b.batch_id = String::new()), "batch_id"),
            (Box::new(|b| b.records[0].dst_port = 70000), "records[0].dst_port: 70000 is outside 1..=65535"),
            (
                Box::new(|b| b.records[0].dst_ip = "192.168.1.10".into()),
                "records[0].dst_ip: 192.168.1.10 is not a public address",
            ),
            (Box::new(|b| b.records[0].domain = "x".repeat(300)), "records[0].domain: 300 bytes"),
            (Box::new(|b| b.records[0].window_start_unix_s = now + 10 * 86_400), "records[0].window_start_unix_s"),
            (Box::new(|b| b.records[0].transport = 9), "records[0].transport: 9"),
            (
                Box::new(|b| {
                    b.records[0].tls = Some(TlsInfo { alpn: vec!["h2".into(), "p".repeat(33)], ..Default::default() })
                }),
                "records[0].tls.alpn[1]: 33 bytes",
            ),
            (
                Box::new(|b| {
                    if let Some(d) = b.device.as_mut() {
                        d.consent.insert("cloud".into(), "v".repeat(65));
                    }
                }),
                "device.consent[\"cloud\"]: 65 bytes",
            ),
            (Box::new(|b| b.records = vec![b.records[0].clone(); 10_001]), "records: 10001 records, at most 10000"),
            (Box::new(|b| b.records.clear()), "records: empty"),
            (Box::new(|b| b.records[0].initiator = 7), "records[0].initiator: 7 is not an Initiator value"),
            // Counts that would wrap a sum.
            (
                Box::new(|b| b.records[0].bytes_out = u64::MAX),
                "records[0].bytes_out: 18446744073709551615 is over 1099511627776",
            ),
            (Box::new(|b| b.records[0].packets_in = 1 << 40), "records[0].packets_in: 1099511627776 is over"),
            (Box::new(|b| b.records[0].connections = u32::MAX), "records[0].connections: 4294967295 is over"),
            // Labels that attack whoever shows them.
            (
                Box::new(|b| {
                    if let Some(d) = b.device.as_mut() {
                        d.model = "evil\u{202e}gpj.exe".into()
                    }
                }),
                "device.model: \"evil\\u{202e}gpj.exe\" holds a Unicode direction control",
            ),
            (
                Box::new(|b| {
                    if let Some(d) = b.device.as_mut() {
                        d.vendor = "a\0b".into()
                    }
                }),
                "device.vendor: \"a\\0b\" holds NUL",
            ),
            (
                Box::new(|b| {
                    if let Some(d) = b.device.as_mut() {
                        d.consent.insert("a;b".into(), "on".into());
                    }
                }),
                "device.consent key: \"a;b\" holds '=' or ';'",
            ),
            (Box::new(|b| b.records[0].app = "app\nname".into()), "records[0].app: \"app\\nname\" holds a control"),
            (
                Box::new(|b| {
                    if let Some(d) = b.device.as_mut() {
                        d.vendor = "v".repeat(65)
                    }
                }),
                "device.vendor: 65 bytes",
            ),
            (
                Box::new(|b| {
                    if let Some(d) = b.device.as_mut() {
                        d.source = 99
                    }
                }),
                "device.source: 99 is not a RecordSource value",
            ),
        ];
        for (mutate, want) in cases {
            let mut b = good();
            mutate(&mut b);
            let err = check_batch(&b, now).expect_err(want);
            assert!(err.0.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
