//! Multicast DNS (RFC 6762) and DNS service discovery (RFC 6763): the names
//! a device announces for itself on the LAN (`DCS-930LB1_1C7185.local`,
//! `Philips hue - 2476FF._hap._tcp.local`) and the TXT keys that often name
//! its model. Seen only on the LAN, shown only to the volunteer; never sent.

use super::dns::read_name_bytes;

/// What one mDNS message announces (answers, authority records of a
/// probe, additional records); questions are what a device looks for, not
/// what it is, and are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcement {
    /// Host names with an address record (`name.local`, without `.local`).
    pub hosts: Vec<String>,
    /// Service instances (`instance._service._proto.local` of SRV and PTR
    /// records): the instance's name and its service type (`_hap._tcp`).
    pub services: Vec<(String, String)>,
    /// TXT entries `key=value`.
    pub txt: Vec<(String, String)>,
}

/// Records read from one message at most (a hostile message cannot make
/// the list grow past this).
const MAX_RECORDS: usize = 64;

/// Reads the resource records of an mDNS message; `None` when its header
/// or first record does not parse (what parsed before a damaged record is
/// kept).
pub fn parse(msg: &[u8]) -> Option<Announcement> {
    let count = |at: usize| usize::from(u16::from_be_bytes([msg[at], msg[at + 1]]));
    if msg.len() < 12 {
        return None;
    }
    let (questions, records) = (count(4), count(6) + count(8) + count(10));
    let mut pos = 12;
    for _ in 0..questions {
        let (_, next) = read_name_bytes(msg, pos)?;
        pos = next + 4;
    }
    let mut out = Announcement::default();
    for _ in 0..records.min(MAX_RECORDS) {
        let Some((owner, next)) = read_name_bytes(msg, pos) else { break };
        let Some(header) = msg.get(next..next + 10) else { break };
        let rtype = u16::from_be_bytes([header[0], header[1]]);
        let rdlen = usize::from(u16::from_be_bytes([header[8], header[9]]));
        let Some(rdata) = msg.get(next + 10..next + 10 + rdlen) else { break };
        let owner = String::from_utf8_lossy(&owner).into_owned();
        match rtype {
            // A, AAAA: the device's own host name.
            1 | 28 => {
                if let Some(host) = owner.strip_suffix(".local").filter(|h| !h.is_empty()) {
                    push(&mut out.hosts, host.to_string());
                }
            }
            // PTR: a service type's instance (not a reverse-address PTR).
            12 => {
                if let Some((target, _)) = read_name_bytes(msg, next + 10)
                    && let Some(service) = instance(&String::from_utf8_lossy(&target))
                {
                    push(&mut out.services, service);
                }
            }
            // SRV: the instance it describes.
            33 => {
                if let Some(service) = instance(&owner) {
                    push(&mut out.services, service);
                }
            }
            // TXT: length-prefixed strings.
            16 => {
                let mut at = 0;
                while let Some(&len) = rdata.get(at) {
                    let Some(entry) = rdata.get(at + 1..at + 1 + usize::from(len)) else { break };
                    let entry = String::from_utf8_lossy(entry);
                    if let Some((k, v)) = entry.split_once('=')
                        && !k.is_empty()
                        && out.txt.len() < MAX_RECORDS
                    {
                        push(&mut out.txt, (k.to_string(), v.to_string()));
                    }
                    at += 1 + usize::from(len);
                }
            }
            _ => {}
        }
        pos = next + 10 + rdlen;
    }
    Some(out)
}

/// Adds `item` unless it is there.
fn push<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// `instance._service._proto.local` into the instance and `_service._proto`;
/// `None` for the service-type list (`_services._dns-sd._udp.local`), a
/// bare service type, or a reverse-address name.
fn instance(name: &str) -> Option<(String, String)> {
    let name = name.strip_suffix(".local")?;
    let proto_at = name.rfind("._tcp").or_else(|| name.rfind("._udp"))?;
    let before = &name[..proto_at];
    let service_at = before.rfind("._")?;
    let (instance, service) = (&name[..service_at], &name[service_at + 1..]);
    // `_sub` names a subtype: `x._sub._service._tcp` is no instance.
    (!instance.is_empty() && !instance.starts_with('_') && !instance.ends_with("._sub"))
        .then(|| (instance.to_string(), service.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in n.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn record(owner: &str, rtype: u16, rdata: &[u8]) -> Vec<u8> {
        let mut r = name(owner);
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&[0x80, 1, 0, 0, 0, 120]);
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    }

    /// A response holding `records`.
    fn response(records: &[Vec<u8>]) -> Vec<u8> {
        let mut m = vec![0, 0, 0x84, 0, 0, 0, 0, records.len() as u8, 0, 0, 0, 0];
        for r in records {
            m.extend_from_slice(r);
        }
        m
    }

    #[test]
    fn hosts_service_instances_and_txt_keys() {
        let mut txt = Vec::new();
        for e in ["md=Hue Bridge", "id=00:17:88", "flag"] {
            txt.push(e.len() as u8);
            txt.extend_from_slice(e.as_bytes());
        }
        let m = response(&[
            record("DCS-930LB1_1C7185.local", 1, &[10, 10, 10, 58]),
            record("_hap._tcp.local", 12, &name("Philips hue - 2476FF._hap._tcp.local")),
            record("Luca’s iMac._smb._tcp.local", 33, &[0, 0, 0, 0, 1, 189, 0]),
            record("Philips hue - 2476FF._hap._tcp.local", 16, &txt),
            record("_services._dns-sd._udp.local", 12, &name("_hap._tcp.local")),
            record("58.10.10.10.in-addr.arpa", 12, &name("DCS-930LB1_1C7185.local")),
        ]);
        let a = parse(&m).expect("parses");
        assert_eq!(a.hosts, ["DCS-930LB1_1C7185"]);
        assert_eq!(
            a.services,
            [("Philips hue - 2476FF".into(), "_hap._tcp".into()), ("Luca’s iMac".into(), "_smb._tcp".into())]
        );
        assert_eq!(a.txt, [("md".into(), "Hue Bridge".into()), ("id".into(), "00:17:88".into())]);
    }

    #[test]
    fn damaged_messages_keep_what_came_before() {
        let m = response(&[record("cam.local", 1, &[10, 0, 0, 2]), record("b.local", 1, &[10, 0, 0, 3])]);
        for cut in 0..m.len() {
            let _ = parse(&m[..cut]);
        }
        let a = parse(&m[..m.len() - 3]).expect("header parses");
        assert_eq!(a.hosts, ["cam"]);
        // A pointer loop in an owner name ends the walk.
        let mut looped = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xC0, 12]);
        assert_eq!(parse(&looped), Some(Announcement::default()));
    }
}
