//! Router / LAN mode on a simulated LAN capture with several devices.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use leakwatch_agent::simulate::{DEFAULT_PROFILE, FleetManifest, FleetProfile, simulate_fleet, write_lan_capture};
use serde_json::Value;

/// A simulated fleet of `devices` in `dir` (seed `seed`), its merged LAN
/// capture and that capture's labels file.
pub(crate) fn lan_capture(dir: &Path, devices: u32, seed: u64) -> (FleetManifest, PathBuf, PathBuf) {
    let profile = FleetProfile::from_toml(DEFAULT_PROFILE).expect("profile");
    let manifest = simulate_fleet(&profile, dir, Some(devices), Some(seed), |_, _| {}).expect("simulate");
    let (lan, labels) = write_lan_capture(dir, &manifest).expect("lan capture");
    (manifest, lan, labels)
}

#[test]
fn lan_capture_yields_per_device_records_with_labels_and_dhcp_boots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (manifest, lan, labels) = lan_capture(dir.path(), 10, 11);
    let out = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args(["import", "--lan", "--dry-run", "--format", "jsonl", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--device-labels")
        .arg(&labels)
        .arg(&lan)
        .output()
        .expect("run agent");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).expect("utf-8").lines().map(|l| serde_json::from_str(l).expect("json")).collect();

    // Expected per MAC: labels (every second device is labelled) and boots.
    let labelled: BTreeSet<String> =
        leakwatch_agent::lan::LanLabels::load(&labels).expect("labels").devices.into_iter().map(|d| d.mac).collect();
    let mut boots_per_mac: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &manifest.captures {
        *boots_per_mac.entry(c.mac.as_str()).or_default() += 1;
    }
    // Group what would be sent by device pseudonym.
    let mut devices: BTreeMap<String, (BTreeSet<String>, Value)> = BTreeMap::new();
    for l in &lines {
        let d = &l["device"];
        assert_eq!(d["boot_source"], "BOOT_SOURCE_DHCP", "every boot comes from a DHCP handshake");
        let e = devices
            .entry(d["device_pseudonym"].as_str().expect("pseudonym").to_string())
            .or_insert_with(|| (BTreeSet::new(), d.clone()));
        e.0.insert(d["boot_pseudonym"].as_str().expect("boot").to_string());
        for key in ["vendor", "model", "os_version", "consent"] {
            assert_eq!(d[key], e.1[key], "labels are constant per device");
        }
    }
    assert_eq!(devices.len(), boots_per_mac.len(), "one device per MAC");
    let mut boot_counts: Vec<usize> = devices.values().map(|(boots, _)| boots.len()).collect();
    let mut want_counts: Vec<usize> = boots_per_mac.values().copied().collect();
    boot_counts.sort_unstable();
    want_counts.sort_unstable();
    assert_eq!(boot_counts, want_counts, "one boot per DHCP handshake");
    // Labelled devices carry their labels; the others an OUI vendor and model "unknown".
    let entries: BTreeMap<&str, _> = manifest.captures.iter().map(|c| (c.mac.as_str(), c)).collect();
    let mut seen_labelled = 0;
    for (_, device) in devices.values() {
        let model = device["model"].as_str().expect("model");
        if model == "unknown" {
            let vendor = device["vendor"].as_str().expect("vendor");
            assert!(!vendor.is_empty() && vendor != "unknown", "OUI vendor expected, got {vendor:?}");
        } else {
            seen_labelled += 1;
            let entry =
                entries.values().find(|e| e.model == model && labelled.contains(&e.mac)).expect("a labelled model");
            assert_eq!(device["vendor"], entry.vendor.as_str());
        }
    }
    assert_eq!(seen_labelled, labelled.len());
    // The MACs never leave the machine.
    let raw = lines.iter().map(Value::to_string).collect::<String>();
    for mac in boots_per_mac.keys() {
        assert!(!raw.contains(mac) && !raw.contains(&mac.replace(':', "")), "{mac} leaked");
    }
}

/// Import sums a capture up as it reads it: connections idle past their
/// timeout leave the table every minute of capture time. The flows must be
/// those of the whole table summed at the end, per device and boot and for
/// the capture as one device, while the table holds a fraction of the
/// connections at any time.
#[test]
fn a_capture_summed_as_it_is_read_gives_the_flows_of_the_whole_table() {
    use leakwatch_agent::flow::FlowSums;
    use leakwatch_agent::import::{read_capture, read_capture_swept};
    use leakwatch_agent::lan::LanBootTracker;

    let dir = tempfile::tempdir().expect("tempdir");
    let (_, lan, _) = lan_capture(dir.path(), 10, 11);

    let whole = read_capture(&lan).expect("read");
    let total = whole.table.connection_count();
    let mut tracker = LanBootTracker::new(None);
    tracker.observe(&whole.table);
    let want_lan = whole.table.summaries_grouped(|o, t| tracker.boot_of(o, t));
    let want_single = whole.table.summaries();
    let want_queries: u64 = whole.table.lookups().iter().map(|l| l.queries).sum();
    drop(whole);

    let mut tracker = LanBootTracker::new(None);
    let (mut per_boot, mut single) = (FlowSums::default(), FlowSums::default());
    let (mut sweeps, mut most_held, mut queries) = (0usize, 0usize, 0u64);
    read_capture_swept(&lan, |open, mut done| {
        sweeps += 1;
        most_held = most_held.max(open.connection_count() + done.connection_count());
        tracker.observe(open);
        tracker.observe(&done);
        per_boot.add(&done, |o, t| tracker.boot_of(o, t));
        single.add(&done, |_, _| Some(()));
        queries += done.take_lookups().iter().map(|l| l.queries).sum::<u64>();
    })
    .expect("read in sweeps");
    assert!(sweeps > 10, "{sweeps} sweeps: the capture should span many minutes");
    assert!(most_held * 4 < total, "held up to {most_held} of {total} connections at once");
    let got_lan = per_boot.finish();
    assert_eq!(got_lan.len(), want_lan.len(), "boots");
    for (boot, flows) in &want_lan {
        assert_eq!(got_lan.get(boot), Some(flows), "flows of boot {boot:?}");
    }
    assert_eq!(single.finish().remove(&()).unwrap_or_default(), want_single, "flows as one device");
    assert_eq!(queries, want_queries, "DNS queries counted once each");
}

#[test]
fn a_truncated_lan_capture_says_it_stopped_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, lan, _) = lan_capture(dir.path(), 4, 5);
    let bytes = std::fs::read(&lan).expect("read");
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 9]).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args(["import", "--lan", "--dry-run", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg(&cut)
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("LAN devices") && stderr.contains("stopped early") && stderr.contains("truncated"),
        "{stderr}"
    );
}

/// Captures joined end to end, as `mergecap -a` writes them (capture time
/// goes back at each join), are read holding no more connections at once
/// than the same captures merged in time order; the import summary says
/// that time went back.
#[test]
fn captures_joined_end_to_end_hold_no_more_connections_than_merged_in_time_order() {
    use leakwatch_agent::capture::{TIME_BACK_US, read_capture_file};
    use leakwatch_agent::import::read_capture_swept;
    use leakwatch_agent::simulate::PcapWriter;

    let dir = tempfile::tempdir().expect("tempdir");
    let (manifest, lan, labels) = lan_capture(dir.path(), 10, 11);
    // Each boot's capture, one after the other.
    let joined = dir.path().join("joined.pcap");
    let file = std::io::BufWriter::new(std::fs::File::create(&joined).expect("create"));
    let mut out = PcapWriter::new(file, 1).expect("pcap writer");
    let (mut joins, mut latest) = (0u64, i64::MIN);
    for capture in &manifest.captures {
        read_capture_file(&dir.path().join(&capture.file), |frame, _| {
            let ts = frame.ts_us.expect("a timestamp");
            if ts < latest.saturating_sub(TIME_BACK_US) {
                joins += 1;
                latest = ts;
            }
            latest = latest.max(ts);
            out.write_frame(ts, frame.data).expect("write");
        })
        .expect("read a boot's capture");
    }
    out.finish().expect("finish");
    assert!(joins >= 5, "time went back at {joins} joins");

    let peak = |path: &Path| {
        let mut peak = 0;
        let (stats, _) = read_capture_swept(path, |open, _| peak = peak.max(open.peak_connections())).expect("read");
        (peak, stats.time_went_back)
    };
    let (merged, merged_back) = peak(&lan);
    let (joined_peak, joined_back) = peak(&joined);
    assert_eq!((merged_back, joined_back), (0, joins));
    assert!(
        joined_peak <= merged,
        "joined end to end: {joined_peak} connections at once; merged in time order: {merged}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args(["import", "--lan", "--dry-run", "--format", "jsonl", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--device-labels")
        .arg(&labels)
        .arg(&joined)
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("capture time went back {joins} times")), "{stderr}");
}
