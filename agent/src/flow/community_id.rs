//! Community ID flow hashing, version 1 (the corelight spec), so flows can
//! be joined with Zeek and Suricata output. Local only: never sent.

use std::net::IpAddr;

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use crate::capture::Transport;

/// `1:<base64 sha1>` of the flow with the default seed 0.
pub fn community_id(transport: Transport, src: (IpAddr, u16), dst: (IpAddr, u16)) -> String {
    community_id_seeded(0, transport, src, dst)
}

/// `1:<base64 sha1>` of the flow with `seed` (Zeek and Suricata let
/// operators set one).
pub fn community_id_seeded(seed: u16, transport: Transport, src: (IpAddr, u16), dst: (IpAddr, u16)) -> String {
    let proto: u8 = match transport {
        Transport::Tcp => 6,
        Transport::Udp => 17,
    };
    let key = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let (a, b) = ((key(src.0), src.1), (key(dst.0), dst.1));
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha1::new();
    h.update(seed.to_be_bytes());
    h.update(&a.0);
    h.update(&b.0);
    h.update([proto, 0]);
    h.update(a.1.to_be_bytes());
    h.update(b.1.to_be_bytes());
    format!("1:{}", base64::engine::general_purpose::STANDARD.encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        // From the Community ID spec's baseline (tcp.pcap, seed 0).
        let id = community_id(
            Transport::Tcp,
            ("128.232.110.120".parse().expect("ip"), 34855),
            ("66.35.250.204".parse().expect("ip"), 80),
        );
        assert_eq!(id, "1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
        // Direction does not matter.
        let back = community_id(
            Transport::Tcp,
            ("66.35.250.204".parse().expect("ip"), 80),
            ("128.232.110.120".parse().expect("ip"), 34855),
        );
        assert_eq!(back, id);
    }
}
