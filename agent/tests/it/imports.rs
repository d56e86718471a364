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

/// Runs `leakwatch-agent import --dry-run` on `file` with `args`; its
/// exit success, stderr and the records it printed.
fn dry_run_import(
    state: &std::path::Path,
    args: &[&str],
    file: &std::path::Path,
) -> (bool, String, Vec<serde_json::Value>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args(["import", "--dry-run"])
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg(file)
        .env("XDG_CONFIG_HOME", state)
        .output()
        .expect("import");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records = stdout.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), records)
}

/// The report's 64 network lines: a lookup record each (each is another
/// app, domain, initiator or kind of contact), its hits as queries, who
/// started it (47 lines the app, 17 the user) and whether a website shown
/// in the app made it (5 lines); nothing of the access lines or the
/// websites the user was on.
#[test]
fn external_ios_privacy_report_imports_as_lookup_records_of_each_app() {
    let state = tempfile::tempdir().expect("state");
    let path = external("imports/ios-app-privacy/ios_app_privacy_report_plaso.ndjson");
    let (ok, stderr, records) =
        dry_run_import(state.path(), &["--from", "ios-privacy", "--vendor", "Apple", "--model", "iPad"], &path);
    assert!(ok && stderr.contains("72 lines read, 64 records; 8 access lines"), "{stderr}");
    assert_eq!(records.len(), 64);
    let kinds = |initiator: &str, via_website: bool| {
        records.iter().filter(|r| r["initiator"] == initiator && r["via_website"] == via_website).count()
    };
    assert_eq!(
        (
            kinds("INITIATOR_APP", false),
            kinds("INITIATOR_USER", false),
            kinds("INITIATOR_APP", true),
            kinds("INITIATOR_USER", true)
        ),
        (44, 15, 3, 2)
    );
    assert!(records.iter().all(|r| r["device"]["source"] == "RECORD_SOURCE_IOS_PRIVACY"
        && r["transport"] == "TRANSPORT_DNS"
        && r["dst_ip"] == ""));
    let hits: u64 = records.iter().map(|r| r["packets_out"].as_u64().expect("hits")).sum();
    assert_eq!(hits, 159, "every hit of the report is counted once");
    let apps: BTreeSet<&str> = records.iter().map(|r| r["app"].as_str().expect("app")).collect();
    assert_eq!(apps.len(), 8);
    // Line 9: calendars.icloud.com by the calendar, once, at 14:59:33.170 UTC.
    let line9 = records
        .iter()
        .find(|r| r["domain"] == "calendars.icloud.com" && r["app"] == "com.apple.mobilecal")
        .expect("line 9");
    assert_eq!((&line9["packets_out"], &line9["window_start_unix_s"]), (&1.into(), &1_651_071_540.into()));
    // The websites the user was on ("context") are no record's domain
    // unless an app contacted them itself, and nothing of an access line
    // (its identifier) is sent.
    let text = serde_json::to_string(&records).expect("json");
    assert!(!records.iter().any(|r| r["domain"] == "youtube.com"), "youtube.com is only a context");
    assert!(!text.contains("0E0134C2-8E0C-40AD-8620-099F6D9C0BEB") && !text.contains("photos"), "{text}");
}

/// `import --from pcapdroid-csv`: the export's 13 connections become 11
/// flow records (a destination of one app summed) and its 10 DNS rows 10
/// lookup records, through the anonymiser, each batch saying its source.
#[test]
fn external_pcapdroid_csv_imports_as_records() {
    let state = tempfile::tempdir().expect("state");
    let csv = external("imports/pcapdroid/PCAPdroid_22_Jun_18_22_50.csv");
    let (ok, stderr, records) =
        dry_run_import(state.path(), &["--from", "pcapdroid-csv", "--vendor", "Google", "--model", "Pixel 7"], &csv);
    assert!(ok && stderr.contains("23 rows read, 21 records"), "{stderr}");
    let text = serde_json::to_string(&records).expect("json");
    assert!(!text.contains("10.215.173."), "the phone's and PCAPdroid's local addresses are never sent");
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
    let (ok, stderr, _) = dry_run_import(state.path(), &["--from", "pcapdroid-csv", "--lan"], &csv);
    assert!(!ok && stderr.contains("drop --lan"), "{stderr}");
}

/// The wrccdc 2018 `dns.log.gz` (53,615 queries, 53,613 from 77 LAN
/// addresses): one device per LAN originator (70 with a name that may be
/// sent); 10.0.0.1 asked
/// heartbeat.dm.origin.com 146 times from 1521911734.617439 to
/// 1521912966.703282 (counted in the log itself).
#[test]
fn external_zeek_dns_log_imports_each_lan_originator_as_a_device() {
    let state = tempfile::tempdir().expect("state");
    let log = external("imports/zeek/wrccdc2018/dns.log.gz");
    let (ok, stderr, records) = dry_run_import(state.path(), &["--from", "zeek"], &log);
    assert!(ok && stderr.contains("53615 log rows read, 77 LAN devices, 77 boots"), "{stderr}");
    assert!(records.iter().all(|r| r["device"]["source"] == "RECORD_SOURCE_ZEEK" && r["transport"] == "TRANSPORT_DNS"));
    let devices: BTreeSet<&str> =
        records.iter().map(|r| r["device"]["device_pseudonym"].as_str().expect("pseudonym")).collect();
    // Seven of them asked only for local or single-label names ("*",
    // mDNS services) or reverse lookups, which are not sent.
    assert_eq!(devices.len(), 70);
    let heartbeat: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["domain"] == "heartbeat.dm.origin.com").collect();
    assert_eq!(heartbeat.len(), 1);
    assert_eq!((&heartbeat[0]["packets_out"], &heartbeat[0]["duration_s"]), (&146.into(), &1232.085843.into()));
    let text = serde_json::to_string(&records).expect("json");
    assert!(!text.contains("\"10.") && !text.contains("\"172.31."), "no LAN address is sent");
    // The Zeek test baseline's canonified times place nothing: refused,
    // naming the log.
    let m57 = external("imports/zeek/m57-short_tsv_zeek-testing");
    let (ok, stderr, _) = dry_run_import(state.path(), &["--from", "zeek"], &m57);
    assert!(!ok && stderr.contains("dhcp.log: none of its 202 rows has a time"), "{stderr}");
}

/// A log directory of Zeek's JSON writer with ISO-8601 times: the device
/// is its DHCP MAC, its two DHCP exchanges an hour apart two boots; a
/// connection is named by the server name its `uid` has in ssl.log (with
/// the JA4 and ALPN), another by a DNS answer; bytes are conn.log's.
#[test]
fn zeek_logs_joined_by_uid_and_address_with_dhcp_boots() {
    let dir = tempfile::tempdir().expect("dir");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("mkdir");
    let write = |name: &str, lines: &[&str]| std::fs::write(logs.join(name), lines.join("\n")).expect("write");
    write(
        "dhcp.log",
        &[
            r#"{"ts":"2026-11-02T08:00:00.000Z","mac":"64:09:80:aa:bb:cc","assigned_addr":"192.168.1.23","host_name":"kitchen-cam","msg_types":["DISCOVER","OFFER","REQUEST","ACK"]}"#,
            r#"{"ts":"2026-11-02T09:00:00.000Z","mac":"64:09:80:aa:bb:cc","assigned_addr":"192.168.1.23","host_name":"kitchen-cam","msg_types":["REQUEST","ACK"]}"#,
        ],
    );
    write(
        "dns.log",
        &[
            r#"{"ts":"2026-11-02T08:00:03.000Z","uid":"D1","id.orig_h":"192.168.1.23","id.orig_p":5353,"id.resp_h":"192.168.1.1","id.resp_p":53,"query":"ota.vendor.example","answers":["203.0.113.7"]}"#,
        ],
    );
    write(
        "ssl.log",
        &[
            r#"{"ts":"2026-11-02T08:00:05.000Z","uid":"C1","server_name":"api.vendor.example","ja4":"t13d1516h2_8daaf6152771_02713d6af862","next_protocol":"h2"}"#,
        ],
    );
    write(
        "conn.log",
        &[
            r#"{"ts":"2026-11-02T08:00:05.000Z","uid":"C1","id.orig_h":"192.168.1.23","id.orig_p":40000,"id.resp_h":"198.51.100.9","id.resp_p":443,"proto":"tcp","duration":2.5,"orig_bytes":5000,"resp_bytes":700,"orig_pkts":9,"resp_pkts":7}"#,
            r#"{"ts":"2026-11-02T08:00:04.000Z","uid":"C2","id.orig_h":"192.168.1.23","id.orig_p":40001,"id.resp_h":"203.0.113.7","id.resp_p":80,"proto":"tcp","duration":1.0,"orig_bytes":300,"resp_bytes":90000,"orig_pkts":5,"resp_pkts":70}"#,
            r#"{"ts":"2026-11-02T09:00:10.000Z","uid":"C3","id.orig_h":"192.168.1.23","id.orig_p":40002,"id.resp_h":"198.51.100.9","id.resp_p":443,"proto":"tcp","duration":1.0,"orig_bytes":10,"resp_bytes":20,"orig_pkts":1,"resp_pkts":1}"#,
            r#"{"ts":"2026-11-02T09:00:11.000Z","uid":"C4","id.orig_h":"192.168.1.23","id.orig_p":0,"id.resp_h":"198.51.100.9","id.resp_p":0,"proto":"icmp"}"#,
            r#"{"ts":"XXXXXXXXXX.XXXXXX","uid":"C5","id.orig_h":"192.168.1.23","id.orig_p":1,"id.resp_h":"198.51.100.9","id.resp_p":443,"proto":"tcp"}"#,
            "not json",
        ],
    );
    let labels = dir.path().join("devices.toml");
    std::fs::write(&labels, "[[device]]\nmac = \"64:09:80:aa:bb:cc\"\nvendor = \"Acme\"\nmodel = \"Cam 2\"\n")
        .expect("labels");
    let labels = labels.to_str().expect("utf-8");
    let (ok, stderr, records) =
        dry_run_import(dir.path(), &["--from", "zeek", "--lan", "--device-labels", labels], &logs);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("1 without a time in ts, left out")
            && stderr.contains("1 connections neither TCP nor UDP")
            && stderr.contains("1 bad lines skipped (line 6: not JSON"),
        "{stderr}"
    );
    assert!(stderr.contains("1 LAN devices, 2 boots"), "{stderr}");
    assert!(records.iter().all(|r| r["device"]["vendor"] == "Acme"
        && r["device"]["model"] == "Cam 2"
        && r["device"]["boot_source"] == "BOOT_SOURCE_DHCP"));
    let boots: BTreeSet<&str> = records.iter().map(|r| r["device"]["boot_pseudonym"].as_str().expect("boot")).collect();
    assert_eq!(boots.len(), 2);
    let api = records
        .iter()
        .find(|r| r["domain"] == "api.vendor.example" && r["seconds_since_boot"] == 5.0)
        .expect("the first boot's TLS connection");
    assert_eq!(
        (&api["domain_source"], &api["bytes_out"], &api["bytes_in"], &api["packets_out"], &api["duration_s"]),
        (&"DOMAIN_SOURCE_SNI".into(), &5000.into(), &700.into(), &9.into(), &2.5.into())
    );
    assert_eq!(api["tls"]["client_fingerprint"], "t13d1516h2_8daaf6152771_02713d6af862");
    assert_eq!(api["tls"]["alpn"], serde_json::json!(["h2"]));
    let ota = records.iter().find(|r| r["domain"] == "ota.vendor.example" && r["transport"] == "TRANSPORT_TCP");
    let ota = ota.expect("named by the DNS answer");
    assert_eq!((&ota["domain_source"], &ota["bytes_in"]), (&"DOMAIN_SOURCE_DNS".into(), &90000.into()));
    let second = records.iter().find(|r| r["seconds_since_boot"] == 10.0).expect("the second boot's connection");
    assert_eq!(second["domain"], "", "no server name in ssl.log and no DNS answer for its address: unnamed");
    let text = serde_json::to_string(&records).expect("json");
    assert!(!text.contains("kitchen-cam") && !text.contains("192.168.") && !text.contains("64:09:80"), "{text}");
}

/// Names and sizes of the files in `dir` and its subdirectories.
fn listing(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let meta = entry.metadata().expect("meta");
        if meta.is_dir() {
            out.extend(listing(&entry.path()));
        } else {
            out.push((entry.path().display().to_string(), meta.len()));
        }
    }
    out.sort();
    out
}

/// Pi-hole's databases as the sample notes count the rows of FTL's own
/// `queries` view: ushineko's 1,399 queries (150 blocked: statuses 1, 9
/// and 16) of 3 clients, the same database with its WAL 1,544 (164),
/// doogie201's 25 (24 reverse lookups, not sent). Nothing is written
/// beside the shared files.
#[test]
fn external_pihole_databases_import_the_rows_of_their_queries_view() {
    let state = tempfile::tempdir().expect("state");
    let dir = external("imports/pihole");
    let before = listing(&dir);
    let run = |rel: &str| dry_run_import(state.path(), &["--from", "pihole"], &dir.join(rel));
    let (ok, stderr, records) = run("pihole-FTL_v21_ftl6.1_ushineko.db");
    assert!(ok && stderr.contains("1399 queries read, 150 of them blocked, 3 LAN devices"), "{stderr}");
    assert!(records.iter().all(|r| r["device"]["source"] == "RECORD_SOURCE_PIHOLE"
        && r["transport"] == "TRANSPORT_DNS"
        && r["dst_ip"] == ""));
    // In the view: 97 queries for api2.cursor.sh by 192.168.86.244, all
    // answered; 21 for news.iadsdk.apple.com, all blocked (gravity).
    let find = |name: &str, blocked: bool| {
        let found: Vec<&serde_json::Value> =
            records.iter().filter(|r| r["domain"] == name && r["blocked"] == blocked).collect();
        assert_eq!(found.len(), 1, "{name} blocked={blocked}");
        found[0]["packets_out"].as_u64().expect("queries")
    };
    assert_eq!((find("api2.cursor.sh", false), find("news.iadsdk.apple.com", true)), (97, 21));
    let (ok, stderr, _) = run("ushineko-ftl6.1-with-wal/pihole-FTL.db");
    assert!(ok && stderr.contains("1544 queries read, 164 of them blocked"), "{stderr}");
    let (ok, stderr, records) = run("pihole-FTL_v21_ftl6.1_doogie201.db");
    assert!(ok && stderr.contains("25 queries read, 0 of them blocked, 1 LAN devices, 1 boots, 1 records"), "{stderr}");
    assert_eq!(records.len(), 1);
    let text = serde_json::to_string(&records).expect("json");
    assert!(!text.contains("127.0.0.1") && !text.contains("in-addr.arpa"), "{text}");
    assert_eq!(listing(&dir), before, "nothing written beside the databases");
}

/// FTL version 12's schema (FTL 5: integer times): its queries read the
/// same way.
#[test]
fn external_pihole_schema_v12_reads_through_its_queries_view() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("pihole-FTL.db");
    // As `sqlite3 .schema` wrote it: with the table SQLite makes itself.
    let schema = std::fs::read_to_string(external("imports/pihole/schema_v12_ftl5.sql"))
        .expect("schema")
        .replace("CREATE TABLE sqlite_sequence(name,seq);", "");
    let conn = rusqlite::Connection::open(&db).expect("create");
    conn.execute_batch(&schema).expect("schema");
    conn.execute_batch(
        "INSERT INTO domain_by_id VALUES (1, 'telemetry.vendor.example'), (2, 'ads.tracker.example');
         INSERT INTO client_by_id VALUES (1, '192.168.1.50', 'kitchen-tv');
         INSERT INTO network VALUES (1, '64:09:80:aa:bb:cc', 'eth0', 1700000000, 1700000100, 3, 'Xiaomi', NULL);
         INSERT INTO network_addresses VALUES (1, '192.168.1.50', 1700000100, 'kitchen-tv', 1700000100);
         INSERT INTO query_storage (timestamp, type, status, domain, client) VALUES
           (1700000000, 1, 2, 1, 1), (1700000060, 1, 3, 1, 1), (1700000070, 1, 1, 2, 1);",
    )
    .expect("rows");
    drop(conn);
    let labels = dir.path().join("devices.toml");
    std::fs::write(&labels, "[[device]]\nmac = \"64:09:80:aa:bb:cc\"\nvendor = \"Xiaomi\"\nmodel = \"Mi TV 4\"\n")
        .expect("labels");
    let args = ["--from", "pihole", "--lan", "--device-labels", labels.to_str().expect("utf-8")];
    let (ok, stderr, records) = dry_run_import(dir.path(), &args, &db);
    assert!(ok && stderr.contains("3 queries read, 1 of them blocked, 1 LAN devices"), "{stderr}");
    let telemetry = records.iter().find(|r| r["domain"] == "telemetry.vendor.example").expect("telemetry");
    assert_eq!(
        (&telemetry["packets_out"], &telemetry["duration_s"], &telemetry["blocked"], &telemetry["device"]["model"]),
        (&2.into(), &60.0.into(), &false.into(), &"Mi TV 4".into())
    );
    let text = serde_json::to_string(&records).expect("json");
    assert!(!text.contains("kitchen-tv") && !text.contains("192.168.1.50") && !text.contains("64:09:80"));
}

/// A database of [`crate::OLD_PIHOLE_SCHEMA`] with `rows` of (timestamp,
/// status, domain, client), in rollback-journal mode.
fn old_pihole_db(path: &std::path::Path, rows: &[(f64, i64, Option<&str>, &str)]) {
    let conn = rusqlite::Connection::open(path).expect("create");
    conn.execute_batch(crate::OLD_PIHOLE_SCHEMA).expect("schema");
    conn.execute("INSERT INTO ftl VALUES (2, 1700000000)", []).expect("creation time");
    for (ts, status, domain, client) in rows {
        conn.execute(
            "INSERT INTO queries (timestamp, type, status, domain, client) VALUES (?1, 1, ?2, ?3, ?4)",
            rusqlite::params![ts, status, domain, client],
        )
        .expect("row");
    }
}

/// A repeated import (a timer on the Pi-hole host) reads only the queries
/// after the last one queued; a dry run moves nothing; `--from-start`
/// reads them all again.
#[test]
fn pihole_imports_are_incremental() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("pihole-FTL.db");
    let q = |i: usize| (1_700_000_000.0 + i as f64, 2, Some("api.vendor.example"), "192.168.1.7");
    old_pihole_db(&db, &(0..5).map(q).collect::<Vec<_>>());
    let import = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
            .args(["import", "--from", "pihole", "--collector", "http://127.0.0.1:9", "--deliver-timeout", "0"])
            .args(extra)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg(&db)
            .env("XDG_CONFIG_HOME", dir.path())
            .output()
            .expect("import");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (_, dry, _) = dry_run_import(&dir.path().join("state"), &["--from", "pihole"], &db);
    assert!(dry.contains("5 queries read"), "{dry}");
    let first = import(&[]);
    assert!(first.contains("5 queries read") && first.contains("queued"), "{first}");
    let again = import(&[]);
    assert!(again.contains("0 queries after query 5 (the last one queued before) read"), "{again}");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute("INSERT INTO queries (timestamp, type, status, domain, client) VALUES (1700000100, 1, 1, 'ads.example', '192.168.1.7')", [])
        .expect("row");
    drop(conn);
    let newer = import(&[]);
    assert!(newer.contains("1 queries after query 5 (the last one queued before) read, 1 of them blocked"), "{newer}");
    let all = import(&["--from-start"]);
    assert!(all.contains("6 queries read"), "{all}");
}

/// Another format, a truncated database, a WAL given for its database, a
/// database locked by a writer: an error naming the file. Rows that are
/// no query are skipped, counted and named by query id.
#[test]
fn bad_pihole_files_are_refused_and_bad_rows_counted() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let refused = |path: &std::path::Path, why: &str| {
        let (ok, stderr, _) = dry_run_import(&state, &["--from", "pihole"], path);
        assert!(!ok && stderr.contains(&path.display().to_string()) && stderr.contains(why), "{why}: {stderr}");
    };
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "query[A] example.com from 192.168.1.2\n".repeat(10)).expect("write");
    refused(&text, "not a SQLite database");
    let db = dir.path().join("big.db");
    let rows: Vec<(f64, i64, Option<&str>, &str)> =
        (0..3000).map(|i| (1_700_000_000.0 + f64::from(i), 2, Some("api.vendor.example"), "192.168.1.7")).collect();
    old_pihole_db(&db, &rows);
    let cut = dir.path().join("cut.db");
    let bytes = std::fs::read(&db).expect("read");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write");
    refused(&cut, "damaged or truncated");
    let wal = dir.path().join("pihole-FTL.db-wal");
    std::fs::write(&wal, [0u8; 64]).expect("write");
    refused(&wal, "write-ahead log");
    let writer = rusqlite::Connection::open(&db).expect("open");
    writer
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; DELETE FROM queries WHERE id = 1;")
        .expect("lock");
    refused(&db, "locked by another process");
    drop(writer);
    let bad = dir.path().join("bad.db");
    old_pihole_db(
        &bad,
        &[
            (1_700_000_000.0, 2, Some("api.vendor.example"), "192.168.1.7"),
            (1_700_000_001.0, 2, None, "192.168.1.7"),
            (1_700_000_002.0, 2, Some("api.vendor.example"), "kitchen-tv"),
            (1_700_000_003.0, 2, Some("api.vendor.example"), "192.168.1.7"),
        ],
    );
    let (ok, stderr, records) = dry_run_import(&state, &["--from", "pihole"], &bad);
    assert!(ok && stderr.contains("2 queries read"), "{stderr}");
    assert!(
        stderr.contains("2 bad rows skipped (query 2: no domain; query 3: client \"kitchen-tv\" is no address)"),
        "{stderr}"
    );
    assert_eq!(records.len(), 1);
}

/// A PCAPdroid capture with its trailer: the app of every one of its 4,477
/// frames is the one PCAPdroid's own Wireshark dissector reads (the
/// sample's `.tsv`), and the import gives each record its app, as the
/// live stream does.
#[test]
fn external_pcapdroid_trailer_names_each_frames_app_as_its_dissector_does() {
    let capture = external("imports/pcapdroid/PCAPdroid_31_Jan_16_50_12_with_trailer.pcap");
    let tsv = std::fs::read_to_string(external(
        "imports/pcapdroid/PCAPdroid_31_Jan_16_50_12_with_trailer.pcap.tshark-pcapdroid-lua.tsv",
    ))
    .expect("tsv");
    let expected: Vec<String> =
        tsv.lines().skip(1).map(|l| l.split('\t').nth(10).expect("pcapdroid.appname").to_string()).collect();
    let mut apps = Vec::new();
    leakwatch_agent::capture::read_capture_file(&capture, |frame, _| {
        apps.push(leakwatch_agent::live::pcapdroid_app(frame.data).unwrap_or_default());
    })
    .expect("read");
    assert_eq!(apps.len(), 4477);
    let differing: Vec<(usize, &String, &String)> = apps
        .iter()
        .zip(&expected)
        .enumerate()
        .filter(|(_, (a, e))| a != e)
        .map(|(i, (a, e))| (i + 1, a, e))
        .take(5)
        .collect();
    assert!(differing.is_empty(), "frames (number, ours, the dissector's): {differing:?}");
    let per_app = |name: &str| apps.iter().filter(|a| *a == name).count();
    assert_eq!(
        (per_app("Unitree Explore"), per_app("Google Play service"), per_app("Meta Services"), per_app("Prime Video")),
        (4397, 33, 30, 17)
    );
    let state = tempfile::tempdir().expect("state");
    let (ok, stderr, records) = dry_run_import(state.path(), &["--vendor", "Google", "--model", "Pixel 7"], &capture);
    assert!(ok, "{stderr}");
    let named: BTreeSet<&str> = records.iter().map(|r| r["app"].as_str().expect("app")).collect();
    assert!(named.contains("Unitree Explore") && named.iter().all(|a| expected.iter().any(|e| e == a)), "{named:?}");
}

/// While FTL runs (its database in WAL mode, open, a write under way), an
/// import reads the committed queries without waiting for FTL or
/// blocking it, and changes neither the database nor its log.
#[test]
fn a_pihole_database_in_use_by_ftl_is_read_as_committed_and_left_unchanged() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("pihole-FTL.db");
    old_pihole_db(&db, &[]);
    let ftl = rusqlite::Connection::open(&db).expect("open");
    ftl.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).expect("wal");
    for i in 0..3 {
        ftl.execute(
            "INSERT INTO queries (timestamp, type, status, domain, client) VALUES (?1, 1, 2, 'api.vendor.example', '192.168.1.7')",
            [1_700_000_000 + i],
        )
        .expect("query");
    }
    // FTL's next write, not committed yet.
    ftl.execute_batch(
        "BEGIN IMMEDIATE; INSERT INTO queries (timestamp, type, status, domain, client) VALUES (1700000100, 1, 2, 'later.example', '192.168.1.7');",
    )
    .expect("write under way");
    let wal = dir.path().join("pihole-FTL.db-wal");
    assert!(wal.exists() && dir.path().join("pihole-FTL.db-shm").exists(), "FTL's WAL and shared memory");
    let before = (std::fs::read(&db).expect("db"), std::fs::read(&wal).expect("wal"));
    let started = std::time::Instant::now();
    let (ok, stderr, records) = dry_run_import(&dir.path().join("state"), &["--from", "pihole"], &db);
    assert!(ok && stderr.contains("3 queries read"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "no wait for FTL's lock");
    assert!(!records.iter().any(|r| r["domain"] == "later.example"), "the uncommitted query is not read");
    assert_eq!((std::fs::read(&db).expect("db"), std::fs::read(&wal).expect("wal")), before, "nothing written");
    ftl.execute_batch("COMMIT").expect("FTL's write goes on");
}
