//! The iOS App Privacy Report ("Record App Activity", exported as
//! `.ndjson`): one JSON object per line. Its `networkActivity` lines say
//! which app contacted which domain, when first and last, and how often.
//!
//! Two things in it are personal and never leave this reader: the
//! `access` lines (an app using the camera, microphone, contacts or
//! location) and a network line's `context` (the website the user was on
//! when the contact happened). Neither is parsed into what it returns.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// One app's contacts with one domain, as the report sums them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkActivity {
    /// The app's bundle ID, e.g. `com.google.Gmail`.
    pub app: String,
    /// The domain contacted.
    pub domain: String,
    /// First contact, microseconds since the Unix epoch (UTC).
    pub first_us: i64,
    /// Latest contact, microseconds since the Unix epoch (UTC).
    pub last_us: i64,
    /// Contacts counted.
    pub hits: u64,
    /// The report's `domainType` (1 for the domains it lists under a
    /// website's third parties, 2 for an app's own contacts).
    pub domain_type: u8,
    /// Whether the app itself started it (`initiatedType` `AppInitiated`),
    /// rather than content it showed.
    pub app_initiated: bool,
}

/// What reading a report found besides its network lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportStats {
    /// Lines read.
    pub lines: u64,
    /// `access` lines: personal, left out.
    pub access_lines: u64,
    /// Lines of other types, left out.
    pub other_lines: u64,
    /// Lines that are not a report's JSON (or lack a field a network line
    /// needs).
    pub malformed: super::BadLines,
}
/// Longest line read (a report's lines are a few hundred bytes).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// The fields of a line this reader looks at; `context` and the `access`
/// fields are not among them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "bundleID")]
    bundle_id: Option<String>,
    domain: Option<String>,
    first_time_stamp: Option<String>,
    time_stamp: Option<String>,
    hits: Option<u64>,
    domain_type: Option<u8>,
    initiated_type: Option<String>,
}

/// Imports the report at `path` as one boot of the phone `labels` name:
/// each app's contacts with a domain become a lookup record of that app
/// (its bundle ID) with the first and last contact and the hits as its
/// queries. The report names no address, port or byte count, and the
/// phone's boot is unknown: the collector stores those as NULL.
pub fn import(
    path: &Path,
    labels: &crate::import::DeviceLabels,
    state: &crate::state::AgentState,
    batch_records: usize,
) -> Result<(crate::import::ImportedCapture, ReportStats)> {
    let (activities, stats) = read(path)?;
    let unknown = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let lookups: Vec<crate::flow::DnsLookup> = activities
        .into_iter()
        .map(|a| crate::flow::DnsLookup {
            origin: crate::flow::Origin { mac: None, ip: unknown },
            name: a.domain,
            resolver: unknown,
            first_us: a.first_us,
            last_us: a.last_us,
            queries: a.hits.max(1),
            app: Some(a.app),
            blocked: false,
            context: crate::flow::LookupContext {
                app_initiated: Some(a.app_initiated),
                via_website: a.domain_type == 1,
            },
        })
        .collect();
    let first_us = lookups.iter().map(|l| l.first_us).min();
    let boot = super::OneBoot {
        path,
        labels,
        state,
        batch_records,
        source: leakwatch_proto::v1::RecordSource::IosPrivacy,
        first_us,
    };
    Ok((super::one_boot(boot, &[], &lookups)?, stats))
}

/// Reads the report at `path`; a file that holds no line of a report is
/// an error naming it, a line that does not parse is counted.
pub fn read(path: &Path) -> Result<(Vec<NetworkActivity>, ReportStats)> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let mut reader = std::io::BufReader::new(file);
    let mut out = Vec::new();
    let mut stats = ReportStats::default();
    let mut line = Vec::new();
    loop {
        let read = super::read_line(&mut reader, &mut line, MAX_LINE_BYTES)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        if read == super::Line::End {
            break;
        }
        stats.lines += 1;
        if read == super::Line::TooLong {
            stats.malformed.note(stats.lines, format!("longer than {MAX_LINE_BYTES} bytes"));
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(&text) {
            Ok(Some(activity)) => out.push(activity),
            Ok(None) => {}
            Err(reason) if reason == ACCESS => stats.access_lines += 1,
            Err(reason) if reason == OTHER => stats.other_lines += 1,
            Err(reason) => stats.malformed.note(stats.lines, reason),
        }
    }
    if out.is_empty() && stats.access_lines == 0 && stats.malformed.count > 0 {
        return Err(stats.malformed.refusal(path, "an iOS App Privacy Report"));
    }
    Ok((out, stats))
}

const ACCESS: &str = "access";
const OTHER: &str = "other";

/// One line: a network activity, `Err(ACCESS)` or `Err(OTHER)` for lines
/// left out, else `Err` with what is wrong.
fn parse_line(text: &str) -> std::result::Result<Option<NetworkActivity>, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match line.kind.as_str() {
        "networkActivity" => {}
        "access" => return Err(ACCESS.into()),
        _ => return Err(OTHER.into()),
    }
    let need = |v: Option<String>, field: &str| v.filter(|s| !s.is_empty()).ok_or(format!("no {field}"));
    let app = need(line.bundle_id, "bundleID")?;
    let domain = need(line.domain, "domain")?;
    let last = need(line.time_stamp, "timeStamp")?;
    let first = line.first_time_stamp.unwrap_or_else(|| last.clone());
    let time = |t: &str, field: &str| {
        chrono::DateTime::parse_from_rfc3339(t).map(|t| t.timestamp_micros()).map_err(|e| format!("{field} {t:?}: {e}"))
    };
    Ok(Some(NetworkActivity {
        app,
        domain,
        first_us: time(&first, "firstTimeStamp")?,
        last_us: time(&last, "timeStamp")?,
        hits: line.hits.unwrap_or(1),
        domain_type: line.domain_type.unwrap_or(0),
        app_initiated: line.initiated_type.as_deref() == Some("AppInitiated"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETWORK: &str = r#"{"timeStamp":"2022-04-27T10:59:33.170-04:00","initiatedType":"NonAppInitiated","context":"weather.com","domain":"calendars.icloud.com","contextVerificationType":0,"type":"networkActivity","domainType":2,"firstTimeStamp":"2022-04-27T10:58:00.000-04:00","bundleID":"com.apple.mobilecal","domainOwner":"","hits":3,"domainClassification":1}"#;
    const ACCESS_LINE: &str = r#"{"accessor":{"identifier":"com.apple.mobilecal","identifierType":"bundleID"},"category":"location","identifier":"0634B0EB","kind":"intervalBegin","timeStamp":"2022-04-27T11:01:09.166-04:00","type":"access"}"#;

    fn file(lines: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.ndjson");
        std::fs::write(&path, lines.join("\n")).expect("write");
        (dir, path)
    }

    #[test]
    fn network_lines_become_activities_with_utc_times_and_nothing_personal() {
        let (_dir, path) = file(&[ACCESS_LINE, NETWORK, "", NETWORK]);
        let (activities, stats) = read(&path).expect("read");
        assert_eq!(activities.len(), 2);
        let a = &activities[0];
        assert_eq!(
            (a.app.as_str(), a.domain.as_str(), a.hits, a.domain_type),
            ("com.apple.mobilecal", "calendars.icloud.com", 3, 2)
        );
        assert!(!a.app_initiated);
        // 10:58:00 at -04:00 is 14:58:00 UTC.
        assert_eq!(
            a.first_us,
            chrono::DateTime::parse_from_rfc3339("2022-04-27T14:58:00Z").expect("t").timestamp_micros()
        );
        assert_eq!(a.last_us - a.first_us, 93_170_000);
        assert_eq!((stats.lines, stats.access_lines, stats.malformed.count), (4, 1, 0));
        // The website the user was on is not kept anywhere.
        assert!(!format!("{activities:?}").contains("weather.com"));
    }

    #[test]
    fn bad_lines_are_counted_and_named_and_other_files_refused() {
        let cut = &NETWORK[..NETWORK.len() / 2];
        let no_domain = NETWORK.replace(r#""domain":"calendars.icloud.com","#, "");
        let (_dir, path) = file(&[NETWORK, cut, &no_domain, "[1,2]", NETWORK]);
        let (activities, stats) = read(&path).expect("a partly bad file imports what is valid");
        assert_eq!((activities.len(), stats.malformed.count), (2, 3));
        let named: Vec<u64> = stats.malformed.first.iter().map(|(line, _)| *line).collect();
        assert_eq!(named, [2, 3, 4]);
        assert!(stats.malformed.first[1].1.contains("no domain"), "{:?}", stats.malformed);
        let (_dir, csv) = file(&["time,app,domain", "1,a,b"]);
        let err = read(&csv).expect_err("not a report").to_string();
        assert!(err.contains("report.ndjson line 1") && err.contains("not an iOS App Privacy Report"), "{err}");
    }
}
