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
    /// The update does not match the task (wrong length, counts, weight, values).
    #[error("invalid update: {0}")]
    InvalidUpdate(#[from] AggregateError),
    /// A malformed message.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A payload could not be reassembled.
    #[error("bad payload: {0}")]
    Payload(#[from] ProtoError),
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
    /// Network or file I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The coordinator is shutting down.
    #[error("coordinator is shutting down")]
    ShuttingDown,
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
            E::ShuttingDown => Code::Unavailable,
            E::Model(_)
            | E::Strategy(_)
            | E::QuorumLost { .. }
            | E::Config(_)
            | E::Checkpoint(_)
            | E::Io(_) => Code::Internal,
        };
        tonic::Status::new(code, err.to_string())
    }
}
