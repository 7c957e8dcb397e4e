//! Encoding a finished update as its task asks (`--compress`), with top-k's error feedback.
//!
//! A FedAvg update travels as its difference from the round's global state (that is what
//! shrinks well: the model itself does not), a FedSGD gradient as itself; the receiver adds
//! the global state back. Top-k leaves most of the difference behind; the client keeps what it
//! left out and adds it to its next update (Stich et al. 2018), so nothing is lost for good,
//! only late.

use crate::carried::{At, Carried, Kind};
use crate::error::{ClientError, Result};
use crate::work::{LocalUpdate, change_base};
use bytes::Bytes;
use shoal_proto::v1::{Chunk, Compression, Task};
use shoal_proto::{Codec, shared_chunks};
use std::sync::Arc;

/// An update encoded for the wire, once: every push of it (a redelivery too) sends the same
/// memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    /// Plain f32 values: their little-endian bytes travel, views of the vector itself, and a
    /// coordinator in the same process is handed the vector.
    Plain(Arc<Vec<f32>>),
    /// Values compressed as the task asks.
    Packed {
        /// The encoding.
        compression: Compression,
        /// The bytes sent in chunks.
        bytes: Bytes,
        /// Values they decode to.
        values: u64,
    },
}

impl Encoded {
    /// The header's `compression`.
    pub fn compression(&self) -> Compression {
        match self {
            Encoded::Plain(_) => Compression::None,
            Encoded::Packed { compression, .. } => *compression,
        }
    }

    /// Values the update decodes to (the header's `payload_len`).
    pub fn values(&self) -> u64 {
        match self {
            Encoded::Plain(values) => values.len() as u64,
            Encoded::Packed { values, .. } => *values,
        }
    }

    /// The header's `encoded_len`: 0 for plain values, which are counted in values.
    pub fn encoded_len(&self) -> u64 {
        match self {
            Encoded::Plain(_) => 0,
            Encoded::Packed { bytes, .. } => bytes.len() as u64,
        }
    }

    /// The bytes that travel: for plain values, the vector's own (no copy on little-endian
    /// machines).
    pub fn bytes(&self) -> Bytes {
        match self {
            Encoded::Plain(values) => shoal_proto::f32_bytes(values.clone()),
            Encoded::Packed { bytes, .. } => bytes.clone(),
        }
    }

    /// The chunks to send, at most `chunk_bytes` each: offsets count values for plain
    /// values, bytes otherwise.
    pub fn chunks(&self, chunk_bytes: usize) -> impl Iterator<Item = Chunk> + use<> {
        let width = match self {
            Encoded::Plain(_) => 4,
            Encoded::Packed { .. } => 1,
        };
        shared_chunks(self.bytes(), width, chunk_bytes)
    }
}

/// What top-k leaves out, as carried values.
#[derive(Debug)]
pub enum Residual {}

impl Kind for Residual {
    const MAGIC: &'static [u8; 8] = b"SHOALEF1";
    const EXTENSION: &'static str = "topk";
}

/// What top-k left out of a client's updates, kept between rounds ([`Carried`]: a round asked
/// again starts from what entered it), in memory or in a file (`shoal client --state-dir`).
pub type ErrorFeedback = Carried<Residual>;

/// `update` encoded as `task` asks, or as plain values when it asks for those (or is not a
/// FedAvg or FedSGD task); either way `encoded` holds what travels and `payload` is empty.
/// `global` is the round's global state; `feedback` the error feedback of client
/// `client_id`, used and updated by top-k.
pub fn encode_update(
    task: &Task,
    global: &[f32],
    mut update: LocalUpdate,
    client_id: &str,
    feedback: &mut ErrorFeedback,
) -> Result<LocalUpdate> {
    let codec = Codec::from_wire(task.compression, task.topk_fraction)
        .map_err(|e| ClientError::BadTask(e.to_string()))?;
    let base = match codec {
        Codec::None => None,
        _ => change_base(task, global, update.payload.len())?,
    };
    let Some(base) = base else {
        update.encoded = Some(Encoded::Plain(std::mem::take(&mut update.payload)));
        return Ok(update);
    };
    let mut values = Arc::unwrap_or_clone(std::mem::take(&mut update.payload));
    values.iter_mut().zip(base).for_each(|(v, g)| *v -= g);
    let bytes = match codec {
        Codec::TopK { fraction } => {
            let fence = task.fence.clone().unwrap_or_default();
            let at = At {
                client_id,
                run_id: &fence.run_id,
                round: fence.round,
            };
            let entering = feedback.entering(at, values.len()).map(<[f32]>::to_vec);
            if let Some(entering) = &entering {
                values.iter_mut().zip(entering).for_each(|(v, e)| *v += e);
            }
            let kept = Codec::topk_indices(&values, fraction);
            let bytes = Codec::encode_kept(&values, &kept);
            let mut left = values.clone();
            kept.iter().for_each(|&i| left[i] = 0.0);
            let entering = entering.unwrap_or_else(|| vec![0.0; values.len()]);
            feedback.record(at, entering, left)?;
            bytes
        }
        _ => codec.encode(&values),
    };
    update.encoded = Some(Encoded::Packed {
        compression: codec.wire().0,
        bytes: Bytes::from(bytes),
        values: values.len() as u64,
    });
    Ok(update)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::v1::Fence;
    use shoal_proto::v1::TaskKind;

    fn task(kind: TaskKind, codec: Codec, round: u32) -> Task {
        let (compression, topk_fraction) = codec.wire();
        Task {
            kind: kind as i32,
            compression: compression as i32,
            topk_fraction,
            fence: Some(Fence {
                round,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn update(payload: Vec<f32>) -> LocalUpdate {
        LocalUpdate::plain(1, payload)
    }

    fn decoded(codec: Codec, u: &LocalUpdate) -> Vec<f32> {
        let e = u.encoded.as_ref().unwrap();
        codec.decode(&e.bytes(), e.values() as usize).unwrap()
    }

    #[test]
    fn fit_updates_travel_as_their_difference_from_the_global_state() {
        let global = vec![10.0, 20.0, 30.0];
        let t = task(TaskKind::Fit, Codec::Fp16, 1);
        let mut fb = ErrorFeedback::default();
        let u = encode_update(&t, &global, update(vec![10.5, 19.0, 30.25]), "c1", &mut fb).unwrap();
        assert!(u.payload.is_empty());
        assert_eq!(decoded(Codec::Fp16, &u), vec![0.5, -1.0, 0.25]);
        let none = task(TaskKind::Fit, Codec::None, 1);
        let plain = encode_update(&none, &global, update(vec![1.0; 3]), "c1", &mut fb).unwrap();
        assert!(plain.payload.is_empty());
        assert_eq!(plain.encoded, Some(Encoded::Plain(Arc::new(vec![1.0; 3]))));
        assert_eq!(decoded(Codec::None, &plain), vec![1.0; 3]);
    }

    #[test]
    fn topk_carries_what_it_left_out_into_the_next_round_and_a_retry_repeats_itself() {
        let codec = Codec::topk(0.5).unwrap();
        let global = vec![0.0; 4];
        let mut fb = ErrorFeedback::default();
        let first = |fb: &mut ErrorFeedback| {
            let t = task(TaskKind::Fit, codec, 3);
            encode_update(&t, &global, update(vec![4.0, 1.0, -3.0, 0.5]), "c1", fb).unwrap()
        };
        let a = first(&mut fb);
        assert_eq!(decoded(codec, &a), vec![4.0, 0.0, -3.0, 0.0]);
        // The same round again starts from what entered it, not from what it left out.
        assert_eq!(first(&mut fb), a);
        // The next round adds what round 3 left out (1.0 and 0.5).
        let t = task(TaskKind::Fit, codec, 4);
        let b = encode_update(
            &t,
            &global,
            update(vec![0.0, 0.25, 0.0, 0.75]),
            "c1",
            &mut fb,
        )
        .unwrap();
        assert_eq!(decoded(codec, &b), vec![0.0, 1.25, 0.0, 1.25]);
    }

    #[test]
    fn kmeans_updates_are_never_compressed() {
        let t = task(TaskKind::KmeansStep, Codec::Int8, 1);
        let u = encode_update(
            &t,
            &[],
            update(vec![1.0, 2.0]),
            "c1",
            &mut ErrorFeedback::default(),
        );
        assert_eq!(
            u.unwrap().encoded,
            Some(Encoded::Plain(Arc::new(vec![1.0, 2.0])))
        );
    }

    /// Each chunk's offset and length.
    fn spans(chunks: &[Chunk]) -> Vec<(u64, usize)> {
        chunks.iter().map(|c| (c.offset, c.data.len())).collect()
    }

    #[test]
    fn plain_values_travel_in_chunks_counted_in_values_and_compressed_ones_in_bytes() {
        let plain = Encoded::Plain(Arc::new((0..10).map(|i| i as f32).collect()));
        assert_eq!(plain.encoded_len(), 0);
        let chunks: Vec<Chunk> = plain.chunks(16).collect();
        assert_eq!(spans(&chunks), vec![(0, 16), (4, 16), (8, 8)]);
        let mut back = Vec::new();
        for c in &chunks {
            shoal_proto::decode_f32(&c.data, &mut back).unwrap();
        }
        assert_eq!(back, (0..10).map(|i| i as f32).collect::<Vec<_>>());
        let packed = Encoded::Packed {
            compression: Compression::Int8,
            bytes: Bytes::from(vec![7u8; 10]),
            values: 6,
        };
        assert_eq!(packed.encoded_len(), 10);
        let chunks: Vec<Chunk> = packed.chunks(4).collect();
        assert_eq!(spans(&chunks), vec![(0, 4), (4, 4), (8, 2)]);
    }
}
