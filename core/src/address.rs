//! The one privacy rule for destination addresses: the agent drops
//! destinations it calls non-public, the collector refuses them, and the
//! SQL function `is_private_ip` answers by it.

use std::net::{IpAddr, Ipv4Addr};

/// True for destinations that must never be reported: private
/// (RFC 1918), loopback, link-local, multicast, broadcast, unspecified,
/// carrier-grade NAT (100.64.0.0/10), reserved (240.0.0.0/4), IPv6
/// unique-local (fc00::/7), and every IPv6 form that carries an IPv4
/// address: IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96), NAT64
/// (64:ff9b::/96; the local-use 64:ff9b:1::/48 entirely), 6to4
/// (2002::/16) and Teredo (2001::/32, whose client address is stored
/// inverted), each judged by the IPv4 address it carries.
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let v4_at = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            let embedded = if let Some(v4) = v6.to_ipv4_mapped() {
                Some(v4)
            } else if (seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified()) // IPv4-compatible
                || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            // NAT64, well-known prefix
            {
                Some(v4_at(seg[6], seg[7]))
            } else if seg[0] == 0x2002 {
                Some(v4_at(seg[1], seg[2])) // 6to4
            } else if seg[0] == 0x2001 && seg[1] == 0 {
                Some(v4_at(!seg[6], !seg[7])) // Teredo client
            } else {
                None
            };
            if let Some(v4) = embedded {
                return non_public_v4(v4);
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // deprecated site-local
                || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // local-use NAT64
        }
    }
}

fn non_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_unspecified()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || o[0] >= 240
}

/// Addresses of every range [`is_non_public`] covers, and public ones
/// beside them (for the tests of whoever applies the rule).
pub const EXAMPLES: (&[&str], &[&str]) = (
    &[
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.1.1",
        "224.0.0.251",
        "255.255.255.255",
        "0.0.0.0",
        "100.64.1.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fec0::1",
        "fd00::1",
        "ff02::fb",
        "::ffff:192.168.1.1",
        "::192.168.1.1",
        "::10.0.0.1",
        "64:ff9b::10.0.0.1",
        "64:ff9b::c0a8:101",
        "64:ff9b:1::8.8.8.8",
        "2002:c0a8:0101::1",
        "2002:0a00:0001:1::1",
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    ],
    &[
        "8.8.8.8",
        "93.184.216.34",
        "2606:4700::6811:d209",
        "100.128.0.1",
        "::8.8.8.8",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "2002:0808:0808::1",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
    ],
);

/// Ports below 1024 and these, shared by many services: an unnamed
/// destination on one of them is keyed by its network, not its port.
const COMMON_PORTS: [u16; 14] = [1883, 3478, 5222, 5223, 5228, 5349, 8000, 8080, 8443, 8883, 8888, 9000, 9443, 10_000];

/// The key of a destination no name was seen for (no DNS answer, SNI,
/// Host or certificate), grouping a vendor's cloud across the addresses it
/// rotates through: on an unusual port the port (`tcp/8886 (unnamed)`), on
/// a well-known one the address's network (`203.0.113.0/24 (unnamed)`;
/// /48 for IPv6). The collector's SQL function `unnamed_destination` and
/// the agent's `check` both key by it.
pub fn unnamed_destination(transport: &str, ip: IpAddr, port: u16) -> String {
    if port >= 1024 && !COMMON_PORTS.contains(&port) {
        return format!("{transport}/{port} (unnamed)");
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24 (unnamed)")
        }
        IpAddr::V6(v6) => {
            let net = std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 80));
            format!("{net}/48 (unnamed)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv6 forms that carry a private IPv4 address
    /// (IPv4-compatible, NAT64, 6to4, Teredo) are non-public too.
    #[test]
    fn non_public_ranges() {
        let (non_public, public) = EXAMPLES;
        for ip in non_public {
            assert!(is_non_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in public {
            assert!(!is_non_public(ip.parse().expect("ip")), "{ip}");
        }
    }
}
