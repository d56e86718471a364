//! The server's certificate in a TLS 1.2 handshake, which travels in clear
//! (TLS 1.3 encrypts it): the host names it is issued for name a
//! destination whose client sent no SNI. A camera that reaches its
//! vendor's "HTTP DNS" service by a built-in address with no SNI gets
//! `dns.io.mi.com` from the `*.dns.io.mi.com, dns.io.mi.com` certificate.
//!
//! Only names are read; nothing is verified (the agent names destinations,
//! it does not trust them).

/// What the start of a server's stream says about its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFlight {
    /// The certificate has not all arrived.
    NeedMore,
    /// The host names of the server's certificate (subject alternative
    /// names, else the subject's common name), as written.
    Names(Vec<String>),
    /// No certificate to read: not TLS, TLS 1.3, a resumed session, or one
    /// that does not parse.
    Nothing,
}

/// Most bytes of the server's first flight looked at.
pub const MAX_FLIGHT_BYTES: usize = 32 * 1024;

/// Reads the TLS records at the start of a server's stream up to its
/// Certificate message.
pub fn parse_server_flight(stream: &[u8]) -> ServerFlight {
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = stream.get(pos..pos + 5) else { return more_or_nothing(pos) };
        if header[1] != 3 || header[2] > 4 {
            return ServerFlight::Nothing;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        // Only handshake records carry the certificate in clear; a change of
        // cipher spec first means a resumed session (or TLS 1.3).
        if header[0] != 22 || len == 0 {
            return ServerFlight::Nothing;
        }
        let Some(body) = stream.get(pos + 5..pos + 5 + len) else { return more_or_nothing(pos + 5 + len) };
        handshake.extend_from_slice(body);
        pos += 5 + len;
        // The handshake messages complete so far.
        let mut at = 0;
        while let Some(head) = handshake.get(at..at + 4) {
            let msg_len = (usize::from(head[1]) << 16) | (usize::from(head[2]) << 8) | usize::from(head[3]);
            let Some(msg) = handshake.get(at + 4..at + 4 + msg_len) else { break };
            match head[0] {
                // ServerHello: TLS 1.3 says so in supported_versions.
                2 if is_tls13(msg) => return ServerFlight::Nothing,
                // Certificate: the first is the server's own.
                11 => return first_certificate(msg).map_or(ServerFlight::Nothing, ServerFlight::Names),
                // ServerHelloDone, or a key exchange without one before it.
                12 | 14 => return ServerFlight::Nothing,
                _ => {}
            }
            at += 4 + msg_len;
        }
    }
}

fn more_or_nothing(needed: usize) -> ServerFlight {
    if needed > MAX_FLIGHT_BYTES { ServerFlight::Nothing } else { ServerFlight::NeedMore }
}

/// Whether a ServerHello body selects TLS 1.3 (supported_versions 0x0304).
fn is_tls13(b: &[u8]) -> bool {
    // version(2) random(32) session id(1+n) cipher(2) compression(1) extensions(2+n)
    let Some(&sid) = b.get(34) else { return false };
    let mut at = 35 + usize::from(sid) + 3;
    let Some(ext) = b.get(at..at + 2) else { return false };
    let end = (at + 2 + usize::from(u16::from_be_bytes([ext[0], ext[1]]))).min(b.len());
    at += 2;
    while let Some(h) = b.get(at..at + 4) {
        let (kind, len) = (u16::from_be_bytes([h[0], h[1]]), usize::from(u16::from_be_bytes([h[2], h[3]])));
        if at + 4 + len > end {
            return false;
        }
        if kind == 43 {
            return b.get(at + 4..at + 6) == Some(&[3, 4][..]);
        }
        at += 4 + len;
    }
    false
}

/// The names of the first certificate of a Certificate message.
fn first_certificate(msg: &[u8]) -> Option<Vec<String>> {
    let len3 = |b: &[u8]| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    let list = msg.get(3..3 + len3(msg.get(..3)?))?;
    let der = list.get(3..3 + len3(list.get(..3)?))?;
    let names = certificate_names(der);
    (!names.is_empty()).then_some(names)
}

/// One DER element: its tag, its contents and what follows it.
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), rest)
    };
    let (content, after) = rest.split_at_checked(len)?;
    Some((tag, content, after))
}

/// The elements inside a constructed element's contents.
fn children(mut b: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, content, after) = element(b)?;
        b = after;
        Some((tag, content))
    })
}

/// Object identifiers, DER-encoded: subjectAltName and commonName.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The DNS names of an X.509 certificate: its subject alternative names,
/// else the common names of its subject that look like host names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Some((0x30, cert, _)) = element(der) else { return Vec::new() };
    let Some((0x30, tbs)) = children(cert).next() else { return Vec::new() };
    let mut fields = children(tbs).peekable();
    // Version [0], if present, then serial, signature, issuer, validity,
    // subject, key; then the optional [1], [2] and the extensions [3].
    if fields.peek().is_some_and(|(tag, _)| *tag == 0xa0) {
        fields.next();
    }
    let mut fields = fields.skip(4);
    let subject = fields.next().map(|(_, s)| s).unwrap_or_default();
    let mut names = Vec::new();
    for (tag, content) in fields {
        if tag != 0xa3 {
            continue;
        }
        let Some((0x30, extensions, _)) = element(content) else { continue };
        for (_, extension) in children(extensions) {
            let mut parts = children(extension);
            let Some((0x06, oid)) = parts.next() else { continue };
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            let Some((0x04, value)) = parts.find(|(tag, _)| *tag == 0x04) else { continue };
            let Some((0x30, general_names, _)) = element(value) else { continue };
            // dNSName is [2] IMPLICIT IA5String.
            names.extend(children(general_names).filter(|(tag, _)| *tag == 0x82).filter_map(|(_, n)| host_name(n)));
        }
    }
    if names.is_empty() {
        for (_, set) in children(subject) {
            for (_, attribute) in children(set) {
                let mut parts = children(attribute);
                if parts.next() == Some((0x06, COMMON_NAME))
                    && let Some((_, value)) = parts.next()
                    && let Some(name) = host_name(value)
                {
                    names.push(name);
                }
            }
        }
    }
    names.truncate(64);
    names
}

/// `bytes` when they are a host name (ASCII letters, digits, hyphens,
/// dots, a leading `*.`; at least one dot).
fn host_name(bytes: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(bytes).ok()?;
    let plain = name.strip_prefix("*.").unwrap_or(name);
    let ok = !plain.is_empty()
        && plain.len() <= 253
        && plain.contains('.')
        && plain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then(|| name.to_ascii_lowercase())
}

/// The name a certificate gives its destination: its first name that is
/// not a wildcard, else its first wildcard's domain (`*.example.com` names
/// `example.com`).
pub fn destination_name(names: &[String]) -> Option<String> {
    names
        .iter()
        .find(|n| !n.starts_with("*."))
        .cloned()
        .or_else(|| names.first().map(|n| n.trim_start_matches("*.").to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DER element.
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
            n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// A certificate skeleton: subject CN `cn`, and a subjectAltName
    /// extension with `sans` when there are any.
    pub(crate) fn certificate(cn: &str, sans: &[&str]) -> Vec<u8> {
        let name = |cn: &str| {
            let attribute = [der(0x06, COMMON_NAME), der(0x0c, cn.as_bytes())].concat();
            der(0x30, &der(0x31, &der(0x30, &attribute)))
        };
        let mut tbs = [
            der(0xa0, &der(0x02, &[2])),
            der(0x02, &[1, 2, 3]),
            der(0x30, &der(0x06, &[0x2a, 0x86, 0x48])),
            name("Test CA"),
            der(0x30, &[]),
            name(cn),
            der(0x30, &der(0x03, &[0, 1, 2])),
        ]
        .concat();
        if !sans.is_empty() {
            let general: Vec<u8> = sans.iter().flat_map(|s| der(0x82, s.as_bytes())).collect();
            let extension = [der(0x06, SUBJECT_ALT_NAME), der(0x04, &der(0x30, &general))].concat();
            tbs.extend(der(0xa3, &der(0x30, &der(0x30, &extension))));
        }
        der(0x30, &[der(0x30, &tbs), der(0x30, &[]), der(0x03, &[0])].concat())
    }

    /// A server's TLS 1.2 flight: ServerHello, Certificate, ServerHelloDone.
    pub(crate) fn flight(cert: &[u8]) -> Vec<u8> {
        let len3 = |n: usize| [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[7; 32]);
        hello.extend_from_slice(&[0, 0xc0, 0x2f, 0]);
        let mut certs = len3(cert.len()).to_vec();
        certs.extend_from_slice(cert);
        let mut list = len3(certs.len()).to_vec();
        list.extend(certs);
        let mut handshake = Vec::new();
        for (kind, body) in [(2u8, hello), (11, list), (14, Vec::new())] {
            handshake.push(kind);
            handshake.extend_from_slice(&len3(body.len()));
            handshake.extend(body);
        }
        let mut out = Vec::new();
        for chunk in handshake.chunks(300) {
            out.extend_from_slice(&[22, 3, 3]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn names_from_alternative_names_else_the_common_name() {
        let cert = certificate("ignored.example", &["*.dns.io.mi.com", "dns.io.mi.com"]);
        assert_eq!(certificate_names(&cert), ["*.dns.io.mi.com", "dns.io.mi.com"]);
        assert_eq!(destination_name(&certificate_names(&cert)).as_deref(), Some("dns.io.mi.com"));
        let cn_only = certificate("API.Vendor.example", &[]);
        assert_eq!(certificate_names(&cn_only), ["api.vendor.example"]);
        assert!(certificate_names(&certificate("Mijia Root", &[])).is_empty(), "not a host name");
        assert_eq!(destination_name(&["*.tuya.example".to_string()]).as_deref(), Some("tuya.example"));
    }

    #[test]
    fn a_flight_split_anywhere_needs_more_then_names() {
        let f = flight(&certificate("x", &["cloud.vendor.example"]));
        for cut in 0..f.len() {
            let got = parse_server_flight(&f[..cut]);
            assert!(got == ServerFlight::NeedMore || matches!(got, ServerFlight::Names(_)), "{cut}: {got:?}");
        }
        assert_eq!(parse_server_flight(&f), ServerFlight::Names(vec!["cloud.vendor.example".into()]));
        assert_eq!(parse_server_flight(b"HTTP/1.1 200 OK\r\n"), ServerFlight::Nothing);
        assert_eq!(parse_server_flight(&[20, 3, 3, 0, 1, 1]), ServerFlight::Nothing, "resumed: no certificate");
    }

    #[test]
    fn damaged_certificates_give_nothing_and_never_panic() {
        let cert = certificate("x", &["a.example"]);
        for cut in 0..cert.len() {
            let _ = certificate_names(&cert[..cut]);
        }
        let mut bad = cert.clone();
        bad[1] = 0x84; // a length of four bytes
        assert!(certificate_names(&bad).is_empty());
    }
}
