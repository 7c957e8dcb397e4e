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
    #[error("transport: {}", chain(.0))]
    Transport(#[from] tonic::transport::Error),
    /// The coordinator refused a request, or the request never reached it (a status that
    /// carries no coordinator reason: see `retryable` in the forwarding rules).
    #[error("{}", describe(.0))]
    Refused(#[from] tonic::Status),
    /// The coordinator stayed unreachable past the client's patience.
    #[error("gave up after the coordinator was unreachable for {seconds} s; last error: {last}")]
    Unreachable {
        /// How long it was unreachable.
        seconds: u64,
        /// The last error seen.
        last: String,
    },
    /// A payload could not be decoded.
    #[error("payload: {0}")]
    Payload(#[from] shoal_proto::ProtoError),
    /// Local work failed.
    #[error("local work: {0}")]
    Model(#[from] shoal_models::ModelError),
    /// The client or fleet settings are unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A task this client cannot carry out.
    #[error("bad task: {0}")]
    BadTask(String),
    /// State the client keeps between runs (SCAFFOLD's control variate) could not be kept.
    #[error("client state: {0}")]
    State(String),
    /// The worker thread died.
    #[error("worker: {0}")]
    Worker(String),
}

/// An error and its sources, joined by ": " (tonic's own text is often just "transport
/// error"; the cause, e.g. "Connection refused", is further down).
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    with_sources(err.to_string(), err.source())
}

/// `text`, then each error of the `source` chain that adds something, joined by ": ".
fn with_sources(
    mut text: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(e) = source {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// One readable line for a status: the coordinator's refusal with its code and reason, or,
/// for a status the coordinator did not write, what went wrong on the way.
fn describe(status: &tonic::Status) -> String {
    match reason(status) {
        Some(reason) => format!(
            "coordinator refused ({reason}): {}: {}",
            status.code(),
            status.message()
        ),
        None => with_sources(
            format!("no answer from the coordinator: {}", status.message()),
            std::error::Error::source(status),
        ),
    }
}

/// The coordinator's reason for a refusal, if the coordinator wrote the status.
pub fn reason(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(shoal_proto::REASON_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// Result alias for the client.
pub type Result<T> = std::result::Result<T, ClientError>;
