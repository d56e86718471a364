//! The log entry codec: a [`StoredBatch`] as the `batches` column family
//! holds it (`[format version][crc32][length][LZ4 block]`, see the
//! module above), and the digest that tells a retried batch from a
//! conflicting one.

use leakwatch_proto::v1::ReportBatch;
use prost::Message;
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Format of the log entries this build writes: LZ4-compressed message.
pub(super) const ENTRY_VERSION: u8 = 2;
/// Format of earlier releases' entries: the message as it is.
pub(super) const ENTRY_VERSION_PLAIN: u8 = 1;

/// A batch as the log keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredBatch {
    /// Agent that sent it.
    #[prost(string, tag = "1")]
    pub agent_id: String,
    /// When the collector stored it, Unix milliseconds.
    #[prost(int64, tag = "2")]
    pub received_at_ms: i64,
    /// The batch as received.
    #[prost(message, optional, tag = "3")]
    pub batch: Option<ReportBatch>,
}

/// The device's part of a batch's digest (see [`EncodedEntry::digest`]).
fn digest_device(h: &mut Sha256, batch: &ReportBatch) {
    if let Some(d) = &batch.device {
        let mut d = d.clone();
        // Map order is not canonical on the wire; sort for the digest.
        let consent: std::collections::BTreeMap<_, _> = d.consent.drain().collect();
        h.update(d.encode_to_vec());
        for (k, v) in consent {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
    }
}

/// Bytes before a log entry's message: version and checksum.
pub(super) const ENTRY_HEADER: usize = 5;

/// Encodes a log entry (version, checksum, message).
pub fn encode_entry(stored: &StoredBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_HEADER + stored.encoded_len());
    out.extend_from_slice(&[0; ENTRY_HEADER]);
    stored.encode_raw(&mut out);
    seal_entry(out)
}

/// `out`, a message after [`ENTRY_HEADER`] bytes of room, made an entry:
/// the message LZ4-compressed (with its length in front), then the
/// version and the checksum of the compressed bytes written in that room.
///
/// Compressing costs a little CPU on the request path and saves much
/// more disk work: every entry is written to the WAL, to an SST when its
/// memtable is flushed, and deleted again once in Parquet. Flow records
/// repeat names, addresses and fingerprints, so entries shrink several
/// times, and with them the fsyncs acks wait for and the file deletions
/// after each Parquet flush that stalled those fsyncs.
pub(super) fn seal_entry(mut out: Vec<u8>) -> Vec<u8> {
    let compressed = lz4_flex::block::compress_prepend_size(&out[ENTRY_HEADER..]);
    out.truncate(ENTRY_HEADER);
    out.extend_from_slice(&compressed);
    let crc = crc32fast::hash(&out[ENTRY_HEADER..]);
    out[0] = ENTRY_VERSION;
    out[1..ENTRY_HEADER].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A batch as the log stores it.
#[derive(Debug)]
pub struct EncodedEntry {
    /// The log entry: the bytes of [`encode_entry`] for the
    /// [`StoredBatch`].
    pub entry: Vec<u8>,
    /// The digest that decides whether two batches with one id are the
    /// same: of device and records, not the send time.
    pub digest: [u8; 32],
    /// Size of the batch's own encoding (the Report message), bytes.
    pub batch_bytes: usize,
}

/// The log entry of `batch` received from `agent_id` and the batch's
/// digest, from one encoding of each record (a batch holds up to
/// thousands): the digest hashes the records' bytes in the entry, and no
/// [`StoredBatch`] is built around a copy of the batch.
pub fn encode_entry_of(agent_id: &str, received_at_ms: i64, batch: &ReportBatch) -> EncodedEntry {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, int64, key_len, string};
    // The batch's fields but its records (the last field, so the derived
    // encoder writes them last too).
    let head = ReportBatch {
        batch_id: batch.batch_id.clone(),
        sent_at_unix_ms: batch.sent_at_unix_ms,
        device: batch.device.clone(),
        records: Vec::new(),
    };
    let record_lens: Vec<usize> = batch.records.iter().map(Message::encoded_len).collect();
    let batch_bytes =
        head.encoded_len() + record_lens.iter().map(|&n| key_len(4) + encoded_len_varint(n as u64) + n).sum::<usize>();
    let agent_id = agent_id.to_string();
    let mut out = Vec::with_capacity(
        ENTRY_HEADER + string::encoded_len(1, &agent_id) + int64::encoded_len(2, &received_at_ms) + 11 + batch_bytes,
    );
    out.extend_from_slice(&[0; ENTRY_HEADER]);
    // Field by field as the derived encoder does: proto3 defaults left out.
    if !agent_id.is_empty() {
        string::encode(1, &agent_id, &mut out);
    }
    if received_at_ms != 0 {
        int64::encode(2, &received_at_ms, &mut out);
    }
    encode_key(3, WireType::LengthDelimited, &mut out);
    encode_varint(batch_bytes as u64, &mut out);
    head.encode_raw(&mut out);
    let mut h = Sha256::new();
    digest_device(&mut h, batch);
    for (r, &n) in batch.records.iter().zip(&record_lens) {
        encode_key(4, WireType::LengthDelimited, &mut out);
        encode_varint(n as u64, &mut out);
        let at = out.len();
        r.encode_raw(&mut out);
        h.update(&out[at..]);
    }
    EncodedEntry { entry: seal_entry(out), digest: h.finalize().into(), batch_bytes }
}

/// The message length a compressed entry's body states in front of its
/// LZ4 block (`None` when the body is too short to state one).
fn stated_len(body: &[u8]) -> Option<usize> {
    body.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Bytes of an entry's message once decompressed, as its header states
/// (for budgets; [`decode_entry`] checks it).
pub fn message_len(entry: &[u8]) -> usize {
    match entry.first() {
        Some(&ENTRY_VERSION) => entry.get(ENTRY_HEADER..).and_then(stated_len).unwrap_or(entry.len()),
        _ => entry.len().saturating_sub(ENTRY_HEADER),
    }
}

/// Decodes a log entry, checking version and checksum: this build's
/// compressed entries and the uncompressed ones of earlier releases, which
/// a log written before an upgrade still holds until they are flushed.
pub fn decode_entry(bytes: &[u8]) -> Result<StoredBatch> {
    decode_message(&entry_message(bytes)?)
}

/// The [`StoredBatch`] encoded in a log entry's `message`.
pub fn decode_message(message: &[u8]) -> Result<StoredBatch> {
    StoredBatch::decode(message).map_err(|e| Error::Corrupt(format!("log entry: {e}")))
}

/// A log entry's message, the [`StoredBatch`]'s encoding (decompressed
/// when the entry is), after checking the entry's version and checksum.
pub fn entry_message(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    let (&version, rest) = bytes.split_first().ok_or_else(|| Error::Corrupt("empty log entry".into()))?;
    if version != ENTRY_VERSION && version != ENTRY_VERSION_PLAIN {
        return Err(Error::Corrupt(format!(
            "log entry format {version}, this build reads {ENTRY_VERSION_PLAIN} and {ENTRY_VERSION}"
        )));
    }
    let (crc, body) = rest.split_at_checked(4).ok_or_else(|| Error::Corrupt("log entry too short".into()))?;
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != want {
        return Err(Error::Corrupt("log entry checksum mismatch".into()));
    }
    if version == ENTRY_VERSION_PLAIN {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    // The stated length is checked before anything is allocated for it: no
    // LZ4 block expands more than 255 times.
    let stated = stated_len(body);
    match stated {
        Some(n) if n <= body.len().saturating_mul(255) => {}
        _ => return Err(Error::Corrupt(format!("log entry: compressed length {stated:?} for {} bytes", body.len()))),
    }
    lz4_flex::block::decompress_size_prepended(body)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| Error::Corrupt(format!("log entry: decompressing: {e}")))
}
