//! TLS ClientHello: server name (SNI) and offered ALPN protocols.
//!
//! The caller hands in the client's first bytes of a TCP connection,
//! reassembled in sequence order; [`parse_client_hello`] says whether they
//! hold a complete ClientHello, need more bytes, or are not TLS at all.

/// What a ClientHello said about the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// Server name indication as sent (the anonymiser lower-cases it), if present.
    pub sni: Option<String>,
    /// Offered ALPN protocol names, in order.
    pub alpn: Vec<String>,
    /// What a JA4 fingerprint is computed from (see [`ClientHello::ja4`]).
    pub shape: HelloShape,
    /// The fingerprint, once computed by the caller.
    pub fingerprint: Option<String>,
}

/// The parts of a ClientHello a client fingerprint is made of: which TLS
/// library (and so often which SDK) sent it, never who.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HelloShape {
    /// `legacy_version` of the hello.
    pub legacy_version: u16,
    /// Cipher suites, in order.
    pub ciphers: Vec<u16>,
    /// Extension types, in order.
    pub extensions: Vec<u16>,
    /// The `supported_versions` extension's list.
    pub supported_versions: Vec<u16>,
    /// The `signature_algorithms` extension's list, in order.
    pub signature_algorithms: Vec<u16>,
    /// The first ALPN value's bytes as sent: JA4 takes its first and last
    /// characters, or the hex digits of its bytes when they are not
    /// alphanumeric text ([`ClientHello::alpn`] holds it as text, where
    /// bytes that are not UTF-8 became replacement characters).
    pub first_alpn: Vec<u8>,
}

/// GREASE values (RFC 8701) are random placeholders a fingerprint ignores.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

fn truncated_sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    if text.is_empty() {
        return "000000000000".into();
    }
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6])
}

/// "0a0b,1301,…": lowercase 4-digit hex, comma-separated (built in one
/// string: a fingerprint is taken per TLS connection).
fn hex_list(values: &[u16]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(values.len() * 5);
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for shift in [12, 8, 4, 0] {
            out.push(char::from(DIGITS[usize::from((v >> shift) & 0xf)]));
        }
    }
    out
}

/// Fingerprints already computed on this thread, by the hash of what they
/// are made of (hellos repeat: the same few TLS stacks open most
/// connections); each entry keeps its inputs, compared in full on a hit.
type Ja4Memo = std::collections::HashMap<u64, (HelloShape, bool, Option<String>, String), rustc_hash::FxBuildHasher>;

/// Most fingerprints remembered per thread; past this the memo starts over.
const JA4_MEMO_MAX: usize = 4096;

impl ClientHello {
    /// [`ClientHello::ja4`], remembered per thread for hellos of the same
    /// shape and first ALPN.
    pub fn ja4_memo(&self, quic: bool) -> String {
        use std::hash::BuildHasher as _;
        thread_local! {
            static MEMO: std::cell::RefCell<Ja4Memo> = std::cell::RefCell::new(Ja4Memo::default());
        }
        let alpn = self.alpn.first();
        let key = rustc_hash::FxBuildHasher.hash_one((&self.shape, quic, alpn));
        MEMO.with_borrow_mut(|memo| {
            if let Some((shape, q, a, fp)) = memo.get(&key)
                && (shape, *q, a.as_ref()) == (&self.shape, quic, alpn)
            {
                return fp.clone();
            }
            let fp = self.ja4(quic);
            if memo.len() >= JA4_MEMO_MAX {
                memo.clear();
            }
            memo.insert(key, (self.shape.clone(), quic, alpn.cloned(), fp.clone()));
            fp
        })
    }

    /// The JA4 client fingerprint (FoxIO's JA4 specification): protocol
    /// (`t` TCP, `q` QUIC), TLS version, SNI present (`d`) or not (`i`),
    /// counts of cipher suites and extensions, the first and last character
    /// of the first ALPN value; then truncated SHA-256 hashes of the sorted
    /// cipher suites and of the sorted extensions (without SNI and ALPN)
    /// with the signature algorithms in order. GREASE values are left out.
    pub fn ja4(&self, quic: bool) -> String {
        let h = &self.shape;
        let version = h.supported_versions.iter().copied().filter(|v| !is_grease(*v)).max().unwrap_or(h.legacy_version);
        let version = match version {
            0x0304 => "13",
            0x0303 => "12",
            0x0302 => "11",
            0x0301 => "10",
            0x0300 => "s3",
            _ => "00",
        };
        let ciphers: Vec<u16> = h.ciphers.iter().copied().filter(|c| !is_grease(*c)).collect();
        let extensions: Vec<u16> = h.extensions.iter().copied().filter(|e| !is_grease(*e)).collect();
        let sni = if extensions.contains(&0) { 'd' } else { 'i' };
        // The bytes as sent when the parser kept them, else the text.
        let first_alpn = match self.alpn.first() {
            Some(_) if !h.first_alpn.is_empty() => Some(h.first_alpn.as_slice()),
            first => first.map(String::as_bytes),
        };
        let alpn = match first_alpn {
            Some([first, .., last]) | Some([first @ last]) => {
                if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
                    format!("{}{}", char::from(*first), char::from(*last))
                } else {
                    let (f, l) = (format!("{first:02x}"), format!("{last:02x}"));
                    format!("{}{}", &f[..1], &l[1..])
                }
            }
            _ => "00".into(),
        };
        let mut sorted_ciphers = ciphers.clone();
        sorted_ciphers.sort_unstable();
        let mut sorted_ext: Vec<u16> = extensions.iter().copied().filter(|e| *e != 0 && *e != 16).collect();
        sorted_ext.sort_unstable();
        let sigs: Vec<u16> = h.signature_algorithms.iter().copied().filter(|s| !is_grease(*s)).collect();
        let ext_text = if sigs.is_empty() {
            hex_list(&sorted_ext)
        } else if sorted_ext.is_empty() {
            String::new()
        } else {
            format!("{}_{}", hex_list(&sorted_ext), hex_list(&sigs))
        };
        format!(
            "{}{version}{sni}{:02}{:02}{alpn}_{}_{}",
            if quic { 'q' } else { 't' },
            ciphers.len().min(99),
            extensions.len().min(99),
            truncated_sha256_hex(&hex_list(&sorted_ciphers)),
            truncated_sha256_hex(&ext_text)
        )
    }
}

/// Result of looking at the start of a client's byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// A complete ClientHello.
    Hello(ClientHello),
    /// Looks like TLS but more bytes are needed (at least this many in all).
    NeedMore(usize),
    /// Not a TLS ClientHello.
    NotTls,
}

/// Parses a ClientHello from the start of `stream`, which may span several
/// TLS records (a large ClientHello, e.g. with post-quantum key shares, is
/// split across records and TCP segments).
pub fn parse_client_hello(stream: &[u8]) -> Parse {
    // Gather the handshake bytes from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = stream.get(pos..pos + 5) else {
            return Parse::NeedMore(pos + 5);
        };
        if header[0] != 22 || header[1] != 3 || header[2] > 4 {
            return Parse::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 + 2048 {
            return Parse::NotTls;
        }
        let Some(body) = stream.get(pos + 5..pos + 5 + len) else {
            return Parse::NeedMore(pos + 5 + len);
        };
        handshake.extend_from_slice(body);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Parse::NotTls;
            }
            let hs_len =
                (usize::from(handshake[1]) << 16) | (usize::from(handshake[2]) << 8) | usize::from(handshake[3]);
            if hs_len > 256 * 1024 {
                return Parse::NotTls;
            }
            if handshake.len() >= 4 + hs_len {
                return match parse_hello_body(&handshake[4..4 + hs_len]) {
                    Some(hello) => Parse::Hello(hello),
                    None => Parse::NotTls,
                };
            }
        }
    }
}

/// Parses a ClientHello from raw handshake bytes, without the TLS record
/// layer (as QUIC carries it in CRYPTO frames).
pub fn parse_handshake(handshake: &[u8]) -> Parse {
    if handshake.len() < 4 {
        return Parse::NeedMore(4);
    }
    if handshake[0] != 1 {
        return Parse::NotTls;
    }
    let len = (usize::from(handshake[1]) << 16) | (usize::from(handshake[2]) << 8) | usize::from(handshake[3]);
    if len > 256 * 1024 {
        return Parse::NotTls;
    }
    match handshake.get(4..4 + len) {
        Some(body) => parse_hello_body(body).map_or(Parse::NotTls, Parse::Hello),
        None => Parse::NeedMore(4 + len),
    }
}

fn parse_hello_body(b: &[u8]) -> Option<ClientHello> {
    let mut r = Reader { b, pos: 0 };
    let mut hello = ClientHello::default();
    hello.shape.legacy_version = r.u16()?;
    r.skip(32)?; // random
    let sid = usize::from(r.u8()?);
    r.skip(sid)?;
    let suites = usize::from(r.u16()?);
    let mut c = Reader { b: r.take(suites)?, pos: 0 };
    while let Some(suite) = c.u16() {
        hello.shape.ciphers.push(suite);
    }
    let comp = usize::from(r.u8()?);
    r.skip(comp)?;
    if r.pos == b.len() {
        return Some(hello); // no extensions
    }
    let ext_len = usize::from(r.u16()?);
    let exts = r.take(ext_len)?;
    let mut e = Reader { b: exts, pos: 0 };
    while e.pos < exts.len() {
        let kind = e.u16()?;
        let len = usize::from(e.u16()?);
        let data = e.take(len)?;
        let mut d = Reader { b: data, pos: 0 };
        hello.shape.extensions.push(kind);
        match kind {
            13 => {
                let list_len = usize::from(d.u16()?);
                let mut l = Reader { b: d.take(list_len)?, pos: 0 };
                while let Some(alg) = l.u16() {
                    hello.shape.signature_algorithms.push(alg);
                }
            }
            43 => {
                let list_len = usize::from(d.u8()?);
                let mut l = Reader { b: d.take(list_len)?, pos: 0 };
                while let Some(v) = l.u16() {
                    hello.shape.supported_versions.push(v);
                }
            }
            0 => {
                let list_len = usize::from(d.u16()?);
                let list = d.take(list_len)?;
                let mut l = Reader { b: list, pos: 0 };
                while l.pos < list.len() {
                    let name_type = l.u8()?;
                    let name_len = usize::from(l.u16()?);
                    let name = l.take(name_len)?;
                    if name_type == 0 && hello.sni.is_none() {
                        let name = std::str::from_utf8(name).ok()?;
                        hello.sni = Some(name.trim_end_matches('.').to_string());
                    }
                }
            }
            16 => {
                let list_len = usize::from(d.u16()?);
                let list = d.take(list_len)?;
                let mut l = Reader { b: list, pos: 0 };
                while l.pos < list.len() {
                    let len = usize::from(l.u8()?);
                    let proto = l.take(len)?;
                    if hello.alpn.is_empty() {
                        hello.shape.first_alpn = proto.to_vec();
                    }
                    hello.alpn.push(String::from_utf8_lossy(proto).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
}

/// Builds a minimal ClientHello record with `sni` (none when empty) and
/// `alpn` (used by the fleet simulator and tests).
pub fn build_client_hello(sni: &str, alpn: &[&str], random: [u8; 32]) -> Vec<u8> {
    let mut exts = Vec::new();
    // server_name
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sn.extend_from_slice(name);
    // An empty `sni` sends none.
    if !name.is_empty() {
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(sn.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sn);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
        exts.extend_from_slice(&list);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&random);
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ja4_ignores_grease_and_names_quic() {
        let hello = |ciphers: Vec<u16>, extensions: Vec<u16>| ClientHello {
            sni: Some("a.example".into()),
            alpn: vec!["h2".into()],
            shape: HelloShape {
                legacy_version: 0x0303,
                ciphers,
                extensions,
                supported_versions: vec![0x0a0a, 0x0304, 0x0303],
                signature_algorithms: vec![0x0403, 0x0804],
                first_alpn: Vec::new(),
            },
            fingerprint: None,
        };
        let plain = hello(vec![0x1301, 0x1302], vec![0, 16, 43, 13]);
        let greased = hello(vec![0x2a2a, 0x1301, 0x1302], vec![0x3a3a, 0, 16, 43, 13]);
        assert_eq!(plain.ja4(false), greased.ja4(false));
        assert!(plain.ja4(false).starts_with("t13d0204h2_"), "{}", plain.ja4(false));
        assert!(plain.ja4(true).starts_with("q13d0204h2_"));
        let bare =
            ClientHello { shape: HelloShape { legacy_version: 0x0301, ..Default::default() }, ..Default::default() };
        assert_eq!(bare.ja4(false), "t10i000000_000000000000_000000000000");
    }

    /// JA4's ALPN part of a first value that is not text: the first and
    /// last hex digits of its bytes as sent (`0xAB 0xCD` gives `ad`), not
    /// of the replacement characters it became as a string (`ed`).
    #[test]
    fn ja4_of_an_alpn_value_that_is_not_text_uses_its_raw_bytes() {
        let mut record = build_client_hello("a.example", &["QQ", "h2"], [7; 32]);
        let at = record.windows(3).position(|w| w == b"\x02QQ").expect("the first ALPN value");
        record[at + 1..at + 3].copy_from_slice(&[0xab, 0xcd]);
        let Parse::Hello(hello) = parse_client_hello(&record) else { panic!("a ClientHello") };
        assert_eq!(hello.alpn, ["\u{fffd}\u{fffd}", "h2"]);
        let ja4 = hello.ja4(false);
        assert_eq!(&ja4[8..10], "ad", "{ja4}");
        // Text as before: its first and last characters.
        let Parse::Hello(text) = parse_client_hello(&build_client_hello("a.example", &["http/1.1"], [7; 32])) else {
            panic!("a ClientHello")
        };
        assert_eq!(&text.ja4(false)[8..10], "h1");
        // An alphanumeric first character but not a last one: hex digits too.
        let record = build_client_hello("a.example", &["a\u{7f}"], [7; 32]);
        let Parse::Hello(mixed) = parse_client_hello(&record) else { panic!("a ClientHello") };
        assert_eq!(&mixed.ja4(false)[8..10], "6f");
    }

    #[test]
    fn remembered_fingerprints_are_those_computed() {
        let hello = |ciphers: Vec<u16>, alpn: &str| ClientHello {
            alpn: vec![alpn.into()],
            shape: HelloShape { legacy_version: 0x0303, ciphers, extensions: vec![0, 16], ..Default::default() },
            ..Default::default()
        };
        for h in [hello(vec![0x1301], "h2"), hello(vec![0x1302], "h2"), hello(vec![0x1301], "http/1.1")] {
            for quic in [false, true] {
                assert_eq!(h.ja4_memo(quic), h.ja4(quic));
                assert_eq!(h.ja4_memo(quic), h.ja4(quic), "second time, from the memo");
            }
        }
    }

    #[test]
    fn round_trip_and_split() {
        let rec = build_client_hello("API.Example.com", &["h2", "http/1.1"], [7; 32]);
        let Parse::Hello(hello) = parse_client_hello(&rec) else { panic!("a hello") };
        assert_eq!(hello.sni.as_deref(), Some("API.Example.com"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
        for cut in 0..rec.len() {
            assert!(matches!(parse_client_hello(&rec[..cut]), Parse::NeedMore(_)), "cut {cut}");
        }
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
    }
}
