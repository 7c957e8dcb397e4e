//! The gRPC face of the coordinator: thin handlers that decode, call [`Coordinator`], and map
//! errors through the one table in [`crate::error`].

use crate::engine::Coordinator;
use crate::error::CoordinatorError;
use crate::results::ClientUpdate;
use futures::{Stream, StreamExt};
use shoal_proto::v1::fleet_server::Fleet;
use shoal_proto::v1::{
    Chunk, FetchRequest, JoinReply, JoinRequest, LeaveReply, LeaveRequest, PullReply, PullRequest,
    PushReply, UpdatePart, update_part::Part,
};
use shoal_proto::{ChunkAssembler, encode_chunks};
use std::pin::Pin;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

/// Implements the `Fleet` service over a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct FleetService {
    coordinator: Coordinator,
}

impl FleetService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Coordinator) -> Self {
        Self { coordinator }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;

/// Logs a refusal at debug level and turns it into a status.
fn refuse(err: CoordinatorError) -> Status {
    debug!(error = %err, "request refused");
    err.into()
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = request.into_inner();
        let reply = self
            .coordinator
            .join(&req.client_id, req.num_examples)
            .map_err(refuse)?;
        Ok(Response::new(reply))
    }

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullReply>, Status> {
        let req = request.into_inner();
        let reply = self
            .coordinator
            .pull(&req.client_id)
            .await
            .map_err(refuse)?;
        Ok(Response::new(reply))
    }

    type FetchGlobalStream = ChunkStream;

    async fn fetch_global(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchGlobalStream>, Status> {
        let req = request.into_inner();
        let fence = req
            .fence
            .ok_or_else(|| refuse(CoordinatorError::Malformed("fetch has no fence".into())))?;
        let global = self
            .coordinator
            .global_for(&req.client_id, &fence)
            .map_err(refuse)?;
        let chunks: Vec<Chunk> = encode_chunks(&global, shoal_proto::DEFAULT_CHUNK_BYTES).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn push_update(
        &self,
        request: Request<Streaming<UpdatePart>>,
    ) -> Result<Response<PushReply>, Status> {
        let mut parts = request.into_inner();
        let header = match parts.next().await {
            Some(Ok(UpdatePart {
                part: Some(Part::Header(h)),
            })) => h,
            Some(Ok(_)) => {
                return Err(refuse(CoordinatorError::Malformed(
                    "an update must start with its header".into(),
                )));
            }
            Some(Err(status)) => return Err(status),
            None => {
                return Err(refuse(CoordinatorError::Malformed(
                    "empty update stream".into(),
                )));
            }
        };
        let admission = self.coordinator.admit(&header).map_err(refuse)?;
        let mut payload = ChunkAssembler::new(
            header.payload_len,
            admission.max_values,
            admission.max_chunk_bytes,
        )
        .map_err(|e| refuse(e.into()))?;
        while let Some(part) = parts.next().await {
            match part?.part {
                Some(Part::Chunk(chunk)) => payload.push(&chunk).map_err(|e| refuse(e.into()))?,
                _ => {
                    return Err(refuse(CoordinatorError::Malformed(
                        "only chunks may follow the header".into(),
                    )));
                }
            }
        }
        let update = ClientUpdate {
            client_id: header.client_id,
            weight: header.num_examples,
            payload: payload.finish().map_err(|e| refuse(e.into()))?,
            counts: header.counts,
            metrics: header.metrics.into_iter().collect(),
        };
        let accepted_in_round = admission.deliver(update).await.map_err(refuse)?;
        Ok(Response::new(PushReply { accepted_in_round }))
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        let req = request.into_inner();
        self.coordinator.leave(&req.client_id).map_err(refuse)?;
        Ok(Response::new(LeaveReply {}))
    }
}
