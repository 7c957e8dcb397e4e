//! The coordinator's errors; each maps to the [`Refusal`] a client hears.

use crate::aggregate::AggregateError;
use crate::refusal::Refusal;
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
    /// Work the coordinator moved to a blocking thread panicked or was cancelled.
    #[error("{task} task failed: {source}")]
    TaskFailed {
        /// Which work.
        task: &'static str,
        /// What the runtime said.
        source: tokio::task::JoinError,
    },
    /// State could not be encoded or decoded (checkpoint, round log, strategy state).
    #[error("{what}: {source}")]
    Codec {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The encoder's or decoder's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An invariant of the round engine did not hold (a bug, reported instead of a panic).
    #[error("internal error: {0}")]
    Internal(&'static str),
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
    /// Stored state is well-formed but does not fit the run (wrong length, trailing bytes...).
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
    /// Another coordinator took the run's state over: this one must not write it any more.
    #[error(
        "another coordinator (epoch {owner}) owns this run's state; this one (epoch {ours}) \
         stops writing it"
    )]
    Deposed {
        /// This coordinator's epoch.
        ours: u64,
        /// The epoch of the owner the state names now.
        owner: u64,
    },
    /// The leader election in etcd could not be reached or refused this coordinator.
    #[error("election: {0}")]
    Election(String),
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
    /// A partial sum from a party that is not one of the server's sub-aggregators.
    #[error(
        "{identity:?} is not a sub-aggregator of this server: only the identities it lists as \
         aggregators may send partial sums"
    )]
    NotAnAggregator {
        /// The identity the credentials prove.
        identity: String,
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
    /// A line of a token file is not `CLIENT_ID SHA256HEX`, or repeats a client or a token.
    #[error("line {line}: {problem}")]
    TokenFileLine {
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// A token file could not be read, or holds a bad line.
    #[error("token file {}: {problem}", path.display())]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong (the operating system's error, or the bad line).
        problem: String,
    },
}

impl AuthError {
    /// True when the caller is authenticated, but as someone else than it claims.
    pub fn is_impersonation(&self) -> bool {
        matches!(
            self,
            Self::CertificateMismatch { .. }
                | Self::TokenMismatch { .. }
                | Self::NotAnAggregator { .. }
        )
    }
}

/// Result alias for the coordinator.
pub type Result<T> = std::result::Result<T, CoordinatorError>;

impl From<CoordinatorError> for tonic::Status {
    fn from(err: CoordinatorError) -> Self {
        err.refusal().status(err.to_string())
    }
}

impl CoordinatorError {
    /// The kind of refusal a client hears for this error (its code and reason come from the
    /// one table in [`Refusal`]); coordinator-side failures are all [`Refusal::Internal`].
    pub fn refusal(&self) -> Refusal {
        use AggregateError as A;
        use CoordinatorError as E;
        use Refusal as R;
        match self {
            E::UnknownClient(_) => R::UnknownClient,
            E::TooManyClients(_) => R::TooManyClients,
            E::BadClientId => R::BadClientId,
            E::StaleFence { .. } => R::StaleFence,
            E::NotSelected(_) => R::NotSelected,
            E::Duplicate(_) => R::Duplicate,
            E::InFlight(_) => R::InFlight,
            E::InvalidUpdate(A::WrongLength { .. } | A::WrongCounts { .. }) => R::WrongLength,
            E::InvalidUpdate(A::NonFinite { .. }) => R::NonFinite,
            E::InvalidUpdate(A::BadWeight { .. }) => R::BadWeight,
            E::InvalidUpdate(A::CountsMismatch { .. }) => R::CountsMismatch,
            E::InvalidUpdate(A::OutOfRange(_)) => R::OutOfRange,
            E::InvalidUpdate(A::NormTooLarge { .. }) => R::NormTooLarge,
            E::InvalidUpdate(A::NotSummed | A::NoContributors) => R::Malformed,
            E::Malformed(_)
            | E::Payload(ProtoError::MissingField(_) | ProtoError::BadEncoding(_)) => R::Malformed,
            E::Payload(ProtoError::Misaligned(_)) => R::ChunkMisaligned,
            E::Payload(ProtoError::ChunkTooLarge { .. }) => R::ChunkTooLarge,
            E::Payload(ProtoError::OutOfOrder { .. }) => R::ChunkOutOfOrder,
            E::Payload(ProtoError::Overflow { .. }) => R::PayloadOverflow,
            E::Payload(ProtoError::Truncated { .. }) => R::PayloadTruncated,
            E::Payload(ProtoError::TooLarge { .. }) => R::PayloadTooLarge,
            E::RateLimited { .. } => R::RateLimited,
            E::Auth(e) if e.is_impersonation() => R::Impersonation,
            E::Auth(_) => R::Unauthenticated,
            // The client keeps its update and finds the coordinator that took over.
            E::ShuttingDown | E::Deposed { .. } => R::ShuttingDown,
            E::Storage { .. } => R::Storage,
            E::Model(_)
            | E::Strategy(_)
            | E::TaskFailed { .. }
            | E::Codec { .. }
            | E::Internal(_)
            | E::Election(_)
            | E::QuorumLost { .. }
            | E::Config(_)
            | E::Checkpoint(_)
            | E::NoUsableCheckpoint { .. }
            | E::Io(_) => R::Internal,
        }
    }

    /// Wraps an encoder's or decoder's error with what was being encoded or decoded.
    pub fn codec(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Codec {
            what,
            source: Box::new(source),
        }
    }
}
