//! SOCKS proxy handshakes (SOCKS4, SOCKS4a, SOCKS5 CONNECT) at the start of
//! a client's stream: the destination the client asked the proxy for, and
//! where the tunnelled stream (a TLS ClientHello, an HTTP request) begins.
//!
//! Only the client's bytes are seen: a SOCKS5 client sends its greeting,
//! then, when the proxy chose username/password authentication, its
//! credentials (RFC 1929; never kept), then its request. The proxy's
//! answers come between them on the other direction.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the start of a client's stream says about a SOCKS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socks {
    /// Not a SOCKS CONNECT handshake.
    NotSocks,
    /// A handshake whose request has not all arrived.
    NeedMore,
    /// A CONNECT request.
    Connect {
        /// The host name asked for (SOCKS4a, SOCKS5), as sent.
        name: Option<String>,
        /// The address asked for (SOCKS4, SOCKS5).
        addr: Option<IpAddr>,
        /// The port asked for.
        port: u16,
        /// Where the tunnelled stream begins.
        tunnel_at: usize,
    },
}

/// Longest user id (SOCKS4) or host name (SOCKS4a) read.
const MAX_FIELD: usize = 255;

/// Reads a SOCKS4, SOCKS4a or SOCKS5 CONNECT at the start of `stream`.
pub fn parse_client(stream: &[u8]) -> Socks {
    match stream.first() {
        Some(4) => socks4(stream),
        Some(5) => socks5(stream),
        _ => Socks::NotSocks,
    }
}

/// `[4][1 = CONNECT][port: 2][IPv4: 4][user id][0]`, and for SOCKS4a
/// (address `0.0.0.x`, x > 0) `[host name][0]` after it.
fn socks4(s: &[u8]) -> Socks {
    match s.get(1) {
        None => return Socks::NeedMore,
        Some(1) => {}
        Some(_) => return Socks::NotSocks,
    }
    if s.len() < 8 {
        return Socks::NeedMore;
    }
    let port = u16::from_be_bytes([s[2], s[3]]);
    let ip = Ipv4Addr::new(s[4], s[5], s[6], s[7]);
    let Some((_, after_user)) = cstring(s, 8) else { return field_or_more(s, 8) };
    let socks4a = ip.octets()[..3] == [0, 0, 0] && ip.octets()[3] != 0;
    if !socks4a {
        return Socks::Connect { name: None, addr: Some(IpAddr::V4(ip)), port, tunnel_at: after_user };
    }
    match cstring(s, after_user) {
        Some((name, end)) if !name.is_empty() => {
            Socks::Connect { name: host_name(name), addr: None, port, tunnel_at: end }
        }
        Some(_) => Socks::NotSocks,
        None => field_or_more(s, after_user),
    }
}

/// A zero-terminated field of at most [`MAX_FIELD`] printable bytes at
/// `at`: the field and the position after its terminator.
fn cstring(s: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = s.get(at..)?;
    let end = rest.iter().take(MAX_FIELD + 1).position(|&b| b == 0)?;
    let field = &rest[..end];
    field.iter().all(|b| b.is_ascii_graphic()).then_some((field, at + end + 1))
}

/// Whether the unterminated field at `at` may still end.
fn field_or_more(s: &[u8], at: usize) -> Socks {
    let rest = s.get(at..).unwrap_or_default();
    if rest.len() <= MAX_FIELD && rest.iter().all(|b| b.is_ascii_graphic()) { Socks::NeedMore } else { Socks::NotSocks }
}

/// Greeting `[5][n][n methods]`, then maybe `[1][ulen][user][plen][pass]`,
/// then `[5][1 = CONNECT][0][address type][address][port: 2]`.
fn socks5(s: &[u8]) -> Socks {
    let Some(&n) = s.get(1) else { return Socks::NeedMore };
    if n == 0 || n > 16 {
        return Socks::NotSocks;
    }
    let methods_end = 2 + usize::from(n);
    let Some(methods) = s.get(2..methods_end) else { return Socks::NeedMore };
    // No auth, GSSAPI, username/password, or private methods.
    if !methods.iter().all(|&m| m <= 3 || m >= 0x80) {
        return Socks::NotSocks;
    }
    let mut at = methods_end;
    match s.get(at) {
        None => return Socks::NeedMore,
        // Username/password (RFC 1929): skipped, never kept.
        Some(1) if methods.contains(&2) => {
            let Some(&ulen) = s.get(at + 1) else { return Socks::NeedMore };
            let pass_len_at = at + 2 + usize::from(ulen);
            let Some(&plen) = s.get(pass_len_at) else { return Socks::NeedMore };
            at = pass_len_at + 1 + usize::from(plen);
        }
        Some(5) => {}
        Some(_) => return Socks::NotSocks,
    }
    let Some(head) = s.get(at..at + 4) else { return Socks::NeedMore };
    if head[0] != 5 || head[1] != 1 || head[2] != 0 {
        return Socks::NotSocks;
    }
    let addr_at = at + 4;
    let (name, addr, port_at) = match head[3] {
        1 => {
            let Some(b) = s.get(addr_at..addr_at + 4) else { return Socks::NeedMore };
            (None, Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))), addr_at + 4)
        }
        3 => {
            let Some(&len) = s.get(addr_at) else { return Socks::NeedMore };
            let Some(name) = s.get(addr_at + 1..addr_at + 1 + usize::from(len)) else { return Socks::NeedMore };
            if len == 0 || !name.iter().all(|b| b.is_ascii_graphic()) {
                return Socks::NotSocks;
            }
            (host_name(name), None, addr_at + 1 + usize::from(len))
        }
        4 => {
            let Some(b) = s.get(addr_at..addr_at + 16) else { return Socks::NeedMore };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(b);
            (None, Some(IpAddr::V6(Ipv6Addr::from(octets))), addr_at + 16)
        }
        _ => return Socks::NotSocks,
    };
    let Some(p) = s.get(port_at..port_at + 2) else { return Socks::NeedMore };
    Socks::Connect { name, addr, port: u16::from_be_bytes([p[0], p[1]]), tunnel_at: port_at + 2 }
}

/// A host name as sent, unless it is an address written out.
fn host_name(bytes: &[u8]) -> Option<String> {
    let name = String::from_utf8_lossy(bytes).trim_end_matches('.').to_string();
    (name.parse::<IpAddr>().is_err() && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(name: Option<&str>, addr: Option<&str>, port: u16, tunnel_at: usize) -> Socks {
        Socks::Connect {
            name: name.map(str::to_string),
            addr: addr.map(|a| a.parse().expect("address")),
            port,
            tunnel_at,
        }
    }

    #[test]
    fn socks5_with_a_name_and_with_credentials() {
        let mut s = vec![5, 1, 0, 5, 1, 0, 3, 15];
        s.extend_from_slice(b"api.example.com");
        s.extend_from_slice(&443u16.to_be_bytes());
        let end = s.len();
        s.extend_from_slice(&[0x16, 3, 1]);
        assert_eq!(parse_client(&s), connect(Some("api.example.com"), None, 443, end));
        for cut in 1..end {
            assert_eq!(parse_client(&s[..cut]), Socks::NeedMore, "{cut}");
        }
        let mut auth = vec![5, 2, 0, 2, 1, 4];
        auth.extend_from_slice(b"user");
        auth.push(6);
        auth.extend_from_slice(b"secret");
        auth.extend_from_slice(&[5, 1, 0, 1, 93, 184, 216, 34, 1, 187]);
        assert_eq!(parse_client(&auth), connect(None, Some("93.184.216.34"), 443, auth.len()));
    }

    #[test]
    fn socks4_and_socks4a() {
        let mut s4 = vec![4, 1, 1, 187, 93, 184, 216, 34];
        s4.extend_from_slice(b"me\0");
        assert_eq!(parse_client(&s4), connect(None, Some("93.184.216.34"), 443, s4.len()));
        let mut s4a = vec![4, 1, 0, 80, 0, 0, 0, 1, 0];
        s4a.extend_from_slice(b"cloud.example.net\0");
        assert_eq!(parse_client(&s4a), connect(Some("cloud.example.net"), None, 80, s4a.len()));
        assert_eq!(parse_client(&s4a[..12]), Socks::NeedMore);
    }

    #[test]
    fn other_streams_are_not_socks() {
        for s in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"GET / HTTP/1.1\r\n",
            b"\x05\x00",
            b"\x05\x01\x07",
            b"\x05\x01\x00\x05\x02\x00\x01",
            b"\x04\x02\x00\x50\x01\x02\x03\x04\x00",
            b"\x05\x01\x00\x05\x01\x00\x09",
        ] {
            assert_eq!(parse_client(s), Socks::NotSocks, "{s:?}");
        }
        let mut long_user = vec![4, 1, 0, 80, 1, 2, 3, 4];
        long_user.extend(std::iter::repeat_n(b'a', 300));
        assert_eq!(parse_client(&long_user), Socks::NotSocks);
    }
}
