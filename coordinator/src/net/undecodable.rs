//! Counting the requests tonic refuses before any handler runs: a unary message that is not
//! valid protobuf, or over the message size limit. The handlers never see them, so
//! [`crate::net::service`] cannot count them; this wrapper around the generated server reads the
//! status of each unary response instead. Every status the coordinator writes carries its
//! reason, so an error status without one is tonic's. Update streams are counted by the
//! handler itself, which sees their errors as they arrive.

use crate::refusal::{Refusal, RefusalCounter};
use std::task::{Context, Poll};
use tonic::Status;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

/// Wraps the gRPC service `S`, counting undecodable unary requests as refusals.
#[derive(Debug, Clone)]
pub(crate) struct CountUndecodable<S> {
    inner: S,
    refusals: RefusalCounter,
}

impl<S> CountUndecodable<S> {
    /// Counts `inner`'s undecodable requests in `refusals`.
    pub(crate) fn new(inner: S, refusals: RefusalCounter) -> Self {
        Self { inner, refusals }
    }
}

/// The refusal of a response tonic produced for a request it could not decode, if it is one:
/// an error status without the coordinator's reason, with the code tonic gives a message over
/// the size limit (OutOfRange) or one it could not decode (Internal).
fn undecodable(headers: &http::HeaderMap) -> Option<Refusal> {
    let status = Status::from_header_map(headers)?;
    if headers.contains_key(shoal_proto::REASON_HEADER) {
        return None;
    }
    match status.code() {
        tonic::Code::OutOfRange => Some(Refusal::MessageTooLarge),
        tonic::Code::Internal => Some(Refusal::MalformedMessage),
        _ => None,
    }
}

impl<S, B> Service<http::Request<B>> for CountUndecodable<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Streamed uploads are counted by their handlers, which see their errors.
        let path = request.uri().path();
        let streamed_upload = path.ends_with("/PushUpdate") || path.ends_with("/PushPartial");
        let response = self.inner.call(request);
        let refusals = self.refusals.clone();
        Box::pin(async move {
            let response = response.await?;
            if !streamed_upload && let Some(refusal) = undecodable(response.headers()) {
                tracing::debug!(%refusal, "undecodable request refused");
                refusals.count_refusal(refusal);
            }
            Ok(response)
        })
    }
}

impl<S: NamedService> NamedService for CountUndecodable<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: Status) -> http::HeaderMap {
        status.into_http::<()>().headers().clone()
    }

    #[test]
    fn tells_decode_failures_from_handler_refusals() {
        let cases = [
            (
                Status::internal("failed to decode Protobuf message: buffer underflow"),
                Some(Refusal::MalformedMessage),
            ),
            (
                Status::out_of_range("Error, decoded message length too large"),
                Some(Refusal::MessageTooLarge),
            ),
            // The coordinator's own verdicts carry their reason.
            (Refusal::Internal.status("strategy: something broke"), None),
            (Refusal::WrongLength.status("invalid update"), None),
            (Refusal::UnknownClient.status("unknown client"), None),
            (
                Status::invalid_argument("a code tonic never uses for decoding"),
                None,
            ),
        ];
        for (status, want) in cases {
            assert_eq!(undecodable(&headers_of(status.clone())), want, "{status:?}");
        }
        assert_eq!(undecodable(&http::HeaderMap::new()), None);
    }
}
