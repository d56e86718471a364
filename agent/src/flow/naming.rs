//! Naming a connection's destination: the TLS or QUIC ClientHello (SNI,
//! ALPN, JA4) and the HTTP Host read from the start of the client's
//! stream (after a SOCKS CONNECT when the client talks through a SOCKS
//! proxy, whose requested host name comes next), then DNS answers; and
//! whether a destination is encrypted DNS.

use std::collections::BTreeMap;

use super::table::{Conn, FlowTable, SocksTarget};
use crate::capture::Packet;
use crate::parsers::{cert, http, quic, socks, tls};

/// How much of a client's stream is kept while looking for a ClientHello.
const MAX_HELLO_BYTES: usize = 64 * 1024;
/// Segments kept per connection while reassembling the ClientHello.
const MAX_HELLO_SEGMENTS: usize = 64;

/// Where a flow's domain name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NameSource {
    /// Nothing names the destination.
    None,
    /// A DNS answer earlier in the capture.
    Dns,
    /// The host name a SOCKS4a or SOCKS5 CONNECT asked the proxy for.
    Socks,
    /// A name of the server's certificate (TLS 1.2, when the client sent
    /// no SNI).
    Cert,
    /// The HTTP Host header.
    Http,
    /// The SNI of the ClientHello in a QUIC Initial.
    Quic,
    /// The TLS ClientHello's SNI.
    Sni,
}

impl NameSource {
    /// "none", "dns", "socks", "cert", "http", "quic" or "sni".
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Dns => "dns",
            Self::Socks => "socks",
            Self::Cert => "cert",
            Self::Http => "http",
            Self::Quic => "quic",
            Self::Sni => "sni",
        }
    }
}

/// How a connection's destination is named, borrowed from the connection.
pub(super) struct NamingRef<'a> {
    pub(super) domain: Option<&'a str>,
    pub(super) name_source: NameSource,
    pub(super) sni: Option<&'a str>,
    pub(super) alpn: &'a [String],
    pub(super) fingerprint: Option<&'a str>,
}

/// Where the search for a ClientHello stands on a connection.
#[derive(Debug)]
pub(super) enum HelloState {
    Collecting { base: Option<u32>, segments: BTreeMap<u32, Vec<u8>> },
    Quic(Box<quic::InitialState>),
    Found(Box<Found>),
    Done,
}

/// What a found ClientHello says (its fingerprint, not the lists it is
/// made of: a connection table holds one per TLS connection), and, when it
/// named no server, what the server's certificate names.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub(super) sni: Option<Box<str>>,
    pub(super) alpn: Box<[String]>,
    pub(super) fingerprint: Box<str>,
    pub(super) source: NameSource,
    /// Only for a TCP hello without SNI.
    pub(super) cert: Option<Box<CertWait>>,
}

/// The server's certificate of a connection whose hello named no server.
#[derive(Debug, Clone, Default)]
pub(super) struct CertWait {
    /// The name it gives (TLS 1.2 sends it in clear).
    pub(super) name: Option<Box<str>>,
    /// The server's first segments, by sequence number, while it is
    /// awaited.
    pub(super) server: Option<BTreeMap<u32, Vec<u8>>>,
}

impl HelloState {
    fn found(h: tls::ClientHello, source: NameSource) -> Self {
        let fingerprint = h.ja4_memo(source == NameSource::Quic).into_boxed_str();
        // Without a name from the client, the server's certificate may
        // give one.
        let cert = (h.sni.is_none() && source == NameSource::Sni)
            .then(|| Box::new(CertWait { name: None, server: Some(BTreeMap::new()) }));
        Self::Found(Box::new(Found {
            sni: h.sni.map(String::into_boxed_str),
            alpn: h.alpn.into_boxed_slice(),
            fingerprint,
            source,
            cert,
        }))
    }
}

impl Conn {
    pub(super) fn client_datagram(&mut self, payload: &[u8]) {
        if let HelloState::Collecting { .. } = self.hello {
            self.hello = match quic::InitialState::new(payload) {
                Some(state) => HelloState::Quic(Box::new(state)),
                None => HelloState::Done,
            };
        }
        let HelloState::Quic(state) = &mut self.hello else { return };
        match state.feed(payload) {
            quic::Progress::Hello(h) => self.hello = HelloState::found(h, NameSource::Quic),
            quic::Progress::NeedMore => {}
            quic::Progress::Failed => self.hello = HelloState::Done,
        }
    }

    pub(super) fn client_segment(&mut self, p: &Packet<'_>) {
        let HelloState::Collecting { base, segments } = &mut self.hello else {
            return;
        };
        if p.syn {
            *base = Some(p.seq.wrapping_add(1));
            return;
        }
        if p.payload.is_empty() {
            return;
        }
        let kept: usize = segments.values().map(Vec::len).sum();
        if segments.len() >= MAX_HELLO_SEGMENTS || kept + p.payload.len() > MAX_HELLO_BYTES {
            self.hello = HelloState::Done;
            return;
        }
        if segments.is_empty() && base.is_none_or(|b| b == p.seq) {
            // The stream's first bytes, as they came (most hellos fit in one
            // segment): looked at in place, kept only when more must follow.
            if !self.inspect_stream(p.payload)
                && let HelloState::Collecting { segments, .. } = &mut self.hello
            {
                segments.insert(p.seq, p.payload.to_vec());
            }
            return;
        }
        if segments.contains_key(&p.seq) {
            return; // a retransmission: nothing new to look at
        }
        segments.insert(p.seq, p.payload.to_vec());
        // Without a SYN the stream starts at the lowest sequence seen.
        let start = base.unwrap_or_else(|| segments.keys().next().copied().unwrap_or(p.seq));
        let stream = contiguous(segments, start);
        if !stream.is_empty() {
            self.inspect_stream(&stream);
        }
    }

    /// The server's bytes of a TLS connection whose ClientHello named no
    /// server: put together from its first segments (at most
    /// [`cert::MAX_FLIGHT_BYTES`], [`MAX_HELLO_SEGMENTS`]) until its
    /// certificate's names are read, or there are none.
    pub(super) fn server_segment(&mut self, p: &Packet<'_>) {
        let HelloState::Found(f) = &mut self.hello else { return };
        let Some(wait) = f.cert.as_deref_mut() else { return };
        let Some(segments) = &mut wait.server else { return };
        if p.payload.is_empty() || segments.contains_key(&p.seq) {
            return;
        }
        let kept: usize = segments.values().map(Vec::len).sum();
        if segments.len() >= MAX_HELLO_SEGMENTS || kept + p.payload.len() > cert::MAX_FLIGHT_BYTES {
            wait.server = None;
            return;
        }
        segments.insert(p.seq, p.payload.to_vec());
        // The stream starts at the lowest sequence seen (the server's SYN
        // came before the hello was found).
        let Some(&start) = segments.keys().next() else { return };
        let stream = contiguous(segments, start);
        match cert::parse_server_flight(&stream) {
            cert::ServerFlight::NeedMore => {}
            cert::ServerFlight::Names(names) => {
                wait.name = cert::destination_name(&names).map(Into::into);
                wait.server = None;
            }
            // What does not start with a handshake record may be a later
            // segment that came first: wait for the start (within the
            // bounds above).
            cert::ServerFlight::Nothing if stream.first() != Some(&22) => {}
            cert::ServerFlight::Nothing => wait.server = None,
        }
    }

    /// Looks for an HTTP request or a TLS ClientHello at the start of the
    /// client's stream, or after the SOCKS CONNECT it starts with; false
    /// while more bytes may decide it.
    fn inspect_stream(&mut self, stream: &[u8]) -> bool {
        let stream = match socks::parse_client(stream) {
            socks::Socks::NotSocks => stream,
            socks::Socks::NeedMore => return false,
            socks::Socks::Connect { name, addr, tunnel_at, .. } => {
                if self.socks.is_none() {
                    self.socks = Some(Box::new(SocksTarget { name: name.map(Into::into), addr }));
                }
                match stream.get(tunnel_at..) {
                    Some(tunnel) if !tunnel.is_empty() => tunnel,
                    // The tunnelled stream is yet to come.
                    _ => return false,
                }
            }
        };
        if self.http_host.is_none() {
            match http::parse_request(stream) {
                http::Request::Head(host) => {
                    self.http_host = host.map(Into::into);
                    self.hello = HelloState::Done;
                    return true;
                }
                // The Host line, or the end of the header block, is yet to come.
                http::Request::NeedMore => return false,
                http::Request::NotHttp => {}
            }
        }
        match tls::parse_client_hello(stream) {
            tls::Parse::Hello(h) => self.hello = HelloState::found(h, NameSource::Sni),
            tls::Parse::NeedMore(_) => return false,
            tls::Parse::NotTls => self.hello = HelloState::Done,
        }
        true
    }
}

/// The bytes of `segments` (by sequence number) in order from `start` up
/// to the first gap; a segment that begins inside what is already put
/// together (an overlapping retransmission) is passed over.
fn contiguous(segments: &BTreeMap<u32, Vec<u8>>, start: u32) -> Vec<u8> {
    let mut stream = Vec::new();
    let mut next = start;
    for (&seq, data) in segments.range(start..) {
        if seq != next {
            if seq.wrapping_sub(next) < u32::MAX / 2 && seq > next {
                break; // gap
            }
            continue;
        }
        stream.extend_from_slice(data);
        next = seq.wrapping_add(data.len() as u32);
    }
    stream
}

impl HelloState {
    /// Before the client's first bytes.
    pub(super) fn new() -> Self {
        Self::Collecting { base: None, segments: BTreeMap::new() }
    }
}

impl FlowTable {
    /// How a connection's destination is named, by the attribution order;
    /// borrowed, so that summing connections copies a name only where it is
    /// kept.
    pub(super) fn naming_ref<'a>(&'a self, conn: &'a Conn) -> NamingRef<'a> {
        let (sni, alpn, hello_source, fingerprint, cert_name) = match &conn.hello {
            HelloState::Found(f) => (
                f.sni.as_deref(),
                &f.alpn[..],
                f.source,
                Some(&*f.fingerprint),
                f.cert.as_ref().and_then(|c| c.name.as_deref()),
            ),
            _ => (None, &[][..], NameSource::None, None, None),
        };
        let (domain, name_source) = if let Some(s) = sni {
            (Some(s), hello_source)
        } else if let Some(h) = &conn.http_host {
            (Some(&**h), NameSource::Http)
        } else if let Some(c) = cert_name {
            (Some(c), NameSource::Cert)
        } else if let Some(target) = &conn.socks {
            // Through a SOCKS proxy: the name asked for, or a DNS answer's
            // name for the address asked for; never the proxy's own name.
            match (&target.name, target.addr.and_then(|a| self.dns.get(&a))) {
                (Some(n), _) => (Some(&**n), NameSource::Socks),
                (None, Some(d)) => (Some(d.as_str()), NameSource::Dns),
                (None, None) => (None, NameSource::None),
            }
        } else if let Some(d) =
            conn.dns_name.as_deref().or_else(|| self.dns.get(&conn.responder.ip).map(String::as_str))
        {
            (Some(d), NameSource::Dns)
        } else {
            (None, NameSource::None)
        };
        NamingRef { domain, name_source, sni, alpn, fingerprint }
    }
}

/// Well-known DNS-over-HTTPS endpoints (public resolvers and the browser
/// defaults), by host name.
const DOH_HOSTS: [&str; 16] = [
    "dns.google",
    "dns.google.com",
    "cloudflare-dns.com",
    "mozilla.cloudflare-dns.com",
    "chrome.cloudflare-dns.com",
    "one.one.one.one",
    "1dot1dot1dot1.cloudflare-dns.com",
    "security.cloudflare-dns.com",
    "family.cloudflare-dns.com",
    "dns.quad9.net",
    "dns11.quad9.net",
    "doh.opendns.com",
    "dns.nextdns.io",
    "doh.cleanbrowsing.org",
    "dns.adguard-dns.com",
    "doh.dns.sb",
];

/// DNS over TLS (destination port 853) or DNS over HTTPS to a known
/// endpoint (port 443 with one of [`DOH_HOSTS`] as its name).
pub fn is_encrypted_dns(port: u16, name: Option<&str>) -> bool {
    port == 853
        || (port == 443
            && name.is_some_and(|n| {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                DOH_HOSTS.contains(&n.as_str())
            }))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::NameSource;
    use crate::capture::{Packet, Transport};
    use crate::flow::FlowTable;
    use crate::parsers::tls::build_client_hello;

    const PROXY: &str = "203.0.113.9";

    /// A TCP segment from the client to a SOCKS proxy (port 1080), or the
    /// proxy's empty answer; `seq` counts from the SYN's sequence 1000.
    fn segment(ts_us: i64, from_client: bool, syn: bool, seq: u32, payload: &[u8]) -> Packet<'_> {
        let (client, proxy): (IpAddr, IpAddr) = ("192.168.1.5".parse().expect("ip"), PROXY.parse().expect("ip"));
        let (src_ip, dst_ip, src_port, dst_port) =
            if from_client { (client, proxy, 40000, 1080) } else { (proxy, client, 1080, 40000) };
        Packet {
            ts_us,
            src_mac: None,
            src_ip,
            dst_ip,
            transport: Transport::Tcp,
            src_port,
            dst_port,
            syn,
            ack: !syn,
            fin: false,
            rst: false,
            seq: 1000 + seq,
            payload,
            ip_len: 40 + payload.len() as u32,
            app: None,
        }
    }

    /// The client's stream, cut into the segments given, after a SYN; the
    /// proxy answering between them. Returns the one connection's name and
    /// source, and its ALPN.
    fn name_of(parts: &[&[u8]], dns: Option<(&str, &str)>) -> (Option<String>, NameSource, Vec<String>) {
        let mut t = FlowTable::new();
        if let Some((name, addr)) = dns {
            t.dns.insert(addr.parse().expect("ip"), name.to_string());
        }
        t.add(&segment(0, true, true, 0, &[]));
        let mut seq = 1;
        for (i, part) in parts.iter().enumerate() {
            let ts = 1_000 * (i as i64 + 1);
            t.add(&segment(ts, true, false, seq, part));
            t.add(&segment(ts + 500, false, false, 0, &[]));
            seq += part.len() as u32;
        }
        let conns = t.connections();
        assert_eq!(conns.len(), 1);
        let c = conns.into_iter().next().expect("one connection");
        assert_eq!(c.dst_ip.to_string(), PROXY);
        (c.domain, c.name_source, c.alpn)
    }

    fn socks5_request(name: &str) -> Vec<u8> {
        let mut r = vec![5, 1, 0, 3, name.len() as u8];
        r.extend_from_slice(name.as_bytes());
        r.extend_from_slice(&443u16.to_be_bytes());
        r
    }

    #[test]
    fn tls_through_a_socks5_proxy_is_named_by_its_sni() {
        let hello = build_client_hello("telemetry.vendor.example", &["h2", "http/1.1"], [7; 32]);
        let request = socks5_request("cloud.vendor.example");
        // Greeting, request and hello each in its own segment, as a client
        // waiting for each answer of the proxy sends them.
        let (domain, source, alpn) = name_of(&[&[5, 1, 0], &request, &hello], None);
        assert_eq!(domain.as_deref(), Some("telemetry.vendor.example"));
        assert_eq!(source, NameSource::Sni);
        assert_eq!(alpn, ["h2", "http/1.1"]);
        // The hello itself cut in two.
        let (domain, source, _) = name_of(&[&[5, 1, 0], &request, &hello[..40], &hello[40..]], None);
        assert_eq!((domain.as_deref(), source), (Some("telemetry.vendor.example"), NameSource::Sni));
    }

    #[test]
    fn a_socks_connect_names_its_destination_when_nothing_in_the_tunnel_does() {
        let request = socks5_request("cloud.vendor.example");
        let (domain, source, _) = name_of(&[&[5, 1, 0], &request], None);
        assert_eq!((domain.as_deref(), source), (Some("cloud.vendor.example"), NameSource::Socks));
        // SOCKS4a, and an opaque stream through the tunnel.
        let mut s4a = vec![4, 1, 0x1f, 0x90, 0, 0, 0, 1, 0];
        s4a.extend_from_slice(b"updates.vendor.example\0");
        let (domain, source, _) = name_of(&[&s4a, &[0x17, 0x42, 0x42]], None);
        assert_eq!((domain.as_deref(), source), (Some("updates.vendor.example"), NameSource::Socks));
        // HTTP through the tunnel names it by its Host.
        let (domain, source, _) = name_of(&[&s4a, b"GET / HTTP/1.1\r\nHost: cdn.vendor.example\r\n\r\n"], None);
        assert_eq!((domain.as_deref(), source), (Some("cdn.vendor.example"), NameSource::Http));
    }

    /// A TLS 1.2 client that sends no SNI: the server's certificate,
    /// which travels in clear, names the destination.
    #[test]
    fn a_hello_without_sni_is_named_by_the_servers_certificate() {
        use crate::parsers::cert::tests::{certificate, flight};
        let run = |server: &[u8], cut: usize| {
            let mut t = FlowTable::new();
            t.add(&segment(0, true, true, 0, &[]));
            let hello = build_client_hello("", &["http/1.1"], [3; 32]);
            t.add(&segment(1_000, true, false, 1, &hello));
            let mut answer = |ts, seq: u32, data: &[u8]| {
                let mut p = segment(ts, false, false, 0, data);
                p.seq = 9_000 + seq;
                t.add(&p);
            };
            // The server's flight in two segments, the second first.
            answer(2_000, cut as u32, &server[cut..]);
            answer(2_100, 0, &server[..cut]);
            let c = t.connections().into_iter().next().expect("a connection");
            (c.domain, c.name_source)
        };
        let server = flight(&certificate("x", &["*.dns.io.mi.com", "dns.io.mi.com"]));
        assert_eq!(run(&server, 90), (Some("dns.io.mi.com".into()), NameSource::Cert));
        // A certificate that names no host, and a server that is not TLS.
        assert_eq!(run(&flight(&certificate("Mijia Root", &[])), 100), (None, NameSource::None));
        assert_eq!(run(b"HTTP/1.1 400 Bad Request\r\n\r\n", 5), (None, NameSource::None));
    }

    #[test]
    fn a_socks_connect_to_an_address_is_named_by_that_address_dns_answer() {
        let s4 = [4, 1, 1, 187, 198, 51, 100, 7, b'u', 0];
        let (domain, source, _) = name_of(&[&s4], Some(("api.vendor.example", "198.51.100.7")));
        assert_eq!((domain.as_deref(), source), (Some("api.vendor.example"), NameSource::Dns));
        // Not the proxy's own name.
        let (domain, _, _) = name_of(&[&s4], Some(("proxy.example", PROXY)));
        assert_eq!(domain, None);
    }
}
