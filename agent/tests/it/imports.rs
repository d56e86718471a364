//! Files of the tools volunteers already run, read as the sample notes
//! describe them.

use std::collections::BTreeSet;

use leakwatch_agent::imports::{ios_privacy, pcapdroid_csv, zeek};

use crate::external;

/// The iOS App Privacy Report sample (plaso's test data): 72 lines, 8
/// `access` and 64 `networkActivity`, 8 bundle IDs, 58 domains, 159 hits.
#[test]
fn external_ios_privacy_report_reads_as_its_notes_say() {
    let path = external("imports/ios-app-privacy/ios_app_privacy_report_plaso.ndjson");
    let (activities, stats) = ios_privacy::read(&path).expect("read");
    assert_eq!((stats.lines, stats.access_lines, stats.other_lines, stats.malformed.count), (72, 8, 0, 0));
    assert_eq!(activities.len(), 64);
    let apps: BTreeSet<&str> = activities.iter().map(|a| a.app.as_str()).collect();
    let domains: BTreeSet<&str> = activities.iter().map(|a| a.domain.as_str()).collect();
    assert_eq!((apps.len(), domains.len()), (8, 58));
    assert_eq!(activities.iter().map(|a| a.hits).sum::<u64>(), 159);
    assert_eq!(activities.iter().filter(|a| a.app_initiated).count(), 47);
    assert_eq!(activities.iter().filter(|a| a.domain_type == 1).count(), 5);
    // Line 9 of the sample, its time in UTC.
    let line9 = activities
        .iter()
        .find(|a| a.domain == "calendars.icloud.com" && a.app == "com.apple.mobilecal")
        .expect("line 9");
    let t = chrono::DateTime::parse_from_rfc3339("2022-04-27T14:59:33.170Z").expect("time").timestamp_micros();
    assert_eq!((line9.first_us, line9.last_us, line9.hits, line9.app_initiated), (t, t, 1, false));
    // The website the user was on (`context`) is no field of what is read:
    // Chrome's contact with doubleclick.net happened on youtube.com.
    let ad = activities.iter().find(|a| a.domain == "doubleclick.net").expect("doubleclick.net");
    assert_eq!(ad.app, "com.google.chrome.ios");
    assert!(!format!("{ad:?}").contains("youtube"), "{ad:?}");
}

/// PCAPdroid's connection export: 23 rows, Proto DNS 10 / TLS 6 / HTTPS 5
/// / HTTP 1 / QUIC 1, 6 apps, from 15:16:04.380 to 15:16:29.558 at -05:00.
#[test]
fn external_pcapdroid_csv_reads_as_its_notes_say() {
    let path = external("imports/pcapdroid/PCAPdroid_22_Jun_18_22_50.csv");
    let (rows, stats) = pcapdroid_csv::read(&path).expect("read");
    assert_eq!((rows.len() as u64, stats.rows, stats.bad.count), (23, 23, 0));
    let count = |proto: &str| rows.iter().filter(|r| r.proto == proto).count();
    assert_eq!((count("DNS"), count("TLS"), count("HTTPS"), count("HTTP"), count("QUIC")), (10, 6, 5, 1, 1));
    let apps: BTreeSet<&str> = rows.iter().map(|r| r.package.as_str()).collect();
    assert_eq!(apps.len(), 6, "{apps:?}");
    let utc = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("time").timestamp_micros();
    assert_eq!(rows.iter().map(|r| r.first_us).min(), Some(utc("2025-06-22T20:16:04.380Z")));
    assert_eq!(rows.iter().map(|r| r.last_us).max(), Some(utc("2025-06-22T20:16:29.558Z")));
    // DNS rows go to PCAPdroid's virtual resolver and name the query.
    let dns = rows.iter().find(|r| r.proto == "DNS").expect("a DNS row");
    assert_eq!(
        (dns.dst_ip.to_string().as_str(), dns.dst_port, dns.info.as_str()),
        ("10.215.173.2", 53, "mtalk.google.com")
    );
}

/// Zeek's own test baselines (m57-short: conn 2164, dns 2950, ssl 7, dhcp
/// 202 records, canonicalised times) and a raw gzipped dns.log of 53615
/// records from 1521911720.865716 to 1521912990.151237.
#[test]
fn external_zeek_logs_read_as_their_notes_say() {
    for (log, want) in [("conn", 2164), ("dns", 2950), ("ssl", 7), ("dhcp", 202)] {
        let path = external(&format!("imports/zeek/m57-short_tsv_zeek-testing/{log}.log"));
        let mut names = 0;
        let stats = zeek::read_log(&path, |row| {
            names += usize::from(row.get("server_name").or(row.get("query")).or(row.get("host_name")).is_some());
        })
        .expect("read");
        assert_eq!((stats.path.as_deref(), stats.rows, stats.bad.count), (Some(log), want, 0), "{log}");
        if log != "conn" {
            assert!(names > 0, "{log}: rows carry their names");
        }
    }
    let path = external("imports/zeek/wrccdc2018/dns.log.gz");
    let (mut first, mut last, mut queries) = (i64::MAX, i64::MIN, 0u64);
    let stats = zeek::read_log(&path, |row| {
        let ts = row.time_us("ts").expect("a time");
        (first, last) = (first.min(ts), last.max(ts));
        queries += u64::from(row.get("query").is_some());
    })
    .expect("read");
    assert_eq!((stats.rows, stats.bad.count), (53615, 0));
    assert_eq!((first, last), (1_521_911_720_865_716, 1_521_912_990_151_237));
    assert!(queries > 50_000, "{queries}");
}

/// `import --from pcapdroid-csv`: the export's 13 connections become 11
/// flow records (a destination of one app summed) and its 10 DNS rows 10
/// lookup records, through the anonymiser, each batch saying its source.
#[test]
fn external_pcapdroid_csv_imports_as_records() {
    let state = tempfile::tempdir().expect("state");
    let csv = external("imports/pcapdroid/PCAPdroid_22_Jun_18_22_50.csv");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
            .args(["import", "--from", "pcapdroid-csv", "--dry-run", "--vendor", "Google", "--model", "Pixel 7"])
            .args(extra)
            .arg("--state-dir")
            .arg(state.path())
            .arg(&csv)
            .env("XDG_CONFIG_HOME", state.path())
            .output()
            .expect("import")
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("23 rows read, 21 records"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("10.215.173."), "the phone's and PCAPdroid's local addresses are never sent");
    let records: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(records.len(), 21);
    assert!(records.iter().all(|r| r["device"]["source"] == "RECORD_SOURCE_PCAPDROID_CSV"));
    let lookups = records.iter().filter(|r| r["transport"] == "TRANSPORT_DNS").count();
    assert_eq!(lookups, 10);
    let tile = records
        .iter()
        .find(|r| r["domain"] == "production.tile-api.com" && r["transport"] == "TRANSPORT_TCP")
        .expect("tile");
    assert_eq!(
        (&tile["app"], &tile["connections"], &tile["domain_source"]),
        (&"com.thetileapp.tile".into(), &3.into(), &"DOMAIN_SOURCE_SNI".into())
    );
    let quic = records.iter().find(|r| r["transport"] == "TRANSPORT_UDP").expect("the QUIC row");
    assert_eq!(
        (&quic["domain"], &quic["domain_source"]),
        (&"play-fe.googleapis.com".into(), &"DOMAIN_SOURCE_QUIC".into())
    );
    // The boot is the first connection: 15:16:04.380 at -05:00.
    assert_eq!(records.iter().map(|r| r["seconds_since_boot"].as_f64().expect("s")).fold(f64::MAX, f64::min), 0.0);
    let lan = std::process::Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args(["import", "--from", "pcapdroid-csv", "--dry-run", "--lan", "--state-dir"])
        .arg(state.path())
        .arg(&csv)
        .env("XDG_CONFIG_HOME", state.path())
        .output()
        .expect("import");
    assert!(!lan.status.success() && String::from_utf8_lossy(&lan.stderr).contains("drop --lan"));
}
