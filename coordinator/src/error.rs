//! The coordinator's errors, and the one table that maps them to gRPC status codes.

use crate::aggregate::AggregateError;
use shoal_proto::ProtoError;
use thiserror::Error;

/// Everything that can go wrong in the coordinator.
#[derive(Debug, Error)]
pub enum CoordinatorError {
    /// A request named a client that never joined (or left).
    #[error("unknown client {0:?}: join first")]
    UnknownClient(String),
    /// The registry is full.
    #[error("too many clients: limit is {0}")]
    TooManyClients(usize),
    /// A request carried no usable client id.
    #[error("client id must be 1-128 printable characters")]
    BadClientId,
    /// The fence names another run, incarnation or round than the open one.
    #[error("stale or foreign fence: got {got}, open is {open}")]
    StaleFence {
        /// The fence received.
        got: String,
        /// The fence of the open round, or "none".
        open: String,
    },
    /// The client was not selected for the open round.
    #[error("client {0:?} was not selected for this round")]
    NotSelected(String),
    /// The client already delivered its update for this round.
    #[error("client {0:?} already delivered an update for this round")]
    Duplicate(String),
    /// Another push of this client's update for this round is still being received.
    #[error("an update from client {0:?} for this round is still being received")]
    InFlight(String),
    /// The update does not match the task (wrong length, counts, weight, values).
    #[error("invalid update: {0}")]
    InvalidUpdate(#[from] AggregateError),
    /// A malformed message.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A payload could not be reassembled.
    #[error("bad payload: {0}")]
    Payload(#[from] ProtoError),
    /// The client pulls faster than its rate limit allows (see [`crate::engine::pacing`]).
    #[error(
        "client {client:?} pulls too often: the limit is {per_second} pulls per second; \
         retry in {retry_after_ms} ms"
    )]
    RateLimited {
        /// The client.
        client: String,
        /// The configured sustained rate.
        per_second: f64,
        /// When a pull would be accepted again.
        retry_after_ms: u64,
    },
    /// A model operation failed.
    #[error("model: {0}")]
    Model(#[from] shoal_models::ModelError),
    /// A strategy could not aggregate or evaluate.
    #[error("strategy: {0}")]
    Strategy(String),
    /// The run could not reach quorum within its retries.
    #[error("round {round}: fewer than {quorum} updates after {attempts} attempts")]
    QuorumLost {
        /// The round that failed.
        round: u32,
        /// The quorum.
        quorum: usize,
        /// Attempts made.
        attempts: u32,
    },
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Checkpoint storage failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The checkpoint directory holds checkpoints, and none of them can be read.
    #[error(
        "none of the {files} checkpoints in {} is usable (newest: {newest}); to start the run \
         over, move them away or pass --start-over",
        dir.display()
    )]
    NoUsableCheckpoint {
        /// The directory.
        dir: std::path::PathBuf,
        /// Checkpoint files found.
        files: usize,
        /// Why the newest one is unusable.
        newest: String,
    },
    /// Reading or writing a state file failed: the file and the operating system's reason.
    /// While the run is open this stops it (an update that cannot be logged cannot be
    /// accepted), so the operator sees the disk error, not a missed quorum.
    #[error("storage: {}: {source}", path.display())]
    Storage {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Network or file I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The coordinator is shutting down.
    #[error("coordinator is shutting down")]
    ShuttingDown,
    /// The request's credentials do not prove the client id it claims.
    #[error("{0}")]
    Auth(#[from] AuthError),
}

/// Why a request's credentials were refused (see [`crate::net::auth`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// Mutual TLS is required and the connection presented no client certificate.
    #[error("no client certificate: this coordinator requires mutual TLS")]
    NoCertificate,
    /// The client certificate does not chain to the CA, or is not valid now.
    #[error("{0}")]
    UntrustedCertificate(String),
    /// The client certificate chains to the CA but names no usable client id.
    #[error("{0}")]
    CertificateId(String),
    /// The certificate is another client's.
    #[error("client certificate is for {certified:?}, but the request claims {claimed:?}")]
    CertificateMismatch {
        /// The id in the certificate.
        certified: String,
        /// The id the request claims.
        claimed: String,
    },
    /// Tokens are required and the request carried none.
    #[error("missing bearer token: send `authorization: Bearer TOKEN`")]
    NoToken,
    /// The authorization header is not `Bearer TOKEN`.
    #[error("malformed authorization header: expected `Bearer TOKEN`")]
    MalformedToken,
    /// The token is in no client's entry.
    #[error("bearer token not recognised")]
    UnknownToken,
    /// The token is another client's.
    #[error("bearer token is for {owner:?}, but the request claims {claimed:?}")]
    TokenMismatch {
        /// The client the token belongs to.
        owner: String,
        /// The id the request claims.
        claimed: String,
    },
}

impl AuthError {
    /// True when the caller is authenticated, but as someone else than it claims.
    pub fn is_impersonation(&self) -> bool {
        matches!(
            self,
            Self::CertificateMismatch { .. } | Self::TokenMismatch { .. }
        )
    }
}

/// Result alias for the coordinator.
pub type Result<T> = std::result::Result<T, CoordinatorError>;

impl From<CoordinatorError> for tonic::Status {
    fn from(err: CoordinatorError) -> Self {
        use CoordinatorError as E;
        use tonic::Code;
        let code = match &err {
            E::UnknownClient(_) => Code::NotFound,
            E::TooManyClients(_) => Code::ResourceExhausted,
            E::BadClientId | E::Malformed(_) | E::InvalidUpdate(_) => Code::InvalidArgument,
            E::Payload(ProtoError::TooLarge { .. } | ProtoError::ChunkTooLarge { .. }) => {
                Code::ResourceExhausted
            }
            E::Payload(_) => Code::InvalidArgument,
            E::StaleFence { .. } => Code::FailedPrecondition,
            E::NotSelected(_) => Code::PermissionDenied,
            E::Duplicate(_) => Code::AlreadyExists,
            // The earlier upload may still fail: the client keeps its update and tries again.
            E::InFlight(_) => Code::Unavailable,
            E::RateLimited { .. } => Code::ResourceExhausted,
            // The client keeps its update and tries again; the run stops meanwhile.
            E::ShuttingDown | E::Storage { .. } => Code::Unavailable,
            E::Auth(e) if e.is_impersonation() => Code::PermissionDenied,
            E::Auth(_) => Code::Unauthenticated,
            E::Model(_)
            | E::Strategy(_)
            | E::QuorumLost { .. }
            | E::Config(_)
            | E::Checkpoint(_)
            | E::NoUsableCheckpoint { .. }
            | E::Io(_) => Code::Internal,
        };
        let mut status = tonic::Status::new(code, err.to_string());
        // Marks the status as the coordinator's verdict: a client retries statuses without it
        // (HTTP/2 and transport failures) however their code reads.
        status.metadata_mut().insert(
            shoal_proto::REASON_HEADER,
            tonic::metadata::MetadataValue::from_static(err.reason()),
        );
        status
    }
}

impl CoordinatorError {
    /// A short, stable key for the kind of refusal, used to count refusals by reason (see
    /// [`crate::engine::refusals`]); coordinator-side failures all count as "internal".
    pub fn reason(&self) -> &'static str {
        use AggregateError as A;
        use CoordinatorError as E;
        match self {
            E::UnknownClient(_) => "unknown_client",
            E::TooManyClients(_) => "too_many_clients",
            E::BadClientId => "bad_client_id",
            E::StaleFence { .. } => "stale_fence",
            E::NotSelected(_) => "not_selected",
            E::Duplicate(_) | E::InFlight(_) => "duplicate",
            E::InvalidUpdate(A::WrongLength { .. }) => "wrong_length",
            E::InvalidUpdate(A::NonFinite { .. }) => "non_finite",
            E::InvalidUpdate(A::BadWeight { .. }) => "bad_weight",
            E::InvalidUpdate(A::WrongCounts { .. }) => "wrong_length",
            E::InvalidUpdate(A::CountsMismatch { .. }) => "counts_mismatch",
            E::InvalidUpdate(A::OutOfRange(_)) => "out_of_range",
            E::InvalidUpdate(A::NormTooLarge { .. }) => "norm_too_large",
            E::Malformed(_) | E::Payload(ProtoError::MissingField(_)) => "malformed",
            E::Payload(ProtoError::Misaligned(_)) => "chunk_misaligned",
            E::Payload(ProtoError::ChunkTooLarge { .. }) => "chunk_too_large",
            E::Payload(ProtoError::OutOfOrder { .. }) => "chunk_out_of_order",
            E::Payload(ProtoError::Overflow { .. }) => "payload_overflow",
            E::Payload(ProtoError::Truncated { .. }) => "payload_truncated",
            E::Payload(ProtoError::TooLarge { .. }) => "payload_too_large",
            E::RateLimited { .. } => "rate_limited",
            E::Auth(e) if e.is_impersonation() => "impersonation",
            E::Auth(_) => "unauthenticated",
            E::ShuttingDown => "shutting_down",
            E::Storage { .. } => "storage",
            E::Model(_)
            | E::Strategy(_)
            | E::QuorumLost { .. }
            | E::Config(_)
            | E::Checkpoint(_)
            | E::NoUsableCheckpoint { .. }
            | E::Io(_) => "internal",
        }
    }
}
