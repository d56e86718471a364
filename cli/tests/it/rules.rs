//! Golden tests of the detection rules on the built-in simulated fleet.
//!
//! The fleet profile (`agent/src/simulate/default_profile.toml`) plants
//! each rule's pattern next to decoys. For every rule the test checks that
//! its rows are exactly the planted ones (precision and recall 1.0, by
//! their identifying columns) and that the whole output equals the golden
//! file `cli/tests/golden/<rule>.csv`. After a deliberate change,
//! regenerate the golden files with
//! `LEAKWATCH_UPDATE_GOLDEN=1 cargo test -p leakwatch --test it rules::`
//! and review the diff.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use leakwatch::demo::run_pipeline;
use leakwatch_collector::server::Server;
use leakwatch_query::digest::Digests;
use leakwatch_query::format::{OutputFormat, render};
use leakwatch_query::rules::builtin_rules;

use crate::serve_config;

/// What each rule must find, by its identifying columns, and why.
const PLANTED: &[(&str, &[&str])] = &[
    (
        // Vendor servers contacted within 60 s of boot by most of a model's
        // devices. Decoys: the connectivity check and time server every
        // vendor contacts, Google's servers shared with www.google.com.
        "boot_phone_home",
        &[
            "Xiaomi|Redmi 1S|xiaomi.com",
            "Xiaomi|Mi 4|xiaomi.com",
            "Amazon|Echo Dot|amazon.com",
            "TP-Link|Tapo C200|tplinkcloud.com",
            "TP-Link|Tapo C310|tplinkcloud.com",
            "Samsung|Galaxy S5|ospserver.net",
            // Named by nothing on the wire: rotating addresses on an
            // unusual port, and one fixed address on port 443.
            "Gosund|SP111|tcp/8886 (unnamed)",
            "eQ-3|HmIP-PSM|91.212.186.0/24 (unnamed)",
        ],
    ),
    (
        // Vendor-specific contacts of models with a consent setting "off".
        // Decoys: Roku's analytics (only devices with usage_data=on), the
        // consent-on models (Mi 4, Galaxy A5, Pixel 3, Tapo), shared
        // destinations.
        "consent_off_traffic",
        &[
            "Xiaomi|Redmi 1S|cloud_account|api.account.xiaomi.com",
            "Amazon|Echo Dot|voice_recordings|device-metrics-us.amazon.com",
            "Google|Nexus 5|google_account|android.clients.google.com",
            "Roku|Roku Express|usage_data|api.roku.com",
            "Roku|Roku Express|usage_data|image.roku.com",
            "Roku|Roku Express|usage_data|scribe.logs.roku.com",
            "Samsung|Galaxy S5|samsung_account|dms.ospserver.net",
            "Gosund|SP111|cloud_account|tcp/8886 (unnamed)",
        ],
    ),
    (
        // Only after the Tapo C310's update. Decoy: its cloud server,
        // contacted under both firmwares; models whose devices run one of
        // two firmwares at random.
        "new_after_update",
        &["TP-Link|Tapo C310|iot-events.tplinkra.com"],
    ),
    (
        // Every vendor's own servers. Decoys: the destinations all vendors
        // share (gstatic, time.android.com, www.google.com, the CDN,
        // graph.facebook.com, the weather API).
        "model_exclusive",
        &[
            "Amazon|device-metrics-us.amazon.com",
            "Google|android.clients.google.com",
            "Roku|analytics.roku.com",
            "Roku|api.roku.com",
            "Roku|image.roku.com",
            "Roku|scribe.logs.roku.com",
            "Samsung|api.samsungcloud.com",
            "Samsung|dms.ospserver.net",
            "TP-Link|iot-events.tplinkra.com",
            "TP-Link|n-devs.tplinkcloud.com",
            "Xiaomi|api.account.xiaomi.com",
            "Xiaomi|tracking.miui.com",
            "Gosund|tcp/8886 (unnamed)",
            "eQ-3|91.212.186.0/24 (unnamed)",
        ],
    ),
    (
        // Uploads. Decoys: image.roku.com and the CDN (downloads), Samsung's
        // cloud (balanced), Xiaomi's account server (2-3x, under the ratio).
        "heavy_upload",
        &["Roku|Roku Express|scribe.logs.roku.com", "Amazon|Echo Dot|device-metrics-us.amazon.com"],
    ),
    (
        // A 20 s timer. Decoy: image.roku.com, as frequent but irregular.
        "beaconing",
        &["Roku|Roku Express|api.roku.com"],
    ),
    // No vendor's MUD file is loaded for the fleet: nothing is outside one
    // (give_back.rs loads the Echo's for the Echo Dot).
    ("outside_mud", &[]),
];

/// How many leading columns identify a row of each rule.
fn key_columns(rule: &str) -> usize {
    match rule {
        "boot_phone_home" | "new_after_update" | "heavy_upload" | "beaconing" | "outside_mud" => 3,
        "consent_off_traffic" => 4,
        "model_exclusive" => 2,
        other => panic!("no planted rows declared for rule {other}: add them to PLANTED"),
    }
}

fn golden_path(dir: &str, rule: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir).join(format!("{rule}.csv"))
}

/// Runs every rule over what `server` stored: the failures (rows found
/// that were not planted, planted rows missed, output other than the
/// golden file in `golden_dir`), or the golden files rewritten when
/// `LEAKWATCH_UPDATE_GOLDEN` is set.
///
/// Each rule must also answer the same over the digest of the flows,
/// which the dashboard runs it on (see `leakwatch_query::digest`).
async fn check_rules(server: &Server, planted: &[(&str, &[&str])], golden_dir: &str) -> Vec<String> {
    let session = server.sessions.session().await.expect("session");
    let (digest, _) = server.sessions.digest_session(&Digests::default()).await.expect("digest session");
    let planted: BTreeMap<&str, &[&str]> = planted.iter().copied().collect();
    let update = std::env::var_os("LEAKWATCH_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for rule in builtin_rules() {
        let sql = rule.render(&BTreeMap::new()).expect("render");
        let batches = session.sql(&sql).await.unwrap_or_else(|e| panic!("rule {}: {e}", rule.name));
        let csv = render(&batches, OutputFormat::Csv).expect("csv");
        let over_digest = digest.sql(&sql).await.unwrap_or_else(|e| panic!("rule {} over the digest: {e}", rule.name));
        if render(&over_digest, OutputFormat::Csv).expect("csv") != csv {
            failures.push(format!(
                "{}: over the digest of the flows it answers otherwise:\n{}",
                rule.name,
                render(&over_digest, OutputFormat::Csv).expect("csv")
            ));
        }
        // No rows: no batch, nothing rendered.
        if let Some(header) = csv.lines().next() {
            assert_eq!(header, rule.columns.join(","), "rule {}: columns match its header", rule.name);
        }

        let n = key_columns(&rule.name);
        let found: BTreeSet<String> =
            csv.lines().skip(1).map(|l| l.split(',').take(n).collect::<Vec<_>>().join("|")).collect();
        let want: BTreeSet<String> =
            planted.get(rule.name.as_str()).copied().unwrap_or_default().iter().map(|s| s.to_string()).collect();
        let false_positives: Vec<_> = found.difference(&want).collect();
        let missed: Vec<_> = want.difference(&found).collect();
        if !false_positives.is_empty() || !missed.is_empty() {
            failures.push(format!("{}: not planted {false_positives:?}, missed {missed:?}", rule.name));
        }

        let path = golden_path(golden_dir, &rule.name);
        if update {
            std::fs::create_dir_all(path.parent().expect("dir")).expect("golden dir");
            std::fs::write(&path, &csv).expect("write golden");
        } else {
            let golden = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; regenerate with LEAKWATCH_UPDATE_GOLDEN=1", path.display()));
            if golden != csv {
                failures.push(format!("{}: output differs from {}:\n{csv}", rule.name, path.display()));
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_finds_exactly_its_planted_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(serve_config(&dir.path().join("collector"))).await.expect("start");
    run_pipeline(&server, dir.path(), None, None).await.expect("the built-in fleet through agent and collector");
    let failures = check_rules(&server, PLANTED, "tests/golden").await;
    server.shutdown().await.expect("shutdown");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What each rule must find in the fleet of mixed sources, and why.
const MIXED_PLANTED: &[(&str, &[&str])] = &[
    (
        // The Zeek-logged cameras at boot. The Pi-hole-logged ones of the
        // same model ask for the same name, but a DNS server's log knows no
        // boot: counted, they would halve the model's share (5 of 11).
        "boot_phone_home",
        &["Acme|HomeCam 2|acme-cloud.example"],
    ),
    ("consent_off_traffic", &[]),
    ("new_after_update", &[]),
    (
        // Each vendor's own names, whatever read them: the cameras' cloud
        // (Zeek and Pi-hole), their upload server (Zeek), the phones' app
        // backend (the iOS report).
        "model_exclusive",
        &["Acme|api.acme-cloud.example", "Acme|upload.acme-cloud.example", "Apple|telemetry.appvendor.example"],
    ),
    // Bytes from Zeek's conn.log; the DNS logs and the iOS report have none.
    ("heavy_upload", &["Acme|HomeCam 2|upload.acme-cloud.example"]),
    // A 60 s timer in Zeek's conn.log. The Pi-hole-logged cameras show no
    // connections: counted, they would halve the share.
    ("beaconing", &["Acme|HomeCam 2|api.acme-cloud.example"]),
    ("outside_mud", &[]),
];

/// A household's cameras seen by Zeek (5, with DHCP and connections) and
/// by Pi-hole (6, their DNS queries only), and phones' App Privacy Reports
/// (5): every record through its own import, the agent's anonymiser and
/// the collector; the fields a source cannot know are NULL, and each rule
/// finds exactly its planted rows, saying which sources they rest on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_mixed_sources_gives_exactly_its_planted_rows() {
    use leakwatch_agent::imports::{ios_privacy, pihole, zeek};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(serve_config(&dir.path().join("collector"))).await.expect("start");
    let state = leakwatch_agent::state::AgentState::open(&dir.path().join("agent")).expect("state");
    let url = format!("http://{}", server.grpc_addr);
    let mut up = leakwatch_agent::uploader::Uploader::connect(&url, &state, "", std::time::Duration::from_secs(10))
        .await
        .expect("enroll");
    let mac = |i: usize| format!("02:ac:3e:00:00:{i:02x}");
    let mut labels = String::new();
    for i in 0..11 {
        labels.push_str(&format!("[[device]]\nmac = \"{}\"\nvendor = \"Acme\"\nmodel = \"HomeCam 2\"\n", mac(i)));
    }
    let labels =
        leakwatch_agent::lan::LanLabels::from_toml(&labels, std::path::Path::new("devices.toml")).expect("labels");
    let mut batches = Vec::new();

    // Zeek: cameras 0 to 4, each joining by DHCP, asking for its cloud,
    // contacting it every 60 s (6 times) and uploading once.
    let logs = dir.path().join("zeek");
    std::fs::create_dir(&logs).expect("mkdir");
    let (mut dhcp, mut dns, mut conn) = (String::new(), String::new(), String::new());
    for i in 0..5 {
        let (ip, t0) = (format!("192.168.1.{}", 20 + i), 1_764_547_200 + 1000 * i as i64);
        dhcp.push_str(&format!("{{\"ts\":{t0},\"mac\":\"{}\",\"assigned_addr\":\"{ip}\",\"msg_types\":[\"DISCOVER\",\"OFFER\",\"REQUEST\",\"ACK\"]}}\n", mac(i)));
        for (name, addr) in [("api.acme-cloud.example", "203.0.113.10"), ("upload.acme-cloud.example", "203.0.113.20")]
        {
            dns.push_str(&format!("{{\"ts\":{}.5,\"id.orig_h\":\"{ip}\",\"id.resp_h\":\"192.168.1.1\",\"query\":\"{name}\",\"answers\":[\"{addr}\"]}}\n", t0 + 2));
        }
        for k in 0..6 {
            conn.push_str(&format!("{{\"ts\":{},\"uid\":\"C{i}{k}\",\"id.orig_h\":\"{ip}\",\"id.orig_p\":{},\"id.resp_h\":\"203.0.113.10\",\"id.resp_p\":443,\"proto\":\"tcp\",\"duration\":1.0,\"orig_bytes\":800,\"resp_bytes\":2000,\"orig_pkts\":6,\"resp_pkts\":6}}\n", t0 + 3 + 60 * k, 40000 + k));
        }
        conn.push_str(&format!("{{\"ts\":{},\"uid\":\"U{i}\",\"id.orig_h\":\"{ip}\",\"id.orig_p\":41000,\"id.resp_h\":\"203.0.113.20\",\"id.resp_p\":443,\"proto\":\"tcp\",\"duration\":30.0,\"orig_bytes\":2000000,\"resp_bytes\":4000,\"orig_pkts\":1500,\"resp_pkts\":700}}\n", t0 + 10));
    }
    for (file, text) in [("dhcp.log", dhcp), ("dns.log", dns), ("conn.log", conn)] {
        std::fs::write(logs.join(file), text).expect("write");
    }
    zeek::import(&logs, &labels, None, &state, 1000, |b| {
        batches.extend(b.import.batches);
        Ok(())
    })
    .expect("zeek");

    // Pi-hole: cameras 5 to 10 asking for the same cloud, which some of
    // its answers blocked.
    let db = dir.path().join("pihole-FTL.db");
    let sqlite = rusqlite::Connection::open(&db).expect("create");
    sqlite
        .execute_batch(
            "CREATE TABLE queries (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp INTEGER NOT NULL, type INTEGER NOT NULL,
               status INTEGER NOT NULL, domain TEXT, client TEXT NOT NULL, forward TEXT);
             CREATE TABLE network (id INTEGER PRIMARY KEY NOT NULL, hwaddr TEXT UNIQUE NOT NULL, interface TEXT NOT NULL,
               firstSeen INTEGER NOT NULL, lastQuery INTEGER NOT NULL, numQueries INTEGER NOT NULL, macVendor TEXT, aliasclient_id INTEGER);
             CREATE TABLE network_addresses (network_id INTEGER NOT NULL, ip TEXT UNIQUE NOT NULL, lastSeen INTEGER NOT NULL,
               name TEXT, nameUpdated INTEGER);",
        )
        .expect("schema");
    for i in 5..11_i64 {
        let ip = format!("192.168.1.{}", 20 + i);
        sqlite
            .execute(
                "INSERT INTO network VALUES (?1, ?2, 'eth0', 0, 0, 0, NULL, NULL)",
                rusqlite::params![i, mac(i as usize)],
            )
            .expect("network");
        sqlite
            .execute("INSERT INTO network_addresses VALUES (?1, ?2, 0, NULL, NULL)", rusqlite::params![i, ip])
            .expect("address");
        for k in 0..3 {
            sqlite
                .execute(
                    "INSERT INTO queries (timestamp, type, status, domain, client) VALUES (?1, 1, ?2, 'api.acme-cloud.example', ?3)",
                    rusqlite::params![1_764_547_200 + 100 * i + 60 * k, if k == 2 { 1 } else { 2 }, ip],
                )
                .expect("query");
        }
    }
    drop(sqlite);
    pihole::import(&db, &labels, &state, 1000, true, |b| {
        batches.extend(b.import.batches);
        Ok(())
    })
    .expect("pihole");

    // iOS: five phones' reports, their app's backend.
    for i in 0..5 {
        let report = dir.path().join(format!("phone-{i}.ndjson"));
        std::fs::write(
            &report,
            format!("{{\"type\":\"networkActivity\",\"bundleID\":\"com.appvendor.app\",\"domain\":\"telemetry.appvendor.example\",\"context\":\"\",\"timeStamp\":\"2025-12-01T10:0{i}:00Z\",\"firstTimeStamp\":\"2025-12-01T09:5{i}:00Z\",\"hits\":12,\"domainType\":2,\"initiatedType\":\"AppInitiated\"}}\n"),
        )
        .expect("report");
        let phone = leakwatch_agent::import::DeviceLabels {
            device_id: Some(format!("phone-{i}")),
            vendor: "Apple".into(),
            model: "iPhone 15".into(),
            ..Default::default()
        };
        let (imported, _) = ios_privacy::import(&report, &phone, &state, 1000).expect("ios");
        batches.extend(imported.batches);
    }
    for batch in &batches {
        up.send(batch).await.expect("send");
    }

    // What a source cannot know is NULL, and each says what it is.
    let session = server.sessions.session().await.expect("session");
    let counts = session
        .sql("SELECT source, count(*) AS records, count(seconds_since_boot) AS with_boot, count(bytes_out) AS with_bytes, \
              count(dst_port) AS with_port, count(connections) AS with_connections, count(blocked) AS with_blocked, \
              sum(CASE WHEN blocked THEN 1 ELSE 0 END) AS blocked, \
              count(initiated_by) AS with_initiator, sum(CASE WHEN via_website THEN 1 ELSE 0 END) AS via_website \
              FROM flows GROUP BY source ORDER BY source")
        .await
        .expect("counts");
    let counts = render(&counts, OutputFormat::Csv).expect("csv");
    assert_eq!(
        counts,
        "source,records,with_boot,with_bytes,with_port,with_connections,with_blocked,blocked,with_initiator,via_website\n\
         ios_privacy,5,0,0,0,0,0,0,5,0\n\
         pihole,12,0,0,12,0,12,6,0,0\n\
         zeek,20,20,20,20,20,0,0,0,0\n"
    );
    let failures = check_rules(&server, MIXED_PLANTED, "tests/golden/mixed_sources").await;
    server.shutdown().await.expect("shutdown");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
