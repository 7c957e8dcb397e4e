//! Moving f32 payloads as little-endian bytes in bounded chunks.
//!
//! gRPC caps a message at 4 MiB by default; splitting payloads into chunks of at most
//! [`MAX_CHUNK_BYTES`] lets models of any size travel while each message stays small, and lets
//! the receiver refuse an oversize payload before allocating it.

use crate::error::{ProtoError, Result};
use crate::v1::Chunk;
use bytes::Bytes;
use std::sync::Arc;

/// Hard upper bound on one chunk: 1 MiB.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// The largest gRPC message that carries chunks of at most `chunk_bytes`: a chunk plus
/// headroom for the message's other fields and framing.
pub fn message_limit(chunk_bytes: usize) -> usize {
    chunk_bytes + (64 << 10)
}

/// Chunk size senders use unless told otherwise.
pub const DEFAULT_CHUNK_BYTES: usize = MAX_CHUNK_BYTES;

/// A value that travels in chunks as fixed-width little-endian bytes: f32 for models and
/// updates, i128 for a sub-aggregator's exact sums.
pub trait WireValue: bytemuck::Pod {
    /// Bytes per value: the value's own size (a plain-old-data type, sent as it lies in memory
    /// on a little-endian machine).
    const WIDTH: usize = std::mem::size_of::<Self>();
    /// Appends the value's little-endian bytes.
    fn put(self, out: &mut Vec<u8>);
    /// The value of exactly [`WireValue::WIDTH`] bytes.
    fn get(bytes: &[u8]) -> Self;

    /// Appends the little-endian bytes of every value: one copy on a little-endian machine.
    fn put_all(values: &[Self], out: &mut Vec<u8>) {
        if cfg!(target_endian = "little") {
            out.extend_from_slice(bytemuck::cast_slice(values));
        } else {
            for v in values {
                v.put(out);
            }
        }
    }

    /// Appends the values of `bytes` (little-endian; a trailing partial value is ignored): one
    /// copy on a little-endian machine, whatever the alignment of `bytes`.
    fn get_all(bytes: &[u8], out: &mut Vec<Self>) {
        let bytes = &bytes[..bytes.len() - bytes.len() % Self::WIDTH];
        if cfg!(target_endian = "little") {
            // Bytes that happen to be aligned for `Self` (a chunk's buffer usually is) are
            // appended as they are; otherwise zeroed room is made and the bytes copied in.
            if let Ok(values) = bytemuck::try_cast_slice::<u8, Self>(bytes) {
                out.extend_from_slice(values);
                return;
            }
            let start = out.len();
            out.resize(
                start + bytes.len() / Self::WIDTH,
                <Self as bytemuck::Zeroable>::zeroed(),
            );
            bytemuck::cast_slice_mut::<Self, u8>(&mut out[start..]).copy_from_slice(bytes);
        } else {
            out.extend(bytes.chunks_exact(Self::WIDTH).map(Self::get));
        }
    }
}

impl WireValue for f32 {
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

/// Bytes: the chunks of a compressed update.
impl WireValue for u8 {
    fn put(self, out: &mut Vec<u8>) {
        out.push(self);
    }
    fn get(bytes: &[u8]) -> Self {
        bytes[0]
    }
}

impl WireValue for i128 {
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        let mut le = [0u8; 16];
        le.copy_from_slice(&bytes[..16]);
        i128::from_le_bytes(le)
    }
}

/// Splits `values` into chunks of at most `chunk_bytes` bytes (rounded down to whole values):
/// one copy of the values into one buffer, which the chunks share (see [`shared_chunks`]).
pub fn encode_chunks<T: WireValue>(
    values: &[T],
    chunk_bytes: usize,
) -> impl Iterator<Item = Chunk> + use<T> {
    let mut data = Vec::with_capacity(std::mem::size_of_val(values));
    T::put_all(values, &mut data);
    shared_chunks(Bytes::from(data), T::WIDTH, chunk_bytes)
}

/// Splits `bytes`, little-endian values of `width` bytes each, into chunks of at most
/// `chunk_bytes` bytes (whole values; offsets count values). The chunks are views of `bytes`:
/// nothing is copied, and a chunk resent (a redelivered update) is the same memory again.
pub fn shared_chunks(
    bytes: Bytes,
    width: usize,
    chunk_bytes: usize,
) -> impl Iterator<Item = Chunk> {
    let width = width.clamp(1, MAX_CHUNK_BYTES);
    debug_assert!(
        bytes.len().is_multiple_of(width),
        "{} bytes are no whole number of {width}-byte values",
        bytes.len()
    );
    let per_chunk = (chunk_bytes.clamp(width, MAX_CHUNK_BYTES) / width).max(1);
    let step = per_chunk * width;
    (0..bytes.len().div_ceil(step)).map(move |i| Chunk {
        offset: (i * per_chunk) as u64,
        data: bytes.slice(i * step..((i + 1) * step).min(bytes.len())),
    })
}

/// The little-endian bytes of `values` without copying them where the machine is
/// little-endian: the returned bytes hold the vector (shared: a round's global model sent back
/// unchanged by every client of a process is one vector).
pub fn f32_bytes(values: Arc<Vec<f32>>) -> Bytes {
    if cfg!(target_endian = "little") {
        Bytes::from_owner(LittleEndian(values))
    } else {
        Bytes::from(encode_f32(&values))
    }
}

/// f32 values seen as the bytes they are in memory (little-endian machines only).
struct LittleEndian(Arc<Vec<f32>>);

impl AsRef<[u8]> for LittleEndian {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// Little-endian bytes of `values`.
pub fn encode_f32(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    f32::put_all(values, &mut out);
    out
}

/// Decodes little-endian f32 bytes, appending to `out`.
pub fn decode_f32(bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
    if !bytes.len().is_multiple_of(4) {
        return Err(ProtoError::Misaligned(bytes.len()));
    }
    f32::get_all(bytes, out);
    Ok(())
}

/// Reassembles a payload of a declared length from chunks that must arrive in order, without
/// gaps, overlaps or excess, refusing anything larger than the receiver's limit up front.
#[derive(Debug)]
pub struct Assembler<T> {
    declared: usize,
    max_chunk_bytes: usize,
    values: Vec<T>,
}

/// Reassembles a model or an update (f32 values).
pub type ChunkAssembler = Assembler<f32>;

/// Reassembles a compressed update (bytes).
pub type ByteAssembler = Assembler<u8>;

/// Reassembles a sub-aggregator's exact sum (i128 values).
pub type SumAssembler = Assembler<i128>;

impl<T: WireValue> Assembler<T> {
    /// Starts a payload of `declared` values; `max_values` and `max_chunk_bytes` are the
    /// receiver's limits.
    pub fn new(declared: u64, max_values: usize, max_chunk_bytes: usize) -> Result<Self> {
        let declared_usize = usize::try_from(declared).unwrap_or(usize::MAX);
        if declared_usize > max_values {
            return Err(ProtoError::TooLarge {
                declared,
                limit: max_values,
            });
        }
        Ok(Self {
            declared: declared_usize,
            max_chunk_bytes,
            // Grow as verified chunks arrive: the declared length is only a claim.
            values: Vec::with_capacity(declared_usize.min(MAX_CHUNK_BYTES / T::WIDTH)),
        })
    }

    /// The same, with room for the whole declared payload made now rather than as chunks
    /// arrive: only for receivers that have already held the declared length to the one they
    /// expect (the round's update length) and the sender to one upload at a time, so a claim
    /// cannot make them reserve more than honest senders would. Saves the copies of growing
    /// a large payload.
    pub fn expecting_all(mut self) -> Self {
        self.values.reserve_exact(self.declared - self.values.len());
        self
    }

    /// Adds the next chunk.
    pub fn push(&mut self, chunk: &Chunk) -> Result<()> {
        let len = chunk.data.len();
        if len > self.max_chunk_bytes {
            return Err(ProtoError::ChunkTooLarge {
                got: len,
                limit: self.max_chunk_bytes,
            });
        }
        let expected = self.values.len() as u64;
        if chunk.offset != expected {
            return Err(ProtoError::OutOfOrder {
                got: chunk.offset,
                expected,
            });
        }
        if !len.is_multiple_of(T::WIDTH) {
            return Err(ProtoError::Misaligned(len));
        }
        if self.values.len() + len / T::WIDTH > self.declared {
            return Err(ProtoError::Overflow {
                declared: self.declared,
            });
        }
        T::get_all(&chunk.data, &mut self.values);
        Ok(())
    }

    /// Values received so far.
    pub fn received(&self) -> usize {
        self.values.len()
    }

    /// The complete payload, or an error if values are missing.
    pub fn finish(self) -> Result<Vec<T>> {
        if self.values.len() != self.declared {
            return Err(ProtoError::Truncated {
                got: self.values.len(),
                declared: self.declared,
            });
        }
        Ok(self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assemble(values: &[f32], chunk_bytes: usize) -> Result<Vec<f32>> {
        let mut asm = ChunkAssembler::new(values.len() as u64, usize::MAX, MAX_CHUNK_BYTES)?;
        for c in encode_chunks(values, chunk_bytes) {
            asm.push(&c)?;
        }
        asm.finish()
    }

    proptest! {
        #[test]
        fn exact_sums_round_trip(values in proptest::collection::vec(any::<i128>(), 0..300), chunk in 16usize..512) {
            let mut asm = SumAssembler::new(values.len() as u64, usize::MAX, MAX_CHUNK_BYTES).unwrap();
            for c in encode_chunks(&values, chunk) {
                prop_assert!(c.data.len() <= chunk.max(16));
                asm.push(&c).unwrap();
            }
            prop_assert_eq!(asm.finish().unwrap(), values);
        }

        #[test]
        fn round_trips_bit_exactly(values in proptest::collection::vec(any::<f32>(), 0..2000), chunk in 4usize..512) {
            let back = assemble(&values, chunk).unwrap();
            let a: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            let b: Vec<u32> = back.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn chunks_never_exceed_one_mebibyte() {
        let values = vec![1.0f32; 600_000];
        let chunks: Vec<Chunk> = encode_chunks(&values, usize::MAX).collect();
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.data.len() <= MAX_CHUNK_BYTES));
    }

    #[test]
    fn refuses_out_of_order_duplicate_and_overflow() {
        let values = [1.0f32, 2.0, 3.0, 4.0];
        let chunks: Vec<Chunk> = encode_chunks(&values, 8).collect();
        let mut asm = ChunkAssembler::new(4, 100, MAX_CHUNK_BYTES).unwrap();
        assert!(matches!(
            asm.push(&chunks[1]),
            Err(ProtoError::OutOfOrder { .. })
        ));
        asm.push(&chunks[0]).unwrap();
        assert!(matches!(
            asm.push(&chunks[0]),
            Err(ProtoError::OutOfOrder { .. })
        ));
        asm.push(&chunks[1]).unwrap();
        let extra = Chunk {
            offset: 4,
            data: Bytes::from(encode_f32(&[5.0])),
        };
        assert!(matches!(asm.push(&extra), Err(ProtoError::Overflow { .. })));
    }

    #[test]
    fn refuses_truncation_misalignment_and_oversize() {
        let mut asm = ChunkAssembler::new(4, 100, MAX_CHUNK_BYTES).unwrap();
        asm.push(&Chunk {
            offset: 0,
            data: Bytes::from(encode_f32(&[1.0])),
        })
        .unwrap();
        assert!(matches!(
            asm.finish(),
            Err(ProtoError::Truncated {
                got: 1,
                declared: 4
            })
        ));
        let mut asm = ChunkAssembler::new(4, 100, MAX_CHUNK_BYTES).unwrap();
        let bad = Chunk {
            offset: 0,
            data: Bytes::from_static(&[0, 0, 0]),
        };
        assert!(matches!(asm.push(&bad), Err(ProtoError::Misaligned(3))));
        assert!(matches!(
            ChunkAssembler::new(101, 100, MAX_CHUNK_BYTES),
            Err(ProtoError::TooLarge { .. })
        ));
        let mut asm = ChunkAssembler::new(1_000_000, 1_000_000, 16).unwrap();
        let big = Chunk {
            offset: 0,
            data: Bytes::from(encode_f32(&[0.0; 5])),
        };
        assert!(matches!(
            asm.push(&big),
            Err(ProtoError::ChunkTooLarge { .. })
        ));
    }
}
