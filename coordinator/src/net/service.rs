//! The gRPC face of the coordinator, and the same handlers for clients in its own process
//! ([`shoal_proto::DirectFleet`]): thin handlers that authorize, decode, call
//! [`Coordinator`], and map errors through the one table in `crate::error`. Each handler makes
//! one [`FleetService::authorize`] call with the client id its request claims, before anything
//! reaches the engine.

use crate::engine::Coordinator;
use crate::engine::coordinator::Admission;
use crate::error::CoordinatorError;
use crate::leadership::Candidate;
use crate::net::auth::{AuthPolicy, Claim};
use crate::net::upload::{self, Parts, UploadError};
use crate::refusal::Refusal;
use crate::strategy::results::{ClientUpdate, PartialSum};
use shoal_proto::shared_pull::{check_ids, split_authorized};
use shoal_proto::v1::fleet_server::Fleet;
use shoal_proto::v1::{
    AbandonReply, AbandonRequest, Chunk, ClientPull, FetchRequest, JoinReply, JoinRequest,
    LeaveReply, LeaveRequest, PartialPart, PullReply, PullRequest, PushReply, SharedPullReply,
    SharedPullRequest, UpdateHeader, UpdatePart,
};
use shoal_proto::{ChunkStream, DirectFleet, SumAssembler};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// Implements the `Fleet` service over a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct FleetService {
    coordinator: Coordinator,
    /// What each request must prove about the client id it claims.
    auth: Arc<AuthPolicy>,
    /// Set on a standby: every request is refused with the leader's URL, as this watch has it.
    standby: Option<watch::Receiver<Option<Candidate>>>,
}

impl FleetService {
    /// Serves `coordinator` to anyone, under any client id (loopback demos and tests).
    pub fn new(coordinator: Coordinator) -> Self {
        Self::with_policy(coordinator, AuthPolicy::open())
    }

    /// Serves `coordinator` to requests whose credentials satisfy `auth`.
    pub fn with_policy(coordinator: Coordinator, auth: AuthPolicy) -> Self {
        Self {
            coordinator,
            auth: Arc::new(auth),
            standby: None,
        }
    }

    /// A standby's service: requests whose credentials satisfy `auth` are refused with
    /// `standby`, naming the leader `leader` holds (clients move there).
    pub fn standby(
        coordinator: Coordinator,
        auth: AuthPolicy,
        leader: watch::Receiver<Option<Candidate>>,
    ) -> Self {
        Self {
            standby: Some(leader),
            ..Self::with_policy(coordinator, auth)
        }
    }

    /// On a standby, the refusal that sends the client to the leader; on a coordinator that
    /// stepped down, the refusal that sends it looking for one.
    fn serving(&self) -> Result<(), Status> {
        if self.coordinator.has_stepped_down() {
            self.coordinator.count_refusal(Refusal::ShuttingDown);
            return Err(Refusal::ShuttingDown
                .status("this coordinator no longer leads the run; another one took it over"));
        }
        let Some(leader) = &self.standby else {
            return Ok(());
        };
        self.coordinator.count_refusal(Refusal::Standby);
        let leader = leader.borrow().clone();
        Err(match leader {
            Some(leader) => {
                let mut status = Refusal::Standby.status(format!(
                    "this coordinator is a standby; the leader is at {}",
                    leader.url
                ));
                if let Ok(url) = leader.url.parse() {
                    status
                        .metadata_mut()
                        .insert(shoal_proto::LEADER_HEADER, url);
                }
                status
            }
            None => {
                Refusal::Standby.status("this coordinator is a standby; no leader is elected yet")
            }
        })
    }

    /// Refuses `request` unless its credentials (the TLS client certificate, the bearer token)
    /// prove the client id it claims, or a sub-aggregator relaying for it.
    fn authorize<T>(&self, request: &Request<T>, claimed: &str) -> Result<(), Status> {
        self.authorize_as(request, claimed, Claim::Client)
    }

    /// Refuses a partial sum unless its credentials prove the sub-aggregator it names, and
    /// that one is listed as an aggregator.
    fn authorize_aggregator<T>(&self, request: &Request<T>, claimed: &str) -> Result<(), Status> {
        self.authorize_as(request, claimed, Claim::Aggregator)
    }

    fn authorize_as<T>(
        &self,
        request: &Request<T>,
        claimed: &str,
        claim: Claim,
    ) -> Result<(), Status> {
        let checked = self.auth.check_request(request, claimed, claim);
        checked.map_err(|err| {
            let err = CoordinatorError::from(err);
            let refusal = err.refusal();
            if let Some(unlogged) = self.coordinator.may_log_refusal(refusal) {
                let peer = request.remote_addr();
                if refusal == Refusal::Impersonation {
                    warn!(client = %claimed, ?peer, error = %err, unlogged, "request refused: impersonation (unlogged: similar refusals since the last line)");
                } else {
                    info!(client = %claimed, ?peer, error = %err, unlogged, "request refused: not authenticated (unlogged: similar refusals since the last line)");
                }
            }
            self.refuse(err)
        })
    }
}

/// Streams `chunks`, shared: clones of the reference-counted chunks one at a time, no copy of
/// the model per download.
pub fn chunk_stream(chunks: Arc<[Chunk]>) -> ChunkStream {
    Box::pin(futures::stream::iter(
        (0..chunks.len()).map(move |i| Ok(chunks[i].clone())),
    ))
}

impl FleetService {
    /// The one place an error becomes a refusal: counts it by reason (see
    /// [`Coordinator::refusals`]), logs it at debug level, and turns it into a status.
    fn refuse(&self, err: CoordinatorError) -> Status {
        let refusal = err.refusal();
        debug!(error = %err, %refusal, "request refused");
        self.coordinator.count_refusal(refusal);
        err.into()
    }

    /// Counts a refused upload by its reason and turns it into its status.
    fn refuse_upload(&self, err: UploadError) -> Status {
        match err {
            UploadError::Stream(status) => self.refuse_stream(status),
            UploadError::Refused(err) => self.refuse(err),
            stalled @ UploadError::Stalled => {
                self.coordinator.count_refusal(Refusal::StreamStalled);
                stalled.status()
            }
        }
    }

    /// Counts an update stream that tonic ended with an error (a message over the size limit,
    /// bytes that are not protobuf, a stream the client cancelled) and passes its status on.
    /// Unary requests that fail to decode are refused by tonic before any handler runs, so
    /// they are not counted.
    fn refuse_stream(&self, status: Status) -> Status {
        let refusal = match status.code() {
            Code::OutOfRange | Code::ResourceExhausted => Refusal::MessageTooLarge,
            Code::Cancelled => Refusal::StreamCancelled,
            _ => Refusal::StreamError,
        };
        debug!(status = %status.message(), %refusal, "update stream refused");
        self.coordinator.count_refusal(refusal);
        status
    }
}

impl FleetService {
    async fn join_request(&self, request: Request<JoinRequest>) -> Result<JoinReply, Status> {
        self.authorize(&request, &request.get_ref().client_id)?;
        self.serving()?;
        let req = request.into_inner();
        self.coordinator
            .join(&req.client_id, req.num_examples)
            .map_err(|e| self.refuse(e))
    }

    async fn pull_request(&self, request: Request<PullRequest>) -> Result<PullReply, Status> {
        self.authorize(&request, &request.get_ref().client_id)?;
        self.serving()?;
        let req = request.into_inner();
        self.coordinator
            .pull(&req.client_id)
            .await
            .map_err(|e| self.refuse(e))
    }

    /// A long poll for several clients (see [`Coordinator::pull_shared`]). The caller must be
    /// able to speak for each client it names; one it cannot is refused inside the reply, as
    /// its own pull would have been, like every other refusal of one client.
    async fn pull_shared_request(
        &self,
        request: Request<SharedPullRequest>,
    ) -> Result<SharedPullReply, Status> {
        // The ids are checked before any work is done for one of them.
        check_ids(&request.get_ref().client_ids)
            .map_err(|e| self.refuse(CoordinatorError::Malformed(e)))?;
        let (allowed, mut answers) = split_authorized(&request.get_ref().client_ids, |id| {
            self.authorize(&request, id)
        });
        if answers.is_empty() {
            self.serving()?;
            let polled = self
                .coordinator
                .pull_shared(&allowed)
                .await
                .map_err(|e| self.refuse(e))?;
            answers = polled
                .into_iter()
                .filter_map(|(at, answer)| {
                    let id = allowed.get(at)?.clone();
                    Some(match answer {
                        Ok(reply) => ClientPull::answered(id, reply),
                        Err(err) => ClientPull::refused(id, &self.refuse(err)),
                    })
                })
                .collect();
        }
        Ok(SharedPullReply { answers })
    }

    async fn fetch_request(&self, request: Request<FetchRequest>) -> Result<ChunkStream, Status> {
        self.authorize(&request, &request.get_ref().client_id)?;
        self.serving()?;
        let req = request.into_inner();
        let fence = req
            .fence
            .ok_or_else(|| self.refuse(CoordinatorError::Malformed("fetch has no fence".into())))?;
        let chunks = self
            .coordinator
            .global_for(&req.client_id, &fence)
            .await
            .map_err(|e| self.refuse(e))?;
        Ok(chunk_stream(chunks))
    }

    /// Receives an update, whether tonic decoded its parts or an in-process client handed
    /// them over: the same header rule, credentials, admission and decoding either way.
    async fn push_request(
        &self,
        mut request: Request<impl Parts<UpdatePart>>,
    ) -> Result<PushReply, Status> {
        let header = upload::header(request.get_mut())
            .await
            .map_err(|e| self.refuse_upload(e))?;
        let admission = self.admit_update(&request, &header)?;
        let mut parts = request.into_inner();
        let payload = admission
            .decoding
            .receive(
                &mut parts,
                &header,
                admission.max_values,
                admission.max_chunk_bytes,
            )
            .await
            .map_err(|e| self.refuse_upload(e))?;
        self.deliver_update(admission, header, payload).await
    }

    /// A plain update handed over in process as its values, with the checks of
    /// [`FleetService::push_request`] but nothing to receive.
    async fn values_request(
        &self,
        header: UpdateHeader,
        values: Arc<Vec<f32>>,
    ) -> Result<PushReply, Status> {
        let admission = self.admit_update(&Request::new(()), &header)?;
        let values = admission
            .decoding
            .take_values(&header, values, admission.max_values)
            .map_err(|e| self.refuse_upload(e))?;
        self.deliver_update(admission, header, values).await
    }

    /// What an update's header must pass before its payload is read: the credentials of the
    /// client it names, a serving coordinator, and admission to the round.
    fn admit_update<T>(
        &self,
        request: &Request<T>,
        header: &UpdateHeader,
    ) -> Result<Admission, Status> {
        self.authorize(request, &header.client_id)?;
        self.serving()?;
        self.coordinator.admit(header).map_err(|e| self.refuse(e))
    }

    /// Folds an admitted update's payload in.
    async fn deliver_update(
        &self,
        admission: Admission,
        header: UpdateHeader,
        payload: impl Into<Arc<Vec<f32>>>,
    ) -> Result<PushReply, Status> {
        let update = ClientUpdate::from_wire(header, payload);
        let accepted_in_round = admission
            .deliver(update)
            .await
            .map_err(|e| self.refuse(e))?;
        Ok(PushReply { accepted_in_round })
    }

    async fn abandon_request(
        &self,
        request: Request<AbandonRequest>,
    ) -> Result<AbandonReply, Status> {
        self.authorize(&request, &request.get_ref().client_id)?;
        self.serving()?;
        let req = request.into_inner();
        let fence = req.fence.ok_or_else(|| {
            self.refuse(CoordinatorError::Malformed("abandon has no fence".into()))
        })?;
        self.coordinator
            .abandon(&req.client_id, &fence, &req.reason)
            .map_err(|e| self.refuse(e))?;
        Ok(AbandonReply {})
    }

    async fn leave_request(&self, request: Request<LeaveRequest>) -> Result<LeaveReply, Status> {
        self.authorize(&request, &request.get_ref().client_id)?;
        self.serving()?;
        let req = request.into_inner();
        self.coordinator
            .leave(&req.client_id)
            .map_err(|e| self.refuse(e))?;
        Ok(LeaveReply {})
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        self.join_request(request).await.map(Response::new)
    }

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullReply>, Status> {
        self.pull_request(request).await.map(Response::new)
    }

    async fn pull_shared(
        &self,
        request: Request<SharedPullRequest>,
    ) -> Result<Response<SharedPullReply>, Status> {
        self.pull_shared_request(request).await.map(Response::new)
    }

    type FetchGlobalStream = ChunkStream;

    async fn fetch_global(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchGlobalStream>, Status> {
        self.fetch_request(request).await.map(Response::new)
    }

    async fn push_update(
        &self,
        request: Request<Streaming<UpdatePart>>,
    ) -> Result<Response<PushReply>, Status> {
        self.push_request(request).await.map(Response::new)
    }

    async fn push_partial(
        &self,
        mut request: Request<Streaming<PartialPart>>,
    ) -> Result<Response<PushReply>, Status> {
        let mut header = upload::header(request.get_mut())
            .await
            .map_err(|e| self.refuse_upload(e))?;
        self.authorize_aggregator(&request, &header.aggregator_id)?;
        self.serving()?;
        let mut parts = request.into_inner();
        upload::contributions(&mut parts, &mut header)
            .await
            .map_err(|e| self.refuse_upload(e))?;
        let admission = self
            .coordinator
            .admit_partial(&header)
            .map_err(|e| self.refuse(e))?;
        let sum = SumAssembler::new(
            header.sum_len,
            admission.max_values,
            admission.max_chunk_bytes,
        )
        .map_err(|e| self.refuse(e.into()))?;
        let totals = upload::payload(&mut parts, sum)
            .await
            .map_err(|e| self.refuse_upload(e))?;
        let partial = PartialSum::from_wire(header, totals);
        let accepted_in_round = admission
            .deliver_partial(partial)
            .await
            .map_err(|e| self.refuse(e))?;
        Ok(Response::new(PushReply { accepted_in_round }))
    }

    async fn abandon(
        &self,
        request: Request<AbandonRequest>,
    ) -> Result<Response<AbandonReply>, Status> {
        self.abandon_request(request).await.map(Response::new)
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        self.leave_request(request).await.map(Response::new)
    }
}

impl Coordinator {
    /// This coordinator's fleet protocol for clients in this process (a simulated fleet hosted
    /// beside it): the same handlers as over gRPC. In-process callers are trusted: no
    /// credentials are asked, whatever the server's security, and no standby refusal applies.
    pub fn in_process(&self) -> Arc<dyn DirectFleet> {
        Arc::new(FleetService::new(self.clone()))
    }
}

/// In-process clients reach the same handlers with requests that carry no credentials, under
/// the open policy [`Coordinator::in_process`] gives them.
#[tonic::async_trait]
impl DirectFleet for FleetService {
    async fn join(&self, request: JoinRequest) -> Result<JoinReply, Status> {
        self.join_request(Request::new(request)).await
    }

    async fn pull(&self, request: PullRequest) -> Result<PullReply, Status> {
        self.pull_request(Request::new(request)).await
    }

    async fn fetch_global(&self, request: FetchRequest) -> Result<ChunkStream, Status> {
        self.fetch_request(Request::new(request)).await
    }

    async fn push_update(&self, parts: Vec<UpdatePart>) -> Result<PushReply, Status> {
        let parts = futures::stream::iter(parts.into_iter().map(Ok));
        self.push_request(Request::new(parts)).await
    }

    async fn push_values(
        &self,
        header: UpdateHeader,
        values: Arc<Vec<f32>>,
    ) -> Result<PushReply, Status> {
        self.values_request(header, values).await
    }

    async fn leave(&self, request: LeaveRequest) -> Result<LeaveReply, Status> {
        self.leave_request(Request::new(request)).await
    }

    async fn abandon(&self, request: AbandonRequest) -> Result<AbandonReply, Status> {
        self.abandon_request(Request::new(request)).await
    }
}
