//! Reading real and damaged captures.

use std::process::Command;

use leakwatch_agent::capture::{decode, read_capture_file};
use leakwatch_agent::flow::{FlowTable, NameSource};
use leakwatch_agent::import::{DeviceLabels, import_capture};
use leakwatch_agent::state::AgentState;
use leakwatch_proto::v1::Transport;

use crate::{external, simulated_fleet};

fn summaries(
    path: &std::path::Path,
) -> (leakwatch_agent::capture::CaptureStats, Vec<leakwatch_agent::flow::FlowSummary>) {
    let mut table = FlowTable::new();
    let mut last = 0;
    let stats = read_capture_file(path, |frame, stats| {
        if let Some(ts) = frame.ts_us {
            last = ts;
        }
        if let Some(p) = decode(frame, last, stats) {
            table.add(&p);
        }
    })
    .expect("readable");
    (stats, table.summaries())
}

#[test]
fn external_tls13_with_dns_gives_sni_and_alpn() {
    let (stats, flows) = summaries(&external("arkime/curl-enabled-tls13.pcap"));
    assert!(stats.frames > 0);
    let tls = flows.iter().find(|f| f.dst_port == 443).expect("tls flow");
    assert_eq!(tls.sni.as_deref(), Some("enabled.tls13.com"));
    assert_eq!(tls.name_source, NameSource::Sni);
    assert_eq!(tls.dst_ip.to_string(), "104.16.125.34");
}

#[test]
fn external_split_client_hello_is_reassembled() {
    let (_, flows) = summaries(&external("arkime/tls-split-client-hello.pcap"));
    let tls = flows.iter().find(|f| f.dst_port == 443).expect("tls flow");
    assert_eq!(tls.sni.as_deref(), Some("clients2.google.com"));
    // Arkime's expectation: 17 packets out, 18 in.
    assert_eq!((tls.packets_out, tls.packets_in), (17, 18));
}

#[test]
fn external_null_link_ipv6_alpn() {
    let (_, flows) = summaries(&external("arkime/tls-alpn-h2.pcap"));
    let tls = flows.iter().find(|f| f.sni.is_some()).expect("tls flow");
    assert_eq!(tls.sni.as_deref(), Some("www.cloudflare.com"));
    assert_eq!(tls.dst_ip.to_string(), "2606:4700::6811:d209");
    assert!(tls.alpn.iter().any(|a| a == "h2"), "{:?}", tls.alpn);
}

#[test]
fn external_pcapng_big_endian_and_multi_interface_read() {
    let (stats, _) = summaries(&external("pcap-parser/assets/test016-be.pcapng"));
    assert_eq!(stats.frames, 4);
    let (stats, flows) = summaries(&external("zeek/pcapng-multi-interface.pcapng"));
    assert_eq!(stats.frames, 6);
    assert!(flows.iter().all(|f| f.dst_ip.to_string() == "1.1.1.1" && f.dst_port == 53), "{flows:?}");
    let (stats, _) = summaries(&external("pcap-parser/assets/err-buffertoosmall.pcapng"));
    assert_eq!(stats.frames, 27, "large blocks must be read, not stop the file");
    let (stats, _) = summaries(&external("arkime/bigendian.pcap"));
    assert_eq!(stats.frames, 2);
}

#[test]
fn external_damaged_file_keeps_what_came_before() {
    // tshark reads 6 frames, then reports a 4 325 376-byte record.
    let (stats, _) = summaries(&external("suricata-verify/tests/bug-1450-04/tls_DER-incomplete-header.pcap"));
    assert_eq!(stats.frames, 6);
    assert!(stats.stopped_by.is_some());
}

#[test]
fn external_invalid_headers_are_skipped_and_counted() {
    let (stats, _) = summaries(&external("pcapdroid/invalid_or_unsupported.pcap"));
    assert_eq!(stats.frames, 15);
    assert!(stats.skipped_total() > 0, "{stats:?}");
}

#[test]
fn external_dns_names_reach_later_flows() {
    let (_, flows) = summaries(&external("pcapdroid/metadata.pcap"));
    // PCAPdroid names 149.202.95.241:80 f-droid.org from an earlier DNS answer.
    let fdroid = flows.iter().find(|f| f.dst_ip.to_string() == "149.202.95.241").expect("f-droid flow");
    assert_eq!((fdroid.domain.as_deref(), fdroid.name_source), (Some("f-droid.org"), NameSource::Dns));
    assert!(flows.iter().any(|f| f.sni.as_deref() == Some("www.google.it")), "{flows:#?}");
}

#[test]
fn simulated_capture_yields_labelled_records_and_boot_offsets() {
    let (dir, manifest) = simulated_fleet(12);
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = AgentState::open(state_dir.path()).expect("state");
    let entry = manifest.captures.iter().find(|c| c.model == "Redmi 1S").expect("seed model simulated");
    let labels = DeviceLabels {
        device_id: Some(entry.device_id.clone()),
        vendor: entry.vendor.clone(),
        model: entry.model.clone(),
        ..Default::default()
    };
    let imported = import_capture(&dir.path().join(&entry.file), &labels, &state, 1000).expect("import");
    let records: Vec<_> = imported.batches.iter().flat_map(|b| &b.records).collect();
    let seed = records
        .iter()
        .find(|r| r.domain == "api.account.xiaomi.com" && r.transport() == Transport::Tcp)
        .expect("seed destination");
    let lookup = records
        .iter()
        .find(|r| r.domain == "api.account.xiaomi.com" && r.transport() == Transport::Dns)
        .expect("its DNS lookup is a record too");
    assert!(lookup.dst_ip.is_empty(), "the LAN resolver is left out");
    assert!(lookup.seconds_since_boot <= seed.seconds_since_boot);
    assert!(seed.seconds_since_boot > 1.0 && seed.seconds_since_boot < 10.0, "{}", seed.seconds_since_boot);
    assert_eq!(seed.tls.as_ref().map(|t| t.sni.as_str()), Some("api.account.xiaomi.com"));
    assert!(imported.anonymiser.dropped_non_public > 0, "LAN noise must be dropped");
    // Same capture, same install: same batch ids (re-import is a duplicate).
    let again = import_capture(&dir.path().join(&entry.file), &labels, &state, 1000).expect("import");
    assert_eq!(again.batches[0].batch_id, imported.batches[0].batch_id);
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
}

#[test]
fn truncated_capture_reports_skips_and_still_succeeds() {
    let (dir, manifest) = simulated_fleet(8);
    let src = std::fs::read(dir.path().join(&manifest.captures[0].file)).expect("read");
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &src[..src.len() - 7]).expect("write");
    let state = tempfile::tempdir().expect("tempdir");
    let out =
        agent().args(["import", "--dry-run", "--state-dir"]).arg(state.path()).arg(&cut).output().expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("packets read") && stderr.contains("truncated"), "{stderr}");
}

#[test]
fn unreadable_captures_fail_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.pcap");
    std::fs::write(&junk, b"\x00\x01not a capture file at all................").expect("write");
    let empty = dir.path().join("empty.pcap");
    std::fs::write(&empty, b"").expect("write");
    let out = agent()
        .args(["import", "--dry-run", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg(&junk)
        .arg(&empty)
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("junk.pcap: not a readable capture"), "{stderr}");
    assert!(stderr.contains("empty.pcap: not a readable capture: the file is empty"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn external_dns_over_https_is_flagged() {
    let (_, flows) = summaries(&external("suricata-verify/tests/community-id-ipv6/input.pcap"));
    let flag = |name: &str| flows.iter().find(|f| f.domain.as_deref() == Some(name)).map(|f| f.encrypted_dns);
    assert_eq!(flag("dns.google"), Some(true));
    assert_eq!(flag("ipv6.google.com"), Some(false));
}

#[test]
fn external_quic_initial_is_decrypted_for_its_sni() {
    let (_, flows) = summaries(&external("zeek/quic/chromium-115.0.5790.110-api-cirrus-com.pcap"));
    let quic = flows.iter().find(|f| f.dst_port == 443).expect("quic flow");
    assert_eq!((quic.sni.as_deref(), quic.name_source), (Some("api.cirrus-ci.com"), NameSource::Quic));
    assert!(quic.alpn.iter().any(|a| a == "h3"), "{:?}", quic.alpn);
}

#[test]
fn external_quic_crypto_frames_out_of_order_across_packets() {
    let (_, flows) = summaries(&external("suricata-verify/tests/quic-frag-unordered/input.pcap"));
    let quic = flows.iter().find(|f| f.dst_port == 443).expect("quic flow");
    assert_eq!((quic.sni.as_deref(), quic.name_source), (Some("mastodon.social"), NameSource::Quic));
}

#[test]
fn init_writes_a_config_that_import_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    let out = agent().args(["init", "--config"]).arg(&config).output().expect("init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), config.display().to_string());
    let again = agent().args(["init", "--config"]).arg(&config).output().expect("init again");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
    // A state_dir from the file is used when no flag or variable gives one.
    let state = dir.path().join("state-from-config");
    let text =
        std::fs::read_to_string(&config).expect("read") + &format!("state_dir = {:?}\n", state.display().to_string());
    std::fs::write(&config, text).expect("write");
    let (fleet, manifest) = simulated_fleet(4);
    let out = agent()
        .args(["import", "--dry-run", "--config"])
        .arg(&config)
        .arg(fleet.path().join(&manifest.captures[0].file))
        .env_remove("LEAKWATCH_AGENT_STATE_DIR")
        .output()
        .expect("import");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(state.join("secret").exists(), "the configured state directory holds the secret");
    // A typo in the file is named.
    std::fs::write(&config, "colector = \"http://x\"\n").expect("write");
    let out = agent()
        .args(["import", "--dry-run", "--config"])
        .arg(&config)
        .arg(fleet.path().join(&manifest.captures[0].file))
        .output()
        .expect("import");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("colector"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `pcap` (classic pcap, little-endian) with its packets moved in time so
/// that the first one is at Unix second `first`.
fn retimed(pcap: &[u8], first: u32) -> Vec<u8> {
    assert_eq!(&pcap[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "a little-endian classic pcap");
    let mut out = pcap.to_vec();
    let mut at = 24;
    let mut shift: Option<i64> = None;
    while at + 16 <= out.len() {
        let ts = u32::from_le_bytes(out[at..at + 4].try_into().expect("4 bytes"));
        let shift = *shift.get_or_insert(i64::from(first) - i64::from(ts));
        let moved = u32::try_from(i64::from(ts) + shift).expect("a u32 time");
        out[at..at + 4].copy_from_slice(&moved.to_le_bytes());
        let len = u32::from_le_bytes(out[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        at += 16 + len;
    }
    out
}

/// Captures dated 1970 (a device without a clock) or
/// 2103 were refused by the collector, then deleted by the agent, which
/// exited 0. They are refused at import now, saying so, and the import
/// fails when nothing is left to send.
#[test]
fn captures_dated_outside_what_the_collector_accepts_are_refused_at_import() {
    let (dir, manifest) = simulated_fleet(1);
    let src = std::fs::read(dir.path().join(&manifest.captures[0].file)).expect("read");
    for (name, first) in [("1970.pcap", 1_000u32), ("2103.pcap", 4_200_000_000)] {
        let path = dir.path().join(name);
        std::fs::write(&path, retimed(&src, first)).expect("write");
        let state = tempfile::tempdir().expect("tempdir");
        let out = agent()
            .args(["import", "--collector", "http://127.0.0.1:9", "--state-dir"])
            .arg(state.path())
            .arg(&path)
            .output()
            .expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains("records dated before 2000 or after tomorrow dropped"), "{name}: {stderr}");
        assert!(stderr.contains("error: nothing to send"), "{name}: {stderr}");
        assert!(!stderr.contains("queued"), "nothing was queued: {stderr}");
    }
    // The same capture with its own dates imports as before.
    let state = tempfile::tempdir().expect("tempdir");
    let out = agent()
        .args(["import", "--dry-run", "--state-dir"])
        .arg(state.path())
        .arg(dir.path().join(&manifest.captures[0].file))
        .output()
        .expect("run agent");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.is_empty());
}

/// A classic pcap of `n` UDP datagrams from one LAN host, each to another
/// public address, 1 ms apart.
fn many_destinations(n: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + n as usize * 58);
    out.extend_from_slice(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0]);
    for i in 0..n {
        let (ts_s, ts_us) = (1_770_000_000 + i / 1000, (i % 1000) * 1000);
        let dst = 0x0b00_0000u32 + i; // 11.0.0.0 onwards: public
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
        let ip_len: u16 = 20 + 8;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 192, 168, 1, 10];
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip.extend_from_slice(&dst.to_be_bytes());
        let folded = {
            let mut s: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            !(s as u16)
        };
        ip[10..12].copy_from_slice(&folded.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&[0xc3, 0x50, 0x1f, 0x90, 0, 8, 0, 0]); // 50000 -> 8080, no payload
        for v in [ts_s, ts_us, frame.len() as u32, frame.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&frame);
    }
    out
}

/// A capture of a million distinct destinations took
/// the agent to 993 MB. The destinations and the open connections it
/// tracks are bounded now; what is left out is counted and said.
#[test]
fn a_capture_of_very_many_destinations_stays_within_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("many.pcap");
    std::fs::write(&path, many_destinations(500_000)).expect("write");
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = agent()
        .args(["import", "--dry-run", "--format", "jsonl", "--state-dir"])
        .arg(state.path())
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run agent");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(&status_file)
            && let Some(v) = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))
        {
            peak_kib = peak_kib.max(v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0));
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("400000 connections not tracked"), "{stderr}");
    assert!(peak_kib < 250 * 1024, "the agent's peak memory was {} MiB", peak_kib / 1024);
    // A router's import says so too.
    let out = agent()
        .args(["import", "--lan", "--dry-run", "--format", "jsonl", "--state-dir"])
        .arg(state.path())
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("connections not tracked"), "{stderr}");
}

/// A real camera reaches its vendor's "HTTP DNS" service by a built-in
/// address, with TLS 1.2 and no SNI: the server's certificate
/// (`*.dns.io.mi.com, dns.io.mi.com`), sent in clear, names it.
#[test]
fn external_a_hello_without_sni_is_named_by_the_servers_certificate() {
    let state = tempfile::tempdir().expect("state");
    let out = agent()
        .args(["import", "--dry-run", "--vendor", "Xiaobai", "--model", "Y2", "--state-dir"])
        .arg(state.path())
        .arg(external("devices/lifecycle_nku/xiaobai_Y2camera_setup.pcap"))
        .env("XDG_CONFIG_HOME", state.path())
        .output()
        .expect("import");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let dns = records.iter().find(|r| r["dst_ip"] == "110.43.0.83").expect("the HTTP DNS service's record");
    assert_eq!(
        (&dns["domain"], &dns["domain_source"]),
        (&"dns.io.mi.com".into(), &"DOMAIN_SOURCE_CERT".into()),
        "{dns}"
    );
    // Its other address-only server presents a certificate that names no
    // host ("Mijia Root"): it stays unnamed.
    let other = records.iter().find(|r| r["dst_ip"] == "120.92.65.240").expect("record");
    assert_eq!(other["domain"], "", "{other}");
}
