//! The client's errors.

use thiserror::Error;

/// Everything that can go wrong on the client side.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The coordinator address is not a valid URL.
    #[error("bad coordinator address {0:?}: {1}")]
    BadAddress(String, String),
    /// TLS settings or credentials are unusable.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The connection failed or broke.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The coordinator refused a request.
    #[error("coordinator refused: {}: {}", .0.code(), .0.message())]
    Refused(#[from] tonic::Status),
    /// A payload could not be decoded.
    #[error("payload: {0}")]
    Payload(#[from] shoal_proto::ProtoError),
    /// Local work failed.
    #[error("local work: {0}")]
    Model(#[from] shoal_models::ModelError),
    /// A task this client cannot carry out.
    #[error("bad task: {0}")]
    BadTask(String),
    /// The worker thread died.
    #[error("worker: {0}")]
    Worker(String),
}

/// Result alias for the client.
pub type Result<T> = std::result::Result<T, ClientError>;
