//! The fleet protocol without a wire, for simulated clients that live in the coordinator's own
//! process (`shoal run`).
//!
//! Over gRPC every update is protobuf-encoded, framed by HTTP/2, copied into a socket and out
//! of it, and decoded again; for a fleet of 1M-parameter models that is most of a round. A
//! [`DirectFleet`] is the same six calls with the same messages and the same refusals
//! ([`tonic::Status`], reasons in [`crate::REASON_HEADER`]), answered by calling the
//! coordinator's handlers in place: the chunks a client sends are the chunks the coordinator
//! receives, and the chunks it serves are the ones clients read. Every check of a message
//! (fences, admission, lengths, chunk sizes, decoding, finiteness, the norm bound) applies as
//! over the network. What belongs to connections does not: credentials (in-process callers
//! are trusted), gRPC message limits, the caps on open streams and the request deadline.

use crate::v1::{
    AbandonReply, AbandonRequest, Chunk, FetchRequest, JoinReply, JoinRequest, LeaveReply,
    LeaveRequest, PullReply, PullRequest, PushReply, UpdateHeader, UpdatePart,
};
use std::sync::Arc;
use tonic::Status;
use tonic::codegen::BoxStream;

/// A download of the round's global state, chunk by chunk.
pub type ChunkStream = BoxStream<Chunk>;

/// The fleet protocol answered in this process (see the module docs). The coordinator's
/// service implements it; a fleet given one calls it instead of dialling.
#[tonic::async_trait]
pub trait DirectFleet: std::fmt::Debug + Send + Sync + 'static {
    /// As the `Join` RPC.
    async fn join(&self, request: JoinRequest) -> Result<JoinReply, Status>;
    /// As the `Pull` RPC: a long poll, answered with a task, a wait or the end of the run.
    async fn pull(&self, request: PullRequest) -> Result<PullReply, Status>;
    /// As the `FetchGlobal` RPC.
    async fn fetch_global(&self, request: FetchRequest) -> Result<ChunkStream, Status>;
    /// As the `PushUpdate` RPC: the header first, then the chunks, as a client streams them.
    async fn push_update(&self, parts: Vec<UpdatePart>) -> Result<PushReply, Status>;
    /// As the `PushUpdate` RPC for a plain update (no compression), handed over as the
    /// values themselves instead of their bytes in chunks: the coordinator checks and folds
    /// the client's vector, shared, never copied. The header's length and encoding are
    /// checked as a streamed update's are.
    async fn push_values(
        &self,
        header: UpdateHeader,
        values: Arc<Vec<f32>>,
    ) -> Result<PushReply, Status>;
    /// As the `Leave` RPC.
    async fn leave(&self, request: LeaveRequest) -> Result<LeaveReply, Status>;
    /// As the `Abandon` RPC.
    async fn abandon(&self, request: AbandonRequest) -> Result<AbandonReply, Status>;
}
