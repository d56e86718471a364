//! Generating the captures of a fleet.

use std::collections::BTreeMap;
use std::fs;
use std::io::BufWriter;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use etherparse::PacketBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::pcap::PcapWriter;
use super::profile::{Contact, Destination, DestinationKind, FleetProfile, parse_oui};
use crate::parsers::tls::build_client_hello;
use crate::{Error, Result, io_error};

/// Labels of one simulated capture, as a volunteer would pass them to
/// `leakwatch-agent import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Capture file, relative to the manifest.
    pub file: String,
    /// `--device-id`.
    pub device_id: String,
    /// `--vendor`.
    pub vendor: String,
    /// `--model`.
    pub model: String,
    /// `--firmware`.
    pub firmware: String,
    /// `--consent` pairs.
    pub consent: BTreeMap<String, String>,
    /// The device's MAC address (for LAN-mode labels).
    #[serde(default)]
    pub mac: String,
}

/// `fleet.json`: every capture the simulator wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetManifest {
    /// Seed used.
    pub seed: u64,
    /// Devices simulated.
    pub devices: u32,
    /// One entry per capture (per boot).
    pub captures: Vec<ManifestEntry>,
}

impl FleetManifest {
    /// Reads `DIR/fleet.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("fleet.json");
        let bytes = fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Profile(format!("{}: {e}", path.display())))
    }
}

const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

struct Lan {
    dev_mac: [u8; 6],
    dev_ip: Ipv4Addr,
    frames: Vec<(i64, Vec<u8>)>,
}

impl Lan {
    fn udp(&mut self, ts: i64, from_dev: bool, peer: Ipv4Addr, ports: (u16, u16), payload: &[u8]) {
        let (smac, dmac, sip, dip) = if from_dev {
            (self.dev_mac, ROUTER_MAC, self.dev_ip, peer)
        } else {
            (ROUTER_MAC, self.dev_mac, peer, self.dev_ip)
        };
        let b = PacketBuilder::ethernet2(smac, dmac).ipv4(sip.octets(), dip.octets(), 64).udp(ports.0, ports.1);
        let mut buf = Vec::with_capacity(b.size(payload.len()));
        if b.write(&mut buf, payload).is_ok() {
            self.frames.push((ts, buf));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        ts: i64,
        from_dev: bool,
        peer: Ipv4Addr,
        ports: (u16, u16),
        seq: u32,
        ack: Option<u32>,
        flags: &str,
        payload: &[u8],
    ) {
        let (smac, dmac, sip, dip) = if from_dev {
            (self.dev_mac, ROUTER_MAC, self.dev_ip, peer)
        } else {
            (ROUTER_MAC, self.dev_mac, peer, self.dev_ip)
        };
        let mut b =
            PacketBuilder::ethernet2(smac, dmac).ipv4(sip.octets(), dip.octets(), 64).tcp(ports.0, ports.1, seq, 64240);
        if flags.contains('S') {
            b = b.syn();
        }
        if flags.contains('F') {
            b = b.fin();
        }
        if flags.contains('P') {
            b = b.psh();
        }
        if let Some(a) = ack {
            b = b.ack(a);
        }
        let mut buf = Vec::with_capacity(b.size(payload.len()));
        if b.write(&mut buf, payload).is_ok() {
            self.frames.push((ts, buf));
        }
    }
}

fn dns_message(id: u16, name: &str, answer: Option<Ipv4Addr>) -> Vec<u8> {
    let flags: u16 = if answer.is_some() { 0x8180 } else { 0x0100 };
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Some(ip) = answer {
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0x01, 0x2C, 0, 4]);
        m.extend_from_slice(&ip.octets());
    }
    m
}

/// A PTR query for `name`, or the resolver's answer that it has no record
/// (NXDOMAIN).
fn ptr_message(id: u16, name: &str, response: bool) -> Vec<u8> {
    let flags: u16 = if response { 0x8183 } else { 0x0100 };
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 12, 0, 1]);
    m
}

fn dhcp_message(op: u8, xid: u32, mac: [u8; 6], msg_type: u8, yiaddr: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    m[0] = op;
    m[1] = 1;
    m[2] = 6;
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[16..20].copy_from_slice(&yiaddr.octets());
    m[28..34].copy_from_slice(&mac);
    m.extend_from_slice(&[99, 130, 83, 99, 53, 1, msg_type, 255]);
    m
}

fn pick(rng: &mut StdRng, range: [u32; 2]) -> u32 {
    if range[0] >= range[1] { range[0] } else { rng.random_range(range[0]..=range[1]) }
}

fn chunks(total: u32, mss: u32) -> Vec<u32> {
    let mut left = total;
    let mut out = Vec::new();
    while left > 0 {
        let n = left.min(mss);
        out.push(n);
        left -= n;
    }
    out
}

/// Simulates one contact starting at `t` (microseconds) and returns when
/// it ended.
fn contact(lan: &mut Lan, rng: &mut StdRng, t: i64, dest: &Destination) {
    let ip = match dest.also.len() {
        0 => dest.ip,
        n => {
            // Fibonacci hashing of the time: irregular turns, no draw.
            let k = ((t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % (n as u64 + 1);
            if k == 0 { dest.ip } else { dest.also[k as usize - 1] }
        }
    };
    let IpAddr::V4(server) = ip else { return };
    let rtt = rng.random_range(15_000..60_000i64);
    // DNS through the router (none for an address the device remembers).
    let qid: u16 = rng.random();
    let qport: u16 = rng.random_range(32_768..61_000);
    if dest.kind != DestinationKind::Tcp {
        lan.udp(t, true, ROUTER_IP, (qport, 53), &dns_message(qid, &dest.name, None));
        lan.udp(t + 8_000, false, ROUTER_IP, (53, qport), &dns_message(qid, &dest.name, Some(server)));
    }
    let t = t + 10_000;
    let sport: u16 = rng.random_range(32_768..61_000);
    match dest.kind {
        DestinationKind::Ntp => {
            lan.udp(t, true, server, (sport, dest.port), &[0x23; 48]);
            lan.udp(t + rtt, false, server, (dest.port, sport), &[0x24; 48]);
        }
        DestinationKind::Tls | DestinationKind::Http | DestinationKind::Tcp => {
            let ports = (sport, dest.port);
            let back = (dest.port, sport);
            let cisn: u32 = rng.random();
            let sisn: u32 = rng.random();
            lan.tcp(t, true, server, ports, cisn, None, "S", &[]);
            lan.tcp(t + rtt, false, server, back, sisn, Some(cisn + 1), "S", &[]);
            let mut c = cisn.wrapping_add(1);
            let mut s = sisn.wrapping_add(1);
            let mut now = t + rtt + 300;
            lan.tcp(now, true, server, ports, c, Some(s), "", &[]);
            let hello = if dest.kind == DestinationKind::Tls {
                build_client_hello(&dest.name, &["h2", "http/1.1"], rng.random())
            } else if dest.kind == DestinationKind::Tcp {
                // A binary login frame: a magic, a length, a sealed body.
                let mut frame = vec![0x00, 0x00, 0x55, 0xaa, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x40];
                frame.extend((0..64).map(|_| rng.random::<u8>()));
                frame
            } else {
                format!(
                    "GET /generate_204 HTTP/1.1\r\nHost: {}\r\nUser-Agent: Dalvik/2.1.0\r\nConnection: close\r\n\r\n",
                    dest.name
                )
                .into_bytes()
            };
            // Sometimes the hello is split over two segments, sometimes
            // they arrive out of order.
            let split = rng.random_bool(0.3);
            let cut = if split { hello.len() / 2 } else { hello.len() };
            let (a, b) = hello.split_at(cut);
            let mut segs = vec![(c, a.to_vec())];
            if !b.is_empty() {
                segs.push((c.wrapping_add(a.len() as u32), b.to_vec()));
            }
            if segs.len() == 2 && rng.random_bool(0.3) {
                segs.swap(0, 1);
            }
            for (seq, data) in segs {
                now += 200;
                lan.tcp(now, true, server, ports, seq, Some(s), "P", &data);
            }
            c = c.wrapping_add(hello.len() as u32);
            let mut in_bytes = pick(rng, dest.in_bytes);
            if dest.kind == DestinationKind::Http {
                in_bytes = 97;
            }
            now += rtt;
            for n in chunks(in_bytes, 1400) {
                lan.tcp(now, false, server, back, s, Some(c), "P", &vec![0x17; n as usize]);
                s = s.wrapping_add(n);
                now += 400;
            }
            for n in chunks(pick(rng, dest.out_bytes), 1400) {
                lan.tcp(now, true, server, ports, c, Some(s), "P", &vec![0x17; n as usize]);
                c = c.wrapping_add(n);
                now += 500;
            }
            now += rtt;
            lan.tcp(now, true, server, ports, c, Some(s), "F", &[]);
            lan.tcp(now + rtt, false, server, back, s, Some(c + 1), "F", &[]);
            lan.tcp(now + rtt + 200, true, server, ports, c + 1, Some(s + 1), "", &[]);
        }
    }
}

fn happens(rng: &mut StdRng, c: &Contact) -> Option<i64> {
    if !rng.random_bool(c.share.clamp(0.0, 1.0)) {
        return None;
    }
    let secs = if c.at[0] >= c.at[1] { c.at[0] } else { rng.random_range(c.at[0]..c.at[1]) };
    Some((secs * 1e6) as i64)
}

fn slug(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// Writes the captures of `profile`'s fleet into `out` (scaled to about
/// `devices` devices when given) plus `out/fleet.json`; returns the
/// manifest. `progress` is called after each device.
pub fn simulate_fleet(
    profile: &FleetProfile,
    out: &Path,
    devices: Option<u32>,
    seed: Option<u64>,
    mut progress: impl FnMut(u32, u32),
) -> Result<FleetManifest> {
    fs::create_dir_all(out).map_err(io_error(out))?;
    let seed = seed.unwrap_or(profile.seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let profile_total: u32 = profile.models.iter().map(|m| m.devices).sum::<u32>().max(1);
    let counts: Vec<u32> = profile
        .models
        .iter()
        .map(|m| match devices {
            Some(n) => ((f64::from(m.devices) * f64::from(n) / f64::from(profile_total)).round() as u32).max(1),
            None => m.devices,
        })
        .collect();
    let total: u32 = counts.iter().sum();
    let start_us = chrono::DateTime::parse_from_rfc3339(&profile.start)
        .map_err(|e| Error::Profile(format!("start: {e}")))?
        .timestamp_micros();
    let mut manifest = FleetManifest { seed, devices: total, captures: Vec::new() };
    let mut device_no = 0u32;
    for (model, &count) in profile.models.iter().zip(&counts) {
        let oui = parse_oui(&model.oui).ok_or_else(|| Error::Profile(format!("bad oui {:?}", model.oui)))?;
        for n in 0..count {
            device_no += 1;
            let device_id = format!("sim-{}-{}-{n:03}", slug(&model.vendor), slug(&model.model));
            let tail: [u8; 3] = rng.random();
            let dev_mac = [oui[0], oui[1], oui[2], tail[0], tail[1], tail[2]];
            let device_firmware = match model.update_at_boot {
                Some(_) => String::new(),
                None => model.firmware[rng.random_range(0..model.firmware.len())].clone(),
            };
            let mut consent = model.consent.clone();
            for (key, share) in &model.consent_off_share {
                let value = if rng.random_bool(*share) { "off" } else { "on" };
                consent.insert(key.clone(), value.to_string());
            }
            let boots = pick(&mut rng, profile.boots_per_device);
            for boot in 0..boots {
                let firmware = match model.update_at_boot {
                    Some(at) if boot >= at => model.firmware[model.firmware.len() - 1].clone(),
                    Some(_) => model.firmware[0].clone(),
                    None => device_firmware.clone(),
                };
                let boot_us = start_us
                    + i64::from(boot) * 86_400_000_000
                    + i64::from(device_no) * 97_000_000
                    + rng.random_range(0..3_600_000_000i64);
                let mut lan =
                    Lan { dev_mac, dev_ip: Ipv4Addr::new(192, 168, 1, rng.random_range(20..250)), frames: Vec::new() };
                // DHCP at boot: the device's first packets.
                let xid: u32 = rng.random();
                let bcast = Ipv4Addr::BROADCAST;
                let dhcp = [(1u8, 1u8, true), (2, 2, false), (1, 3, true), (2, 5, false)];
                for (i, (op, kind, from_dev)) in dhcp.into_iter().enumerate() {
                    let payload = dhcp_message(op, xid, dev_mac, kind, lan.dev_ip);
                    let ports = if from_dev { (68, 67) } else { (67, 68) };
                    lan.udp(boot_us + i as i64 * 40_000, from_dev, bcast, ports, &payload);
                }
                let t0 = boot_us + 200_000;
                // LAN noise the anonymiser must drop.
                lan.udp(
                    t0 + 1_500_000,
                    true,
                    Ipv4Addr::new(239, 255, 255, 250),
                    (50_000, 1900),
                    b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n",
                );
                lan.udp(
                    t0 + 2_500_000,
                    true,
                    Ipv4Addr::new(224, 0, 0, 251),
                    (5353, 5353),
                    &dns_message(0, "_googlecast._tcp.local", None),
                );
                if let Some(name) = &model.reverse_lookup_at_boot {
                    // Drawn from nothing random: the rest of the capture
                    // is the same as without it.
                    let (id, port) = (boot as u16, 40_000 + (device_no % 20_000) as u16);
                    lan.udp(t0 + 3_000_000, true, ROUTER_IP, (port, 53), &ptr_message(id, name, false));
                    lan.udp(t0 + 3_008_000, false, ROUTER_IP, (53, port), &ptr_message(id, name, true));
                }
                let contacts = profile.everyone.iter().chain(&model.contact).chain(&profile.background);
                let limit_us = (profile.capture_seconds * 1e6) as i64;
                for c in contacts {
                    if c.firmware.as_ref().is_some_and(|f| !f.contains(&firmware))
                        || c.when.iter().any(|(k, v)| consent.get(k) != Some(v))
                    {
                        continue;
                    }
                    let Some(mut at) = happens(&mut rng, c) else { continue };
                    let Some(dest) = profile.destination(&c.destination) else { continue };
                    while at < limit_us {
                        contact(&mut lan, &mut rng, boot_us + at, dest);
                        let Some(every) = c.every else { break };
                        let spread = if c.jitter > 0.0 { rng.random_range(-c.jitter..=c.jitter) } else { 0.0 };
                        at += (every * (1.0 + spread) * 1e6).max(1e6) as i64;
                    }
                }
                lan.frames.sort_by_key(|(ts, _)| *ts);
                let file = format!("{device_id}-boot{boot}.pcap");
                let path = out.join(&file);
                let f = fs::File::create(&path).map_err(io_error(&path))?;
                let mut w = PcapWriter::new(BufWriter::new(f), 1).map_err(io_error(&path))?;
                for (ts, frame) in &lan.frames {
                    w.write_frame(*ts, frame).map_err(io_error(&path))?;
                }
                w.finish().map_err(io_error(&path))?;
                manifest.captures.push(ManifestEntry {
                    file,
                    device_id: device_id.clone(),
                    vendor: model.vendor.clone(),
                    model: model.model.clone(),
                    firmware: firmware.clone(),
                    consent: consent.clone(),
                    mac: crate::lan::format_mac(dev_mac),
                });
            }
            progress(device_no, total);
        }
    }
    let path = out.join("fleet.json");
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Profile(e.to_string()))?;
    fs::write(&path, json).map_err(io_error(&path))?;
    Ok(manifest)
}

/// Merges every capture of `manifest` (in `dir`) into one LAN capture
/// `dir/lan.pcap`, as a router watching the whole fleet would record it,
/// and writes `dir/lan-devices.toml` labelling every second device (the
/// others are left for the OUI lookup). Returns the two paths.
pub fn write_lan_capture(dir: &Path, manifest: &FleetManifest) -> Result<(PathBuf, PathBuf)> {
    let mut frames: Vec<(i64, Vec<u8>)> = Vec::new();
    for entry in &manifest.captures {
        crate::capture::read_capture_file(&dir.join(&entry.file), |frame, _| {
            if let Some(ts) = frame.ts_us {
                frames.push((ts, frame.data.to_vec()));
            }
        })?;
    }
    frames.sort_by_key(|(ts, _)| *ts);
    let lan = dir.join("lan.pcap");
    let f = fs::File::create(&lan).map_err(io_error(&lan))?;
    let mut w = PcapWriter::new(BufWriter::new(f), 1).map_err(io_error(&lan))?;
    for (ts, frame) in &frames {
        w.write_frame(*ts, frame).map_err(io_error(&lan))?;
    }
    w.finish().map_err(io_error(&lan))?;
    let mut labels = crate::lan::LanLabels::default();
    let mut seen = std::collections::BTreeSet::new();
    for entry in &manifest.captures {
        if seen.insert(entry.device_id.clone()) && seen.len() % 2 == 1 {
            labels.devices.push(crate::lan::LanDevice {
                mac: entry.mac.clone(),
                name: Some(entry.device_id.clone()),
                vendor: entry.vendor.clone(),
                model: entry.model.clone(),
                firmware: entry.firmware.clone(),
                consent: entry.consent.clone(),
            });
        }
    }
    let toml_path = dir.join("lan-devices.toml");
    let text = format!(
        "# LAN device labels for leakwatch-agent import --lan --device-labels\n{}",
        toml::to_string(&labels).map_err(|e| Error::Profile(e.to_string()))?
    );
    fs::write(&toml_path, text).map_err(io_error(&toml_path))?;
    Ok((lan, toml_path))
}
