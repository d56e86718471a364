//! The connection table: packets into connections (5-tuples, who opened
//! each), with the DNS lookups and DHCP handshakes seen on the way.

use std::collections::HashMap;
use std::net::IpAddr;

use rustc_hash::FxHashMap;

use super::community_id::community_id;
use super::naming::{HelloState, NameSource, NamingRef};
use crate::capture::{Packet, Transport};
use crate::parsers::{dhcp, dns};

/// The LAN side of a connection or lookup: who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// Source MAC of its packets, when the link layer has one.
    pub mac: Option<[u8; 6]>,
    /// Source address.
    pub ip: IpAddr,
}

/// A DHCP Discover or Request: a device (re)joining the network, which a
/// device does right after it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpHandshake {
    /// The client's hardware address (`chaddr`).
    pub mac: [u8; 6],
    /// When, microseconds since the Unix epoch.
    pub ts_us: i64,
}

/// A name the device looked up over DNS (port 53).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsLookup {
    /// Who asked.
    pub origin: Origin,
    /// The query name, as sent.
    pub name: String,
    /// The resolver asked first.
    pub resolver: IpAddr,
    /// First query, microseconds since the Unix epoch.
    pub first_us: i64,
    /// Last query, microseconds since the Unix epoch.
    pub last_us: i64,
    /// How many queries (all types, retries included).
    pub queries: u64,
    /// Application that asked first, when the capture source says.
    pub app: Option<String>,
    /// The DNS server refused to resolve it (a Pi-hole's block); the
    /// blocked and the answered queries of a name are separate lookups.
    pub blocked: bool,
    /// Who started it, and whether a website shown in the app did, when
    /// the source says (the iOS report); contacts differing in them are
    /// separate lookups.
    pub context: LookupContext,
}

/// What the iOS App Privacy Report says about a contact besides its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LookupContext {
    /// The app's own code (`Some(true)`) or the user (`Some(false)`).
    pub app_initiated: Option<bool>,
    /// Made by a website shown in the app.
    pub via_website: bool,
}

/// One connection as the local `flows` view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// Originator address (the side that opened the flow).
    pub src_ip: IpAddr,
    /// Originator port.
    pub src_port: u16,
    /// Responder address.
    pub dst_ip: IpAddr,
    /// Responder port.
    pub dst_port: u16,
    /// Transport.
    pub transport: Transport,
    /// Community ID v1.
    pub community_id: String,
    /// Packets originator → responder.
    pub packets_out: u64,
    /// Packets responder → originator.
    pub packets_in: u64,
    /// IP bytes (headers included) out, as Zeek's `orig_ip_bytes`.
    pub ip_bytes_out: u64,
    /// IP bytes in, as Zeek's `resp_ip_bytes`.
    pub ip_bytes_in: u64,
    /// Transport payload bytes out (retransmissions included).
    pub payload_bytes_out: u64,
    /// Transport payload bytes in.
    pub payload_bytes_in: u64,
    /// First packet, microseconds since the Unix epoch.
    pub first_us: i64,
    /// Last packet, microseconds since the Unix epoch.
    pub last_us: i64,
    /// Best known name.
    pub domain: Option<String>,
    /// Where it came from.
    pub name_source: NameSource,
    /// ALPN offered.
    pub alpn: Vec<String>,
}

/// What the capture says about the device that initiated the flows; the
/// caller turns it into a pseudonym and never sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceHint {
    /// The MAC address that sent most initiating packets.
    pub mac: Option<[u8; 6]>,
    /// The address that initiated most connections.
    pub addr: Option<IpAddr>,
}

/// Who initiated connections, counted over one or more tables; gives the
/// [`DeviceHint`].
#[derive(Debug, Clone, Default)]
pub struct InitiatorCounts {
    macs: HashMap<[u8; 6], usize>,
    addrs: HashMap<IpAddr, usize>,
}

impl InitiatorCounts {
    /// Counts the initiators of `table`'s connections.
    pub fn add(&mut self, table: &FlowTable) {
        for conn in &table.all {
            if let Some(mac) = conn.initiator_mac {
                *self.macs.entry(mac).or_default() += 1;
            }
            *self.addrs.entry(conn.initiator.ip).or_default() += 1;
        }
    }

    /// The MAC and the address that initiated most connections.
    pub fn hint(&self) -> DeviceHint {
        DeviceHint {
            mac: self.macs.iter().max_by_key(|(m, n)| (**n, **m)).map(|(m, _)| *m),
            addr: self.addrs.iter().max_by_key(|(a, n)| (**n, **a)).map(|(a, _)| *a),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Endpoint {
    pub(super) ip: IpAddr,
    pub(super) port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    transport: Transport,
    a: Endpoint,
    b: Endpoint,
}

impl ConnKey {
    fn of(p: &Packet<'_>) -> Self {
        let s = Endpoint { ip: p.src_ip, port: p.src_port };
        let d = Endpoint { ip: p.dst_ip, port: p.dst_port };
        let (a, b) = if (s.ip, s.port) <= (d.ip, d.port) { (s, d) } else { (d, s) };
        Self { transport: p.transport, a, b }
    }
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) transport: Transport,
    pub(super) fin_out: bool,
    pub(super) fin_in: bool,
    pub(super) rst: bool,
    /// Counted in an earlier report (live capture reports a long
    /// connection interval by interval): its counters and `first_us` are
    /// since that report, and it is no new connection.
    pub(super) reported: bool,
    pub(super) initiator: Endpoint,
    pub(super) responder: Endpoint,
    pub(super) initiator_mac: Option<[u8; 6]>,
    pub(super) first_us: i64,
    pub(super) last_us: i64,
    pub(super) bytes_out: u64,
    pub(super) bytes_in: u64,
    pub(super) ip_bytes_out: u64,
    pub(super) ip_bytes_in: u64,
    pub(super) packets_out: u64,
    pub(super) packets_in: u64,
    pub(super) dns_name: Option<Box<str>>,
    pub(super) hello: HelloState,
    pub(super) http_host: Option<Box<str>>,
    /// What a SOCKS CONNECT at the start of the stream asked the proxy for.
    pub(super) socks: Option<Box<SocksTarget>>,
    pub(super) app: Option<Box<str>>,
}

/// The destination a client asked a SOCKS proxy to connect it to.
#[derive(Debug, Clone)]
pub(super) struct SocksTarget {
    /// The host name asked for (SOCKS4a, SOCKS5).
    pub(super) name: Option<Box<str>>,
    /// The address asked for (SOCKS4, SOCKS5).
    pub(super) addr: Option<IpAddr>,
}

impl Conn {
    /// A copy of what this connection did since its last report (its
    /// names, counters and times), leaving it counted as reported with its
    /// counters at zero and its start at its next packet.
    fn progress(&mut self) -> Conn {
        let hello = match &self.hello {
            HelloState::Found(f) => {
                let cert =
                    f.cert.as_ref().map(|c| Box::new(super::naming::CertWait { name: c.name.clone(), server: None }));
                HelloState::Found(Box::new(super::naming::Found { cert, ..(**f).clone() }))
            }
            _ => HelloState::Done,
        };
        let copy = Conn {
            transport: self.transport,
            fin_out: self.fin_out,
            fin_in: self.fin_in,
            rst: self.rst,
            reported: self.reported,
            initiator: self.initiator,
            responder: self.responder,
            initiator_mac: self.initiator_mac,
            first_us: self.first_us,
            last_us: self.last_us,
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
            ip_bytes_out: self.ip_bytes_out,
            ip_bytes_in: self.ip_bytes_in,
            packets_out: self.packets_out,
            packets_in: self.packets_in,
            dns_name: self.dns_name.clone(),
            hello,
            http_host: self.http_host.clone(),
            socks: self.socks.clone(),
            app: self.app.clone(),
        };
        self.reported = true;
        (self.bytes_out, self.bytes_in, self.ip_bytes_out, self.ip_bytes_in) = (0, 0, 0, 0);
        (self.packets_out, self.packets_in) = (0, 0);
        // Its next packet starts what the next report has of it.
        self.first_us = i64::MAX;
        copy
    }
}

/// Builds connections and destinations from packets of one device.
#[derive(Debug, Default)]
pub struct FlowTable {
    /// The current connection of each 5-tuple, as an index into `all`.
    conns: FxHashMap<ConnKey, usize>,
    /// Every connection, in order of first packet.
    pub(super) all: super::chunked::Chunked<Conn>,
    /// Connections not tracked because the table was full.
    pub untracked_connections: u64,
    pub(super) dns: FxHashMap<IpAddr, String>,
    lookups: Vec<DnsLookup>,
    /// Each lookup's index in `lookups`, by [`lookup_hash`] of its origin,
    /// block and name.
    lookup_index: hashbrown::HashTable<usize>,
    dhcp: Vec<DhcpHandshake>,
    /// DNS responses that did not parse.
    pub dns_errors: u64,
    /// Most connections held at once.
    peak_connections: usize,
}

/// Most connections a table holds at once; more are counted in
/// [`FlowTable::untracked_connections`] and left out. Import and live
/// capture hand finished connections on (see [`FlowTable::drain_idle`]),
/// so this bounds the connections open at one time (each takes a few
/// hundred bytes, more while its ClientHello is being put together).
pub const MAX_CONNECTIONS: usize = 250_000;

/// The hash a lookup is found by: its origin, whether it was blocked, and
/// its name in lower case.
fn lookup_hash(origin: &Origin, blocked: bool, name: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = rustc_hash::FxHasher::default();
    origin.hash(&mut h);
    blocked.hash(&mut h);
    for b in name.bytes() {
        h.write_u8(b.to_ascii_lowercase());
    }
    h.finish()
}

/// Idle time after which traffic on the same 5-tuple is a new connection
/// (Zeek's defaults: 5 minutes for TCP, 1 minute for UDP).
fn idle_timeout_us(transport: Transport) -> i64 {
    match transport {
        Transport::Tcp => 300_000_000,
        Transport::Udp => 60_000_000,
    }
}

fn well_known(port: u16) -> bool {
    port < 1024 || matches!(port, 1883 | 3478 | 5228 | 5353 | 8080 | 8443 | 8883)
}

impl FlowTable {
    /// Creates an empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one packet.
    pub fn add(&mut self, p: &Packet<'_>) {
        if p.transport == Transport::Udp
            && p.src_port == 68
            && p.dst_port == 67
            && let Some(m) = dhcp::parse_client(p.payload)
            // A Discover or a Request: the device (re)joins the network.
            && matches!(m.kind, 1 | 3)
        {
            self.note_dhcp(DhcpHandshake { mac: m.mac, ts_us: p.ts_us });
        }
        if p.src_port == 53 && !p.payload.is_empty() {
            self.learn_dns(p);
        } else if p.dst_port == 53 && !p.payload.is_empty() {
            self.note_query(p);
        }
        let key = ConnKey::of(p);
        let src = Endpoint { ip: p.src_ip, port: p.src_port };
        let dst = Endpoint { ip: p.dst_ip, port: p.dst_port };
        let mut current = self.conns.get(&key).copied();
        let starts_anew = match current {
            None => true,
            Some(i) => {
                let c = &self.all[i];
                // A new connection on a reused 5-tuple: a fresh SYN after
                // the old one closed, or traffic after the idle timeout.
                (p.syn && !p.ack && (c.rst || (c.fin_out && c.fin_in)))
                    || p.ts_us - c.last_us > idle_timeout_us(key.transport)
            }
        };
        if starts_anew && self.all.len() >= MAX_CONNECTIONS {
            self.untracked_connections += 1;
            return;
        }
        if starts_anew {
            // Who started it: SYN without ACK is the client; SYN+ACK comes
            // from the server; otherwise the first sender, unless only the
            // sender uses a well-known port.
            let (initiator, responder) = if p.syn && p.ack {
                (dst, src)
            } else if p.syn {
                (src, dst)
            } else if well_known(src.port) && !well_known(dst.port) {
                (dst, src)
            } else {
                (src, dst)
            };
            let dns_name = self.dns.get(&responder.ip).map(|n| n.as_str().into());
            current = Some(self.all.len());
            self.conns.insert(key, self.all.len());
            self.peak_connections = self.peak_connections.max(self.all.len() + 1);
            self.all.push(Conn {
                transport: key.transport,
                fin_out: false,
                fin_in: false,
                rst: false,
                reported: false,
                initiator,
                responder,
                initiator_mac: None,
                first_us: p.ts_us,
                last_us: p.ts_us,
                bytes_out: 0,
                bytes_in: 0,
                ip_bytes_out: 0,
                ip_bytes_in: 0,
                packets_out: 0,
                packets_in: 0,
                dns_name,
                hello: HelloState::new(),
                http_host: None,
                socks: None,
                app: None,
            });
        }
        let Some(i) = current else { return };
        let conn = &mut self.all[i];
        conn.rst |= p.rst;
        if conn.app.is_none()
            && let Some(app) = p.app
        {
            conn.app = Some(app.into());
        }
        conn.first_us = conn.first_us.min(p.ts_us);
        conn.last_us = conn.last_us.max(p.ts_us);
        let len = p.payload.len() as u64;
        if src == conn.initiator {
            conn.packets_out += 1;
            conn.bytes_out += len;
            conn.ip_bytes_out += u64::from(p.ip_len);
            conn.fin_out |= p.fin;
            if conn.initiator_mac.is_none() {
                conn.initiator_mac = p.src_mac;
            }
            match p.transport {
                Transport::Tcp => conn.client_segment(p),
                Transport::Udp => conn.client_datagram(p.payload),
            }
        } else {
            conn.packets_in += 1;
            conn.bytes_in += len;
            conn.ip_bytes_in += u64::from(p.ip_len);
            conn.fin_in |= p.fin;
            if p.transport == Transport::Tcp {
                conn.server_segment(p);
            }
        }
    }

    fn note_query(&mut self, p: &Packet<'_>) {
        let Some(msg) = dns_message(p) else { return };
        let Some((name, _qtype)) = dns::parse_query(msg) else { return };
        let origin = Origin { mac: p.src_mac, ip: p.src_ip };
        self.note_lookup(origin, &name, false, p.ts_us, 1, || DnsLookup {
            origin,
            name: name.clone(),
            resolver: p.dst_ip,
            first_us: p.ts_us,
            last_us: p.ts_us,
            queries: 1,
            app: p.app.map(str::to_string),
            blocked: false,
            context: LookupContext::default(),
        });
    }

    /// Adds `queries` queries of `origin` for `name` at `ts_us` to its
    /// lookup of the name (blocked or not), or the lookup `new` makes when
    /// it has none yet.
    pub(super) fn note_lookup(
        &mut self,
        origin: Origin,
        name: &str,
        blocked: bool,
        ts_us: i64,
        queries: u64,
        new: impl FnOnce() -> DnsLookup,
    ) {
        // Found by a hash of the origin, the block and the lower-case name,
        // compared with the lookups themselves: no key is stored and a
        // repeated query makes no string.
        let hash = lookup_hash(&origin, blocked, name);
        let Self { lookup_index, lookups, .. } = self;
        let found = lookup_index
            .find(hash, |&i| {
                let l = &lookups[i];
                l.origin == origin && l.blocked == blocked && l.name.eq_ignore_ascii_case(name)
            })
            .copied();
        match found {
            Some(i) => {
                let l = &mut lookups[i];
                l.first_us = l.first_us.min(ts_us);
                l.last_us = l.last_us.max(ts_us);
                l.queries += queries;
            }
            None => {
                lookup_index.insert_unique(hash, lookups.len(), |&i| {
                    let l = &lookups[i];
                    lookup_hash(&l.origin, l.blocked, &l.name)
                });
                lookups.push(new());
            }
        }
    }

    /// Notes a DHCP Discover or Request.
    pub(super) fn note_dhcp(&mut self, handshake: DhcpHandshake) {
        self.dhcp.push(handshake);
    }

    /// Names looked up, per origin, in order of first query.
    pub fn lookups(&self) -> &[DnsLookup] {
        &self.lookups
    }

    /// Takes the lookups out (the table then counts queries afresh).
    pub fn take_lookups(&mut self) -> Vec<DnsLookup> {
        self.lookup_index.clear();
        std::mem::take(&mut self.lookups)
    }

    /// DHCP Discovers and Requests seen, in capture order.
    pub fn dhcp_handshakes(&self) -> &[DhcpHandshake] {
        &self.dhcp
    }

    /// The origin of every connection with its first packet time.
    pub fn origins(&self) -> impl Iterator<Item = (Origin, i64)> + '_ {
        self.all.iter().map(|c| (Origin { mac: c.initiator_mac, ip: c.initiator.ip }, c.first_us))
    }

    fn learn_dns(&mut self, p: &Packet<'_>) {
        let Some(msg) = dns_message(p) else { return };
        match dns::parse_response(msg) {
            Some(resolutions) => {
                for r in resolutions {
                    self.dns.insert(r.addr, r.name);
                }
            }
            None => self.dns_errors += 1,
        }
    }

    /// Moves finished connections into a new table, with every DNS lookup
    /// and DHCP handshake so far: connections closed (both FINs or a RST)
    /// more than 5 s before `now_us`, or idle past the timeout; every
    /// connection when `everything`. The new table names them with this
    /// table's DNS answers. Live capture reports what this returns, so its
    /// memory holds only the connections still open.
    pub fn drain_finished(&mut self, now_us: i64, everything: bool) -> FlowTable {
        const LINGER_US: i64 = 5_000_000;
        self.drain(now_us, everything, LINGER_US)
    }

    /// Moves the connections idle past their timeout by `now_us` into a
    /// new table, as [`FlowTable::drain_finished`] does; a closed one too
    /// waits for its timeout, since until then a late packet still counts
    /// to it. What a capture file's import sums up as it reads, so that it
    /// gets the same flows as from the whole table at the end.
    pub fn drain_idle(&mut self, now_us: i64) -> FlowTable {
        self.drain(now_us, false, i64::MAX)
    }

    /// [`FlowTable::drain_finished`], and of each connection still open
    /// that started before `open_before_us` (or was reported before) what
    /// it did since its last report, as a copy: the connection goes on
    /// from zero, counted as reported, so that the next report has only its
    /// later traffic (from `now_us`) and does not count it again. Live
    /// capture so reports a connection kept open for hours from the first
    /// interval after it opened.
    pub fn drain_for_report(&mut self, now_us: i64, everything: bool, open_before_us: i64) -> FlowTable {
        let mut done = self.drain_finished(now_us, everything);
        for c in self.all.iter_mut() {
            if !(c.reported || c.first_us <= open_before_us) || c.packets_out + c.packets_in == 0 {
                continue;
            }
            if let Some(name) = self.dns.get(&c.responder.ip) {
                done.dns.insert(c.responder.ip, name.clone());
            }
            done.all.push(c.progress());
        }
        done
    }

    fn drain(&mut self, now_us: i64, everything: bool, closed_linger_us: i64) -> FlowTable {
        /// DNS answers kept for naming later flows; past this, start over.
        const MAX_DNS_ANSWERS: usize = 200_000;
        let mut done = FlowTable::new();
        let old = std::mem::take(&mut self.all);
        let mut remap = vec![usize::MAX; old.len()];
        for (i, c) in old.into_iter().enumerate() {
            let idle = now_us - c.last_us;
            let finished = everything
                || idle > idle_timeout_us(c.transport)
                || ((c.rst || (c.fin_out && c.fin_in)) && idle > closed_linger_us);
            if finished {
                if c.reported && c.packets_out + c.packets_in == 0 {
                    continue; // nothing since its last report
                }
                if let Some(name) = self.dns.get(&c.responder.ip) {
                    done.dns.insert(c.responder.ip, name.clone());
                }
                done.all.push(c);
            } else {
                remap[i] = self.all.len();
                self.all.push(c);
            }
        }
        self.conns.retain(|_, i| match remap[*i] {
            usize::MAX => false,
            n => {
                *i = n;
                true
            }
        });
        done.lookups = self.take_lookups();
        done.dhcp = std::mem::take(&mut self.dhcp);
        done.untracked_connections = std::mem::take(&mut self.untracked_connections);
        done.dns_errors = std::mem::take(&mut self.dns_errors);
        if self.dns.len() > MAX_DNS_ANSWERS {
            self.dns.clear();
        }
        done
    }

    /// Connections currently held.
    pub fn connection_count(&self) -> usize {
        self.all.len()
    }

    /// Most connections this table held at once.
    pub fn peak_connections(&self) -> usize {
        self.peak_connections
    }

    /// Every connection (5-tuple), in order of first packet: the
    /// volunteer's local view, with source fields; never sent.
    pub fn connections(&self) -> Vec<Connection> {
        let mut out: Vec<Connection> = self
            .all
            .iter()
            .map(|c| {
                let NamingRef { domain, name_source, alpn, .. } = self.naming_ref(c);
                let src = (c.initiator.ip, c.initiator.port);
                let dst = (c.responder.ip, c.responder.port);
                Connection {
                    src_ip: src.0,
                    src_port: src.1,
                    dst_ip: dst.0,
                    dst_port: dst.1,
                    transport: c.transport,
                    community_id: community_id(c.transport, src, dst),
                    packets_out: c.packets_out,
                    packets_in: c.packets_in,
                    ip_bytes_out: c.ip_bytes_out,
                    ip_bytes_in: c.ip_bytes_in,
                    payload_bytes_out: c.bytes_out,
                    payload_bytes_in: c.bytes_in,
                    first_us: c.first_us,
                    last_us: c.last_us,
                    domain: domain.map(str::to_string),
                    name_source,
                    alpn: alpn.to_vec(),
                }
            })
            .collect();
        out.sort_by_key(|c| c.first_us);
        out
    }
}

/// The DNS message in a packet to or from port 53 (TCP: one whole message
/// with its length prefix in the segment).
fn dns_message<'a>(p: &Packet<'a>) -> Option<&'a [u8]> {
    match p.transport {
        Transport::Udp => Some(p.payload),
        Transport::Tcp => {
            let pl = p.payload;
            (pl.len() > 2 && usize::from(u16::from_be_bytes([pl[0], pl[1]])) == pl.len() - 2).then(|| &pl[2..])
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::FlowTable;
    use crate::capture::{Packet, Transport};
    use crate::flow::is_encrypted_dns;

    fn packet(ts_us: i64, from_client: bool, transport: Transport, flags: (bool, bool, bool)) -> Packet<'static> {
        let (client, server): (IpAddr, IpAddr) =
            ("192.168.1.5".parse().expect("ip"), "93.184.216.34".parse().expect("ip"));
        let (src_ip, dst_ip, src_port, dst_port) =
            if from_client { (client, server, 40000, 443) } else { (server, client, 443, 40000) };
        Packet {
            ts_us,
            src_mac: None,
            src_ip,
            dst_ip,
            transport,
            src_port,
            dst_port,
            syn: flags.0,
            ack: !from_client || !flags.0,
            fin: flags.1,
            rst: flags.2,
            seq: 0,
            payload: &[],
            ip_len: 40,
            app: None,
        }
    }

    #[test]
    fn a_long_connection_is_reported_interval_by_interval_and_counted_once() {
        const S: i64 = 1_000_000;
        let mut t = FlowTable::new();
        let data = |ts: i64, from_client: bool| {
            let mut p = packet(ts, from_client, Transport::Tcp, (false, false, false));
            p.payload = b"0123456789";
            p
        };
        t.add(&packet(3 * S, true, Transport::Tcp, (true, false, false)));
        t.add(&data(4 * S, true));
        // Too young for a report: nothing.
        assert!(t.drain_for_report(5 * S, false, 5 * S - 60 * S).connections().is_empty());
        // Open longer than the interval: what it did so far, as one
        // connection from its start.
        let first = t.drain_for_report(70 * S, false, 10 * S).summaries();
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].connections, first[0].first_us, first[0].bytes_out), (1, 3 * S, 10));
        // Later traffic in later reports, no new connection; a quiet
        // interval reports nothing.
        t.add(&data(100 * S, true));
        t.add(&data(101 * S, false));
        let second = t.drain_for_report(130 * S, false, 70 * S).summaries();
        assert_eq!((second[0].connections, second[0].bytes_out, second[0].bytes_in), (0, 10, 10));
        assert!(second[0].first_us >= 70 * S, "its traffic's window, not the connection's start");
        assert!(t.drain_for_report(140 * S, false, 80 * S).connections().is_empty());
        // It closes: the rest, still no new connection.
        t.add(&data(150 * S, true));
        t.add(&packet(151 * S, true, Transport::Tcp, (false, true, false)));
        t.add(&packet(151 * S, false, Transport::Tcp, (false, true, false)));
        let last = t.drain_for_report(200 * S, false, 140 * S).summaries();
        assert_eq!((last[0].connections, last[0].bytes_out), (0, 10));
        assert_eq!(t.connection_count(), 0);
        let total: u64 = [&first, &second, &last].iter().map(|s| s[0].bytes_out).sum();
        assert_eq!(total, 30, "bytes add up across the reports");
    }

    #[test]
    fn a_reused_five_tuple_starts_a_new_connection_after_close_or_idle() {
        let mut t = FlowTable::new();
        t.add(&packet(0, true, Transport::Tcp, (true, false, false)));
        t.add(&packet(10, false, Transport::Tcp, (true, false, false)));
        t.add(&packet(20, true, Transport::Tcp, (false, true, false)));
        t.add(&packet(30, false, Transport::Tcp, (false, true, false)));
        // Same ports again, after both FINs.
        t.add(&packet(1_000_000, true, Transport::Tcp, (true, false, false)));
        t.add(&packet(1_000_010, false, Transport::Tcp, (true, false, false)));
        // UDP: quiet for longer than the idle timeout.
        t.add(&packet(0, true, Transport::Udp, (false, false, false)));
        t.add(&packet(61_000_001, true, Transport::Udp, (false, false, false)));
        let conns = t.connections();
        let count = |tr: Transport| conns.iter().filter(|c| c.transport == tr).count();
        assert_eq!((count(Transport::Tcp), count(Transport::Udp)), (2, 2));
        let tcp: Vec<_> =
            conns.iter().filter(|c| c.transport == Transport::Tcp).map(|c| (c.packets_out, c.packets_in)).collect();
        assert_eq!(tcp, [(2, 2), (1, 1)]);
        // Per destination they still add up.
        let dests = t.summaries();
        assert_eq!(dests.iter().find(|d| d.transport == Transport::Tcp).map(|d| d.packets_out), Some(3));
    }

    #[test]
    fn dot_and_known_doh_endpoints() {
        assert!(is_encrypted_dns(853, None));
        assert!(is_encrypted_dns(443, Some("Cloudflare-DNS.com.")));
        assert!(!is_encrypted_dns(443, Some("www.example.com")));
        assert!(!is_encrypted_dns(53, Some("dns.google")));
    }
}

#[cfg(test)]
mod size_tests {
    /// The flow table holds one `Conn` per connection of a whole capture:
    /// keep it small (boxing rare, large states).
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<super::Conn>();
        assert!(size <= 208, "Conn is {size} bytes");
    }
}
