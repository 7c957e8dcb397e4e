//! The way up from a sub-aggregator: its coordinator, or its parent aggregator, with other
//! addresses to move to when the current one cannot be reached.

use crate::error::{CoordinatorError, Result};
use shoal_proto::v1::fleet_client::FleetClient;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tracing::warn;

/// Connections to each upstream address. Every client's long-poll is relayed as a request of
/// its own, and an upstream takes a bounded number of requests in flight per connection (1,024
/// by default), so the relayed requests are spread over several connections: 128 carry
/// 100,000 clients' polls at under 800 each. They connect on first use.
pub const CONNECTIONS_PER_UPSTREAM: usize = 128;

/// The upstream addresses, one in use at a time, and how this aggregator proves itself there.
#[derive(Debug)]
pub struct Upstream {
    urls: Vec<String>,
    /// Per address, its connections.
    clients: Vec<Vec<FleetClient<Channel>>>,
    current: AtomicUsize,
    /// Turns over the connections of the address in use.
    next_connection: AtomicUsize,
    /// `Bearer TOKEN`, this aggregator's own token, sent with every request.
    bearer: Option<MetadataValue<Ascii>>,
}

impl Upstream {
    /// [`CONNECTIONS_PER_UPSTREAM`] channels to every URL, each made by `connect` (which sets
    /// up TLS and the client certificate, as a client's channel is made).
    pub fn with_channels(
        urls: &[String],
        max_message_bytes: usize,
        mut connect: impl FnMut(&str) -> std::result::Result<Channel, String>,
    ) -> Result<Self> {
        if urls.is_empty() {
            return Err(CoordinatorError::Config(
                "an aggregator needs at least one upstream URL".into(),
            ));
        }
        let clients = urls
            .iter()
            .map(|url| {
                (0..CONNECTIONS_PER_UPSTREAM)
                    .map(|_| {
                        let channel = connect(url).map_err(|e| {
                            CoordinatorError::Config(format!("upstream {url}: {e}"))
                        })?;
                        Ok(FleetClient::new(channel)
                            .max_decoding_message_size(max_message_bytes)
                            .max_encoding_message_size(max_message_bytes))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            urls: urls.to_vec(),
            clients,
            current: AtomicUsize::new(0),
            next_connection: AtomicUsize::new(0),
            bearer: None,
        })
    }

    /// Sends `token` as this aggregator's bearer token with every request upstream.
    pub fn with_token(mut self, token: &str) -> Result<Self> {
        let header = shoal_proto::bearer_header(token).ok_or_else(|| {
            CoordinatorError::Config("a bearer token must be printable ASCII without spaces".into())
        })?;
        self.bearer = Some(header);
        Ok(self)
    }

    /// `message` as a request upstream, carrying this aggregator's credentials (never a
    /// client's: the aggregator authenticated its clients itself).
    pub fn request<M>(&self, message: M) -> Request<M> {
        let mut request = Request::new(message);
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        request
    }

    /// A client of the upstream in use, on the next of its connections in turn, and which
    /// address that is (for [`Upstream::failed`]).
    pub fn client(&self) -> (usize, FleetClient<Channel>) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        let connections = &self.clients[i];
        let j = self.next_connection.fetch_add(1, Ordering::Relaxed) % connections.len();
        (i, connections[j].clone())
    }

    /// Notes a failed call to address `used`: one the upstream did not answer itself (no
    /// refusal reason; the connection failed) moves to the next address, once however many
    /// calls to `used` fail together. True if it moved.
    pub fn failed(&self, status: &Status, used: usize) -> bool {
        let transport = status.metadata().get(shoal_proto::REASON_HEADER).is_none()
            && matches!(status.code(), Code::Unavailable | Code::Unknown);
        if !transport || self.clients.len() < 2 {
            return false;
        }
        let next = (used + 1) % self.clients.len();
        let moved = self
            .current
            .compare_exchange(used, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if moved {
            warn!(upstream = %self.urls[next], status = %status.message(), "upstream unreachable; moving on");
        }
        moved
    }
}
