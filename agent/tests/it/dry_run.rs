//! `import --dry-run --format jsonl`: exactly what would be sent, and
//! nothing private.

use std::net::IpAddr;
use std::process::Command;

use leakwatch_agent::anonymiser::is_non_public;
use serde_json::Value;

use crate::{external, simulated_fleet};

const RECORD_KEYS: [&str; 24] = [
    "blocked",
    "initiator",
    "via_website",
    "encrypted_dns",
    "connections",
    "interval_mean_s",
    "interval_cv",
    "app",
    "batch_id",
    "bytes_in",
    "bytes_out",
    "device",
    "domain",
    "domain_source",
    "dst_ip",
    "dst_port",
    "duration_s",
    "packets_in",
    "packets_out",
    "seconds_since_boot",
    "sent_at_unix_ms",
    "tls",
    "transport",
    "window_start_unix_s",
];

fn dry_run(files: &[std::path::PathBuf], extra: &[&str]) -> (Vec<Value>, String) {
    let state = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args(["import", "--dry-run", "--format", "jsonl", "--state-dir"])
        .arg(state.path())
        .args(extra)
        .args(files)
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"))).collect();
    (lines, stdout)
}

fn check_private(lines: &[Value], raw: &str, forbidden: &[&str]) {
    assert!(!lines.is_empty());
    for line in lines {
        let obj = line.as_object().expect("object per line");
        for key in obj.keys() {
            assert!(RECORD_KEYS.contains(&key.as_str()), "unexpected field {key}");
        }
        let dst_ip = obj["dst_ip"].as_str().expect("dst_ip");
        if dst_ip.is_empty() {
            assert_eq!(obj["transport"], "TRANSPORT_DNS", "only a lookup through a LAN resolver has no address");
        } else {
            let ip: IpAddr = dst_ip.parse().expect("ip");
            assert!(!is_non_public(ip), "non-public destination {ip} in output");
        }
        let device = obj["device"].as_object().expect("device");
        let keys: Vec<&str> = device.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["boot_pseudonym", "boot_source", "consent", "device_pseudonym", "model", "os_version", "source", "vendor"]
        );
        assert_eq!(device["source"], "RECORD_SOURCE_CAPTURE");
    }
    for needle in forbidden {
        assert!(!raw.to_lowercase().contains(&needle.to_lowercase()), "{needle} leaked into the output");
    }
}

#[test]
fn simulated_lan_capture_sends_nothing_private() {
    let (dir, manifest) = simulated_fleet(8);
    let entry = &manifest.captures[0];
    let path = dir.path().join(&entry.file);
    // The device's MAC and LAN address, as they appear in the capture.
    let bytes = std::fs::read(&path).expect("read");
    let src_mac = &bytes[24 + 16 + 6..24 + 16 + 12];
    let mac_colon = src_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mac_plain = hex_string(src_mac);
    let (lines, raw) =
        dry_run(&[path], &["--vendor", "Xiaomi", "--model", "Redmi 1S", "--consent", "cloud_account=off"]);
    check_private(
        &lines,
        &raw,
        &[&mac_colon, &mac_plain, "192.168.", "239.255.255.250", "224.0.0.251", "generate_204"],
    );
    for line in &lines {
        assert_eq!(line["device"]["consent"]["cloud_account"], "off");
        assert_eq!(line["device"]["boot_source"], "BOOT_SOURCE_FIRST_PACKET");
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn external_real_captures_send_nothing_private() {
    let files = [
        external("pcapdroid/metadata.pcap"),
        external("arkime/v6-http.pcap"),
        external("arkime/curl-enabled-tls13.pcap"),
        external("zeek/wikipedia.pcap"),
    ];
    let (lines, raw) = dry_run(&files, &["--boot-time", "2007-01-01T00:00:00Z"]);
    // Source addresses of the capturing devices in these files.
    check_private(&lines, &raw, &["10.0.2.15", "fe80::", "/path", "GET "]);
    assert!(lines.iter().all(|l| l["device"]["boot_source"] == "BOOT_SOURCE_EXPLICIT"));
}

/// Device labels with control characters, direction
/// overrides or consent separators are refused at the agent, naming the
/// flag, and nothing is printed as sent.
#[test]
fn labels_that_attack_readers_are_refused_naming_the_flag() {
    let (dir, manifest) = simulated_fleet(1);
    let capture = dir.path().join(&manifest.captures[0].file);
    for (flags, want) in [
        (
            ["--vendor", "Evil\u{202e}gpj.exe"],
            "invalid --vendor (or LEAKWATCH_AGENT_VENDOR): \"Evil\\u{202e}gpj.exe\" holds a Unicode direction",
        ),
        (["--model", "a\u{7}b"], "invalid --model"),
        (["--consent", "cloud;x=on"], "invalid --consent"),
    ] {
        let state = tempfile::tempdir().expect("tempdir");
        let out = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
            .args(["import", "--dry-run", "--state-dir"])
            .arg(state.path())
            .args(flags)
            .arg(&capture)
            .output()
            .expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(stderr.contains(want), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing printed as sent");
    }
}
