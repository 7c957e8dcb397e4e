//! Update compression for slow links: how an update is encoded into bytes and decoded back.
//!
//! The three lossy encodings of [`Codec`] are pure, deterministic functions of the values, so a
//! seeded run replays to the same bits and a coordinator that resumes decodes a re-sent update
//! exactly as its predecessor did. What is encoded is decided by the sender (the difference
//! from the round's global state for FedAvg, the gradient for FedSGD); decoding refuses every
//! byte string an honest encoder cannot produce.

use std::fmt;
use std::str::FromStr;

use half::f16;

use crate::error::{ProtoError, Result};
use crate::v1::Compression;

/// Values per int8 block, each with its own scale.
pub const INT8_BLOCK: usize = 256;

/// An update's encoding on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Codec {
    /// Plain f32 values.
    None,
    /// Half precision: 2 bytes a value, relative error below 2^-11.
    Fp16,
    /// One signed byte a value and an f32 scale per block of [`INT8_BLOCK`]: error at most half
    /// a step (the block's largest magnitude / 254).
    Int8,
    /// Only the largest-magnitude `fraction` of the values, as (index, value) pairs.
    TopK {
        /// Share of the values sent, in (0, 1].
        fraction: f64,
    },
}

impl Codec {
    /// The codec a task names; refuses an unknown encoding or a top-k fraction outside (0, 1].
    pub fn from_wire(compression: i32, topk_fraction: f64) -> Result<Codec> {
        match Compression::try_from(compression) {
            Ok(Compression::None) => Ok(Codec::None),
            Ok(Compression::Fp16) => Ok(Codec::Fp16),
            Ok(Compression::Int8) => Ok(Codec::Int8),
            Ok(Compression::Topk) => Codec::topk(topk_fraction),
            Err(_) => Err(bad(format!("unknown compression {compression}"))),
        }
    }

    /// Top-k with `fraction` checked to lie in (0, 1].
    pub fn topk(fraction: f64) -> Result<Codec> {
        if fraction > 0.0 && fraction <= 1.0 {
            Ok(Codec::TopK { fraction })
        } else {
            Err(bad(format!(
                "top-k fraction must be in (0, 1], got {fraction}"
            )))
        }
    }

    /// The wire enum and top-k fraction (0 for the others), as a task carries them.
    pub fn wire(&self) -> (Compression, f64) {
        match *self {
            Codec::None => (Compression::None, 0.0),
            Codec::Fp16 => (Compression::Fp16, 0.0),
            Codec::Int8 => (Compression::Int8, 0.0),
            Codec::TopK { fraction } => (Compression::Topk, fraction),
        }
    }

    /// Values top-k keeps of `len`: `ceil(fraction * len)`, at least one of a non-empty update.
    pub fn topk_count(fraction: f64, len: usize) -> usize {
        ((fraction * len as f64).ceil() as usize).clamp(len.min(1), len)
    }

    /// Bytes the encoding of `len` values takes (exact for every codec).
    pub fn encoded_len(&self, len: usize) -> usize {
        match *self {
            Codec::None => 4 * len,
            Codec::Fp16 => 2 * len,
            Codec::Int8 => len + 4 * len.div_ceil(INT8_BLOCK),
            Codec::TopK { fraction } => 4 + 8 * Codec::topk_count(fraction, len),
        }
    }

    /// The bytes of `values`. Top-k's sender keeps what it leaves out itself: it chooses with
    /// [`Codec::topk_indices`] and encodes that choice with [`Codec::encode_kept`].
    pub fn encode(&self, values: &[f32]) -> Vec<u8> {
        match *self {
            Codec::None => crate::chunk::encode_f32(values),
            Codec::TopK { fraction } => {
                Codec::encode_kept(values, &Codec::topk_indices(values, fraction))
            }
            Codec::Fp16 => {
                let mut out = Vec::with_capacity(self.encoded_len(values.len()));
                out.extend(
                    values
                        .iter()
                        .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()),
                );
                out
            }
            Codec::Int8 => {
                let mut out = Vec::with_capacity(self.encoded_len(values.len()));
                for block in values.chunks(INT8_BLOCK) {
                    let scale = block.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                    out.extend_from_slice(&scale.to_le_bytes());
                    out.extend(block.iter().map(|&v| quantize(v, scale) as u8));
                }
                out
            }
        }
    }

    /// Top-k's bytes for the values of `values` at `kept` (ascending, as
    /// [`Codec::topk_indices`] returns them).
    pub fn encode_kept(values: &[f32], kept: &[usize]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * kept.len());
        out.extend_from_slice(&(kept.len() as u32).to_le_bytes());
        for &i in kept {
            out.extend_from_slice(&(i as u32).to_le_bytes());
            out.extend_from_slice(&values[i].to_le_bytes());
        }
        out
    }

    /// Indices of the `topk_count` largest magnitudes of `values`, ascending; ties go to the
    /// lower index, so the choice is a function of the values alone.
    pub fn topk_indices(values: &[f32], fraction: f64) -> Vec<usize> {
        let k = Codec::topk_count(fraction, values.len());
        let mut order: Vec<usize> = (0..values.len()).collect();
        // Larger magnitude first, then lower index: a total order on distinct keys.
        let key = |&i: &usize| (std::cmp::Reverse(values[i].abs().to_bits()), i);
        if k < order.len() {
            order.select_nth_unstable_by_key(k, key);
            order.truncate(k);
        }
        order.sort_unstable();
        order
    }

    /// The `len` values `bytes` encode. Refuses a length that does not match, a non-finite
    /// or negative scale, and top-k indices out of range or not strictly increasing.
    pub fn decode(&self, bytes: &[u8], len: usize) -> Result<Vec<f32>> {
        let expected = self.encoded_len(len);
        if bytes.len() != expected {
            return Err(bad(format!(
                "{} encoding of {len} values takes {expected} bytes, got {}",
                self,
                bytes.len()
            )));
        }
        match *self {
            Codec::None => {
                let mut out = Vec::with_capacity(len);
                crate::chunk::decode_f32(bytes, &mut out)?;
                Ok(out)
            }
            Codec::Fp16 => Ok(bytes
                .chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect()),
            Codec::Int8 => {
                let mut out = Vec::with_capacity(len);
                let mut rest = bytes;
                while out.len() < len {
                    let n = INT8_BLOCK.min(len - out.len());
                    let (scale, block) = rest.split_at(4);
                    let scale = f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
                    if !(scale.is_finite() && scale >= 0.0) {
                        return Err(bad(format!(
                            "int8 block scale {scale} is not finite and >= 0"
                        )));
                    }
                    out.extend(block[..n].iter().map(|&q| f32::from(q as i8) * scale));
                    rest = &block[n..];
                }
                Ok(out)
            }
            Codec::TopK { fraction } => {
                let count = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                let keeps = Codec::topk_count(fraction, len);
                if count as usize != keeps {
                    return Err(bad(format!(
                        "top-k update says it keeps {count} values, the fraction keeps {keeps}"
                    )));
                }
                let mut out = vec![0.0f32; len];
                let mut next = 0usize;
                for pair in bytes[4..].chunks_exact(8) {
                    let index = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize;
                    if index < next || index >= len {
                        return Err(bad(format!(
                            "top-k index {index} out of order or beyond {len} values"
                        )));
                    }
                    out[index] = f32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
                    next = index + 1;
                }
                Ok(out)
            }
        }
    }
}

/// `v / scale` rounded half away from zero, within ±127 (0 for an all-zero block).
fn quantize(v: f32, scale: f32) -> i8 {
    if scale > 0.0 {
        (v / scale).round().clamp(-127.0, 127.0) as i8
    } else {
        0
    }
}

fn bad(message: String) -> ProtoError {
    ProtoError::BadEncoding(message)
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::None => f.write_str("none"),
            Codec::Fp16 => f.write_str("fp16"),
            Codec::Int8 => f.write_str("int8"),
            Codec::TopK { fraction } => write!(f, "topk:{fraction}"),
        }
    }
}

impl FromStr for Codec {
    type Err = ProtoError;

    /// `none`, `fp16`, `int8` or `topk:FRACTION`.
    fn from_str(s: &str) -> Result<Codec> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Codec::None),
            "fp16" => Ok(Codec::Fp16),
            "int8" => Ok(Codec::Int8),
            other => {
                match other.strip_prefix("topk:") {
                    Some(fraction) => Codec::topk(fraction.trim().parse().map_err(|_| {
                        bad(format!("{fraction:?} is not a fraction, e.g. topk:0.1"))
                    })?),
                    None => Err(bad(format!(
                        "unknown compression {s:?}: expected none, fp16, int8 or topk:FRACTION"
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + seed as f32) * 0.618).sin() * (1.0 + (i % 7) as f32))
            .collect()
    }

    #[test]
    fn every_codec_round_trips_within_its_bound() {
        let v = values(1000, 1);
        for codec in [Codec::None, Codec::Fp16, Codec::Int8] {
            let bytes = codec.encode(&v);
            assert_eq!(bytes.len(), codec.encoded_len(v.len()), "{codec}");
            let back = codec.decode(&bytes, v.len()).unwrap();
            for (block, (a, b)) in v
                .chunks(INT8_BLOCK)
                .zip(back.chunks(INT8_BLOCK))
                .enumerate()
            {
                let max = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                for (x, y) in a.iter().zip(b) {
                    let bound = match codec {
                        Codec::None => 0.0,
                        Codec::Fp16 => x.abs() / 2048.0,
                        _ => max / 254.0 * 1.0001,
                    };
                    assert!((x - y).abs() <= bound, "{codec} block {block}: {x} vs {y}");
                }
            }
        }
        assert_eq!(Codec::Int8.encoded_len(1000), 1000 + 4 * 4);
        assert_eq!(Codec::Fp16.encoded_len(1000), 2000);
    }

    #[test]
    fn topk_keeps_the_largest_magnitudes_and_zeroes_the_rest() {
        let v = vec![0.5, -3.0, 0.1, 2.0, -2.0, 0.0];
        let codec = Codec::topk(0.5).unwrap();
        assert_eq!(Codec::topk_indices(&v, 0.5), vec![1, 3, 4]);
        let back = codec.decode(&codec.encode(&v), v.len()).unwrap();
        assert_eq!(back, vec![0.0, -3.0, 0.0, 2.0, -2.0, 0.0]);
        // Ties go to the lower index.
        assert_eq!(Codec::topk_indices(&[1.0, -1.0, 1.0], 0.5), vec![0, 1]);
        assert_eq!(Codec::topk_count(0.001, 10), 1);
        assert_eq!(Codec::topk_count(1.0, 10), 10);
    }

    #[test]
    fn bytes_no_encoder_makes_are_refused() {
        let v = values(300, 2);
        let int8 = Codec::Int8.encode(&v);
        assert!(Codec::Int8.decode(&int8[1..], 300).is_err());
        let mut nan_scale = int8.clone();
        nan_scale[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Codec::Int8.decode(&nan_scale, 300).is_err());
        let topk = Codec::topk(0.01).unwrap();
        let mut bytes = topk.encode(&v);
        assert!(topk.decode(&bytes, 3).is_err(), "wrong length");
        let mut miscounted = bytes.clone();
        miscounted[0] ^= 1;
        assert!(topk.decode(&miscounted, 300).is_err(), "count");
        // Swap the first two pairs: indices no longer increase.
        let (a, b) = (bytes[4..12].to_vec(), bytes[12..20].to_vec());
        bytes[4..12].copy_from_slice(&b);
        bytes[12..20].copy_from_slice(&a);
        assert!(topk.decode(&bytes, 300).is_err());
        assert!(Codec::from_wire(9, 0.0).is_err());
        assert!(Codec::from_wire(Compression::Topk as i32, 0.0).is_err());
        assert!(Codec::from_wire(Compression::Topk as i32, 1.5).is_err());
    }

    #[test]
    fn names_parse_and_print() {
        for name in ["none", "fp16", "int8", "topk:0.1"] {
            assert_eq!(name.parse::<Codec>().unwrap().to_string(), name);
        }
        for bad in ["fp8", "topk", "topk:0", "topk:x", "topk:1.5", ""] {
            assert!(bad.parse::<Codec>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn decoding_is_a_function_of_the_bytes(v in proptest::collection::vec(-1e3f32..1e3, 1..700), f in 0.001f64..1.0) {
            for codec in [Codec::Fp16, Codec::Int8, Codec::TopK { fraction: f }] {
                let bytes = codec.encode(&v);
                prop_assert_eq!(&bytes, &codec.encode(&v));
                let back = codec.decode(&bytes, v.len()).unwrap();
                prop_assert_eq!(back.len(), v.len());
                prop_assert!(back.iter().all(|x| x.is_finite()));
            }
        }
    }
}
