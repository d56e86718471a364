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
];

/// How many leading columns identify a row of each rule.
fn key_columns(rule: &str) -> usize {
    match rule {
        "boot_phone_home" | "new_after_update" | "heavy_upload" | "beaconing" => 3,
        "consent_off_traffic" => 4,
        "model_exclusive" => 2,
        other => panic!("no planted rows declared for rule {other}: add them to PLANTED"),
    }
}

fn golden_path(rule: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{rule}.csv"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_finds_exactly_its_planted_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(serve_config(&dir.path().join("collector"))).await.expect("start");
    run_pipeline(&server, dir.path(), None, None).await.expect("the built-in fleet through agent and collector");
    let session = server.sessions.session().await.expect("session");
    let planted: BTreeMap<&str, &[&str]> = PLANTED.iter().copied().collect();
    let update = std::env::var_os("LEAKWATCH_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for rule in builtin_rules() {
        let sql = rule.render(&BTreeMap::new()).expect("render");
        let batches = session.sql(&sql).await.unwrap_or_else(|e| panic!("rule {}: {e}", rule.name));
        let csv = render(&batches, OutputFormat::Csv).expect("csv");
        let header = csv.lines().next().unwrap_or_default();
        assert_eq!(header, rule.columns.join(","), "rule {}: columns match its header", rule.name);

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

        let path = golden_path(&rule.name);
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
    server.shutdown().await.expect("shutdown");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
