//! A prost codec whose decode errors are the caller's fault.
//!
//! tonic's `ProstCodec` maps a message that fails to decode to `Internal`.
//! A message that does not decode is a bad request, so [`StrictCodec`]
//! answers `InvalidArgument` with prost's description, which names the
//! message and field (for example `FlowRecord.domain: invalid string value:
//! data is not UTF-8 encoded`).
//!
//! Before decoding, the decoder counts the repeated fields of a message
//! whose decoded form can be far larger than its bytes (see [`WireBound`]):
//! an empty `FlowRecord` is two bytes on the wire and hundreds in memory,
//! so a 16 MiB `ReportBatch` of empty records would take gigabytes once
//! decoded. A count over the protocol's limit is refused before anything is
//! allocated.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf as _;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::Invalid;

/// Codec used by every generated client and server of this crate.
#[derive(Debug, Clone, Copy)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireBound + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decoder half of [`StrictCodec`].
#[derive(Debug, Clone, Copy)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default + WireBound> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // From the message's bytes as one slice when they are (tonic
        // buffers a message whole): prost reads a slice several times
        // faster than a `Buf` it must advance field by field.
        let len = buf.remaining();
        let decoded = match buf.chunk().get(..len) {
            Some(bytes) => {
                U::check_wire(bytes).map_err(Status::invalid_argument)?;
                let decoded = U::decode(bytes);
                buf.advance(len);
                decoded
            }
            None => {
                let bytes = buf.copy_to_bytes(len);
                U::check_wire(&bytes).map_err(Status::invalid_argument)?;
                U::decode(bytes)
            }
        };
        decoded.map(Some).map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))
    }
}

/// Most records in one `ReportBatch`.
pub const MAX_RECORDS_PER_BATCH: usize = 10_000;
/// Most `DeviceInfo.consent` entries.
pub const MAX_CONSENT_ENTRIES: usize = 32;
/// Most `TlsInfo.alpn` values.
pub const MAX_ALPN_VALUES: usize = 16;
/// Most bytes one record may count in either direction (1 TiB: a 10
/// Gbit/s link, full for a quarter of an hour). Sums of a billion such
/// records still fit a signed 64-bit integer only in part, so sums are
/// computed without wrapping as well.
pub const MAX_BYTES_PER_RECORD: u64 = 1 << 40;
/// Most packets one record may count in either direction.
pub const MAX_PACKETS_PER_RECORD: u64 = 1 << 32;
/// Most connections one record may stand for.
pub const MAX_CONNECTIONS_PER_RECORD: u32 = 1 << 24;
/// Earliest record time accepted (2000-01-01T00:00:00Z), Unix seconds.
pub const MIN_WINDOW_START_S: i64 = 946_684_800;
/// How far in the future a record may lie (clock skew), seconds.
pub const MAX_FUTURE_S: i64 = 86_400;

/// A check of a message's encoded bytes before it is decoded: the counts
/// of repeated fields, which decide how much decoding allocates.
pub trait WireBound {
    /// `Err` names the field and the limit.
    fn check_wire(_bytes: &[u8]) -> Result<(), Invalid> {
        Ok(())
    }
}

macro_rules! unbounded {
    ($($t:ty),* $(,)?) => { $(impl WireBound for $t {})* };
}

// Messages without repeated fields of small elements: their decoded size
// follows their encoded size.
unbounded!(
    crate::v1::EnrollRequest,
    crate::v1::EnrollResponse,
    crate::v1::ReportAck,
    crate::v1::CreateEnrollmentCodeRequest,
    crate::v1::CreateEnrollmentCodeResponse,
    crate::v1::RevokeAgentRequest,
    crate::v1::RevokeAgentResponse,
    crate::v1::CreateSqlTokenRequest,
    crate::v1::CreateSqlTokenResponse,
    crate::v1::ListSqlTokensRequest,
    crate::v1::ListSqlTokensResponse,
    crate::v1::RevokeSqlTokensRequest,
    crate::v1::RevokeSqlTokensResponse,
    crate::v1::ListAgentsRequest,
    crate::v1::ListAgentsResponse,
);

impl WireBound for crate::v1::ReportBatch {
    fn check_wire(bytes: &[u8]) -> Result<(), Invalid> {
        let mut records = 0usize;
        for field in fields(bytes) {
            let (tag, value) = field?;
            match (tag, value) {
                (3, Value::Bytes(device)) => {
                    let consent = count(device, 5)?;
                    if consent > MAX_CONSENT_ENTRIES {
                        return Err(Invalid(format!(
                            "device.consent: {consent} entries, at most {MAX_CONSENT_ENTRIES}"
                        )));
                    }
                }
                (4, Value::Bytes(record)) => {
                    records += 1;
                    if records > MAX_RECORDS_PER_BATCH {
                        return Err(Invalid(format!(
                            "records: more than {MAX_RECORDS_PER_BATCH} records, at most {MAX_RECORDS_PER_BATCH}"
                        )));
                    }
                    for field in fields(record) {
                        if let (13, Value::Bytes(tls)) = field? {
                            let alpn = count(tls, 2)?;
                            if alpn > MAX_ALPN_VALUES {
                                return Err(Invalid(format!(
                                    "records[{}].tls.alpn: {alpn} entries, at most {MAX_ALPN_VALUES}",
                                    records - 1
                                )));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A field's value on the wire.
enum Value<'a> {
    /// Varint, fixed32 or fixed64: no allocation when decoded.
    Scalar,
    /// Length-delimited: a string, bytes, a message or a packed list.
    Bytes(&'a [u8]),
}

/// How many times field `tag` occurs in the message `bytes`.
fn count(bytes: &[u8], tag: u32) -> Result<usize, Invalid> {
    let mut n = 0;
    for field in fields(bytes) {
        if field?.0 == tag {
            n += 1;
        }
    }
    Ok(n)
}

/// The top-level fields of a message, as `(tag, value)`; an encoding
/// error ends the iteration with an `Err` (prost then names the field).
fn fields(mut bytes: &[u8]) -> impl Iterator<Item = Result<(u32, Value<'_>), Invalid>> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let result = (|| {
            let key = varint(&mut bytes)?;
            let tag = u32::try_from(key >> 3)
                .map_err(|_| Invalid("malformed message: field number too large".to_string()))?;
            let value = match key & 7 {
                0 => varint(&mut bytes).map(|_| Value::Scalar)?,
                1 => skip(&mut bytes, 8).map(|_| Value::Scalar)?,
                5 => skip(&mut bytes, 4).map(|_| Value::Scalar)?,
                2 => {
                    let len = usize::try_from(varint(&mut bytes)?).unwrap_or(usize::MAX);
                    Value::Bytes(skip(&mut bytes, len)?)
                }
                other => return Err(Invalid(format!("malformed message: wire type {other} of field {tag}"))),
            };
            Ok((tag, value))
        })();
        if result.is_err() {
            bytes = &[];
        }
        Some(result)
    })
}

fn varint(bytes: &mut &[u8]) -> Result<u64, Invalid> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = bytes.split_first() else { break };
        *bytes = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(Invalid("malformed message: truncated or overlong varint".into()))
}

fn skip<'a>(bytes: &mut &'a [u8], len: usize) -> Result<&'a [u8], Invalid> {
    if bytes.len() < len {
        return Err(Invalid("malformed message: a field runs past the end of the message".into()));
    }
    let (head, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::v1::{DeviceInfo, FlowRecord, ReportBatch, TlsInfo};

    #[test]
    fn counts_are_checked_before_decoding() {
        let mut batch =
            ReportBatch { records: vec![FlowRecord::default(); MAX_RECORDS_PER_BATCH], ..Default::default() };
        assert_eq!(ReportBatch::check_wire(&batch.encode_to_vec()), Ok(()));
        batch.records.push(FlowRecord::default());
        let err = ReportBatch::check_wire(&batch.encode_to_vec()).expect_err("too many records");
        assert!(err.0.starts_with("records: more than 10000"), "{err}");

        let mut device = DeviceInfo::default();
        for i in 0..=MAX_CONSENT_ENTRIES {
            device.consent.insert(format!("k{i}"), "v".into());
        }
        let batch = ReportBatch { device: Some(device), ..Default::default() };
        let err = ReportBatch::check_wire(&batch.encode_to_vec()).expect_err("too many consent entries");
        assert_eq!(err.0, "device.consent: 33 entries, at most 32");

        let tls = TlsInfo { alpn: vec![String::new(); MAX_ALPN_VALUES + 1], ..Default::default() };
        let batch = ReportBatch {
            records: vec![FlowRecord::default(), FlowRecord { tls: Some(tls), ..Default::default() }],
            ..Default::default()
        };
        let err = ReportBatch::check_wire(&batch.encode_to_vec()).expect_err("too many alpn values");
        assert_eq!(err.0, "records[1].tls.alpn: 17 entries, at most 16");
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        for bytes in [&[0x22, 0x05, 0x00][..], &[0xff; 11], &[0x23], &[0x0b, 0x01]] {
            assert!(ReportBatch::check_wire(bytes).is_err(), "{bytes:?}");
        }
    }
}
