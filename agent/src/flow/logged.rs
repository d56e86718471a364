//! A [`FlowTable`] filled from what another tool logged (Zeek's
//! `conn.log`, `dns.log`, `ssl.log` and `dhcp.log`) instead of from
//! packets: the same connections, lookups, DNS answers and DHCP
//! handshakes, so that the same sums, boots and anonymiser turn them into
//! records.

use std::net::IpAddr;

use super::naming::{Found, HelloState, NameSource};
use super::table::{Conn, DhcpHandshake, DnsLookup, Endpoint, FlowTable, MAX_CONNECTIONS, Origin};
use crate::capture::Transport;

/// One connection as a log records it when it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedConnection {
    /// TCP or UDP.
    pub transport: Transport,
    /// Who opened it (address, MAC when known) and from which port.
    pub origin: Origin,
    /// Its port.
    pub origin_port: u16,
    /// The responder.
    pub responder: IpAddr,
    /// The responder's port.
    pub responder_port: u16,
    /// First packet, microseconds since the Unix epoch.
    pub first_us: i64,
    /// Last packet.
    pub last_us: i64,
    /// Payload bytes from the originator.
    pub bytes_out: u64,
    /// Payload bytes to it.
    pub bytes_in: u64,
    /// Packets from the originator.
    pub packets_out: u64,
    /// Packets to it.
    pub packets_in: u64,
    /// What its TLS hello said: the server name, the ALPN offered and the
    /// client's fingerprint (JA4), when the log has them.
    pub tls: Option<LoggedTls>,
}

/// A TLS hello as a log records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoggedTls {
    /// Server name indication.
    pub sni: Option<String>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// JA4 fingerprint.
    pub fingerprint: Option<String>,
}

impl FlowTable {
    /// Adds a logged connection; counted in `untracked_connections` once
    /// the table holds [`MAX_CONNECTIONS`].
    pub fn add_logged(&mut self, c: LoggedConnection) {
        if self.all.len() >= MAX_CONNECTIONS {
            self.untracked_connections += 1;
            return;
        }
        let hello = match c.tls {
            Some(t) if t.sni.is_some() || t.fingerprint.is_some() => HelloState::Found(Box::new(Found {
                sni: t.sni.map(|s| s.to_ascii_lowercase().into_boxed_str()),
                alpn: t.alpn.into_boxed_slice(),
                fingerprint: t.fingerprint.unwrap_or_default().into_boxed_str(),
                source: NameSource::Sni,
                cert: None,
            })),
            _ => HelloState::Done,
        };
        let dns_name = self.dns.get(&c.responder).map(|n| n.as_str().into());
        self.all.push(Conn {
            transport: c.transport,
            fin_out: true,
            fin_in: true,
            rst: false,
            reported: false,
            initiator: Endpoint { ip: c.origin.ip, port: c.origin_port },
            responder: Endpoint { ip: c.responder, port: c.responder_port },
            initiator_mac: c.origin.mac,
            first_us: c.first_us,
            last_us: c.last_us.max(c.first_us),
            bytes_out: c.bytes_out,
            bytes_in: c.bytes_in,
            ip_bytes_out: 0,
            ip_bytes_in: 0,
            packets_out: c.packets_out,
            packets_in: c.packets_in,
            dns_name,
            hello,
            http_host: None,
            socks: None,
            app: None,
        });
    }

    /// Adds a logged DNS query by `origin` for `name` to `resolver` at
    /// `ts_us` (a lookup, as a captured query is); `blocked` when the DNS
    /// server refused it.
    pub fn add_logged_query(&mut self, origin: Origin, name: &str, resolver: IpAddr, ts_us: i64, blocked: bool) {
        self.note_lookup(origin, name, blocked, ts_us, 1, || DnsLookup {
            origin,
            name: name.to_string(),
            resolver,
            first_us: ts_us,
            last_us: ts_us,
            queries: 1,
            app: None,
            blocked,
            context: Default::default(),
        });
    }

    /// Learns a logged DNS answer: `addr` is `name`'s.
    pub fn add_logged_answer(&mut self, addr: IpAddr, name: &str) {
        // Most answers repeat the one before for the address.
        if self.dns.get(&addr).is_none_or(|known| known != name) {
            self.dns.insert(addr, name.to_string());
        }
    }

    /// Adds a logged DHCP Discover or Request of `mac` at `ts_us`.
    pub fn add_logged_dhcp(&mut self, mac: [u8; 6], ts_us: i64) {
        self.note_dhcp(DhcpHandshake { mac, ts_us });
    }
}
