//! The client behind a proxy: which peers may say who the client is, and
//! who they say it is.
//!
//! A peer in [`TrustedProxies`] (a reverse proxy in front of the public
//! site) forwards the client's address in `Forwarded` (RFC 7239) or, when
//! that is absent, `X-Forwarded-For`. Each proxy appends the address it
//! received the request from, so the list is read from its end: the first
//! address that is not itself a trusted proxy is the client's. Anything
//! left of it was written by the client and is not believed. A header from
//! a peer that is not trusted is ignored: a client cannot pick the address
//! its rate limit is counted under.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
pub use ipnet::IpNet;

/// Most addresses of a forwarding header read: a longer chain is cut
/// there (its leftmost, client-written, part).
pub const MAX_FORWARDED_HOPS: usize = 32;

/// The networks of the proxies whose forwarding headers are believed
/// (`--trusted-proxies`); none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A network as `--trusted-proxies` takes it: a CIDR or one address.
pub fn network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    IpNet::from_str(text)
        .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{text:?} is neither a network in CIDR form (10.0.0.0/8, fd00::/8) nor an address"))
}

impl From<Vec<IpNet>> for TrustedProxies {
    fn from(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }
}

impl TrustedProxies {
    /// Proxies in `networks`, each a CIDR (`10.0.0.0/8`, `2001:db8::/32`)
    /// or an address (one host); the error names the flag and the entry.
    pub fn parse<S: AsRef<str>>(flag: &str, networks: &[S]) -> Result<Self, String> {
        networks
            .iter()
            .map(|n| network(n.as_ref()).map_err(|e| format!("{flag}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// True when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of the trusted proxies (an IPv4 address mapped
    /// into IPv6 counts as itself).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: `peer`'s, unless `peer` is trusted and the
    /// request carries a forwarding header, then the last address in it
    /// that is not a trusted proxy (or its first, when all are).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let chain = forwarded_for(headers);
        let mut client = peer;
        for hop in chain.iter().rev() {
            client = *hop;
            if !self.trusts(*hop) {
                break;
            }
        }
        client
    }
}

/// The network a client's address is counted under by the per-client
/// bounds (the public rate limit, connections per client): an IPv4
/// address alone, an IPv6 address's /64, the least a household or a phone
/// is given (counted one address at a time, a single home could take a new
/// address for every request). An IPv4 address mapped into IPv6 counts as
/// itself.
pub fn client_network(ip: IpAddr) -> ClientNetwork {
    ClientNetwork(match ip.to_canonical() {
        IpAddr::V4(v4) => IpNet::from(IpAddr::V4(v4)),
        IpAddr::V6(v6) => IpNet::V6(ipnet::Ipv6Net::new(v6, 64).expect("64 is a prefix length").trunc()),
    })
}

/// What [`client_network`] counts a client under; shown as the address
/// for IPv4, as the /64 for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientNetwork(IpNet);

impl std::fmt::Display for ClientNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpNet::V4(net) => write!(f, "{}", net.addr()),
            IpNet::V6(net) => write!(f, "{net}"),
        }
    }
}

/// The addresses a request's `Forwarded` header names in `for=`, or when
/// it has none, its `X-Forwarded-For` addresses, in order (at most
/// [`MAX_FORWARDED_HOPS`], the last ones). An entry that is not an address
/// (`unknown`, an obfuscated name, garbage) ends the chain there, so that
/// nothing left of it counts.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .collect()
    };
    let forwarded: Vec<String> = values("forwarded")
        .iter()
        .map(|element| {
            element
                .split(';')
                .find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| v.trim().trim_matches('"').to_string())
                })
                .unwrap_or_default()
        })
        .collect();
    let hops = if forwarded.is_empty() { values("x-forwarded-for") } else { forwarded };
    let start = hops.len().saturating_sub(MAX_FORWARDED_HOPS);
    let mut chain = Vec::new();
    for hop in hops[start..].iter().rev() {
        match parse_hop(hop) {
            Some(ip) => chain.push(ip),
            None => break,
        }
    }
    chain.reverse();
    chain
}

/// An address as forwarding headers write it: `192.0.2.1`,
/// `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(hop) {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = SocketAddr::from_str(hop) {
        return Some(addr.ip().to_canonical());
    }
    let inner = hop.strip_prefix('[')?.split(']').next()?;
    IpAddr::from_str(inner).ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request's headers of `pairs` (for the tests of this crate).
    pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_anyone_else_is_not_believed() {
        let trusted = TrustedProxies::parse("--trusted-proxies", &["10.0.0.0/8", "::1"]).expect("parse");
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3")]);
        // From the proxy: the last hop that is not a proxy.
        assert_eq!(trusted.client(ip("10.0.0.1"), &xff), ip("203.0.113.7"));
        // From anyone else: its own address, whatever it says.
        assert_eq!(trusted.client(ip("198.51.100.9"), &xff), ip("198.51.100.9"));
        // Forwarded wins over X-Forwarded-For, ports and brackets go.
        let both = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=192.0.2.60;proto=https, for=\"[2001:db8:cafe::17]:4711\""),
        ]);
        assert_eq!(trusted.client(ip("::1"), &both), ip("2001:db8:cafe::17"));
        // A mapped IPv4 peer is the IPv4 address.
        assert_eq!(trusted.client(ip("::ffff:10.0.0.1"), &xff), ip("203.0.113.7"));
        // No header, or nothing but proxies and garbage: the peer, or the
        // first proxy.
        assert_eq!(trusted.client(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers(&[("x-forwarded-for", "10.9.9.9")])), ip("10.9.9.9"));
        let garbage = headers(&[("x-forwarded-for", "203.0.113.7, unknown, 10.1.2.3")]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &garbage), ip("10.1.2.3"));
        // Nothing trusted: never believed.
        assert_eq!(TrustedProxies::default().client(ip("10.0.0.1"), &xff), ip("10.0.0.1"));
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_an_ipv4_client_by_its_address() {
        let net = |s: &str| client_network(ip(s));
        assert_eq!(net("2001:db8:1:2::1"), net("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_ne!(net("203.0.113.1"), net("203.0.113.2"));
        assert_eq!(net("::ffff:203.0.113.1"), net("203.0.113.1"));
        assert_eq!(net("203.0.113.1").to_string(), "203.0.113.1");
    }

    #[test]
    fn a_long_chain_is_read_from_its_end_only() {
        let trusted = TrustedProxies::parse("--trusted-proxies", &["10.0.0.0/8"]).expect("parse");
        let long = vec!["10.0.0.2"; 10_000].join(", ");
        let h = headers(&[("x-forwarded-for", &format!("203.0.113.7, {long}"))]);
        // Past the hops read, all proxies: the first one read.
        assert_eq!(trusted.client(ip("10.0.0.1"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn a_bad_network_is_refused_naming_the_flag_and_the_entry() {
        let e = TrustedProxies::parse("--trusted-proxies", &["10.0.0.0/8", "10.0.0.0/33"]).expect_err("bad");
        assert!(e.starts_with("--trusted-proxies: \"10.0.0.0/33\""), "{e}");
        assert!(TrustedProxies::parse("--trusted-proxies", &["proxy.example.org"]).is_err());
        assert!(TrustedProxies::parse("--trusted-proxies", &["192.0.2.1"]).expect("host").trusts(ip("192.0.2.1")));
    }
}
