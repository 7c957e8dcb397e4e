//! Errors raised while decoding wire payloads.

use thiserror::Error;

/// Why a payload from a peer could not be accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// Compressed bytes that no encoder makes, or an unknown encoding.
    #[error("bad update encoding: {0}")]
    BadEncoding(String),
    /// A chunk's byte length is not a whole number of f32 values.
    #[error("chunk of {0} bytes is not a multiple of 4")]
    Misaligned(usize),
    /// A chunk exceeds the negotiated maximum.
    #[error("chunk of {got} bytes exceeds the limit of {limit} bytes")]
    ChunkTooLarge {
        /// Bytes in the chunk.
        got: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// A chunk does not start where the previous one ended (gap, overlap or duplicate).
    #[error("chunk at offset {got} out of order: expected offset {expected}")]
    OutOfOrder {
        /// Offset the chunk claims.
        got: u64,
        /// Offset that follows what was received so far.
        expected: u64,
    },
    /// More values arrived than the header declared.
    #[error("payload overflows its declared length of {declared} values")]
    Overflow {
        /// Values declared in the header.
        declared: usize,
    },
    /// The stream ended before every declared value arrived.
    #[error("payload truncated: {got} of {declared} values received")]
    Truncated {
        /// Values received.
        got: usize,
        /// Values declared.
        declared: usize,
    },
    /// The declared payload is larger than the receiver allows.
    #[error("payload of {declared} values exceeds the limit of {limit} values")]
    TooLarge {
        /// Values declared.
        declared: u64,
        /// The configured maximum.
        limit: usize,
    },
    /// A required message field was absent.
    #[error("missing field: {0}")]
    MissingField(&'static str),
}

/// Result alias for wire decoding.
pub type Result<T> = std::result::Result<T, ProtoError>;
