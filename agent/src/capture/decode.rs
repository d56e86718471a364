//! Decoding one frame into addresses, ports and transport payload.

use std::net::IpAddr;

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};

use super::{CaptureStats, Frame};

/// Transport of a decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TCP, with the flags the flow table needs.
    Tcp,
    /// UDP.
    Udp,
}

impl Transport {
    /// "tcp" or "udp".
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A decoded TCP or UDP packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Capture time, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// Source MAC, when the link layer has one.
    pub src_mac: Option<[u8; 6]>,
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Transport protocol.
    pub transport: Transport,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// TCP SYN flag (false for UDP).
    pub syn: bool,
    /// TCP ACK flag (false for UDP).
    pub ack: bool,
    /// TCP FIN flag (false for UDP).
    pub fin: bool,
    /// TCP RST flag (false for UDP).
    pub rst: bool,
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
    /// Transport payload as captured.
    pub payload: &'a [u8],
    /// Length of the IP packet on the wire (header included), as the IP
    /// header states it.
    pub ip_len: u32,
    /// Application that sent or received the packet, when the capture
    /// source says (PCAPdroid's trailer); set by the caller.
    pub app: Option<&'a str>,
}

// Link types, from the tcpdump.org list.
const LINKTYPE_NULL: i32 = 0;
const LINKTYPE_ETHERNET: i32 = 1;
const LINKTYPE_RAW: i32 = 101;
const LINKTYPE_LOOP: i32 = 108;
const LINKTYPE_LINUX_SLL: i32 = 113;
const LINKTYPE_IPV4: i32 = 228;
const LINKTYPE_IPV6: i32 = 229;
const LINKTYPE_LINUX_SLL2: i32 = 276;

/// Decodes `frame`; returns `None` (and counts the reason in `stats`) for a
/// frame that is not a whole TCP or UDP packet over IPv4 or IPv6.
pub fn decode<'a>(frame: Frame<'a>, last_ts_us: i64, stats: &mut CaptureStats) -> Option<Packet<'a>> {
    let data = frame.data;
    let sliced = match frame.linktype {
        LINKTYPE_ETHERNET => match mpls_payload(data) {
            Some(ip) => SlicedPacket::from_ip(ip),
            None => SlicedPacket::from_ethernet(data),
        },
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => SlicedPacket::from_ip(data),
        LINKTYPE_LINUX_SLL => SlicedPacket::from_linux_sll(data),
        LINKTYPE_NULL | LINKTYPE_LOOP => match data.get(4..) {
            Some(rest) => SlicedPacket::from_ip(rest),
            None => {
                stats.skip("truncated link-layer header");
                return None;
            }
        },
        LINKTYPE_LINUX_SLL2 => match (data.get(0..2), data.get(20..)) {
            (Some(proto), Some(rest)) => {
                SlicedPacket::from_ether_type(EtherType(u16::from_be_bytes([proto[0], proto[1]])), rest)
            }
            _ => {
                stats.skip("truncated link-layer header");
                return None;
            }
        },
        other => {
            stats.skip(format!("unsupported link type {other}"));
            return None;
        }
    };
    let sliced = match sliced {
        Ok(sliced) => sliced,
        Err(e) => {
            stats.skip(format!("malformed packet ({})", error_kind(&e)));
            return None;
        }
    };
    let src_mac = match &sliced.link {
        Some(etherparse::LinkSlice::Ethernet2(eth)) => Some(eth.source()),
        _ => None,
    };
    let (src_ip, dst_ip, fragmenting, ip_len) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
            ip.payload().fragmented,
            u32::from(ip.header().total_len()),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
            ip.payload().fragmented,
            40 + u32::from(ip.header().payload_length()),
        ),
        Some(NetSlice::Arp(_)) => {
            stats.skip("not IP (ARP)");
            return None;
        }
        None => {
            stats.skip("not IP");
            return None;
        }
    };
    if fragmenting {
        stats.skip("IP fragment (not reassembled)");
        return None;
    }
    let ts_us = frame.ts_us.unwrap_or(last_ts_us);
    let packet = |transport, src_port, dst_port, (syn, ack, fin, rst), seq, payload| Packet {
        ts_us,
        src_mac,
        src_ip,
        dst_ip,
        transport,
        src_port,
        dst_port,
        syn,
        ack,
        fin,
        rst,
        seq,
        payload,
        ip_len,
        app: None,
    };
    match sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => Some(packet(
            Transport::Tcp,
            tcp.source_port(),
            tcp.destination_port(),
            (tcp.syn(), tcp.ack(), tcp.fin(), tcp.rst()),
            tcp.sequence_number(),
            tcp.payload(),
        )),
        Some(TransportSlice::Udp(udp)) => Some(packet(
            Transport::Udp,
            udp.source_port(),
            udp.destination_port(),
            (false, false, false, false),
            0,
            udp.payload(),
        )),
        Some(TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_)) => {
            stats.skip("ICMP (counted, not a flow)");
            None
        }
        _ => {
            stats.skip("other IP protocol");
            None
        }
    }
}

/// The IP packet inside an Ethernet frame that carries MPLS (possibly
/// behind 802.1Q/802.1ad tags): the label stack is skipped up to its
/// bottom-of-stack entry. `None` for frames without MPLS.
fn mpls_payload(data: &[u8]) -> Option<&[u8]> {
    let mut pos = 12;
    let mut ether_type = u16::from_be_bytes([*data.get(pos)?, *data.get(pos + 1)?]);
    while matches!(ether_type, 0x8100 | 0x88a8 | 0x9100) {
        pos += 4;
        ether_type = u16::from_be_bytes([*data.get(pos)?, *data.get(pos + 1)?]);
    }
    if !matches!(ether_type, 0x8847 | 0x8848) {
        return None;
    }
    pos += 2;
    for _ in 0..16 {
        let entry = data.get(pos..pos + 4)?;
        pos += 4;
        if entry[2] & 0x01 != 0 {
            return data.get(pos..);
        }
    }
    None
}

fn error_kind(e: &etherparse::err::packet::SliceError) -> &'static str {
    use etherparse::err::packet::SliceError as E;
    match e {
        E::Len(_) => "truncated header",
        E::LinuxSll(_) => "bad Linux cooked header",
        E::Ip(_) => "bad IP header",
        E::Ipv4(_) => "bad IPv4 header",
        E::Ipv6(_) => "bad IPv6 header",
        E::Ipv4Exts(_) | E::Ipv6Exts(_) => "bad IP extension header",
        E::Tcp(_) => "bad TCP header",
        _ => "bad header",
    }
}
