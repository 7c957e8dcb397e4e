//! Admitting requests, around the generated server and before any body is read: a request is
//! refused at once if its connection cannot be anyone's (no usable credential), if too many
//! streams are open across all connections, and it is ended if it takes longer than the
//! request timeout.
//!
//! - **Credentials first.** Under mutual TLS a request whose connection presented no client
//!   certificate, or one that does not chain to the CA, is refused with `Unauthenticated` (the
//!   same status and count, `unauthenticated`, as [`crate::net::service`] gives) before tonic
//!   allocates a message buffer for its body, and its connection is closed a moment later
//!   (the certificate cannot change on it; see [`crate::net::listener`]). With bearer tokens, a
//!   request without a known token is refused the same way, but its connection stays: a
//!   connection may be shared by several clients. Whether the credentials name the client the
//!   request claims is still the handler's question; this gate only keeps outsiders from
//!   holding memory. An admitted request marks its connection as worth keeping.
//! - **A cap on open streams across connections** (`Limits::max_streams`): past it a request is
//!   answered at once with `Unavailable` ("server busy: N streams open; retry") and counted as
//!   `stream_limit`; clients retry `Unavailable` with backoff. A stream counts from its request
//!   to the end of its response body. HTTP/2 caps the streams of one connection
//!   (`Limits::max_streams_per_connection`, sent in SETTINGS).
//! - **A deadline per request** (`Limits::request_timeout`): a request whose response has not
//!   ended by then (its body never arrived, an upload stalled, a download is not read) gets
//!   `DeadlineExceeded`, or its response stream is reset, counted as `request_timeout`. It is
//!   far above the longest honest wait (a Pull is held `Limits::poll_timeout`), and should
//!   leave room for the largest upload over the slowest link.

use crate::config::Limits;
use crate::error::CoordinatorError;
use crate::net::auth::{AuthError, AuthPolicy};
use crate::net::listener::{Conn, Connections, request_addrs};
use crate::refusal::{Refusal, RefusalCounter};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::codegen::{BoxFuture, Bytes, Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// What every request is admitted against, shared by all connections.
#[derive(Debug)]
pub(crate) struct Gate {
    refusals: RefusalCounter,
    connections: Connections,
    /// The client CA, under mutual TLS.
    client_ca: Option<crate::net::auth::ClientCa>,
    /// The token check alone, when tokens are required.
    tokens: Option<AuthPolicy>,
    /// Streams open now, across connections.
    open: AtomicUsize,
    max_streams: usize,
    request_timeout: Duration,
}

impl Gate {
    /// A gate for requests under `policy` on `connections`, with the stream cap and request
    /// timeout of `limits`, counting what it refuses in `refusals`.
    pub(crate) fn new(
        limits: &Limits,
        refusals: RefusalCounter,
        connections: Connections,
        policy: &AuthPolicy,
    ) -> Arc<Self> {
        let (max_streams, request_timeout) = (limits.max_streams, limits.request_timeout);
        Arc::new(Self {
            refusals,
            connections,
            client_ca: policy.client_ca.clone(),
            tokens: policy.tokens.clone().map(|tokens| AuthPolicy {
                client_ca: None,
                tokens: Some(tokens),
                relays: Default::default(),
            }),
            open: AtomicUsize::new(0),
            max_streams,
            request_timeout,
        })
    }

    /// Refuses a request whose credentials cannot be any client's (see the module docs).
    fn authenticate<B>(
        &self,
        request: &http::Request<B>,
        conn: Option<&Conn>,
    ) -> Result<(), AuthError> {
        if let Some(ca) = &self.client_ca {
            if let Some(refusal) = conn.and_then(Conn::refusal) {
                return Err(refusal.clone());
            }
            let certs = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs);
            let chain = certs.as_deref().map(Vec::as_slice).unwrap_or_default();
            if let Err(refusal) = ca.verify_now(chain) {
                if let Some(conn) = conn {
                    self.connections.refuse(conn, refusal.clone());
                }
                return Err(refusal);
            }
        }
        if let Some(tokens) = &self.tokens {
            let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
            // No client has the empty id: a known token fails only as another client's.
            match tokens.check(None, &metadata, "") {
                Err(err) if !err.is_impersonation() => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }

    /// Takes a stream slot, or `None` at the cap.
    fn take_slot(self: &Arc<Self>) -> Option<Slot> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        if before >= self.max_streams {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }

    fn refused(&self, refusal: Refusal, message: String) -> http::Response<tonic::body::Body> {
        tracing::debug!(%refusal, %message, "request refused before its body");
        self.refusals.count_refusal(refusal);
        refusal.status(message).into_http()
    }

    fn timed_out(&self) -> Status {
        self.refusals.count_refusal(Refusal::RequestTimeout);
        tracing::debug!(timeout = ?self.request_timeout, "request timed out");
        Refusal::RequestTimeout.status(format!(
            "request not finished within {} s (the server's request timeout)",
            self.request_timeout.as_secs_f64()
        ))
    }
}

/// One open stream, counted until dropped.
#[derive(Debug)]
struct Slot(Arc<Gate>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wraps the gRPC service `S`, admitting each request as the module docs describe.
#[derive(Debug, Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> Admission<S> {
    /// Admits `inner`'s requests through `gate`.
    pub(crate) fn new(inner: S, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let gate = &self.gate;
        let conn = request_addrs(&request).and_then(|(l, r)| gate.connections.find(l, r));
        if let Err(err) = gate.authenticate(&request, conn.as_deref()) {
            let err = CoordinatorError::Auth(err);
            let refused = gate.refused(err.refusal(), err.to_string());
            return Box::pin(std::future::ready(Ok(refused)));
        }
        if let Some(conn) = &conn {
            conn.admitted();
        }
        let Some(slot) = gate.take_slot() else {
            let open = gate.open.load(Ordering::Relaxed);
            let message = format!("server busy: {open} streams open; retry");
            let refused = gate.refused(Refusal::StreamLimit, message);
            return Box::pin(std::future::ready(Ok(refused)));
        };
        let mut deadline = Box::pin(tokio::time::sleep_until(
            Instant::now() + gate.request_timeout,
        ));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = tokio::select! {
                response = response => response?,
                () = &mut deadline => return Ok(slot.0.timed_out().into_http()),
            };
            Ok(response.map(|body| {
                tonic::body::Body::new(Timed {
                    body,
                    deadline,
                    slot,
                    ended: false,
                })
            }))
        })
    }
}

impl<S: NamedService> NamedService for Admission<S> {
    const NAME: &'static str = S::NAME;
}

/// A response body that holds its stream's slot until it is dropped, and ends with
/// `DeadlineExceeded` if it is not done by the request's deadline.
struct Timed {
    body: tonic::body::Body,
    deadline: Pin<Box<Sleep>>,
    slot: Slot,
    ended: bool,
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(Some(Err(this.slot.0.timed_out())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
