//! A prost codec whose decode errors are the caller's fault.
//!
//! tonic's `ProstCodec` maps a message that fails to decode to `Internal`.
//! A message that does not decode is a bad request, so [`StrictCodec`]
//! answers `InvalidArgument` with prost's description, which names the
//! message and field (for example `FlowRecord.domain: invalid string value:
//! data is not UTF-8 encoded`).

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf as _;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

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
    U: Message + Default + Send + 'static,
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

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // From the message's bytes as one slice when they are (tonic
        // buffers a message whole): prost reads a slice several times
        // faster than a `Buf` it must advance field by field.
        let len = buf.remaining();
        let decoded = match buf.chunk().get(..len) {
            Some(bytes) => {
                let decoded = U::decode(bytes);
                buf.advance(len);
                decoded
            }
            None => U::decode(buf),
        };
        decoded.map(Some).map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))
    }
}
