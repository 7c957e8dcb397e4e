#![no_main]
//! Fuzz target `chunks`: reassembling a chunked f32 payload and decoding the wire messages
//! that carry it.
//!
//! An input is an [`Input`] built by `arbitrary`: a declared length, the receiver's limits
//! (either a coordinator-style configured limit or the client's "limit = declared length"
//! pattern from `client/src/cache.rs`), a list of chunk operations, and raw bytes that are
//! decoded as `UpdatePart`, `Task` and `Chunk` with prost and as little-endian f32.
//!
//! Besides "never panic, never allocate absurdly", it checks the assembler against a model:
//! a refused chunk leaves the assembler unchanged, an accepted one appends exactly its values,
//! and a successful `finish` returns exactly the declared number of values, bit for bit.

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use shoal_proto::v1::{Chunk, Task, UpdatePart, update_part::Part};
use shoal_proto::{ChunkAssembler, MAX_CHUNK_BYTES, decode_f32};

/// Largest `max_values` limit the coordinator-style receiver is given: the shipped default,
/// `Limits::max_update_values` (256 Mi values).
const MAX_VALUES_CAP: u32 = 256 << 20;

/// Whether the client's `limit = declared` pattern may declare any length. It crashed
/// `ChunkAssembler::new` until the eager `Vec::with_capacity(declared)` was capped (finding F1
/// in README.md; reproducer in `regressions/chunks/`). `false` caps the declared length at
/// [`MAX_VALUES_CAP`] in that mode, for fuzzing an older tree.
const CLIENT_LIMIT_FIXED: bool = true;

/// The receiver's limits.
#[derive(Arbitrary, Debug)]
enum Limit {
    /// A configured limit, as the coordinator passes `Limits::max_update_values`.
    Configured {
        max_values: u32,
        max_chunk_bytes: u32,
    },
    /// The client's pattern in `client/src/cache.rs`: limit = the declared length itself.
    ClientFetch,
}

/// One step of a transfer.
#[derive(Arbitrary, Debug)]
enum Op {
    /// A chunk at the offset that follows what was received (the well-behaved sender).
    Next(Vec<u8>),
    /// A chunk claiming any offset (gaps, overlaps, duplicates).
    At { offset: u64, data: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    declared: u64,
    limit: Limit,
    ops: Vec<Op>,
    finish: bool,
    wire: Vec<u8>,
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn assemble(input: &Input) {
    let (declared, max_values, max_chunk_bytes) = match input.limit {
        Limit::Configured {
            max_values,
            max_chunk_bytes,
        } => (
            input.declared,
            max_values.min(MAX_VALUES_CAP) as usize,
            max_chunk_bytes as usize,
        ),
        Limit::ClientFetch => {
            let declared = if CLIENT_LIMIT_FIXED {
                input.declared
            } else {
                input.declared.min(u64::from(MAX_VALUES_CAP))
            };
            let limit = usize::try_from(declared).unwrap_or(usize::MAX);
            (declared, limit, MAX_CHUNK_BYTES)
        }
    };
    let Ok(mut asm) = ChunkAssembler::new(declared, max_values, max_chunk_bytes) else {
        assert!(
            declared > max_values as u64,
            "refused a payload within the limit"
        );
        return;
    };
    // The bytes the assembler should hold, maintained independently.
    let mut accepted: Vec<u8> = Vec::new();
    for op in &input.ops {
        let chunk = match op {
            Op::Next(data) => Chunk {
                offset: asm.received() as u64,
                data: Bytes::copy_from_slice(data),
            },
            Op::At { offset, data } => Chunk {
                offset: *offset,
                data: Bytes::copy_from_slice(data),
            },
        };
        let before = asm.received();
        match asm.push(&chunk) {
            Ok(()) => {
                assert!(chunk.data.len() <= max_chunk_bytes);
                assert_eq!(chunk.offset, before as u64);
                accepted.extend_from_slice(&chunk.data);
                assert_eq!(asm.received(), accepted.len() / 4);
                assert!(asm.received() as u64 <= declared);
            }
            Err(_) => assert_eq!(asm.received(), before, "a refused chunk changed the state"),
        }
    }
    if input.finish {
        if let Ok(values) = asm.finish() {
            assert_eq!(values.len() as u64, declared);
            let mut expected = Vec::new();
            assert!(decode_f32(&accepted, &mut expected).is_ok());
            assert_eq!(bits(&values), bits(&expected));
        }
    }
}

fn decode_wire(wire: &[u8]) {
    let mut out = vec![0.5f32];
    let ok = decode_f32(wire, &mut out).is_ok();
    assert_eq!(ok, wire.len() % 4 == 0);
    assert_eq!(out.len(), 1 + if ok { wire.len() / 4 } else { 0 });

    if let Ok(part) = UpdatePart::decode(wire) {
        // What the coordinator does with a header: size the payload against its limit.
        if let Some(Part::Header(header)) = &part.part {
            let _ =
                ChunkAssembler::new(header.payload_len, MAX_VALUES_CAP as usize, MAX_CHUNK_BYTES);
        }
        reencode(&part);
    }
    if let Ok(task) = Task::decode(wire) {
        reencode(&task);
    }
    if let Ok(chunk) = Chunk::decode(wire) {
        reencode(&chunk);
    }
}

/// Whatever decodes must re-encode to bytes that decode again to the same size.
/// (Not byte-equal: prost maps are `HashMap`s, so field order may differ.)
fn reencode<M: Message + Default>(message: &M) {
    let bytes = message.encode_to_vec();
    assert_eq!(bytes.len(), message.encoded_len());
    let again = M::decode(bytes.as_slice()).expect("re-encoded message must decode");
    assert_eq!(again.encoded_len(), bytes.len());
}

fuzz_target!(|input: Input| {
    assemble(&input);
    decode_wire(&input.wire);
});
