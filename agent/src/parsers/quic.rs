//! QUIC Initial packets (RFC 9000, RFC 9001, RFC 9369): the client's
//! ClientHello, decrypted with the Initial keys every observer can derive
//! from the destination connection id.
//!
//! The crypto is `ring`'s (HKDF-SHA256, AES-128-GCM, AES header
//! protection); nothing here is a hand-written primitive. The caller keeps
//! one [`InitialState`] per connection and feeds it every client datagram;
//! CRYPTO frames are collected by offset, so a ClientHello spread over
//! several packets, arriving out of order, is still found.

use std::collections::BTreeMap;

use ring::aead::quic::{AES_128, HeaderProtectionKey};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use super::tls::{ClientHello, parse_handshake};

const V1: u32 = 0x0000_0001;
const V2: u32 = 0x6b33_43cf;
const V1_SALT: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f,
    0x0a,
];
const V2_SALT: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e,
    0xd9,
];
/// Most CRYPTO bytes kept per connection while looking for the hello.
const MAX_CRYPTO_BYTES: u64 = 64 * 1024;

/// The Initial keys of one direction.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    hp: HeaderProtectionKey,
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label of TLS 1.3 (RFC 8446 §7.1) with an empty context.
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> Option<()> {
    let len = u16::try_from(out.len()).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len())).ok()?.fill(out).ok()
}

fn client_keys(version: u32, dcid: &[u8]) -> Option<Keys> {
    let (salt, key_label, iv_label, hp_label): (&[u8], &[u8], &[u8], &[u8]) = match version {
        V1 => (&V1_SALT, b"quic key", b"quic iv", b"quic hp"),
        V2 => (&V2_SALT, b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
        _ => return None,
    };
    let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(dcid);
    let mut client_secret = [0u8; 32];
    expand_label(&initial, b"client in", &mut client_secret)?;
    let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &client_secret);
    let (mut key, mut iv, mut hp) = ([0u8; 16], [0u8; 12], [0u8; 16]);
    expand_label(&client, key_label, &mut key)?;
    expand_label(&client, iv_label, &mut iv)?;
    expand_label(&client, hp_label, &mut hp)?;
    Some(Keys {
        key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).ok()?),
        iv,
        hp: HeaderProtectionKey::new(&AES_128, &hp).ok()?,
    })
}

/// Reads a QUIC variable-length integer.
fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *b.get(*pos)?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(*pos..*pos + len)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    *pos += len;
    Some(v)
}

/// The version and destination connection id of a long-header Initial
/// packet, if `datagram` starts with one.
pub fn initial_dcid(datagram: &[u8]) -> Option<(u32, Vec<u8>)> {
    let first = *datagram.first()?;
    if first & 0xC0 != 0xC0 {
        return None; // not a long header with the fixed bit
    }
    let version = u32::from_be_bytes(datagram.get(1..5)?.try_into().ok()?);
    let kind = (first >> 4) & 0x03;
    let is_initial = match version {
        V1 => kind == 0,
        V2 => kind == 1,
        _ => false,
    };
    if !is_initial {
        return None;
    }
    let dcid_len = usize::from(*datagram.get(5)?);
    if dcid_len > 20 {
        return None;
    }
    Some((version, datagram.get(6..6 + dcid_len)?.to_vec()))
}

/// The ClientHello search of one QUIC connection.
pub struct InitialState {
    version: u32,
    keys: Keys,
    crypto: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
    /// Client Initial packets that did not decrypt.
    pub undecryptable: u64,
}

impl std::fmt::Debug for InitialState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitialState").field("version", &self.version).field("bytes", &self.bytes).finish()
    }
}

/// What feeding a datagram gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The ClientHello, complete.
    Hello(ClientHello),
    /// Not yet complete.
    NeedMore,
    /// This will not yield a ClientHello (give up on the connection).
    Failed,
}

impl InitialState {
    /// Starts from the connection's first client Initial (its destination
    /// connection id keys every client Initial of the connection).
    pub fn new(first_datagram: &[u8]) -> Option<Self> {
        let (version, dcid) = initial_dcid(first_datagram)?;
        Some(Self { version, keys: client_keys(version, &dcid)?, crypto: BTreeMap::new(), bytes: 0, undecryptable: 0 })
    }

    /// Feeds one client datagram (which may hold several coalesced packets).
    pub fn feed(&mut self, datagram: &[u8]) -> Progress {
        let mut rest = datagram;
        while !rest.is_empty() {
            match self.packet(rest) {
                Some(len) => rest = &rest[len..],
                None => break,
            }
        }
        if self.bytes > MAX_CRYPTO_BYTES {
            return Progress::Failed;
        }
        let mut stream = Vec::new();
        for (&offset, data) in &self.crypto {
            let end = stream.len() as u64;
            if offset > end {
                break;
            }
            let skip = usize::try_from(end - offset).unwrap_or(usize::MAX);
            if skip < data.len() {
                stream.extend_from_slice(&data[skip..]);
            }
        }
        match parse_handshake(&stream) {
            super::tls::Parse::Hello(h) => Progress::Hello(h),
            super::tls::Parse::NeedMore(_) => Progress::NeedMore,
            super::tls::Parse::NotTls => Progress::Failed,
        }
    }

    /// Decrypts one packet at the start of `b`, collecting its CRYPTO
    /// frames; returns the packet's length.
    fn packet(&mut self, b: &[u8]) -> Option<usize> {
        let (version, _) = initial_dcid(b)?;
        if version != self.version {
            return None;
        }
        let mut pos = 5;
        let dcid_len = usize::from(*b.get(pos)?);
        pos += 1 + dcid_len;
        let scid_len = usize::from(*b.get(pos)?);
        pos += 1 + scid_len;
        let token_len = usize::try_from(varint(b, &mut pos)?).ok()?;
        pos = pos.checked_add(token_len)?;
        let length = usize::try_from(varint(b, &mut pos)?).ok()?;
        let pn_offset = pos;
        let end = pn_offset.checked_add(length)?;
        if end > b.len() || length < 20 {
            return None;
        }
        let sample = b.get(pn_offset + 4..pn_offset + 20)?;
        let Ok(mask) = self.keys.hp.new_mask(sample) else {
            self.undecryptable += 1;
            return Some(end);
        };
        let mut header = b[..pn_offset + 4].to_vec();
        header[0] ^= mask[0] & 0x0f;
        let pn_len = usize::from(header[0] & 0x03) + 1;
        header.truncate(pn_offset + pn_len);
        let mut pn = 0u64;
        for i in 0..pn_len {
            header[pn_offset + i] ^= mask[1 + i];
            pn = (pn << 8) | u64::from(header[pn_offset + i]);
        }
        let mut nonce = self.keys.iv;
        for (i, byte) in pn.to_be_bytes().iter().enumerate() {
            nonce[4 + i] ^= byte;
        }
        let mut payload = b[pn_offset + pn_len..end].to_vec();
        let Ok(plain) =
            self.keys.key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&header[..]), &mut payload)
        else {
            self.undecryptable += 1;
            return Some(end);
        };
        self.frames(plain);
        Some(end)
    }

    fn frames(&mut self, p: &[u8]) {
        let mut pos = 0;
        while pos < p.len() {
            let Some(kind) = varint(p, &mut pos) else { return };
            match kind {
                0x00 | 0x01 => {} // PADDING, PING
                0x02 | 0x03 => {
                    // ACK: largest, delay, range count, first range, ranges
                    let mut fields = || varint(p, &mut pos);
                    let (Some(_), Some(_), Some(count), Some(_)) = (fields(), fields(), fields(), fields()) else {
                        return;
                    };
                    for _ in 0..count.min(1024) * 2 {
                        if varint(p, &mut pos).is_none() {
                            return;
                        }
                    }
                    if kind == 0x03 {
                        for _ in 0..3 {
                            if varint(p, &mut pos).is_none() {
                                return;
                            }
                        }
                    }
                }
                0x06 => {
                    let (Some(offset), Some(len)) = (varint(p, &mut pos), varint(p, &mut pos)) else { return };
                    let Ok(len) = usize::try_from(len) else { return };
                    let Some(data) = p.get(pos..pos.saturating_add(len)) else { return };
                    pos += len;
                    if offset.saturating_add(len as u64) <= MAX_CRYPTO_BYTES {
                        self.bytes += len as u64;
                        self.crypto.entry(offset).or_insert_with(|| data.to_vec());
                    }
                }
                _ => return, // other frames do not occur in a client Initial
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    #[test]
    fn rfc9001_appendix_a_client_keys() {
        // RFC 9001 A.1: DCID 0x8394c8f03e515708.
        let dcid = hex("8394c8f03e515708");
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, &V1_SALT).extract(&dcid);
        let mut secret = [0u8; 32];
        expand_label(&initial, b"client in", &mut secret).expect("expand");
        assert_eq!(secret.to_vec(), hex("c00cf151ca5be075ed0ebfb5c80323c4 2d6b7db67881289af4008f1f6c357aea"));
        let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
        let mut key = [0u8; 16];
        let mut iv = [0u8; 12];
        let mut hp = [0u8; 16];
        expand_label(&client, b"quic key", &mut key).expect("key");
        expand_label(&client, b"quic iv", &mut iv).expect("iv");
        expand_label(&client, b"quic hp", &mut hp).expect("hp");
        assert_eq!(key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
        // A.2: the header protection mask of the client Initial.
        let keys = client_keys(V1, &dcid).expect("keys");
        let mask = keys.hp.new_mask(&hex("d1b1c98dd7689fb8ec11d242b123dc9b")).expect("mask");
        assert_eq!(mask.to_vec(), hex("437b9aec36"));
    }

    #[test]
    fn hostile_datagrams_do_not_panic() {
        let mut d = vec![0xC0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x44, 0xff];
        d.resize(1200, 0);
        let mut s = InitialState::new(&d).expect("initial");
        for cut in 0..d.len().min(64) {
            let _ = s.feed(&d[..cut]);
        }
        assert_eq!(s.feed(&d), Progress::NeedMore);
        assert!(InitialState::new(&[0x40, 1, 2]).is_none());
    }
}
