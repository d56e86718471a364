//! The privacy property: whatever the packets and labels, no record that
//! would be sent carries a non-public destination, a MAC, a source address
//! or port, the volunteer's device label, or an identifier-like hostname
//! label.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use etherparse::PacketBuilder;
use leakwatch_agent::anonymiser::{is_non_public, looks_like_identifier};
use leakwatch_agent::import::{DeviceLabels, import_capture};
use leakwatch_agent::parsers::tls::build_client_hello;
use leakwatch_agent::simulate::PcapWriter;
use leakwatch_agent::state::AgentState;
use leakwatch_proto::v1::Transport;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Pkt {
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    src_port: u16,
    dst_port: u16,
    tcp: bool,
    payload: Payload,
}

#[derive(Debug, Clone)]
enum Payload {
    Random(Vec<u8>),
    Hello(Vec<String>),
    DnsQuery(Vec<String>),
    Http(Vec<String>),
    /// A DHCP Discover naming the device (option 12).
    Dhcp(String),
    /// A SOCKS5 CONNECT to a name, then a ClientHello through the tunnel.
    Socks(Vec<String>),
    /// An mDNS announcement of the device's host name.
    Mdns(String),
}

/// Hostname labels: plain words, and identifier-like tokens that must be
/// scrubbed (hex, digit runs, base64-ish, UUIDs).
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{2,10}",
        "[0-9a-f]{12,32}",
        "[a-z]{0,4}[0-9]{8,14}",
        "[A-Za-z0-9]{16,40}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    ]
}

/// A host name's labels; now and then a LAN address written as a name (a
/// real network's dns.log asks for "10.47.7.30").
fn name() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        8 => prop::collection::vec(label(), 2..5),
        1 => private_ip().prop_map(|ip| ip.iter().map(u8::to_string).collect()),
    ]
}

fn private_ip() -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![
        any::<[u8; 2]>().prop_map(|b| [192, 168, b[0], b[1]]),
        any::<[u8; 3]>().prop_map(|b| [10, b[0], b[1], b[2]]),
        any::<[u8; 2]>().prop_map(|b| [172, 16 + (b[0] % 16), b[1], 7]),
    ]
}

fn any_ip() -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![any::<[u8; 4]>(), private_ip(), Just([127, 0, 0, 1]), Just([224, 0, 0, 251]), Just([169, 254, 3, 4])]
}

fn packet() -> impl Strategy<Value = Pkt> {
    (
        any::<[u8; 6]>(),
        private_ip(),
        any_ip(),
        1024u16..65535,
        prop_oneof![Just(443u16), Just(80), Just(53), 1u16..65535],
        any::<bool>(),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Random),
            name().prop_map(Payload::Hello),
            name().prop_map(Payload::DnsQuery),
            name().prop_map(Payload::Http),
            "[a-z]{3,8}-[A-Z][a-z]{3,8}".prop_map(Payload::Dhcp),
            name().prop_map(Payload::Socks),
            "[A-Z][a-z]{3,8}s-[a-zA-Z]{4,6}".prop_map(Payload::Mdns),
        ],
    )
        .prop_map(|(src_mac, src_ip, dst_ip, src_port, dst_port, tcp, payload)| Pkt {
            src_mac,
            src_ip,
            dst_ip,
            src_port,
            dst_port,
            tcp,
            payload,
        })
}

fn dns_query(labels: &[String]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in labels {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// The source and destination ports `p` is sent with: DHCP and mDNS
/// packets use their protocols' own.
fn ports(p: &Pkt) -> (u16, u16) {
    match &p.payload {
        Payload::Dhcp(_) => (68, 67),
        Payload::Mdns(_) => (5353, 5353),
        _ => (p.src_port, p.dst_port),
    }
}

fn frame(p: &Pkt) -> Vec<u8> {
    let payload = match &p.payload {
        Payload::Random(b) => b.clone(),
        Payload::Hello(n) => build_client_hello(&n.join("."), &["h2"], [1; 32]),
        Payload::DnsQuery(n) => dns_query(n),
        Payload::Http(n) => format!("GET /x?id=1 HTTP/1.1\r\nHost: {}\r\n\r\n", n.join(".")).into_bytes(),
        Payload::Dhcp(host) => {
            let mut m = vec![0u8; 240];
            m[..4].copy_from_slice(&[1, 1, 6, 0]);
            m[28..34].copy_from_slice(&p.src_mac);
            m[236..240].copy_from_slice(&[99, 130, 83, 99]);
            m.extend_from_slice(&[53, 1, 1, 12, host.len() as u8]);
            m.extend_from_slice(host.as_bytes());
            m.push(255);
            m
        }
        Payload::Socks(n) => {
            let name = n.join(".");
            let mut m = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
            m.extend_from_slice(name.as_bytes());
            m.extend_from_slice(&443u16.to_be_bytes());
            m.extend(build_client_hello(&name, &["h2"], [1; 32]));
            m
        }
        Payload::Mdns(host) => {
            let mut m = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
            for label in [host.as_str(), "local"] {
                m.push(label.len() as u8);
                m.extend_from_slice(label.as_bytes());
            }
            m.extend_from_slice(&[0, 0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
            m.extend_from_slice(&p.src_ip);
            m
        }
    };
    let (src_port, dst_port) = ports(p);
    let tcp = p.tcp && !matches!(p.payload, Payload::Dhcp(_) | Payload::Mdns(_));
    let base = PacketBuilder::ethernet2(p.src_mac, [2, 0, 0, 0, 0, 1]).ipv4(p.src_ip, p.dst_ip, 64);
    let mut buf = Vec::new();
    if tcp {
        let b = base.tcp(src_port, dst_port, 1000, 65535).psh();
        b.write(&mut buf, &payload).expect("build");
    } else {
        let b = base.udp(src_port, dst_port);
        b.write(&mut buf, &payload).expect("build");
    }
    buf
}

/// What no record may carry: checks every record of `batches` against the
/// packets that made them (MACs, source addresses, DHCP and mDNS host
/// names, the device label) and the destination rules.
fn check_batches(
    batches: &[leakwatch_proto::v1::ReportBatch],
    packets: &[Pkt],
    device_id: &str,
) -> Result<(), TestCaseError> {
    let dst_ports: BTreeSet<u32> = packets.iter().map(|p| u32::from(ports(p).1)).collect();
    let src_ports: BTreeSet<u32> = packets.iter().map(|p| u32::from(ports(p).0)).collect();
    for batch in batches {
        let device = batch.device.as_ref().expect("device");
        prop_assert_ne!(&device.device_pseudonym, device_id);
        for r in &batch.records {
            let text = format!("{r:?}{device:?}");
            prop_assert!(!text.contains(device_id), "device label leaked");
            for p in packets {
                let mac = p.src_mac.iter().map(|b| format!("{b:02x}")).collect::<String>();
                let mac_colons = p.src_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
                prop_assert!(!text.contains(&mac) && !text.contains(&mac_colons), "MAC leaked");
                prop_assert!(r.dst_ip != Ipv4Addr::from(p.src_ip).to_string(), "source address leaked");
                if let Payload::Dhcp(host) | Payload::Mdns(host) = &p.payload {
                    prop_assert!(!text.contains(host.as_str()), "LAN host name {} leaked", host);
                }
            }
            if r.transport() == Transport::Dns && r.dst_ip.is_empty() {
                prop_assert_eq!(r.dst_port, 53);
            } else {
                let ip: IpAddr = r.dst_ip.parse().expect("address");
                prop_assert!(!is_non_public(ip), "non-public destination {}", ip);
                // The port is a destination port, never a source port
                // (source ports here are all >= 1024 and distinct from
                // the destination ports unless they collide by chance).
                prop_assert!(dst_ports.contains(&r.dst_port) || !src_ports.contains(&r.dst_port));
            }
            let names = [r.domain.as_str(), r.tls.as_ref().map_or("", |t| t.sni.as_str())];
            for name in names.iter().filter(|n| !n.is_empty()) {
                prop_assert!(name.parse::<IpAddr>().is_err(), "an address as a name: {}", name);
                for l in name.split('.') {
                    prop_assert!(l == "*" || !looks_like_identifier(l), "unscrubbed label {} in {}", l, name);
                }
            }
        }
    }
    Ok(())
}

/// What no record of an import may carry: any of `secrets` (labels, host
/// names, MACs, contexts), a destination address among `lan`, a
/// non-public destination, an address as a name, or an unscrubbed label.
fn check_records(
    batches: &[leakwatch_proto::v1::ReportBatch],
    secrets: &[String],
    lan: &[String],
) -> Result<(), TestCaseError> {
    for batch in batches {
        for r in &batch.records {
            let text = format!("{r:?}{:?}", batch.device);
            for secret in secrets {
                prop_assert!(!text.contains(secret.as_str()), "{} leaked", secret);
            }
            prop_assert!(!lan.contains(&r.dst_ip), "a LAN address leaked: {}", r.dst_ip);
            if !(r.transport() == Transport::Dns && r.dst_ip.is_empty()) {
                let ip: IpAddr = r.dst_ip.parse().expect("address");
                prop_assert!(!is_non_public(ip), "non-public destination {}", ip);
            }
            prop_assert!(r.domain.parse::<IpAddr>().is_err(), "an address as a name: {}", r.domain);
            for l in r.domain.split('.').filter(|l| !l.is_empty()) {
                prop_assert!(l == "*" || !looks_like_identifier(l), "unscrubbed label {} in {}", l, r.domain);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_record_carries_anything_private(
        packets in prop::collection::vec(packet(), 1..40),
        device_id in "[a-z]{6}-[A-Z]{6}-[0-9]{4}",
        vendor in "[A-Za-z ]{0,20}",
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.pcap");
        let mut w = PcapWriter::new(std::fs::File::create(&path).expect("create"), 1).expect("header");
        for (i, p) in packets.iter().enumerate() {
            w.write_frame(1_700_000_000_000_000 + i as i64 * 1000, &frame(p)).expect("frame");
        }
        w.finish().expect("flush");
        let state = AgentState::open(&dir.path().join("state")).expect("state");
        let labels = DeviceLabels { device_id: Some(device_id.clone()), vendor, ..Default::default() };
        let imported = import_capture(&path, &labels, &state, 1000).expect("import");

        check_batches(&imported.batches, &packets, &device_id)?;
    }

    /// Live capture, one device and a router's LAN, with connections
    /// reported while open (interval by interval) and at the end: the same
    /// property holds for every report.
    #[test]
    fn no_live_report_carries_anything_private(
        packets in prop::collection::vec(packet(), 1..40),
        device_id in "[a-z]{6}-[A-Z]{6}-[0-9]{4}",
    ) {
        use leakwatch_agent::live::{Harvester, LiveFrame};
        let dir = tempfile::tempdir().expect("tempdir");
        let state = AgentState::open(&dir.path().join("state")).expect("state");
        let labels = DeviceLabels { device_id: Some(device_id.clone()), vendor: "Acme".into(), ..Default::default() };
        for lan in [false, true] {
            let mut h = match lan {
                false => Harvester::new(labels.clone(), &state, 1000),
                true => Harvester::lan(Default::default(), None, &state, 1000),
            };
            h.report_open_connections(std::time::Duration::from_secs(1));
            let mut batches = Vec::new();
            let t0 = 1_700_000_000_000_000i64;
            for (i, p) in packets.iter().enumerate() {
                let data = frame(p);
                let ts = t0 + i as i64 * 700_000;
                h.add(LiveFrame { ts_us: ts, linktype: 1, data: &data, app: None });
                if i % 3 == 2 {
                    batches.extend(h.harvest(ts, false));
                }
            }
            batches.extend(h.harvest(t0 + 3_600_000_000, true));
            check_batches(&batches, &packets, &device_id)?;
        }
    }

    /// PCAPdroid's CSV export through `import --from pcapdroid-csv`: the
    /// same property.
    #[test]
    fn no_csv_import_record_carries_anything_private(
        rows in prop::collection::vec(
            (private_ip(), any_ip(), prop_oneof![Just(443u16), Just(80), Just(53), 1u16..65535], 0usize..4, name()),
            1..30,
        ),
        device_id in "[a-z]{6}-[A-Z]{6}-[0-9]{4}",
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("export.csv");
        let mut text = String::from("IPProto,SrcIP,SrcPort,DstIp,DstPort,UID,App,PackageName,Proto,Status,Info,BytesSent,BytesRcvd,PktsSent,PktsRcvd,FirstSeen,LastSeen,Malicious\n");
        for (i, (src, dst, port, kind, labels)) in rows.iter().enumerate() {
            let proto = ["TLS", "HTTP", "QUIC", "DNS"][*kind];
            let ip_proto = if proto == "QUIC" || proto == "DNS" { 17 } else { 6 };
            text.push_str(&format!(
                "{ip_proto},{},4{i:04},{},{port},10001,App,com.example.app,{proto},Closed,{},100,200,1,1,2026-01-01T10:00:{:02}.000+01:00,2026-01-01T10:00:{:02}.500+01:00,\n",
                Ipv4Addr::from(*src), Ipv4Addr::from(*dst), labels.join("."), i % 60, i % 60
            ));
        }
        std::fs::write(&path, text).expect("write");
        let state = AgentState::open(&dir.path().join("state")).expect("state");
        let labels = DeviceLabels { device_id: Some(device_id.clone()), vendor: "Acme".into(), ..Default::default() };
        let (imported, _) =
            leakwatch_agent::imports::pcapdroid_csv::import(&path, &labels, &state, 1000).expect("import");
        let phone: Vec<String> = rows.iter().map(|(src, ..)| Ipv4Addr::from(*src).to_string()).collect();
        check_records(&imported.batches, &[device_id], &phone)?;
    }
    /// The iOS App Privacy Report through `import --from ios-privacy`:
    /// the websites visited (`context`) and the access lines never leave.
    #[test]
    fn no_ios_report_record_carries_anything_private(
        lines in prop::collection::vec((name(), "ctx[a-z]{6}", any::<bool>(), 1u64..50), 1..30),
        device_id in "[a-z]{6}-[A-Z]{6}-[0-9]{4}",
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.ndjson");
        let mut text = String::new();
        let mut secrets = vec![device_id.clone()];
        for (i, (labels, context, access, hits)) in lines.iter().enumerate() {
            let t = format!("2026-01-01T10:{:02}:00.000-04:00", i % 60);
            let context = format!("{context}.example");
            text.push_str(&format!(
                "{{\"type\":\"networkActivity\",\"bundleID\":\"com.example.app{}\",\"domain\":\"{}\",\"context\":\"{context}\",\"timeStamp\":\"{t}\",\"firstTimeStamp\":\"{t}\",\"hits\":{hits},\"domainType\":2,\"initiatedType\":\"AppInitiated\"}}\n",
                i % 3, labels.join(".")
            ));
            secrets.push(context);
            if *access {
                let id = format!("ACCESS{i:08}");
                text.push_str(&format!(
                    "{{\"type\":\"access\",\"accessor\":{{\"identifier\":\"com.example.app\",\"identifierType\":\"bundleID\"}},\"category\":\"location\",\"identifier\":\"{id}\",\"kind\":\"intervalBegin\",\"timeStamp\":\"{t}\"}}\n"
                ));
                secrets.push(id);
            }
        }
        std::fs::write(&path, text).expect("write");
        let state = AgentState::open(&dir.path().join("state")).expect("state");
        let labels = DeviceLabels { device_id: Some(device_id.clone()), vendor: "Apple".into(), ..Default::default() };
        let (imported, _) =
            leakwatch_agent::imports::ios_privacy::import(&path, &labels, &state, 1000).expect("import");
        check_records(&imported.batches, &secrets, &[])?;
    }

    /// Zeek logs through `import --from zeek`: no MAC, LAN address, DHCP
    /// host name or LAN name leaves, whatever the logs hold.
    #[test]
    fn no_zeek_import_record_carries_anything_private(
        rows in prop::collection::vec(
            (any::<[u8; 6]>(), private_ip(), any_ip(), prop_oneof![Just(443u16), Just(80), Just(53), 1u16..65535], name(), "[a-z]{3,8}-[A-Z][a-z]{3,8}"),
            1..25,
        ),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).expect("mkdir");
        let (mut dhcp, mut dns, mut ssl, mut conn) = (String::new(), String::new(), String::new(), String::new());
        let mut secrets = Vec::new();
        let mut lan = Vec::new();
        for (i, (mac, src, dst, port, labels, host)) in rows.iter().enumerate() {
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            let (src, dst, name) = (Ipv4Addr::from(*src), Ipv4Addr::from(*dst), labels.join("."));
            let ts = 1_700_000_000 + i as i64 * 7;
            dhcp.push_str(&format!("{{\"ts\":{ts},\"mac\":\"{mac}\",\"assigned_addr\":\"{src}\",\"host_name\":\"{host}\",\"msg_types\":[\"REQUEST\",\"ACK\"]}}\n"));
            dns.push_str(&format!("{{\"ts\":{ts}.5,\"uid\":\"D{i}\",\"id.orig_h\":\"{src}\",\"id.resp_h\":\"{dst}\",\"query\":\"{name}\",\"answers\":[\"{dst}\"]}}\n"));
            ssl.push_str(&format!("{{\"ts\":{ts}.6,\"uid\":\"C{i}\",\"server_name\":\"{name}\"}}\n"));
            conn.push_str(&format!("{{\"ts\":{ts}.6,\"uid\":\"C{i}\",\"id.orig_h\":\"{src}\",\"id.orig_p\":4{i:04},\"id.resp_h\":\"{dst}\",\"id.resp_p\":{port},\"proto\":\"tcp\",\"duration\":1.5,\"orig_bytes\":10,\"resp_bytes\":20,\"orig_l2_addr\":\"{mac}\"}}\n"));
            secrets.extend([mac.clone(), mac.replace(':', ""), host.clone()]);
            lan.push(src.to_string());
        }
        for (file, text) in [("dhcp.log", dhcp), ("dns.log", dns), ("ssl.log", ssl), ("conn.log", conn)] {
            std::fs::write(logs.join(file), text).expect("write");
        }
        let state = AgentState::open(&dir.path().join("state")).expect("state");
        let mut batches = Vec::new();
        leakwatch_agent::imports::zeek::import(&logs, &Default::default(), None, &state, 1000, |b| {
            batches.extend(b.import.batches);
            Ok(())
        })
        .expect("import");
        check_records(&batches, &secrets, &lan)?;
    }
    /// Pi-hole's database through `import --from pihole`: no client
    /// address, MAC or client name leaves, blocked or not.
    #[test]
    fn no_pihole_import_record_carries_anything_private(
        rows in prop::collection::vec(
            (any::<[u8; 6]>(), private_ip(), name(), 0i64..19, "[a-z]{3,8}-[A-Z][a-z]{3,8}"),
            1..25,
        ),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("pihole-FTL.db");
        let conn = rusqlite::Connection::open(&db).expect("create");
        conn.execute_batch(crate::OLD_PIHOLE_SCHEMA).expect("schema");
        let mut secrets = Vec::new();
        let mut lan = Vec::new();
        for (i, (mac, client, labels, status, host)) in rows.iter().enumerate() {
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            let client = Ipv4Addr::from(*client).to_string();
            conn.execute(
                "INSERT INTO queries (timestamp, type, status, domain, client, forward) VALUES (?1, 1, ?2, ?3, ?4, '8.8.8.8#53')",
                rusqlite::params![1_700_000_000 + i as i64, status, labels.join("."), client],
            )
            .expect("query");
            conn.execute(
                "INSERT OR IGNORE INTO network VALUES (?1, ?2, 'eth0', 1700000000, 1700000000, 1, 'Acme', NULL)",
                rusqlite::params![i as i64 + 1, mac],
            )
            .expect("network");
            conn.execute(
                "INSERT OR IGNORE INTO network_addresses VALUES (?1, ?2, 1700000000, ?3, 1700000000)",
                rusqlite::params![i as i64 + 1, client, host],
            )
            .expect("address");
            secrets.extend([mac.clone(), mac.replace(':', ""), host.clone()]);
            lan.push(client);
        }
        drop(conn);
        let state = AgentState::open(&dir.path().join("state")).expect("state");
        let mut batches = Vec::new();
        leakwatch_agent::imports::pihole::import(&db, &Default::default(), &state, 1000, true, |b| {
            batches.extend(b.import.batches);
            Ok(())
        })
        .expect("import");
        check_records(&batches, &secrets, &lan)?;
    }
}
