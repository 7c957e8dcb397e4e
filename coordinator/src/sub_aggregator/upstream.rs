//! The way up from a sub-aggregator: its coordinator, or its parent aggregator, with other
//! addresses to move to when the current one cannot be reached.

use crate::error::{CoordinatorError, Result};
use shoal_proto::v1::fleet_client::FleetClient;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::warn;

/// The upstream addresses, one in use at a time.
#[derive(Debug)]
pub struct Upstream {
    urls: Vec<String>,
    clients: Vec<FleetClient<Channel>>,
    current: AtomicUsize,
}

impl Upstream {
    /// Channels to every URL (`http://HOST:PORT`), connected on first use.
    pub fn new(urls: &[String], max_message_bytes: usize) -> Result<Self> {
        if urls.is_empty() {
            return Err(CoordinatorError::Config(
                "an aggregator needs at least one upstream URL".into(),
            ));
        }
        let clients = urls
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| {
                    CoordinatorError::Config(format!("upstream {url:?} is not a URL: {e}"))
                })?;
                if url.starts_with("https://") {
                    return Err(CoordinatorError::Config(format!(
                        "upstream {url:?}: aggregators reach their upstream over plaintext only"
                    )));
                }
                let channel = endpoint
                    .http2_keep_alive_interval(std::time::Duration::from_secs(20))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                Ok(FleetClient::new(channel)
                    .max_decoding_message_size(max_message_bytes)
                    .max_encoding_message_size(max_message_bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            urls: urls.to_vec(),
            clients,
            current: AtomicUsize::new(0),
        })
    }

    /// A client of the upstream in use.
    pub fn client(&self) -> FleetClient<Channel> {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    /// Notes a failed call: one the upstream did not answer itself (no refusal reason; the
    /// connection failed) moves to the next address. True if it moved.
    pub fn failed(&self, status: &Status) -> bool {
        let transport = status.metadata().get(shoal_proto::REASON_HEADER).is_none()
            && matches!(status.code(), Code::Unavailable | Code::Unknown);
        if !transport || self.clients.len() < 2 {
            return false;
        }
        let next = (self.current.fetch_add(1, Ordering::Relaxed) + 1) % self.clients.len();
        warn!(upstream = %self.urls[next], status = %status.message(), "upstream unreachable; moving on");
        true
    }
}
