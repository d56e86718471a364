//! Agreement with independent tools on the third-party captures: tshark's
//! SNI and DNS query columns, Zeek's conn.log and ssl.log, Suricata's
//! Community IDs. Known differences are listed here with their reason.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use leakwatch_agent::anonymiser::is_local_name;
use leakwatch_agent::flow::{Connection, NameSource, community_id_seeded};
use leakwatch_agent::import::read_capture;

use crate::external;

fn all_files(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            all_files(&path, suffix, out);
        } else if path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
}

struct Seen {
    connections: Vec<Connection>,
    names: BTreeSet<String>,
    hello_names: BTreeSet<String>,
}

fn seen(capture: &Path) -> Option<Seen> {
    let read = read_capture(capture).ok()?;
    let connections = read.table.connections();
    let mut names: BTreeSet<String> = read.table.lookups().iter().map(|l| l.name.to_ascii_lowercase()).collect();
    let hello_names = connections
        .iter()
        .filter(|c| matches!(c.name_source, NameSource::Sni | NameSource::Quic))
        .filter_map(|c| c.domain.clone())
        .map(|d| d.to_ascii_lowercase())
        .collect();
    names.extend(connections.iter().filter_map(|c| c.domain.clone()).map(|d| d.to_ascii_lowercase()));
    Some(Seen { connections, names, hello_names })
}

/// A minimal CSV field splitter (tshark quotes fields with commas).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().expect("field").push(c),
        }
    }
    out
}

#[test]
fn external_tshark_sni_and_dns_query_names_are_all_found() {
    let root = external("");
    let mut csvs = Vec::new();
    all_files(&root, ".tshark.csv", &mut csvs);
    csvs.sort();
    assert!(csvs.len() >= 20, "{} baselines", csvs.len());
    let mut report = Vec::new();
    let mut missing = Vec::new();
    for csv in &csvs {
        let capture = PathBuf::from(csv.to_string_lossy().trim_end_matches(".tshark.csv"));
        let text = std::fs::read_to_string(csv).expect("read csv");
        let mut lines = text.lines();
        let header = fields(lines.next().unwrap_or_default());
        let col = |name: &str| header.iter().position(|h| h == name);
        let (Some(sni_col), Some(qry_col), Some(tcp_col), Some(udp_col)) =
            (col("tls.handshake.extensions_server_name"), col("dns.qry.name"), col("tcp.dstport"), col("udp.dstport"))
        else {
            panic!("{}: unexpected columns {header:?}", csv.display());
        };
        let mut want_sni = BTreeSet::new();
        let mut want_dns = BTreeSet::new();
        for line in lines {
            let f = fields(line);
            let get = |i: usize| f.get(i).map(String::as_str).unwrap_or_default();
            for name in get(sni_col).split(',').filter(|s| !s.is_empty()) {
                want_sni.insert(name.to_ascii_lowercase());
            }
            // Queries to port 53; mDNS/LLMNR (5353/5355) are local by design.
            if get(udp_col) == "53" || get(tcp_col) == "53" {
                for name in get(qry_col).split(',').filter(|s| !s.is_empty()) {
                    if !is_local_name(name) {
                        want_dns.insert(name.to_ascii_lowercase());
                    }
                }
            }
        }
        let Some(seen) = seen(&capture) else {
            report.push(format!("{}: unreadable", capture.display()));
            continue;
        };
        let sni_found = want_sni.iter().filter(|n| seen.hello_names.contains(*n)).count();
        let dns_found = want_dns.iter().filter(|n| seen.names.contains(*n)).count();
        report.push(format!(
            "{}: SNI {sni_found}/{}, DNS query names {dns_found}/{}",
            capture.strip_prefix(&root).unwrap_or(&capture).display(),
            want_sni.len(),
            want_dns.len()
        ));
        for n in want_sni.iter().filter(|n| !seen.hello_names.contains(*n)) {
            missing.push(format!("{}: SNI {n}", capture.display()));
        }
        for n in want_dns.iter().filter(|n| !seen.names.contains(*n)) {
            missing.push(format!("{}: DNS {n}", capture.display()));
        }
    }
    println!("{}", report.join("\n"));
    assert!(missing.is_empty(), "not found:\n{}\n\nper file:\n{}", missing.join("\n"), report.join("\n"));
}

/// Zeek conn.log rows: (orig_h, orig_p, resp_h, resp_p, proto, orig_bytes,
/// resp_bytes, orig_pkts, orig_ip_bytes, resp_pkts, resp_ip_bytes).
fn zeek_conns(log: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(log).expect("conn.log");
    let names: Vec<&str> =
        text.lines().find_map(|l| l.strip_prefix("#fields\t")).expect("#fields").split('\t').collect();
    let want = [
        "id.orig_h",
        "id.orig_p",
        "id.resp_h",
        "id.resp_p",
        "proto",
        "orig_bytes",
        "resp_bytes",
        "orig_pkts",
        "orig_ip_bytes",
        "resp_pkts",
        "resp_ip_bytes",
    ];
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            want.iter().map(|w| f[names.iter().position(|n| n == w).expect("column")].to_string()).collect()
        })
        .collect()
}

#[test]
fn external_zeek_conn_log_counts_match() {
    let cases = [
        (
            "zeek/pcapng-multi-interface.pcapng",
            "zeek/pcapng-multi-interface.pcapng.expected/core.pcapng-pktsrc/conn.log",
        ),
        ("zeek/mixed-vlan-mpls.pcap", "zeek/mixed-vlan-mpls.pcap.expected/core.vlan-mpls/conn.log"),
    ];
    // Not compared: zeek/dns/dns-corrupt.pcap, whose conn.log counts 0
    // packets because Zeek (run without -C) discards packets with bad UDP
    // checksums; leakwatch does not verify checksums (captures taken on
    // the sending host carry offloaded, unfinished checksums), so it sees
    // the query and the answer.
    for (capture, log) in cases {
        let seen = seen(&external(capture)).expect("readable");
        for row in zeek_conns(&external(log)) {
            let c = seen
                .connections
                .iter()
                .find(|c| {
                    c.src_ip.to_string() == row[0]
                        && c.src_port.to_string() == row[1]
                        && c.dst_ip.to_string() == row[2]
                        && c.dst_port.to_string() == row[3]
                })
                .unwrap_or_else(|| panic!("{capture}: no flow for {row:?}"));
            let ours =
                [c.payload_bytes_out, c.payload_bytes_in, c.packets_out, c.ip_bytes_out, c.packets_in, c.ip_bytes_in]
                    .map(|v| v.to_string());
            assert_eq!(ours.to_vec(), row[5..].to_vec(), "{capture}: {row:?}");
        }
    }
}

#[test]
fn external_community_ids_equal_suricatas() {
    let seen = seen(&external("suricata-verify/tests/community-id-ipv6/input.pcap")).expect("readable");
    let yaml = std::fs::read_to_string(external("suricata-verify/tests/community-id-ipv6/test.yaml")).expect("yaml");
    let want: BTreeSet<&str> = yaml.lines().filter_map(|l| l.trim().strip_prefix("community_id: ")).collect();
    assert_eq!(want.len(), 2);
    // This suricata-verify test runs with `community-id-seed: 7`.
    let ours: BTreeSet<String> = seen
        .connections
        .iter()
        .map(|c| community_id_seeded(7, c.transport, (c.src_ip, c.src_port), (c.dst_ip, c.dst_port)))
        .collect();
    for id in want {
        assert!(ours.contains(id), "{id} not among {ours:?}");
    }
    // Suricata's flow record: 2303 bytes to server, 7122 to client, whole
    // frames (Ethernet headers included), 17 packets each way.
    let dns_google = seen.connections.iter().find(|c| c.domain.as_deref() == Some("dns.google")).expect("dns.google");
    assert_eq!((dns_google.packets_out, dns_google.packets_in), (17, 17));
    assert_eq!((dns_google.ip_bytes_out + 17 * 14, dns_google.ip_bytes_in + 17 * 14), (2303, 7122));
}

/// The JA4 client fingerprint equals Arkime's (`ja4` in its session JSON)
/// on every Arkime capture that has one.
#[test]
fn external_ja4_fingerprints_equal_arkimes() {
    let mut compared = 0;
    for name in ["curl-enabled-tls13", "tls-alpn-h2", "tls-split-client-hello"] {
        let expected_text = std::fs::read_to_string(external(&format!("arkime/{name}.test"))).expect("arkime test");
        let want: BTreeSet<String> = expected_text
            .split("\"ja4\" : [")
            .skip(1)
            .filter_map(|rest| rest.split('"').nth(1).map(str::to_string))
            .collect();
        assert!(!want.is_empty(), "{name}: Arkime gives a ja4");
        let state = tempfile::tempdir().expect("state");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
            .args(["import", "--dry-run", "--format", "jsonl", "--state-dir"])
            .arg(state.path())
            .arg(external(&format!("arkime/{name}.pcap")))
            .output()
            .expect("agent");
        assert!(out.status.success());
        let got: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["tls"]["client_fingerprint"].as_str().map(str::to_string))
            .filter(|f| !f.is_empty())
            .collect();
        assert_eq!(got, want, "{name}");
        compared += want.len();
    }
    assert_eq!(compared, 3);
}
