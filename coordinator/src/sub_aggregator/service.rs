//! The fleet protocol as a sub-aggregator serves it: relayed where the coordinator decides
//! (joins, pulls, departures), answered here where the load is (global state, updates).

use super::Shared;
use super::rounds::RoundState;
use crate::NormPolicy;
use crate::aggregate::AggregateError;
use crate::aggregate::norm::NormBound;
use crate::error::CoordinatorError;
use crate::net::auth::Claim;
use crate::net::service::chunk_stream;
use crate::net::upload::{self, Decoding, UploadError};
use crate::strategy::results::{ClientUpdate, Delivery, PartialSum};
use futures::StreamExt;
use shoal_proto::ChunkStream;
use shoal_proto::shared_pull::{check_ids, split_authorized};
use shoal_proto::v1::fleet_client::FleetClient;
use shoal_proto::v1::fleet_server::Fleet;
use shoal_proto::v1::{
    AbandonReply, AbandonRequest, Chunk, ClientPull, FetchRequest, JoinReply, JoinRequest,
    LeaveReply, LeaveRequest, PartialPart, PullReply, PullRequest, PushReply, SharedPullReply,
    SharedPullRequest, TaskKind, UpdatePart, client_pull, pull_reply::Reply, update_part,
};
use shoal_proto::{ChunkAssembler, Codec, SumAssembler};
use std::future::Future;
use std::sync::Arc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

/// The fleet service of a sub-aggregator.
#[derive(Debug, Clone)]
pub struct AggregatorService {
    shared: Arc<Shared>,
}

impl AggregatorService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Refuses `request` unless its credentials prove the client id it claims (or a child
    /// aggregator relaying for it, or, with [`Claim::Aggregator`], that it is a child
    /// aggregator listed here), as a coordinator would.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        claimed: &str,
        claim: Claim,
    ) -> Result<(), Status> {
        self.shared
            .auth
            .check_request(request, claimed, claim)
            .map_err(|err| {
                let err = CoordinatorError::from(err);
                let refusal = err.refusal();
                self.shared.refusals.record(refusal);
                debug!(client = %claimed, peer = ?request.remote_addr(), error = %err, %refusal, "request refused");
                Status::from(err)
            })
    }

    /// Refuses a client that was not handed the round's task here, before any work for it
    /// (the round's global state is for the clients the coordinator selected).
    fn check_tasked(state: &RoundState, client: &str) -> Result<(), Status> {
        if state.was_tasked(client) {
            Ok(())
        } else {
            Err(CoordinatorError::NotSelected(client.to_owned()).into())
        }
    }

    /// `message` as a request upstream, with this aggregator's credentials.
    fn relayed<M>(&self, request: Request<M>) -> Request<M> {
        self.shared.upstream.request(request.into_inner())
    }

    /// The end of the run to tell a client, if the run is over upstream; counts the client as
    /// told (the aggregator stops once nobody comes to hear it).
    fn end_to_tell(&self) -> Option<shoal_proto::v1::Finished> {
        let finished = self.shared.run_over.get()?.clone();
        self.shared
            .told_over
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(finished)
    }

    /// Takes note of what upstream answered `client`'s pull: its task (so its update is taken
    /// here), or the end of the run (told to every client that comes after).
    fn heard(&self, client: &str, reply: &Reply) {
        match reply {
            Reply::Task(task) => self.shared.rounds.tasked(client, task),
            Reply::Finished(finished) if self.shared.run_over.set(finished.clone()).is_ok() => {
                self.shared.finished.notify_one();
            }
            _ => {}
        }
    }

    /// Makes one call upstream; a failure is passed to the client unchanged, after the
    /// upstream had a chance to move to its next address (and the kept partial sums with it).
    async fn upstream<R, F>(
        &self,
        call: impl FnOnce(FleetClient<Channel>) -> F,
    ) -> Result<R, Status>
    where
        F: Future<Output = Result<R, Status>>,
    {
        let (used, client) = self.shared.upstream.client();
        call(client)
            .await
            .inspect_err(|status| super::upstream_failed(&self.shared, status, used))
    }

    /// Applies the norm rule (`bound`) to an update and folds it into `state`, off the
    /// runtime; wakes the flusher.
    async fn fold(
        &self,
        state: Arc<RoundState>,
        mut delivery: Delivery,
        bound: Option<Arc<NormBound>>,
    ) -> Result<u32, Status> {
        let folded = tokio::task::spawn_blocking(move || {
            if let (Delivery::Update(update), Some(bound)) = (&mut delivery, &bound) {
                bound.enforce(&mut update.payload)?;
            }
            state.fold(delivery)
        })
        .await
        .map_err(|source| CoordinatorError::TaskFailed {
            task: "fold",
            source,
        })??;
        self.shared.wake.notify_one();
        Ok(u32::try_from(folded).unwrap_or(u32::MAX))
    }

    /// The round's global state, fetched upstream the first time any client asks for it
    /// (under that client's id).
    async fn global(
        &self,
        state: &RoundState,
        fetch: FetchRequest,
    ) -> Result<Arc<[Chunk]>, Status> {
        let chunks = state
            .global
            .get_or_try_init(|| async {
                let relayed = self.shared.upstream.request(fetch);
                let mut stream = self
                    .upstream(|mut up| async move { up.fetch_global(relayed).await })
                    .await?
                    .into_inner();
                let mut chunks = Vec::new();
                while let Some(chunk) = stream.next().await {
                    chunks.push(chunk?);
                }
                debug!(chunks = chunks.len(), "global state fetched upstream");
                Ok::<_, Status>(Arc::<[Chunk]>::from(chunks))
            })
            .await?;
        Ok(chunks.clone())
    }

    /// The round's global state as values, assembled from its chunks once per round.
    async fn global_values(
        &self,
        state: &RoundState,
        client: &str,
        fence: &shoal_proto::v1::Fence,
    ) -> Result<Arc<Vec<f32>>, Status> {
        let values = state
            .values
            .get_or_try_init(|| async {
                let fetch = FetchRequest {
                    client_id: client.to_owned(),
                    fence: Some(fence.clone()),
                };
                let chunks = self.global(state, fetch).await?;
                let mut global = ChunkAssembler::new(
                    state.task.global_len,
                    usize::MAX,
                    shoal_proto::MAX_CHUNK_BYTES,
                )
                .map_err(CoordinatorError::from)?;
                for chunk in chunks.iter() {
                    global.push(chunk).map_err(CoordinatorError::from)?;
                }
                Ok::<_, Status>(Arc::new(global.finish().map_err(CoordinatorError::from)?))
            })
            .await?;
        Ok(values.clone())
    }

    /// The coordinator's update-norm rule for the round, as its task states it, against the
    /// round's global state (made once per round).
    async fn norm_bound(
        &self,
        state: &RoundState,
        client: &str,
        fence: &shoal_proto::v1::Fence,
    ) -> Result<Option<Arc<NormBound>>, Status> {
        let task = &state.task;
        if task.max_update_norm <= 0.0 {
            return Ok(None);
        }
        let bound = state
            .norm
            .get_or_try_init(|| async {
                let global = self.global_values(state, client, fence).await?;
                Ok::<_, Status>(
                    NormBound::for_task(
                        task.kind(),
                        &global,
                        Some(task.max_update_norm),
                        if task.clip_to_norm {
                            NormPolicy::Clip
                        } else {
                            NormPolicy::Reject
                        },
                    )
                    .map(Arc::new),
                )
            })
            .await?;
        Ok(bound.clone())
    }
}

#[tonic::async_trait]
impl Fleet for AggregatorService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        self.authorize(&request, &request.get_ref().client_id, Claim::Client)?;
        if self.end_to_tell().is_some() {
            // Its next pull hears the end of the run, from here.
            return Ok(Response::new(JoinReply {
                max_chunk_bytes: u32::try_from(self.shared.config.limits.max_chunk_bytes)
                    .unwrap_or(u32::MAX),
                ..JoinReply::default()
            }));
        }
        let relayed = self.relayed(request);
        self.upstream(|mut up| async move { up.join(relayed).await })
            .await
    }

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullReply>, Status> {
        self.authorize(&request, &request.get_ref().client_id, Claim::Client)?;
        if let Some(finished) = self.end_to_tell() {
            return Ok(Response::new(PullReply {
                reply: Some(Reply::Finished(finished)),
            }));
        }
        let client = request.get_ref().client_id.clone();
        let relayed = self.relayed(request);
        let reply = self
            .upstream(|mut up| async move { up.pull(relayed).await })
            .await?;
        if let Some(answer) = &reply.get_ref().reply {
            self.heard(&client, answer);
        }
        Ok(reply)
    }

    /// Relayed upstream as one shared pull for the clients this aggregator may speak for; the
    /// tasks in its answers are recorded as for single pulls.
    async fn pull_shared(
        &self,
        request: Request<SharedPullRequest>,
    ) -> Result<Response<SharedPullReply>, Status> {
        check_ids(&request.get_ref().client_ids).map_err(CoordinatorError::Malformed)?;
        let (allowed, refused) = split_authorized(&request.get_ref().client_ids, |id| {
            self.authorize(&request, id, Claim::Client)
        });
        if !refused.is_empty() {
            return Ok(Response::new(SharedPullReply { answers: refused }));
        }
        if let Some(finished) = self.end_to_tell() {
            let answers = allowed
                .into_iter()
                .map(|id| ClientPull::answered(id, Reply::Finished(finished.clone())))
                .collect();
            return Ok(Response::new(SharedPullReply { answers }));
        }
        let relayed = self.relayed(Request::new(SharedPullRequest {
            client_ids: allowed,
        }));
        let reply = self
            .upstream(|mut up| async move { up.pull_shared(relayed).await })
            .await?;
        for answer in &reply.get_ref().answers {
            if let Some(client_pull::Answer::Reply(PullReply { reply: Some(reply) })) =
                &answer.answer
            {
                self.heard(&answer.client_id, reply);
            }
        }
        Ok(reply)
    }

    type FetchGlobalStream = ChunkStream;

    async fn fetch_global(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchGlobalStream>, Status> {
        self.authorize(&request, &request.get_ref().client_id, Claim::Client)?;
        let fence = request
            .get_ref()
            .fence
            .clone()
            .ok_or_else(|| CoordinatorError::Malformed("fetch has no fence".into()))?;
        let state = self.shared.rounds.get(&fence)?;
        Self::check_tasked(&state, &request.get_ref().client_id)?;
        let chunks = self.global(&state, request.into_inner()).await?;
        Ok(Response::new(chunk_stream(chunks)))
    }

    async fn push_update(
        &self,
        mut request: Request<Streaming<UpdatePart>>,
    ) -> Result<Response<PushReply>, Status> {
        let header = upload::header(request.get_mut())
            .await
            .map_err(UploadError::status)?;
        self.authorize(&request, &header.client_id, Claim::Client)?;
        let mut parts = request.into_inner();
        let fence = header
            .fence
            .clone()
            .ok_or_else(|| CoordinatorError::Malformed("update header has no fence".into()))?;
        let state = self.shared.rounds.get(&fence)?;
        Self::check_tasked(&state, &header.client_id)?;
        if !state.sums() {
            // Kept whole upstream: pass the stream on as it came.
            let mut all = vec![UpdatePart {
                part: Some(update_part::Part::Header(header.clone())),
            }];
            all.extend(
                upload::rest(&mut parts)
                    .await
                    .map_err(UploadError::status)?,
            );
            state.gone(&header.client_id);
            self.shared.wake.notify_one();
            let relayed = self.shared.upstream.request(tokio_stream::iter(all));
            return self
                .upstream(|mut up| async move { up.push_update(relayed).await })
                .await;
        }
        let limits = &self.shared.config.limits;
        // The round's length, before anything is received or allocated for it.
        if header.payload_len != state.task.update_len {
            return Err(
                CoordinatorError::InvalidUpdate(AggregateError::WrongLength {
                    got: usize::try_from(header.payload_len).unwrap_or(usize::MAX),
                    expected: state.task.update_len as usize,
                })
                .into(),
            );
        }
        let codec = Codec::from_wire(state.task.compression, state.task.topk_fraction)
            .map_err(CoordinatorError::from)?;
        let kind = state.task.kind();
        let global = if codec != Codec::None && kind == TaskKind::Fit {
            self.global_values(&state, &header.client_id, &fence)
                .await?
        } else {
            Arc::default()
        };
        let payload = Decoding::for_round(kind, codec, &global)
            .receive(
                &mut parts,
                &header,
                limits.max_update_values,
                limits.max_chunk_bytes,
            )
            .await
            .map_err(UploadError::status)?;
        let bound = self.norm_bound(&state, &header.client_id, &fence).await?;
        let update = ClientUpdate::from_wire(header, payload);
        let accepted_in_round = self.fold(state, Delivery::Update(update), bound).await?;
        Ok(Response::new(PushReply { accepted_in_round }))
    }

    async fn push_partial(
        &self,
        mut request: Request<Streaming<PartialPart>>,
    ) -> Result<Response<PushReply>, Status> {
        let mut header = upload::header(request.get_mut())
            .await
            .map_err(UploadError::status)?;
        self.authorize(&request, &header.aggregator_id, Claim::Aggregator)?;
        let mut parts = request.into_inner();
        upload::contributions(&mut parts, &mut header)
            .await
            .map_err(UploadError::status)?;
        let fence = header
            .fence
            .clone()
            .ok_or_else(|| CoordinatorError::Malformed("partial sum has no fence".into()))?;
        let state = self.shared.rounds.get(&fence)?;
        let limits = &self.shared.config.limits;
        let sum = SumAssembler::new(
            header.sum_len,
            limits.max_update_values,
            limits.max_chunk_bytes,
        )
        .map_err(CoordinatorError::from)?;
        let totals = upload::payload(&mut parts, sum)
            .await
            .map_err(UploadError::status)?;
        let partial = PartialSum::from_wire(header, totals);
        let accepted_in_round = self.fold(state, Delivery::Partial(partial), None).await?;
        Ok(Response::new(PushReply { accepted_in_round }))
    }

    async fn abandon(
        &self,
        request: Request<AbandonRequest>,
    ) -> Result<Response<AbandonReply>, Status> {
        self.authorize(&request, &request.get_ref().client_id, Claim::Client)?;
        let req = request.get_ref();
        if let Some(state) = req
            .fence
            .as_ref()
            .and_then(|f| self.shared.rounds.get(f).ok())
        {
            state.gone(&req.client_id);
            self.shared.wake.notify_one();
        }
        let relayed = self.relayed(request);
        self.upstream(|mut up| async move { up.abandon(relayed).await })
            .await
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        self.authorize(&request, &request.get_ref().client_id, Claim::Client)?;
        self.shared.rounds.left(&request.get_ref().client_id);
        self.shared.wake.notify_one();
        if self.shared.run_over.get().is_some() {
            // Nothing upstream to tell: the run is over there.
            return Ok(Response::new(LeaveReply {}));
        }
        let relayed = self.relayed(request);
        self.upstream(|mut up| async move { up.leave(relayed).await })
            .await
    }
}
