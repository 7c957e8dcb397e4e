//! The protobuf codec every Shoal RPC uses: prost's, with small first buffers.
//!
//! tonic gives every call an 8 KiB encode buffer, and a long-polling `Pull` keeps its request
//! body, buffer included, until the answer comes: with thousands of simulated clients waiting
//! at once that buffer was most of an idle client's memory. Control messages (join, pull,
//! leave, headers) are a few hundred bytes; chunks of updates grow the buffer to their size as
//! they are written, the same single reservation as before.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// First size of a call's encode and decode buffers.
const FIRST_BUFFER_BYTES: usize = 512;
/// Encoded bytes after which a streaming call yields to the runtime (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// prost's codec with [`FIRST_BUFFER_BYTES`] buffers (named in `build.rs` as the codec of
/// every generated client and server).
#[derive(Debug, Clone)]
pub struct WireCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// The buffer settings of every call.
fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
