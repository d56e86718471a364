//! Summing connections per destination (and per group of origins), the
//! gaps between their starts included.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::naming::{NameSource, is_encrypted_dns};
use super::table::{FlowTable, Origin};
use crate::capture::Transport;

/// Aggregated traffic to one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSummary {
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// Transport.
    pub transport: Transport,
    /// First packet, microseconds since the Unix epoch.
    pub first_us: i64,
    /// Last packet, microseconds since the Unix epoch.
    pub last_us: i64,
    /// Transport payload bytes device → destination.
    pub bytes_out: u64,
    /// Transport payload bytes destination → device.
    pub bytes_in: u64,
    /// Packets device → destination.
    pub packets_out: u64,
    /// Packets destination → device.
    pub packets_in: u64,
    /// Best known name of the destination (unscrubbed; the anonymiser
    /// scrubs it).
    pub domain: Option<String>,
    /// Where `domain` came from.
    pub name_source: NameSource,
    /// SNI of the first ClientHello on this destination.
    pub sni: Option<String>,
    /// ALPN offered in that ClientHello.
    pub alpn: Vec<String>,
    /// DNS over TLS (port 853) or a known DNS-over-HTTPS endpoint.
    pub encrypted_dns: bool,
    /// Application that opened the flow, when the capture source says.
    pub app: Option<String>,
    /// JA4 fingerprint of the TLS or QUIC ClientHello, if one was seen.
    pub fingerprint: Option<String>,
    /// Connections summed into this flow.
    pub connections: u64,
    /// Mean seconds between successive connection starts to the
    /// destination's name, when it has one (a heartbeat to a name served
    /// from several addresses in turn is one timer), else to its address
    /// (0 with fewer than two connections).
    pub interval_mean_s: f64,
    /// Standard deviation of those gaps over their mean (0 with fewer than
    /// three connections).
    pub interval_cv: f64,
}

impl FlowSummary {
    /// Adds a connection's traffic, first packet `first_us` to last
    /// `last_us` (its counts, not its name or its start).
    pub(crate) fn add_traffic(&mut self, first_us: i64, last_us: i64, bytes: [u64; 2], packets: [u64; 2]) {
        self.first_us = self.first_us.min(first_us);
        self.last_us = self.last_us.max(last_us);
        self.bytes_out += bytes[0];
        self.bytes_in += bytes[1];
        self.packets_out += packets[0];
        self.packets_in += packets[1];
    }
}

/// A destination within a group, per application.
type DestKey<K> = (K, IpAddr, u16, Transport, Option<Box<str>>);

/// Most distinct destinations one [`FlowSums`] holds; connections to more
/// are counted in [`FlowSums::untracked_connections`] and left out, so
/// that memory stays bounded however many destinations a capture holds
/// (a device's boot contacts tens to hundreds; a million took the agent
/// to a gigabyte).
pub const MAX_DESTINATIONS: usize = 100_000;

impl FlowTable {
    /// Sums connections per destination, in order of first contact.
    pub fn summaries(&self) -> Vec<FlowSummary> {
        self.summaries_grouped(|_, _| Some(())).remove(&()).unwrap_or_default()
    }

    /// Sums connections per group and destination; `group` maps a
    /// connection's origin and first packet time to its group (`None`
    /// leaves the connection out). Each group's flows are in order of first
    /// contact.
    pub fn summaries_grouped<K: Ord + Clone + std::hash::Hash>(
        &self,
        group: impl Fn(Origin, i64) -> Option<K>,
    ) -> std::collections::BTreeMap<K, Vec<FlowSummary>> {
        let mut sums = FlowSums::default();
        sums.add(self, group);
        sums.finish()
    }
}

/// Per-destination sums built from one table or from the successive
/// tables [`FlowTable::drain_finished`] hands out, with the same result:
/// the first SNI and the best name are those of the earliest connection
/// that had them, and the gaps between connection starts are taken in
/// time order, whichever table a connection came in.
#[derive(Debug)]
pub struct FlowSums<K> {
    /// Connections left out because [`MAX_DESTINATIONS`] destinations were
    /// held already.
    pub untracked_connections: u64,
    by_dest: FxHashMap<DestKey<K>, DestSums>,
    /// Each group's index in `flows`.
    groups: FxHashMap<K, usize>,
    /// Each group's flows, in order of first sight.
    flows: Vec<Vec<FlowSummary>>,
}

#[derive(Debug)]
struct DestSums {
    /// Where its flow is: group, then index in the group's list.
    at: (usize, usize),
    /// Start of each connection summed in.
    starts: Vec<i64>,
    /// First packet of the connection that gave the domain and the SNI.
    domain_from_us: i64,
    sni_from_us: i64,
}

impl<K> Default for FlowSums<K> {
    fn default() -> Self {
        Self {
            untracked_connections: 0,
            by_dest: FxHashMap::default(),
            groups: FxHashMap::default(),
            flows: Vec::new(),
        }
    }
}

impl<K: Ord + Clone + std::hash::Hash> FlowSums<K> {
    /// Adds the connections of `table`, named with its DNS answers.
    pub fn add(&mut self, table: &FlowTable, group: impl Fn(Origin, i64) -> Option<K>) {
        for conn in &table.all {
            let origin = Origin { mac: conn.initiator_mac, ip: conn.initiator.ip };
            let Some(g) = group(origin, conn.first_us) else { continue };
            let n = table.naming_ref(conn);
            let encrypted = is_encrypted_dns(conn.responder.port, n.domain);
            let dest = (g, conn.responder.ip, conn.responder.port, conn.transport, conn.app.clone());
            let full = self.by_dest.len() >= MAX_DESTINATIONS;
            // A connection reported before goes on: its traffic adds up,
            // but it is no new connection (nor a new start).
            let new_connection = u64::from(!conn.reported);
            match self.by_dest.get_mut(&dest) {
                Some(d) => {
                    if !conn.reported {
                        d.starts.push(conn.first_us);
                    }
                    let f = &mut self.flows[d.at.0][d.at.1];
                    f.connections += new_connection;
                    f.encrypted_dns |= encrypted;
                    f.add_traffic(
                        conn.first_us,
                        conn.last_us,
                        [conn.bytes_out, conn.bytes_in],
                        [conn.packets_out, conn.packets_in],
                    );
                    if n.name_source > f.name_source
                        || (n.name_source == f.name_source && conn.first_us < d.domain_from_us)
                    {
                        f.domain = n.domain.map(str::to_string);
                        f.name_source = n.name_source;
                        d.domain_from_us = conn.first_us;
                    }
                    if n.sni.is_some() && (f.sni.is_none() || conn.first_us < d.sni_from_us) {
                        f.sni = n.sni.map(str::to_string);
                        f.alpn = n.alpn.to_vec();
                        f.fingerprint = n.fingerprint.map(str::to_string);
                        d.sni_from_us = conn.first_us;
                    }
                }
                None if full => self.untracked_connections += 1,
                None => {
                    let next = self.flows.len();
                    let group = *self.groups.entry(dest.0.clone()).or_insert(next);
                    if group == next {
                        self.flows.push(Vec::new());
                    }
                    let out = &mut self.flows[group];
                    let sums = DestSums {
                        at: (group, out.len()),
                        starts: if conn.reported { Vec::new() } else { vec![conn.first_us] },
                        domain_from_us: conn.first_us,
                        sni_from_us: conn.first_us,
                    };
                    self.by_dest.insert(dest, sums);
                    out.push(FlowSummary {
                        dst_ip: conn.responder.ip,
                        dst_port: conn.responder.port,
                        transport: conn.transport,
                        first_us: conn.first_us,
                        last_us: conn.last_us,
                        bytes_out: conn.bytes_out,
                        bytes_in: conn.bytes_in,
                        packets_out: conn.packets_out,
                        packets_in: conn.packets_in,
                        domain: n.domain.map(str::to_string),
                        name_source: n.name_source,
                        encrypted_dns: encrypted,
                        sni: n.sni.map(str::to_string),
                        alpn: n.alpn.to_vec(),
                        app: conn.app.as_deref().map(str::to_string),
                        fingerprint: n.fingerprint.map(str::to_string),
                        connections: new_connection,
                        interval_mean_s: 0.0,
                        interval_cv: 0.0,
                    });
                }
            }
        }
    }

    /// The flows per group, each group's in order of first contact, with
    /// the gaps between connection starts worked out.
    pub fn finish(self) -> std::collections::BTreeMap<K, Vec<FlowSummary>> {
        let Self { by_dest, groups, mut flows, .. } = self;
        // The connection starts of each name (in a group), and of each
        // address without one; each flow gets the gaps of its own.
        let mut named: FxHashMap<(usize, String), Starts> = FxHashMap::default();
        let mut unnamed: Vec<Starts> = Vec::new();
        for (_, d) in by_dest {
            let Some(f) = flows.get(d.at.0).and_then(|out| out.get(d.at.1)) else { continue };
            match &f.domain {
                Some(name) => {
                    let (starts, at) = named.entry((d.at.0, name.to_ascii_lowercase())).or_default();
                    starts.extend(d.starts);
                    at.push(d.at);
                }
                None => unnamed.push((d.starts, vec![d.at])),
            }
        }
        for (mut starts, at) in named.into_values().chain(unnamed) {
            let (mean, cv) = intervals(&mut starts);
            for (g, i) in at {
                if let Some(f) = flows.get_mut(g).and_then(|out| out.get_mut(i)) {
                    (f.interval_mean_s, f.interval_cv) = (mean, cv);
                }
            }
        }
        groups
            .into_iter()
            .map(|(group, i)| {
                let mut out = std::mem::take(&mut flows[i]);
                out.sort_by_key(|f| f.first_us);
                (group, out)
            })
            .collect()
    }
}

/// Connection starts, and where in `flows` the flows they belong to are
/// (group, index).
type Starts = (Vec<i64>, Vec<(usize, usize)>);

/// The mean gap between the connection `starts` (microseconds, sorted
/// here) in seconds, and the gaps' coefficient of variation: 0 for the
/// mean with fewer than two starts, 0 for the variation with fewer than
/// three.
pub(crate) fn intervals(starts: &mut [i64]) -> (f64, f64) {
    starts.sort_unstable();
    let (mut n, mut sum, mut sumsq) = (0u64, 0.0f64, 0.0f64);
    for w in starts.windows(2) {
        let gap = (w[1] - w[0]) as f64 / 1e6;
        n += 1;
        sum += gap;
        sumsq += gap * gap;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / n as f64;
    let cv = if n >= 2 && mean > 0.0 { (sumsq / n as f64 - mean * mean).max(0.0).sqrt() / mean } else { 0.0 };
    (mean, cv)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use crate::capture::{Packet, Transport};
    use crate::flow::FlowTable;
    use crate::parsers::tls::build_client_hello;

    /// A heartbeat every 60 s to one name whose three addresses take turns
    /// irregularly: per address the gaps look random, per name they are a
    /// timer's, which every flow of the name reports.
    #[test]
    fn gaps_are_measured_per_name_when_its_addresses_take_turns() {
        let servers: Vec<IpAddr> =
            ["203.0.113.10", "203.0.113.11", "203.0.113.12"].iter().map(|s| s.parse().expect("ip")).collect();
        let hello: &'static [u8] = build_client_hello("hb.example.com", &["h2"], [1; 32]).leak();
        let turns = [0, 0, 1, 2, 1, 1, 0, 2, 2, 0, 1, 2];
        let mut table = FlowTable::new();
        for (k, &turn) in turns.iter().enumerate() {
            let packet = |ts_us: i64, syn: bool, payload: &'static [u8]| Packet {
                ts_us,
                src_mac: None,
                src_ip: "192.168.1.5".parse().expect("ip"),
                dst_ip: servers[turn],
                transport: Transport::Tcp,
                src_port: 40_000 + k as u16,
                dst_port: 443,
                syn,
                ack: !syn,
                fin: false,
                rst: false,
                seq: if syn { 1000 } else { 1001 },
                payload,
                ip_len: 40 + payload.len() as u32,
                app: None,
            };
            let start = k as i64 * 60_000_000;
            table.add(&packet(start, true, &[]));
            table.add(&packet(start + 1_000, false, hello));
        }
        let flows = table.summaries();
        assert_eq!(flows.len(), 3, "one flow per address");
        for f in &flows {
            assert_eq!(f.domain.as_deref(), Some("hb.example.com"));
            assert!((f.interval_mean_s - 60.0).abs() < 1e-6 && f.interval_cv < 1e-9, "{f:?}");
        }
        assert_eq!(flows.iter().map(|f| f.connections).sum::<u64>(), 12);
    }
}
