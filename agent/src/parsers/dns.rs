//! DNS responses: which names resolve to which addresses.
//!
//! Only what the flow table needs is decoded: the question name and the A,
//! AAAA and CNAME answers, with compression pointers followed (bounded, so a
//! pointer loop cannot hang the parser).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One address a response resolved the question name to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The name the client asked for, as sent (no trailing dot).
    pub name: String,
    /// An address the name resolved to, possibly through a CNAME chain.
    pub addr: IpAddr,
    /// The answer's time to live, seconds.
    pub ttl: u32,
}

/// The first question of a DNS query: its name (as sent, no trailing dot)
/// and type. `None` for a response or a malformed message.
pub fn parse_query(msg: &[u8]) -> Option<(String, u16)> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let (name, next) = read_name(msg, 12)?;
    let qtype = msg.get(next..next + 2)?;
    Some((name, u16::from_be_bytes([qtype[0], qtype[1]])))
}

/// Parses a DNS message (as carried over UDP; for TCP strip the 2-byte
/// length first). Returns the resolutions of a response, or `None` when the
/// message is not a well-formed response.
pub fn parse_response(msg: &[u8]) -> Option<Vec<Resolution>> {
    if msg.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 == 0 {
        return None; // a query
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = 12;
    let mut question = None;
    for _ in 0..qdcount {
        let (name, next) = read_name(msg, pos)?;
        pos = next.checked_add(4)?;
        if pos > msg.len() {
            return None;
        }
        question.get_or_insert(name);
    }
    let question = question?;
    let mut out = Vec::new();
    for _ in 0..ancount {
        let (_owner, next) = read_name(msg, pos)?;
        let header = msg.get(next..next + 10)?;
        let rtype = u16::from_be_bytes([header[0], header[1]]);
        let ttl = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let rdlen = usize::from(u16::from_be_bytes([header[8], header[9]]));
        let rdata = msg.get(next + 10..next + 10 + rdlen)?;
        let addr = match (rtype, rdlen) {
            (1, 4) => Some(IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))),
            (28, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(rdata);
                Some(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            _ => None,
        };
        if let Some(addr) = addr {
            out.push(Resolution { name: question.clone(), addr, ttl });
        }
        pos = next + 10 + rdlen;
    }
    Some(out)
}

/// Reads a possibly compressed name at `pos`; returns it and the position
/// after it in the original message. Each byte is one character (names
/// in unicast DNS are ASCII; see [`read_name_bytes`] for mDNS's UTF-8).
fn read_name(msg: &[u8], pos: usize) -> Option<(String, usize)> {
    let (bytes, after) = read_name_bytes(msg, pos)?;
    Some((bytes.into_iter().map(char::from).collect(), after))
}

/// Reads a possibly compressed name at `pos` as its bytes, labels joined
/// by dots (at most 255 bytes; at most 32 pointers followed); returns it
/// and the position after it in the original message.
pub(crate) fn read_name_bytes(msg: &[u8], mut pos: usize) -> Option<(Vec<u8>, usize)> {
    let mut name = Vec::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos)?;
        match len & 0xC0 {
            0x00 => {
                if len == 0 {
                    let after = end.unwrap_or(pos + 1);
                    return Some((name, after));
                }
                let label = msg.get(pos + 1..pos + 1 + usize::from(len))?;
                if !name.is_empty() {
                    name.push(b'.');
                }
                name.extend_from_slice(label);
                if name.len() > 255 {
                    return None;
                }
                pos += 1 + usize::from(len);
            }
            0xC0 => {
                let low = *msg.get(pos + 1)?;
                if end.is_none() {
                    end = Some(pos + 2);
                }
                jumps += 1;
                if jumps > 32 {
                    return None;
                }
                pos = (usize::from(len & 0x3F) << 8) | usize::from(low);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Response for www.example.com: CNAME example.com, A 93.184.216.34.
    fn sample() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
        // CNAME www.example.com -> example.com (pointer to offset 16)
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 16]);
        // A example.com
        m.extend_from_slice(&[0xC0, 16, 0, 1, 0, 1, 0, 0, 1, 0, 0, 4, 93, 184, 216, 34]);
        m
    }

    #[test]
    fn follows_cname_to_address_under_the_question_name() {
        let res = parse_response(&sample()).expect("parses");
        assert_eq!(
            res,
            vec![Resolution { name: "www.example.com".into(), addr: "93.184.216.34".parse().expect("ip"), ttl: 256 }]
        );
    }

    #[test]
    fn truncated_and_looping_messages_are_rejected() {
        let m = sample();
        for cut in 0..m.len() {
            let _ = parse_response(&m[..cut]);
        }
        let mut looping = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        looping.extend_from_slice(&[0xC0, 12]);
        assert_eq!(parse_response(&looping), None);
    }
}
