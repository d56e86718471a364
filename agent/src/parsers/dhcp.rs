//! DHCP (RFC 2131) messages from clients: a device joining the network, and
//! what it says about itself there (host name, vendor class, the options it
//! asks for). Seen only on the LAN, shown only to the volunteer; never sent.

/// What a client's DHCP message says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientMessage {
    /// The message type (option 53): 1 Discover, 3 Request, 8 Inform, ...
    pub kind: u8,
    /// The client hardware address (`chaddr`).
    pub mac: [u8; 6],
    /// Option 12: the host name the client gives itself.
    pub host_name: Option<String>,
    /// Option 60: the vendor class identifier (often the DHCP client
    /// software, e.g. `udhcp 1.12.1`, `dhcpcd-5.5.6`, `android-dhcp-9`).
    pub vendor_class: Option<String>,
    /// Option 55: the options the client asks for, in its order (a
    /// fingerprint of its operating system).
    pub parameter_list: Vec<u8>,
}

/// Longest option text kept (an option holds at most 255 bytes).
const MAX_TEXT: usize = 255;

/// Parses a BOOTREQUEST with an Ethernet hardware address and the DHCP
/// magic cookie; `None` for anything else.
pub fn parse_client(payload: &[u8]) -> Option<ClientMessage> {
    if payload.len() < 240
        || payload[0] != 1
        || payload[1] != 1
        || payload[2] != 6
        || payload[236..240] != [99, 130, 83, 99]
    {
        return None;
    }
    let mut m = ClientMessage { mac: payload[28..34].try_into().ok()?, ..ClientMessage::default() };
    let mut pos = 240;
    while let Some(&code) = payload.get(pos) {
        match code {
            0 => pos += 1,
            255 => break,
            _ => {
                let len = usize::from(*payload.get(pos + 1)?);
                let Some(value) = payload.get(pos + 2..pos + 2 + len) else { break };
                match code {
                    53 => m.kind = value.first().copied().unwrap_or(0),
                    12 => m.host_name = text(value),
                    60 => m.vendor_class = text(value),
                    55 => m.parameter_list = value.to_vec(),
                    _ => {}
                }
                pos += 2 + len;
            }
        }
    }
    (m.kind != 0).then_some(m)
}

/// Option bytes as text: printable, without trailing NULs; `None` when
/// empty.
fn text(value: &[u8]) -> Option<String> {
    let value = &value[..value.len().min(MAX_TEXT)];
    let s: String = String::from_utf8_lossy(value).trim_end_matches('\0').chars().filter(|c| !c.is_control()).collect();
    (!s.trim().is_empty()).then(|| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Discover from `mac` with options (code, value).
    fn discover(mac: [u8; 6], options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut p = vec![0u8; 240];
        p[..4].copy_from_slice(&[1, 1, 6, 0]);
        p[28..34].copy_from_slice(&mac);
        p[236..240].copy_from_slice(&[99, 130, 83, 99]);
        p.extend_from_slice(&[53, 1, 1]);
        for (code, value) in options {
            p.push(*code);
            p.push(value.len() as u8);
            p.extend_from_slice(value);
        }
        p.push(255);
        p
    }

    #[test]
    fn host_name_vendor_class_and_parameter_list() {
        let mac = [0xb0, 0xc5, 0x54, 0x1c, 0x71, 0x85];
        let p = discover(mac, &[(12, b"DCS-930LB"), (60, b"udhcp 1.12.1\0"), (55, &[1, 3, 6, 12, 15, 28])]);
        let m = parse_client(&p).expect("a discover");
        assert_eq!((m.kind, m.mac), (1, mac));
        assert_eq!(m.host_name.as_deref(), Some("DCS-930LB"));
        assert_eq!(m.vendor_class.as_deref(), Some("udhcp 1.12.1"));
        assert_eq!(m.parameter_list, [1, 3, 6, 12, 15, 28]);
    }

    #[test]
    fn cut_and_foreign_messages_are_not_client_messages_or_end_early() {
        let p = discover([2; 6], &[(12, b"name")]);
        for cut in [0, 100, 239] {
            assert_eq!(parse_client(&p[..cut]), None);
        }
        // An option running past the end: what came before it is kept.
        let mut cut = p[..p.len() - 1].to_vec();
        cut.extend_from_slice(&[60, 200, b'x']);
        assert_eq!(parse_client(&cut).expect("kept").host_name.as_deref(), Some("name"));
        let mut reply = p.clone();
        reply[0] = 2;
        assert_eq!(parse_client(&reply), None, "a server's reply");
        // Control characters never reach a terminal.
        let m = parse_client(&discover([2; 6], &[(12, b"evil\x1b[2Jname")])).expect("parses");
        assert_eq!(m.host_name.as_deref(), Some("evil[2Jname"));
    }
}
