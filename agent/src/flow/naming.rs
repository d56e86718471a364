//! Naming a connection's destination: the TLS or QUIC ClientHello (SNI,
//! ALPN, JA4) and the HTTP Host read from the start of the client's
//! stream, then DNS answers; and whether a destination is encrypted DNS.

use std::collections::BTreeMap;

use super::table::{Conn, FlowTable};
use crate::capture::Packet;
use crate::parsers::{http, quic, tls};

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
    /// The HTTP Host header.
    Http,
    /// The SNI of the ClientHello in a QUIC Initial.
    Quic,
    /// The TLS ClientHello's SNI.
    Sni,
}

impl NameSource {
    /// "none", "dns", "http", "quic" or "sni".
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Dns => "dns",
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
    Collecting { base: Option<u32>, segments: BTreeMap<u32, Vec<u8>>, bytes: usize },
    Quic(Box<quic::InitialState>),
    Found(Box<tls::ClientHello>, NameSource),
    Done,
}

impl HelloState {
    /// A found hello keeps its fingerprint, not the lists it is made of.
    fn found(mut h: tls::ClientHello, source: NameSource) -> Self {
        h.fingerprint = Some(h.ja4_memo(source == NameSource::Quic));
        h.shape = tls::HelloShape::default();
        Self::Found(Box::new(h), source)
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
        let HelloState::Collecting { base, segments, bytes } = &mut self.hello else {
            return;
        };
        if p.syn {
            *base = Some(p.seq.wrapping_add(1));
            return;
        }
        if p.payload.is_empty() {
            return;
        }
        if segments.len() >= MAX_HELLO_SEGMENTS || *bytes + p.payload.len() > MAX_HELLO_BYTES {
            self.hello = HelloState::Done;
            return;
        }
        if segments.is_empty() && base.is_none_or(|b| b == p.seq) {
            // The stream's first bytes, as they came (most hellos fit in one
            // segment): looked at in place, kept only when more must follow.
            if !self.inspect_stream(p.payload)
                && let HelloState::Collecting { segments, bytes, .. } = &mut self.hello
            {
                *bytes += p.payload.len();
                segments.insert(p.seq, p.payload.to_vec());
            }
            return;
        }
        *bytes += p.payload.len();
        segments.entry(p.seq).or_insert_with(|| p.payload.to_vec());
        // Without a SYN the stream starts at the lowest sequence seen.
        let start = base.unwrap_or_else(|| segments.keys().next().copied().unwrap_or(p.seq));
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
        if !stream.is_empty() {
            self.inspect_stream(&stream);
        }
    }

    /// Looks for an HTTP request or a TLS ClientHello at the start of the
    /// client's stream; false while more bytes may decide it.
    fn inspect_stream(&mut self, stream: &[u8]) -> bool {
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

impl HelloState {
    /// Before the client's first bytes.
    pub(super) fn new() -> Self {
        Self::Collecting { base: None, segments: BTreeMap::new(), bytes: 0 }
    }
}

impl FlowTable {
    /// How a connection's destination is named, by the attribution order;
    /// borrowed, so that summing connections copies a name only where it is
    /// kept.
    pub(super) fn naming_ref<'a>(&'a self, conn: &'a Conn) -> NamingRef<'a> {
        let (sni, alpn, hello_source, fingerprint) = match &conn.hello {
            HelloState::Found(h, source) => (h.sni.as_deref(), h.alpn.as_slice(), *source, h.fingerprint.as_deref()),
            _ => (None, &[][..], NameSource::None, None),
        };
        let (domain, name_source) = if let Some(s) = sni {
            (Some(s), hello_source)
        } else if let Some(h) = &conn.http_host {
            (Some(&**h), NameSource::Http)
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
