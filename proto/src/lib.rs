//! The Shoal wire contract: the generated gRPC code for `proto/shoal.proto` and the few helpers
//! every peer needs to speak it (payload chunking, fences).
//!
//! Nothing here knows about models or strategies; both the coordinator and the client build on
//! these types and convert them at their edges.

pub mod chunk;
pub mod compress;
pub mod direct;
mod error;
pub mod fence;
pub mod shared_pull;
pub mod wire_codec;

pub use chunk::{
    Assembler, ByteAssembler, ChunkAssembler, DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, SumAssembler,
    WireValue, decode_f32, encode_chunks, f32_bytes, message_limit, shared_chunks,
};
pub use compress::Codec;
pub use direct::{ChunkStream, DirectFleet};
pub use error::{ProtoError, Result};
pub use shared_pull::{MAX_SHARED_PULL, MAX_SHARED_PULL_ID_BYTES};

/// Metadata key of the refusal reason the coordinator puts on every status it sends itself
/// (e.g. `stale_fence`). A status without it came from HTTP/2 or the transport, whatever its
/// code says, so a client may treat it as transient and retry.
pub const REASON_HEADER: &str = "shoal-reason";

/// The `authorization` value of bearer `token` (`Bearer TOKEN`, marked sensitive so it is
/// never logged), as clients and sub-aggregators send it; `None` unless the token, trimmed, is
/// printable ASCII without spaces.
pub fn bearer_header(
    token: &str,
) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}").parse().ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// Metadata key a standby coordinator puts on its refusals (reason `standby`): the URL of the
/// leader clients should move to, when one is elected.
pub const LEADER_HEADER: &str = "shoal-leader";

/// Generated protobuf messages and the tonic client/server for `shoal.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}
