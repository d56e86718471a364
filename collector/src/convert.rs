//! Stored batches → `flows` rows.

use leakwatch_proto::v1::{BootSource, DomainSource, FlowRecord, RecordSource, ReportBatch, Transport};
use leakwatch_query::{BatchLabels, FlowBatchBuilder, RecordValues};
use prost::Message as _;

use crate::log::StoredBatch;

/// A stored batch's labels, worked out once for all its records.
#[derive(Debug)]
pub struct Labels<'a> {
    stored: &'a StoredBatch,
    consent: String,
    boot_source: &'static str,
    source: &'static str,
    /// What its records were read from, which says what they cannot know.
    kind: RecordSource,
}

impl<'a> Labels<'a> {
    /// The labels of `stored`.
    pub fn of(stored: &'a StoredBatch) -> Self {
        let device = stored.batch.as_ref().and_then(|b| b.device.as_ref());
        let mut consent: Vec<(&String, &String)> = device.map(|d| d.consent.iter().collect()).unwrap_or_default();
        consent.sort();
        let consent = consent.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
        let boot_source = BootSource::try_from(device.map_or(0, |d| d.boot_source)).unwrap_or_default().short_name();
        let kind = RecordSource::try_from(device.map_or(0, |d| d.source)).unwrap_or_default();
        Self { stored, consent, boot_source, source: kind.short_name(), kind }
    }

    /// `r` with what its source cannot know (see [`RecordSource::knows_boot`]
    /// and the others) as `None`, stored as NULL whatever the agent sent.
    pub fn known<'r, A>(&self, r: &RecordValues<'r, A>) -> RecordValues<'r, A> {
        let (boot, bytes, port) = (self.kind.knows_boot(), self.kind.knows_bytes(), self.kind.knows_port());
        RecordValues {
            seconds_since_boot: r.seconds_since_boot.filter(|_| boot),
            dst_port: r.dst_port.filter(|_| port),
            bytes_out: r.bytes_out.filter(|_| bytes),
            bytes_in: r.bytes_in.filter(|_| bytes),
            packets_in: r.packets_in.filter(|_| bytes),
            // 0 is "not stated": NULL, and so are the gaps.
            connections: if self.kind.knows_connections() { r.connections } else { 0 },
            blocked: r.blocked.filter(|_| self.kind.knows_blocking()),
            // An unspecified initiator is unknown, whatever the source.
            initiated_by: r.initiated_by.filter(|i| self.kind.knows_initiator() && !i.is_empty()),
            via_website: r.via_website.filter(|_| self.kind.knows_initiator()),
            ..*r
        }
    }

    /// As the builder takes them.
    pub fn borrowed(&self) -> BatchLabels<'_> {
        let batch = self.stored.batch.as_ref();
        let device = batch.and_then(|b| b.device.as_ref());
        let text = |f: fn(&leakwatch_proto::v1::DeviceInfo) -> &String| device.map_or("", |d| f(d).as_str());
        BatchLabels {
            agent_id: &self.stored.agent_id,
            batch_id: batch.map_or("", |b| b.batch_id.as_str()),
            received_at_ms: self.stored.received_at_ms,
            device_pseudonym: text(|d| &d.device_pseudonym),
            boot_pseudonym: text(|d| &d.boot_pseudonym),
            boot_source: self.boot_source,
            source: self.source,
            vendor: text(|d| &d.vendor),
            model: text(|d| &d.model),
            os_version: text(|d| &d.os_version),
            consent: &self.consent,
        }
    }
}

/// A decoded record's values as the builder takes them, with its ALPN
/// protocols given as `alpn` (held as the caller needs them).
fn record_values_with<'a, A>(r: &'a FlowRecord, alpn: &'a [A]) -> RecordValues<'a, A> {
    let tls = r.tls.as_ref();
    RecordValues {
        seconds_since_boot: Some(r.seconds_since_boot),
        window_start_s: r.window_start_unix_s,
        transport: transport_name(r.transport),
        dst_ip: &r.dst_ip,
        dst_port: Some(port(r.dst_port)),
        domain: &r.domain,
        domain_source: domain_source_name(r.domain_source),
        bytes_out: Some(count(r.bytes_out)),
        bytes_in: Some(count(r.bytes_in)),
        packets_out: count(r.packets_out),
        packets_in: Some(count(r.packets_in)),
        app: &r.app,
        tls_sni: tls.map_or("", |t| t.sni.as_str()),
        tls_alpn: alpn,
        tls_fingerprint: tls.map_or("", |t| t.client_fingerprint.as_str()),
        duration_s: r.duration_s,
        encrypted_dns: r.encrypted_dns,
        connections: i64::from(r.connections),
        interval_mean_s: r.interval_mean_s,
        interval_cv: r.interval_cv,
        blocked: Some(r.blocked),
        initiated_by: Some(initiator_name(r.initiator)),
        via_website: Some(r.via_website),
    }
}

fn initiator_name(v: i32) -> &'static str {
    leakwatch_proto::v1::Initiator::try_from(v).unwrap_or_default().short_name()
}

fn transport_name(v: i32) -> &'static str {
    Transport::try_from(v).unwrap_or_default().short_name()
}

fn domain_source_name(v: i32) -> &'static str {
    DomainSource::try_from(v).unwrap_or_default().short_name()
}

fn port(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(0)
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored batch read from a log entry's message without decoding its
/// records: `stored` holds everything else (no records), `records` each
/// record's encoding, for [`with_record`].
#[derive(Debug)]
pub struct EncodedBatch<'m> {
    /// The stored batch without its records.
    pub stored: StoredBatch,
    /// Each record's encoding, in order.
    pub records: Vec<&'m [u8]>,
}

/// `message` (a [`StoredBatch`]'s encoding) split as [`EncodedBatch`]
/// says, or `None` when it is not laid out as this build writes it (a
/// field repeated that is read once, an unexpected wire type, a group):
/// then decode it whole. What it returns equals the whole decoding.
pub fn split_stored(message: &[u8]) -> Option<EncodedBatch<'_>> {
    let mut stored = StoredBatch::default();
    let mut batch = None;
    let mut rest = message;
    while !rest.is_empty() {
        match field(&mut rest)? {
            (1, Wire::Bytes(b)) => stored.agent_id = std::str::from_utf8(b).ok()?.to_owned(),
            (2, Wire::Varint(v)) => stored.received_at_ms = v as i64,
            (3, Wire::Bytes(b)) if batch.is_none() => batch = Some(b),
            (1..=3, _) => return None,
            _ => {}
        }
    }
    let mut records = Vec::new();
    if let Some(mut rest) = batch {
        // The batch's fields but its records, as they came, decoded by
        // prost: a few small fields once per batch.
        let mut head = Vec::new();
        while !rest.is_empty() {
            let at = rest;
            match field(&mut rest)? {
                (4, Wire::Bytes(b)) => records.push(b),
                (4, _) => return None,
                _ => head.extend_from_slice(&at[..at.len() - rest.len()]),
            }
        }
        stored.batch = Some(ReportBatch::decode(&head[..]).ok()?);
    }
    Some(EncodedBatch { stored, records })
}

/// Calls `f` with the values of the record encoded in `bytes`, read in
/// place (no decoded record, no string allocated). A record not laid out
/// as this build writes them ([`split_stored`] says when) is decoded by
/// prost instead; `Err` when that fails too.
fn with_record<R>(bytes: &[u8], f: impl FnOnce(&RecordValues<'_, &str>) -> R) -> Result<R, prost::DecodeError> {
    let mut alpn = [""; MOST_ALPN];
    if let Some(values) = read_in_place(bytes, &mut alpn) {
        return Ok(f(&values));
    }
    let record = FlowRecord::decode(bytes)?;
    Ok(f(&record_values_with(&record, &alpn_of(&record))))
}

/// A decoded record's ALPN protocols, borrowed.
fn alpn_of(r: &FlowRecord) -> Vec<&str> {
    r.tls.iter().flat_map(|t| t.alpn.iter().map(String::as_str)).collect()
}

/// Most ALPN protocols [`read_in_place`] reads; a record with more is
/// decoded by prost.
const MOST_ALPN: usize = 8;

/// The values of the record encoded in `bytes`, its ALPN protocols in
/// `alpn`; `None` when the record is not laid out as expected.
fn read_in_place<'s, 'm>(bytes: &'m [u8], alpn: &'s mut [&'m str; MOST_ALPN]) -> Option<RecordValues<'s, &'m str>> {
    let mut alpns = 0;
    let (mut sni, mut fingerprint) = ("", "");
    // Absent fields are 0, as proto3 reads them.
    let mut r = RecordValues::<&str> {
        seconds_since_boot: Some(0.0),
        window_start_s: 0,
        transport: transport_name(0),
        dst_ip: "",
        dst_port: Some(0),
        domain: "",
        domain_source: domain_source_name(0),
        bytes_out: Some(0),
        bytes_in: Some(0),
        packets_out: 0,
        packets_in: Some(0),
        app: "",
        tls_sni: "",
        tls_alpn: &[],
        tls_fingerprint: "",
        duration_s: 0.0,
        encrypted_dns: false,
        connections: 0,
        interval_mean_s: 0.0,
        interval_cv: 0.0,
        blocked: Some(false),
        initiated_by: Some(initiator_name(0)),
        via_website: Some(false),
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        let f = field(&mut rest)?;
        let ok = match f {
            (1, Wire::Fixed64(v)) => put(&mut r.seconds_since_boot, Some(f64::from_bits(v))),
            (2, Wire::Varint(v)) => put(&mut r.window_start_s, v as i64),
            (3, Wire::Varint(v)) => put(&mut r.transport, transport_name(v as i32)),
            (4, Wire::Bytes(b)) => put_text(&mut r.dst_ip, b),
            (5, Wire::Varint(v)) => put(&mut r.dst_port, Some(port(v as u32))),
            (6, Wire::Bytes(b)) => put_text(&mut r.domain, b),
            (7, Wire::Varint(v)) => put(&mut r.domain_source, domain_source_name(v as i32)),
            (8, Wire::Varint(v)) => put(&mut r.bytes_out, Some(count(v))),
            (9, Wire::Varint(v)) => put(&mut r.bytes_in, Some(count(v))),
            (10, Wire::Varint(v)) => put(&mut r.packets_out, count(v)),
            (11, Wire::Varint(v)) => put(&mut r.packets_in, Some(count(v))),
            (12, Wire::Bytes(b)) => put_text(&mut r.app, b),
            // A second `tls` merges into the first, as prost merges it.
            (13, Wire::Bytes(mut tls)) => {
                let mut ok = true;
                while ok && !tls.is_empty() {
                    ok = match field(&mut tls) {
                        Some((1, Wire::Bytes(b))) => put_text(&mut sni, b),
                        Some((2, Wire::Bytes(b))) if alpns < MOST_ALPN => {
                            alpns += 1;
                            put_text(&mut alpn[alpns - 1], b)
                        }
                        Some((3, Wire::Bytes(b))) => put_text(&mut fingerprint, b),
                        Some((1..=3, _)) | None => false,
                        Some(_) => true,
                    };
                }
                ok
            }
            (14, Wire::Fixed64(v)) => put(&mut r.duration_s, f64::from_bits(v)),
            (15, Wire::Varint(v)) => put(&mut r.encrypted_dns, v != 0),
            (16, Wire::Varint(v)) => put(&mut r.connections, i64::from(v as u32)),
            (17, Wire::Fixed64(v)) => put(&mut r.interval_mean_s, f64::from_bits(v)),
            (18, Wire::Fixed64(v)) => put(&mut r.interval_cv, f64::from_bits(v)),
            (19, Wire::Varint(v)) => put(&mut r.blocked, Some(v != 0)),
            (20, Wire::Varint(v)) => put(&mut r.initiated_by, Some(initiator_name(v as i32))),
            (21, Wire::Varint(v)) => put(&mut r.via_website, Some(v != 0)),
            (1..=21, _) => false,
            _ => true,
        };
        if !ok {
            return None;
        }
    }
    r.tls_sni = sni;
    r.tls_fingerprint = fingerprint;
    r.tls_alpn = &alpn[..alpns];
    Some(r)
}

/// Sets `slot` to `v`; true.
fn put<T>(slot: &mut T, v: T) -> bool {
    *slot = v;
    true
}

/// Sets `slot` to `b` when it is UTF-8, as prost requires of strings;
/// false (and `slot` left) when not.
fn put_text<'m>(slot: &mut &'m str, b: &'m [u8]) -> bool {
    std::str::from_utf8(b).map(|t| *slot = t).is_ok()
}

/// A protobuf field's value, by wire type (groups are not read).
enum Wire<'m> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'m [u8]),
}

/// The next field of `buf` (its tag and value), advancing past it;
/// `None` where prost would fail or that this reader leaves to prost.
#[inline(always)]
fn field<'m>(buf: &mut &'m [u8]) -> Option<(u32, Wire<'m>)> {
    let key = u32::try_from(varint(buf)?).ok()?;
    let tag = key >> 3;
    if tag == 0 {
        return None;
    }
    let value = match key & 7 {
        0 => Wire::Varint(varint(buf)?),
        1 => {
            let (v, rest) = buf.split_first_chunk::<8>()?;
            *buf = rest;
            Wire::Fixed64(u64::from_le_bytes(*v))
        }
        2 => {
            let len = usize::try_from(varint(buf)?).ok()?;
            let (v, rest) = buf.split_at_checked(len)?;
            *buf = rest;
            Wire::Bytes(v)
        }
        5 => {
            *buf = buf.get(4..)?;
            Wire::Fixed32
        }
        _ => return None,
    };
    Some((tag, value))
}

/// A varint, as prost reads them (at most ten bytes, within 64 bits):
/// one byte at once, longer ones by prost.
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Option<u64> {
    match buf.split_first() {
        Some((&b, rest)) if b < 0x80 => {
            *buf = rest;
            Some(u64::from(b))
        }
        _ => prost::encoding::decode_varint(buf).ok(),
    }
}

/// Calls `f` with the labels and the values of each record of the stored
/// batch encoded in `message` (a log entry's message), the records read
/// in place ([`with_record`]); a message laid out otherwise
/// ([`split_stored`]) is decoded whole. Nothing for a message without a
/// batch.
pub fn each_record(message: &[u8], mut f: impl FnMut(&BatchLabels<'_>, &RecordValues<'_, &str>)) -> crate::Result<()> {
    // Split, the records are in `encoded` and the batch holds none;
    // decoded whole, they are in the batch.
    let (stored, encoded) = match split_stored(message) {
        Some(EncodedBatch { stored, records }) => (stored, records),
        None => (crate::log::decode_message(message)?, Vec::new()),
    };
    let of = Labels::of(&stored);
    let labels = of.borrowed();
    for bytes in encoded {
        with_record(bytes, |r| f(&labels, &of.known(r)))
            .map_err(|e| crate::Error::Corrupt(format!("log entry: a record: {e}")))?;
    }
    for r in stored.batch.iter().flat_map(|b| &b.records) {
        f(&labels, &of.known(&record_values_with(r, &alpn_of(r))));
    }
    Ok(())
}

/// Adds every record of the stored batch encoded in `message` (a log
/// entry's message) to `builder` ([`each_record`]).
pub fn add_message(builder: &mut FlowBatchBuilder, message: &[u8]) -> crate::Result<()> {
    let mut started = false;
    each_record(message, |labels, r| {
        if !std::mem::replace(&mut started, true) {
            builder.start_batch(labels);
        }
        builder.push_record(r);
    })
}

#[cfg(test)]
mod tests {
    use leakwatch_proto::v1::{DeviceInfo, TlsInfo};

    use super::*;

    /// A decoded record's values, as prost decoded them.
    fn record_values(r: &FlowRecord) -> RecordValues<'_> {
        record_values_with(r, r.tls.as_ref().map_or(&[], |t| t.alpn.as_slice()))
    }

    /// One record batch holding every record of `batches`, decoded.
    fn to_record_batch(batches: &[StoredBatch]) -> arrow::array::RecordBatch {
        let mut builder = FlowBatchBuilder::new();
        for stored in batches {
            let Some(batch) = &stored.batch else { continue };
            let labels = Labels::of(stored);
            builder.start_batch(&labels.borrowed());
            for r in &batch.records {
                builder.push_record(&labels.known(&record_values(r)));
            }
        }
        builder.finish()
    }

    /// The rows prost's decoding of each of `records` makes (`Err` when it
    /// fails for one).
    fn decoded(records: &[Vec<u8>]) -> Result<arrow::array::RecordBatch, prost::DecodeError> {
        let mut builder = FlowBatchBuilder::new();
        for bytes in records {
            builder.push_record(&record_values(&FlowRecord::decode(&bytes[..])?));
        }
        Ok(builder.finish())
    }

    /// The rows [`with_record`] makes of `records`.
    fn in_place(records: &[Vec<u8>]) -> Result<arrow::array::RecordBatch, prost::DecodeError> {
        let mut builder = FlowBatchBuilder::new();
        for bytes in records {
            with_record(bytes, |r| builder.push_record(r))?;
        }
        Ok(builder.finish())
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<T: Clone>(&mut self, from: &[T]) -> T {
            from[(self.next() % from.len() as u64) as usize].clone()
        }
    }

    fn random_record(rng: &mut Rng) -> FlowRecord {
        let texts = ["", "a", "api.example.com", "ünïcödé.example", "93.184.216.34", "2001:db8::1", "h2", "http/1.1"];
        let numbers = [0, 1, 127, 128, 300, u64::from(u32::MAX), i64::MAX as u64, u64::MAX];
        let floats = [0.0, -0.0, 1.5, -3.25, f64::INFINITY, f64::MIN_POSITIVE, 1e300];
        let text = |rng: &mut Rng| rng.pick(&texts).to_string();
        FlowRecord {
            seconds_since_boot: rng.pick(&floats),
            window_start_unix_s: rng.pick(&numbers) as i64,
            transport: rng.pick(&[0, 1, 2, 3, -1, i32::MAX]),
            dst_ip: text(rng),
            dst_port: rng.pick(&numbers) as u32,
            domain: text(rng),
            domain_source: rng.pick(&[0, 1, 2, 3, 4, 99]),
            bytes_out: rng.pick(&numbers),
            bytes_in: rng.pick(&numbers),
            packets_out: rng.pick(&numbers),
            packets_in: rng.pick(&numbers),
            app: text(rng),
            tls: (!rng.next().is_multiple_of(3)).then(|| TlsInfo {
                sni: text(rng),
                // Up to past the most ALPN protocols read in place.
                alpn: (0..rng.next() % (MOST_ALPN as u64 + 3)).map(|_| text(rng)).collect(),
                client_fingerprint: text(rng),
            }),
            duration_s: rng.pick(&floats),
            encrypted_dns: rng.next().is_multiple_of(2),
            connections: rng.pick(&numbers) as u32,
            interval_mean_s: rng.pick(&floats),
            interval_cv: rng.pick(&floats),
            blocked: rng.next().is_multiple_of(2),
            initiator: rng.pick(&[0, 1, 2, 7]),
            via_website: rng.next().is_multiple_of(2),
        }
    }

    #[test]
    fn records_read_in_place_make_the_rows_decoded_records_make() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let records: Vec<Vec<u8>> = (0..2000).map(|_| random_record(&mut rng).encode_to_vec()).collect();
        assert_eq!(in_place(&records).expect("in place"), decoded(&records).expect("decoded"));
    }

    /// A field's key.
    fn key(tag: u32, wire: u32) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_varint(u64::from(tag << 3 | wire), &mut out);
        out
    }

    fn len_delimited(tag: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = key(tag, 2);
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn records_laid_out_otherwise_read_as_prost_reads_them_or_fail_as_it_does() {
        let base = FlowRecord {
            domain: "api.example.com".into(),
            tls: Some(TlsInfo { sni: "a".into(), alpn: vec!["h2".into()], client_fingerprint: String::new() }),
            ..FlowRecord::default()
        }
        .encode_to_vec();
        let with = |extra: &[u8]| [base.clone(), extra.to_vec()].concat();
        let tls = TlsInfo { sni: "b".into(), alpn: vec!["http/1.1".into()], client_fingerprint: "f".into() };
        let readable = [
            // A field again: the last one counts.
            with(&len_delimited(6, b"other.example.com")),
            // A second TLS message merges into the first.
            with(&len_delimited(13, &tls.encode_to_vec())),
            // Unknown fields of every wire type are skipped, groups too.
            with(&[key(99, 0), vec![0x80, 0x01]].concat()),
            with(&[key(99, 1), vec![7; 8]].concat()),
            with(&[key(99, 5), vec![7; 4]].concat()),
            with(&len_delimited(99, b"\xff\xfe")),
            with(&[key(99, 3), key(1, 0), vec![1], key(99, 4)].concat()),
            // Unknown fields inside TLS.
            len_delimited(13, &[len_delimited(1, b"sni"), key(9, 0), vec![5]].concat()),
            // A ten-byte varint.
            with(&[key(8, 0), vec![0xff; 9], vec![0x01]].concat()),
        ];
        for bytes in &readable {
            let one = std::slice::from_ref(bytes);
            assert_eq!(in_place(one).expect("reads"), decoded(one).expect("decodes"), "{bytes:02x?}");
        }
        let broken = [
            // Not UTF-8, in the record and in TLS.
            with(&len_delimited(4, b"\xff")),
            len_delimited(13, &len_delimited(2, b"\xc3")),
            // A known field with another wire type.
            with(&[key(8, 1), vec![0; 8]].concat()),
            // Cut short: in a varint, a fixed64 and a length.
            with(&[key(8, 0), vec![0x80]].concat()),
            with(&[key(1, 1), vec![0; 3]].concat()),
            with(&[key(6, 2), vec![9], b"abc".to_vec()].concat()),
            // A varint past 64 bits, a field number 0, an unknown wire type.
            with(&[key(8, 0), vec![0xff; 9], vec![0x02]].concat()),
            with(&[vec![0x00], vec![1]].concat()),
            with(&[key(8, 7)].concat()),
        ];
        for bytes in &broken {
            let one = std::slice::from_ref(bytes);
            assert!(decoded(one).is_err(), "prost fails on {bytes:02x?}");
            assert!(in_place(one).is_err(), "so does reading in place: {bytes:02x?}");
        }
    }

    #[test]
    fn messages_add_the_rows_their_decoded_batches_add() {
        let mut rng = Rng(11);
        let batch = |id: &str, rng: &mut Rng| ReportBatch {
            batch_id: id.into(),
            device: Some(DeviceInfo { device_pseudonym: format!("d-{id}"), ..DeviceInfo::default() }),
            records: (0..20).map(|_| random_record(rng)).collect(),
            ..ReportBatch::default()
        };
        let stored: Vec<StoredBatch> = ["a", "b"]
            .iter()
            .map(|id| StoredBatch { agent_id: "agent".into(), received_at_ms: 3, batch: Some(batch(id, &mut rng)) })
            .collect();
        let mut messages: Vec<Vec<u8>> = stored.iter().map(prost::Message::encode_to_vec).collect();
        // One laid out otherwise: its batch in two parts, which prost merges.
        let second = stored[1].batch.clone().expect("batch");
        let mut odd = StoredBatch {
            batch: Some(ReportBatch { records: second.records.clone(), ..ReportBatch::default() }),
            ..stored[1].clone()
        }
        .encode_to_vec();
        prost::encoding::message::encode(3, &ReportBatch { records: Vec::new(), ..second }, &mut odd);
        assert!(split_stored(&odd).is_none());
        messages[1] = odd;
        let mut builder = FlowBatchBuilder::new();
        for m in &messages {
            add_message(&mut builder, m).expect("adds");
        }
        // Against the batches as they read back (prost does not write a
        // -0.0 it takes for the default).
        let decoded: Vec<StoredBatch> =
            stored.iter().map(|b| crate::log::decode_message(&b.encode_to_vec()).expect("decodes")).collect();
        assert_eq!(builder.finish(), to_record_batch(&decoded));
        let broken = [messages[0].clone(), len_delimited(3, &len_delimited(4, &len_delimited(4, b"\xff")))].concat();
        assert!(add_message(&mut FlowBatchBuilder::new(), &broken).is_err(), "a record that is not UTF-8");
    }

    #[test]
    fn a_stored_batch_splits_into_its_other_fields_and_its_records() {
        let mut rng = Rng(7);
        let batch = ReportBatch {
            batch_id: "b-1".into(),
            sent_at_unix_ms: 1_700_000_000_000,
            device: Some(DeviceInfo {
                device_pseudonym: "d".into(),
                vendor: "Acme".into(),
                consent: [("cloud".to_string(), "off".to_string())].into(),
                ..DeviceInfo::default()
            }),
            records: (0..50).map(|_| random_record(&mut rng)).collect(),
        };
        let stored = StoredBatch { agent_id: "agent".into(), received_at_ms: 42, batch: Some(batch.clone()) };
        let message = stored.encode_to_vec();
        let split = split_stored(&message).expect("laid out as written");
        let records: Vec<Vec<u8>> = split.records.iter().map(|r| r.to_vec()).collect();
        assert_eq!(records, batch.records.iter().map(prost::Message::encode_to_vec).collect::<Vec<_>>());
        let mut without = stored.clone();
        if let Some(b) = without.batch.as_mut() {
            b.records.clear();
        }
        assert_eq!(split.stored, without);
        // Written as the log writes it, the same.
        let entry = crate::log::encode_entry_of("agent", 42, &batch).entry;
        let message = crate::log::entry_message(&entry).expect("entry");
        let split = split_stored(&message).expect("laid out as written");
        assert_eq!((split.stored, split.records.len()), (without, 50));
        // A batch field twice would merge: left to prost.
        let twice = [message.to_vec(), len_delimited(3, &ReportBatch::default().encode_to_vec())].concat();
        assert!(split_stored(&twice).is_none());
        // No batch at all.
        let none = StoredBatch { agent_id: "agent".into(), received_at_ms: 1, batch: None }.encode_to_vec();
        assert_eq!(split_stored(&none).map(|s| (s.stored.batch, s.records.len())), Some((None, 0)));
    }

    /// What a source cannot know is NULL, whatever the agent sent: the
    /// time since boot, the bytes and packets in of a DNS server's log and
    /// of the iOS report, the port of the iOS report. A capture's zeros
    /// stay zeros.
    #[test]
    fn fields_a_source_cannot_know_are_null() {
        use arrow::array::{Array as _, AsArray as _};
        use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
        let record = FlowRecord {
            seconds_since_boot: 0.0,
            transport: Transport::Dns as i32,
            dst_port: 53,
            domain: "api.example.com".into(),
            packets_out: 3,
            connections: 1,
            initiator: leakwatch_proto::v1::Initiator::App as i32,
            via_website: true,
            ..FlowRecord::default()
        };
        let nulls = |source: RecordSource| {
            let batch = ReportBatch {
                batch_id: "b".into(),
                device: Some(DeviceInfo { source: source as i32, ..DeviceInfo::default() }),
                records: vec![record.clone()],
                ..ReportBatch::default()
            };
            let message = StoredBatch { agent_id: "a".into(), received_at_ms: 1, batch: Some(batch) }.encode_to_vec();
            let mut builder = FlowBatchBuilder::new();
            add_message(&mut builder, &message).expect("adds");
            let rows = builder.finish();
            let column = |name: &str| rows.column_by_name(name).expect(name).clone();
            assert_eq!(column("packets_out").as_primitive::<Int64Type>().value(0), 3, "{source:?}");
            assert_eq!(column("seconds_since_boot").as_primitive::<Float64Type>().len(), 1);
            assert_eq!(column("dst_port").as_primitive::<Int32Type>().len(), 1);
            [
                "seconds_since_boot",
                "dst_port",
                "bytes_out",
                "bytes_in",
                "packets_in",
                "connections",
                "interval_mean_s",
                "initiated_by",
                "via_website",
            ]
            .into_iter()
            .filter(|name| column(name).is_null(0))
            .collect::<Vec<_>>()
        };
        // Who started a contact: only the iOS report says.
        for source in [RecordSource::Capture, RecordSource::Live, RecordSource::PcapdroidCsv, RecordSource::Zeek] {
            assert_eq!(nulls(source), ["initiated_by", "via_website"], "{source:?}");
        }
        let without_boot_bytes_connections =
            ["seconds_since_boot", "bytes_out", "bytes_in", "packets_in", "connections", "interval_mean_s"];
        let mut pihole = without_boot_bytes_connections.to_vec();
        pihole.extend(["initiated_by", "via_website"]);
        assert_eq!(nulls(RecordSource::Pihole), pihole);
        let mut ios = without_boot_bytes_connections.to_vec();
        ios.insert(1, "dst_port");
        assert_eq!(nulls(RecordSource::IosPrivacy), ios);
    }
}
