//! Decoding of bincode bytes read back from disk, with a memory bound that follows the input.
//!
//! bincode 2 allocates a string or vector at its declared length before reading it
//! (bincode-org/bincode#764), and a checksum does not stop a forged file: a crafted length prefix
//! could make recovery allocate without bound. bincode's answer is a byte limit, but a fixed
//! limit either lets a small file claim gigabytes or refuses an honest big checkpoint. So the
//! limit here scales with the input: an honest encoding never claims more than a few bytes of
//! memory per byte of input (the worst case is a one-byte varint decoded into a `u64`, claimed
//! once as a container slot and once as bytes read), so 16 per byte, rounded up to a tier
//! because bincode's limit is a const generic.

use bincode::config::standard;
use bincode::error::DecodeError;
use bincode::serde::decode_from_slice as decode;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// Decodes `bytes`, allowing at most 16 bytes of claimed memory per input byte (by tier: from
/// 64 KiB for tiny inputs up to 64 GiB for checkpoints above 1 GiB). Returns the value and the
/// number of bytes used, like `bincode::serde::decode_from_slice`.
pub fn decode_bounded<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), DecodeError> {
    match bytes.len() {
        n if n <= 4 * KIB => decode(bytes, standard().with_limit::<{ 64 * KIB }>()),
        n if n <= MIB => decode(bytes, standard().with_limit::<{ 16 * MIB }>()),
        n if n <= 64 * MIB => decode(bytes, standard().with_limit::<{ GIB }>()),
        n if n <= GIB => decode(bytes, standard().with_limit::<{ 16 * GIB }>()),
        _ => decode(bytes, standard().with_limit::<{ 64 * GIB }>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, standard()).unwrap()
    }

    #[test]
    fn honest_encodings_decode_at_every_tier() {
        let small: Vec<u64> = (0..100).collect();
        let (back, used): (Vec<u64>, usize) = decode_bounded(&encode(&small)).unwrap();
        assert_eq!(back, small);
        assert_eq!(used, encode(&small).len());

        // One-byte varints decoded into u64: the densest honest claim per input byte.
        let dense = vec![1u64; 3 * MIB];
        let bytes = encode(&dense);
        assert!(bytes.len() > MIB, "lands in the 64 MiB tier");
        let (back, _): (Vec<u64>, usize) = decode_bounded(&bytes).unwrap();
        assert_eq!(back.len(), dense.len());

        let floats = vec![0.5f32; 20 * MIB];
        let (back, _): (Vec<f32>, usize) = decode_bounded(&encode(&floats)).unwrap();
        assert_eq!(back.len(), floats.len());
    }

    #[test]
    fn a_small_input_cannot_claim_a_huge_allocation() {
        // A string whose length prefix claims 1 TiB, in a few bytes.
        let mut bytes = vec![253u8]; // varint tag: u64 follows
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        bytes.extend_from_slice(b"abc");
        let err = decode_bounded::<String>(&bytes).unwrap_err();
        assert!(
            matches!(err, DecodeError::LimitExceeded),
            "unexpected error: {err:?}"
        );
        // Just over the tiny tier's limit is refused too, not only absurd lengths.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&(65 * KIB as u64).to_le_bytes());
        assert!(matches!(
            decode_bounded::<String>(&bytes),
            Err(DecodeError::LimitExceeded)
        ));
    }
}
