//! Serving the fleet protocol on a listener until a shutdown future resolves.

use crate::engine::Coordinator;
use crate::error::Result;
use crate::service::FleetService;
use shoal_proto::v1::fleet_server::FleetServer;
use std::future::Future;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

/// Serves `coordinator` on `listener` until `shutdown` resolves (mini-redis style: the caller
/// owns the signal, so tests and the CLI stop the server the same way).
pub async fn serve(
    listener: TcpListener,
    coordinator: Coordinator,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    // Messages are chunked at 1 MiB; leave headroom for headers and framing.
    let max_message = coordinator.shared.limits.max_chunk_bytes + (64 << 10);
    let service = FleetServer::new(FleetService::new(coordinator))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    // Small messages must not wait for Nagle's algorithm: a round is a chain of small RPCs.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .max_concurrent_streams(Some(100_000))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| crate::error::CoordinatorError::Io(std::io::Error::other(e)))
}
