//! Every way the coordinator turns a client down, each with its gRPC code and its stable reason
//! in one table ([`Refusal::entry`]).
//!
//! The reason travels with every status the coordinator writes (the `shoal-reason` metadata,
//! [`shoal_proto::REASON_HEADER`]): a client retries statuses without it, because those come
//! from the transport, not from the coordinator. Reasons are also the keys refusals are counted
//! under (`refusals` in the run summary), so they never change once released.

use std::sync::Arc;
use tonic::Code;

/// Where a server counts what it refuses: the coordinator's counters (and its metrics), or a
/// sub-aggregator's. The listener, the request gate and the undecodable-request counter take
/// one, so coordinators and sub-aggregators serve behind the same defences.
pub trait CountRefusals: Send + Sync + std::fmt::Debug {
    /// Counts one refusal.
    fn count_refusal(&self, refusal: Refusal);
}

/// A shared [`CountRefusals`].
pub type RefusalCounter = Arc<dyn CountRefusals>;

/// Why a request, stream or connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The client never joined, or left.
    UnknownClient,
    /// The registry is full.
    TooManyClients,
    /// The client id is empty, too long or not printable.
    BadClientId,
    /// The fence names another run, incarnation or round than the open one.
    StaleFence,
    /// The client was not selected for the open round.
    NotSelected,
    /// The client already delivered its update for this round.
    Duplicate,
    /// An earlier upload of the same update is still being received.
    InFlight,
    /// The update has the wrong number of values or counts.
    WrongLength,
    /// The update carries NaN or infinity.
    NonFinite,
    /// The update's example count is zero or above the limit.
    BadWeight,
    /// The update's counts do not add up to its example count.
    CountsMismatch,
    /// A value is too large for the exact accumulator.
    OutOfRange,
    /// The update's norm is above the bound and the policy rejects it.
    NormTooLarge,
    /// A message misses a field, or carries a value it must not.
    Malformed,
    /// A payload chunk is not a whole number of values.
    ChunkMisaligned,
    /// A payload chunk is larger than allowed.
    ChunkTooLarge,
    /// Payload chunks arrived out of order.
    ChunkOutOfOrder,
    /// The payload carries more values than its header declared.
    PayloadOverflow,
    /// The payload ended before the values its header declared.
    PayloadTruncated,
    /// The header declares more values than allowed.
    PayloadTooLarge,
    /// The client pulls faster than its rate.
    RateLimited,
    /// The credentials are valid but another client's.
    Impersonation,
    /// No valid credentials.
    Unauthenticated,
    /// The coordinator is stopping; the client keeps its update and tries again.
    ShuttingDown,
    /// The coordinator's storage failed; the run stops, the client keeps its update.
    Storage,
    /// Something failed inside the coordinator.
    Internal,
    /// A message over the size limit (refused by the gRPC layer before any handler).
    MessageTooLarge,
    /// Bytes that are not a protobuf message (refused by the gRPC layer before any handler).
    MalformedMessage,
    /// The client cancelled an update stream.
    StreamCancelled,
    /// An update stream broke for another reason.
    StreamError,
    /// An update stream sent nothing for too long.
    StreamStalled,
    /// Too many streams are open on the server.
    StreamLimit,
    /// A request did not finish within the request timeout.
    RequestTimeout,
    /// A connection was refused or shed at the connection cap.
    ConnectionLimit,
    /// A connection sent nothing after it was accepted.
    ConnectionSilent,
    /// A connection went quiet for longer than the idle timeout.
    ConnectionIdle,
    /// A connection sent no authenticated request in time.
    ConnectionUnauthenticated,
    /// This coordinator is a standby; the status names the leader if one is elected.
    Standby,
}

impl Refusal {
    /// Every refusal, for tables and tests.
    pub const ALL: [Refusal; 38] = [
        Self::UnknownClient,
        Self::TooManyClients,
        Self::BadClientId,
        Self::StaleFence,
        Self::NotSelected,
        Self::Duplicate,
        Self::InFlight,
        Self::WrongLength,
        Self::NonFinite,
        Self::BadWeight,
        Self::CountsMismatch,
        Self::OutOfRange,
        Self::NormTooLarge,
        Self::Malformed,
        Self::ChunkMisaligned,
        Self::ChunkTooLarge,
        Self::ChunkOutOfOrder,
        Self::PayloadOverflow,
        Self::PayloadTruncated,
        Self::PayloadTooLarge,
        Self::RateLimited,
        Self::Impersonation,
        Self::Unauthenticated,
        Self::ShuttingDown,
        Self::Storage,
        Self::Internal,
        Self::MessageTooLarge,
        Self::MalformedMessage,
        Self::StreamCancelled,
        Self::StreamError,
        Self::StreamStalled,
        Self::StreamLimit,
        Self::RequestTimeout,
        Self::ConnectionLimit,
        Self::ConnectionSilent,
        Self::ConnectionIdle,
        Self::ConnectionUnauthenticated,
        Self::Standby,
    ];

    /// The table: the gRPC code a client sees and the reason the refusal is counted under.
    /// Refusals the gRPC layer or the connection makes carry the code the client's transport
    /// reports for them.
    fn entry(self) -> (Code, &'static str) {
        use Refusal as R;
        match self {
            R::UnknownClient => (Code::NotFound, "unknown_client"),
            R::TooManyClients => (Code::ResourceExhausted, "too_many_clients"),
            R::BadClientId => (Code::InvalidArgument, "bad_client_id"),
            R::StaleFence => (Code::FailedPrecondition, "stale_fence"),
            R::NotSelected => (Code::PermissionDenied, "not_selected"),
            R::Duplicate => (Code::AlreadyExists, "duplicate"),
            // The earlier upload may still fail: the client keeps its update and tries again.
            R::InFlight => (Code::Unavailable, "in_flight"),
            R::WrongLength => (Code::InvalidArgument, "wrong_length"),
            R::NonFinite => (Code::InvalidArgument, "non_finite"),
            R::BadWeight => (Code::InvalidArgument, "bad_weight"),
            R::CountsMismatch => (Code::InvalidArgument, "counts_mismatch"),
            R::OutOfRange => (Code::InvalidArgument, "out_of_range"),
            R::NormTooLarge => (Code::InvalidArgument, "norm_too_large"),
            R::Malformed => (Code::InvalidArgument, "malformed"),
            R::ChunkMisaligned => (Code::InvalidArgument, "chunk_misaligned"),
            R::ChunkTooLarge => (Code::ResourceExhausted, "chunk_too_large"),
            R::ChunkOutOfOrder => (Code::InvalidArgument, "chunk_out_of_order"),
            R::PayloadOverflow => (Code::InvalidArgument, "payload_overflow"),
            R::PayloadTruncated => (Code::InvalidArgument, "payload_truncated"),
            R::PayloadTooLarge => (Code::ResourceExhausted, "payload_too_large"),
            R::RateLimited => (Code::ResourceExhausted, "rate_limited"),
            R::Impersonation => (Code::PermissionDenied, "impersonation"),
            R::Unauthenticated => (Code::Unauthenticated, "unauthenticated"),
            // The client keeps its update and tries again; the run stops meanwhile.
            R::ShuttingDown => (Code::Unavailable, "shutting_down"),
            R::Storage => (Code::Unavailable, "storage"),
            R::Internal => (Code::Internal, "internal"),
            R::MessageTooLarge => (Code::OutOfRange, "message_too_large"),
            R::MalformedMessage => (Code::Internal, "malformed_message"),
            R::StreamCancelled => (Code::Cancelled, "stream_cancelled"),
            R::StreamError => (Code::Unknown, "stream_error"),
            R::StreamStalled => (Code::DeadlineExceeded, "stream_stalled"),
            R::StreamLimit => (Code::Unavailable, "stream_limit"),
            R::RequestTimeout => (Code::DeadlineExceeded, "request_timeout"),
            R::ConnectionLimit => (Code::Unavailable, "connection_limit"),
            R::ConnectionSilent => (Code::Unavailable, "connection_silent"),
            R::ConnectionIdle => (Code::Unavailable, "connection_idle"),
            R::ConnectionUnauthenticated => (Code::Unavailable, "connection_unauthenticated"),
            // The client moves to the leader the status names, keeping any finished update.
            R::Standby => (Code::Unavailable, "standby"),
        }
    }

    /// The gRPC code a client sees.
    pub fn code(self) -> Code {
        self.entry().0
    }

    /// The stable key this refusal is counted and reported under.
    pub fn reason(self) -> &'static str {
        self.entry().1
    }

    /// The refusal whose reason is `reason`, if there is one.
    pub fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.reason() == reason)
    }

    /// A status with this refusal's code and `message`, marked with its reason as the
    /// coordinator's verdict.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), message);
        status.metadata_mut().insert(
            shoal_proto::REASON_HEADER,
            tonic::metadata::MetadataValue::from_static(self.reason()),
        );
        status
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_reason_is_distinct_and_found_again() {
        let reasons: BTreeSet<_> = Refusal::ALL.iter().map(|r| r.reason()).collect();
        assert_eq!(reasons.len(), Refusal::ALL.len());
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::from_reason(refusal.reason()), Some(refusal));
        }
        assert_eq!(Refusal::from_reason("no_such_reason"), None);
    }

    #[test]
    fn a_status_carries_its_code_and_reason() {
        let status = Refusal::StaleFence.status("round 3 is closed");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "round 3 is closed");
        let reason = status.metadata().get(shoal_proto::REASON_HEADER);
        assert_eq!(reason.and_then(|v| v.to_str().ok()), Some("stale_fence"));
    }
}
