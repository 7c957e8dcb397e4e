//! Dialling the coordinator: one HTTP/2 channel per connection, with the same message limits
//! as the server, so chunked payloads pass and nothing larger does.

use crate::error::{ClientError, Result};
use shoal_proto::MAX_CHUNK_BYTES;
use shoal_proto::v1::fleet_client::FleetClient;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A gRPC client for the fleet protocol.
pub type Fleet = FleetClient<Channel>;

/// A lazily connecting channel to `url` ("http://host:port"): it dials on first use and
/// redials after a failure, which is what a client that outlives coordinator restarts needs.
pub fn channel(url: &str) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::BadAddress(url.to_owned(), e.to_string()))?;
    let uri = endpoint.uri();
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(ClientError::BadAddress(
            url.to_owned(),
            "expected http://HOST:PORT".into(),
        ));
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// A fleet client over `channel` with message limits matching the server's.
pub fn fleet_client(channel: Channel) -> Fleet {
    let max = MAX_CHUNK_BYTES + (64 << 10);
    FleetClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
}
