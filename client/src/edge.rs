//! One edge client: join, then pull tasks (the pull loop is the heartbeat), work on local data
//! off the runtime, push the update; leave when the run ends. Lost connections are retried with
//! jittered backoff under the same client id, and an update whose push broke is kept and
//! delivered after the reconnect ([`crate::forward`]). A simulated fleet can also inject seeded
//! faults ([`crate::faults`]).

use crate::attack::Attack;
use crate::backoff::Backoff;
use crate::budget::UpdateBudget;
use crate::cache::GlobalCache;
use crate::collusion::Collusion;
use crate::compress::{Encoded, encode_update};
use crate::error::{ClientError, Result};
use crate::faults::{Fault, Faults, fault_for, partial_share};
use crate::forward::{Disposition, KeptUpdate, disposition, reason, retryable};
use crate::route::{Moved, Route};
pub use crate::stats::ClientStats;
use crate::trainer::{BuiltinTrainer, LocalTrainer};
use crate::unreachable;
use crate::work::{ClientState, LocalUpdate, run_task};
use shoal_datasets::Dataset;
use shoal_datasets::rng::{client_key, rng_for};
use shoal_proto::DEFAULT_CHUNK_BYTES;
use shoal_proto::v1::{
    AbandonRequest, Fence, JoinRequest, LeaveRequest, PullRequest, Task, UpdateHeader,
    pull_reply::Reply,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tracing::{debug, info, warn};

/// Stream tag for backoff jitter in the RNG tree.
const BACKOFF_STREAM: u64 = 0xbac0;
/// Longest wait before asking again after a standby answered: the leader is being elected, or
/// known; either way it is worth asking soon.
const FOLLOW_PACE: Duration = Duration::from_millis(250);

/// How a client behaves towards the coordinator.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Seed for the client's own random choices (backoff jitter).
    pub seed: u64,
    /// Give up after the coordinator has been unreachable this long.
    pub give_up_after: Duration,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
    /// The coordinator's address, for messages [default: empty].
    pub coordinator_url: String,
}

/// How long a client waits for an unreachable coordinator before it gives up, by default.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(120);

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(5),
            coordinator_url: String::new(),
        }
    }
}

/// What the pull loop does after a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Pull the next task.
    Pull,
    /// Join again first (after a simulated crash).
    Rejoin,
    /// Shutdown resolved during a simulated delay.
    Stop,
}

/// An edge client holding its local partition.
#[derive(Debug)]
pub struct EdgeClient {
    id: String,
    data: Arc<Dataset>,
    route: Route,
    cache: GlobalCache,
    cpu: Arc<Semaphore>,
    // Boxed, like the other fields read only at work or after a failure: a simulated fleet
    // holds one client per idle client.
    options: Box<ClientOptions>,
    chunk_bytes: usize,
    faults: Box<Faults>,
    /// The round of the last task, and how many tasks of that round came before it.
    last_task: Option<(u32, u32)>,
    /// A finished update the coordinator refused because another coordinator took the run over
    /// since its task: delivered under the new leader's fence if that leader sends the same
    /// task again (same round, model and seed), instead of training again.
    orphan: Option<Box<KeptUpdate>>,
    /// The model code: the built-in models unless [`EdgeClient::with_trainer`] says otherwise.
    trainer: Arc<dyn LocalTrainer>,
    /// Shared with the process's other clients: a finished update holds its share from
    /// before the work to the end of its push (none for a lone client).
    budget: Option<UpdateBudget>,
    /// What the client carries between tasks (SCAFFOLD's control variate, top-k's residual).
    state: Box<ClientState>,
    /// A simulated Byzantine client's lie, applied to each update it computes.
    attack: Option<Attack>,
    /// A simulated colluding attacker's accomplices: its updates are their common forgery.
    collusion: Option<Arc<Collusion>>,
}

impl EdgeClient {
    /// A client `id` with local `data`, talking over `route` (one coordinator's gRPC client or
    /// the coordinator in this process, or a leader and its standbys); `cache` and `cpu` may
    /// be shared with other clients in the same process.
    pub fn new(
        id: String,
        data: Arc<Dataset>,
        route: impl Into<Route>,
        cache: GlobalCache,
        cpu: Arc<Semaphore>,
        options: ClientOptions,
    ) -> Self {
        Self {
            data,
            route: route.into(),
            cache,
            cpu,
            options: Box::new(options),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            faults: Box::default(),
            last_task: None,
            orphan: None,
            trainer: Arc::new(BuiltinTrainer::default()),
            budget: None,
            state: Box::new(ClientState::new(id.clone())),
            attack: None,
            collusion: None,
            id,
        }
    }

    /// The same client as a colluding attacker: every update it computes is replaced by the
    /// forgery it makes with its accomplices ([`Collusion::forge`]).
    pub fn with_collusion(mut self, collusion: Arc<Collusion>) -> Self {
        self.collusion = Some(collusion);
        self
    }

    /// The same client, keeping what it carries between rounds (SCAFFOLD's control variate,
    /// top-k's residual) in files in `dir` too, so it survives a restart; in memory otherwise.
    pub fn with_state_dir(mut self, dir: &std::path::Path) -> Self {
        self.state = Box::new(ClientState::in_dir(self.id.clone(), dir));
        self
    }

    /// The same client as a simulated attacker: every update it computes is corrupted by
    /// `attack` (its data is the caller's to poison, see [`Attack::poison`]).
    pub fn with_attack(mut self, attack: Attack) -> Self {
        self.attack = Some(attack);
        self
    }

    /// The same client, holding its finished updates within `budget` (shared with the other
    /// clients of its process).
    pub fn with_update_budget(mut self, budget: UpdateBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The same client, running `trainer`'s model code instead of the built-in models.
    pub fn with_trainer(mut self, trainer: Arc<dyn LocalTrainer>) -> Self {
        self.trainer = trainer;
        self
    }

    /// The same client, suffering `faults` (simulation only), drawn from the seed in its
    /// options.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = Box::new(faults);
        self
    }

    /// The client's stable id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until the coordinator says the run finished, `shutdown` resolves, or the
    /// coordinator stays unreachable past `give_up_after`.
    ///
    /// (Not an `async fn`: one would hold the client twice, as its argument and as its local.
    /// A simulated fleet keeps one such future per client, so its size is what an idle
    /// client costs.)
    #[allow(clippy::manual_async_fn)]
    pub fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> impl Future<Output = Result<ClientStats>> {
        async move {
            tokio::pin!(shutdown);
            let mut stats = ClientStats::default();
            // Made at the first failure: most clients never need one, and an idle client's whole
            // loop stays resident.
            let mut backoff: Option<Box<Backoff>> = None;
            let mut joined = false;
            let mut kept: Option<Box<KeptUpdate>> = None;
            let mut unreachable_since: Option<Instant> = None;
            loop {
                let outcome = tokio::select! {
                    r = self.step(joined, &mut kept, &mut stats) => r,
                    () = &mut shutdown => {
                        Box::pin(self.leave()).await;
                        return Ok(stats);
                    }
                };
                let next = match outcome {
                    Ok(reply) => {
                        joined = true;
                        match *reply {
                            Reply::Task(task) => {
                                // Only a task carried through counts as the coordinator being
                                // reachable: a task whose fetch keeps failing must back off.
                                let next = Box::pin(self.handle(
                                    task,
                                    &mut kept,
                                    &mut stats,
                                    &mut shutdown,
                                ))
                                .await;
                                if next.is_ok() {
                                    unreachable_since = None;
                                    self.route.answered();
                                    if let Some(backoff) = &mut backoff {
                                        backoff.reset();
                                    }
                                }
                                next
                            }
                            Reply::Wait(_) => {
                                unreachable_since = None;
                                self.route.answered();
                                if let Some(backoff) = &mut backoff {
                                    backoff.reset();
                                }
                                Ok(Next::Pull)
                            }
                            Reply::Finished(f) => {
                                info!(client = %self.id, reason = %f.reason, "run finished");
                                Box::pin(self.leave()).await;
                                return Ok(stats);
                            }
                        }
                    }
                    Err(err) => Err(err),
                };
                match next {
                    Ok(Next::Pull) => {}
                    Ok(Next::Rejoin) => joined = false,
                    Ok(Next::Stop) => {
                        Box::pin(self.leave()).await;
                        return Ok(stats);
                    }
                    Err(ClientError::Refused(status)) if status.code() == Code::NotFound => {
                        // The coordinator does not know us (it restarted): join again.
                        joined = false;
                    }
                    Err(err) if retryable(&err) => {
                        joined = false;
                        stats.reconnects += 1;
                        let moved = self.route.after_failure(&err);
                        let backoff = backoff.get_or_insert_with(|| {
                            let rng =
                                rng_for(self.options.seed, &[BACKOFF_STREAM, client_key(&self.id)]);
                            let (base, cap) = (self.options.backoff_base, self.options.backoff_cap);
                            Box::new(Backoff::new(base, cap, rng))
                        });
                        let first = unreachable_since.is_none();
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > self.options.give_up_after {
                            return Err(ClientError::Unreachable {
                                seconds: since.elapsed().as_secs(),
                                last: err.to_string(),
                            });
                        }
                        let delay = match moved {
                            // A coordinator answered: the leader is there, or about to be elected.
                            Moved::ToLeader | Moved::AwaitingLeader => {
                                backoff.reset();
                                backoff.next_delay().min(FOLLOW_PACE)
                            }
                            // Another coordinator may answer: try it soon. Back off only once
                            // every one of them failed since one last answered.
                            Moved::ToNext => {
                                if !self.route.all_failed() {
                                    backoff.reset();
                                }
                                backoff.next_delay()
                            }
                            Moved::Stayed => backoff.next_delay(),
                        };
                        if moved != Moved::Stayed {
                            debug!(client = %self.id, ?moved, url = %self.route.url(), "following the leader");
                        }
                        if first && !matches!(moved, Moved::ToLeader | Moved::AwaitingLeader) {
                            unreachable::report(
                                &err,
                                unreachable::Retrying {
                                    url: &self.options.coordinator_url,
                                    backoff: (self.options.backoff_base, self.options.backoff_cap),
                                    give_up_after: self.options.give_up_after,
                                },
                            );
                        }
                        debug!(client = %self.id, error = %err, ?delay, "coordinator unreachable; backing off");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = &mut shutdown => return Ok(stats),
                        }
                    }
                    Err(err) => return Err(err),
                }
            }
        }
    }

    /// One turn of the loop: join if needed, deliver a kept update if there is one, then pull.
    async fn step(
        &mut self,
        joined: bool,
        kept: &mut Option<Box<KeptUpdate>>,
        stats: &mut ClientStats,
    ) -> Result<Box<Reply>> {
        if !joined {
            Box::pin(self.join()).await?;
        }
        if let Some(update) = kept.take() {
            Box::pin(self.redeliver(update, kept, stats)).await?;
        }
        self.pull().await
    }

    /// Tries a kept update once more: on another broken push it is kept again (and the error
    /// returned, to reconnect); on a refusal it is dropped.
    async fn redeliver(
        &mut self,
        update: Box<KeptUpdate>,
        kept: &mut Option<Box<KeptUpdate>>,
        stats: &mut ClientStats,
    ) -> Result<()> {
        let result = self.push(&update.fence, &update.update).await;
        let fence = &update.fence;
        match disposition(&result) {
            Disposition::Delivered => {
                stats.accepted += 1;
                stats.redelivered += 1;
                info!(client = %self.id, %fence, "kept update delivered after reconnecting");
            }
            Disposition::Keep => {
                *kept = Some(update);
                return result;
            }
            Disposition::Stale if stale_fence(&result) => {
                // Another coordinator took the run over since the task: it may ask for the
                // same work again, and then gets this update.
                debug!(client = %self.id, %fence, "kept update from an earlier leader's round; kept for the new leader's task");
                self.orphan = Some(update);
            }
            Disposition::Stale => {
                stats.dropped_stale += 1;
                info!(client = %self.id, %fence, error = ?result.err(), "kept update dropped: its round is over");
            }
            Disposition::Refused => {
                stats.refused += 1;
                warn!(client = %self.id, %fence, error = ?result.err(), "kept update refused");
            }
        }
        Ok(())
    }

    /// Tells the coordinator this client cannot do its task, so the round stops waiting for
    /// it. Best effort: if the message is lost, the round's deadline still applies.
    async fn abandon(&mut self, fence: &Fence, err: &ClientError) {
        let sent = self
            .route
            .fleet()
            .abandon(AbandonRequest {
                client_id: self.id.clone(),
                fence: Some(fence.clone()),
                reason: err.to_string(),
            })
            .await;
        if let Err(status) = sent {
            debug!(client = %self.id, %fence, error = %status.message(), "abandon not delivered");
        }
    }

    async fn leave(&mut self) {
        let _ = self
            .route
            .fleet()
            .leave(LeaveRequest {
                client_id: self.id.clone(),
            })
            .await;
    }

    async fn join(&mut self) -> Result<()> {
        let reply = self
            .route
            .fleet()
            .join(JoinRequest {
                client_id: self.id.clone(),
                num_examples: self.data.len() as u64,
            })
            .await?
            .into_inner();
        if reply.max_chunk_bytes > 0 {
            self.chunk_bytes = (reply.max_chunk_bytes as usize).min(DEFAULT_CHUNK_BYTES);
        }
        Ok(())
    }

    /// The reply comes boxed: it may hold a task (a few hundred bytes), which the loop would
    /// otherwise keep in several of its states, in every idle client.
    async fn pull(&mut self) -> Result<Box<Reply>> {
        let reply = self
            .route
            .fleet()
            .pull(PullRequest {
                client_id: self.id.clone(),
            })
            .await?
            .into_inner();
        reply
            .reply
            .map(Box::new)
            .ok_or_else(|| ClientError::BadTask("empty pull reply".into()))
    }

    /// Fetches, works, pushes, with any simulated fault of this round. Failures of the work or
    /// refusals are logged and counted; a broken push keeps the update in `kept` and returns
    /// the error so the loop reconnects.
    async fn handle<F: Future<Output = ()>>(
        &mut self,
        task: Task,
        kept: &mut Option<Box<KeptUpdate>>,
        stats: &mut ClientStats,
        shutdown: &mut Pin<&mut F>,
    ) -> Result<Next> {
        let Some(fence) = task.fence.clone() else {
            warn!(client = %self.id, "task without fence ignored");
            return Ok(Next::Pull);
        };
        let fault = self.fault(&fence);
        self.state.step_share = self.partial_share(&fence);
        match fault {
            Some(Fault::Crash(downtime)) => {
                stats.crashes += 1;
                info!(client = %self.id, %fence, ?downtime, "simulated crash");
                if sleep_or(downtime, shutdown).await {
                    return Ok(Next::Stop);
                }
                return Ok(Next::Rejoin);
            }
            Some(Fault::Dropout) => {
                stats.dropouts += 1;
                debug!(client = %self.id, %fence, "simulated dropout: update not delivered");
                return Ok(Next::Pull);
            }
            Some(Fault::Straggle(_)) | None => {}
        }
        // The update's share of the process's budget, held until its push is over.
        let _held = match &self.budget {
            Some(budget) => budget.hold(task.update_len).await,
            None => None,
        };
        let orphan = self.orphan.take().filter(|o| o.answers(&task));
        // The fleet's worker this client worked on. In process, delivering is work too (the
        // coordinator checks and folds the update on the caller's behalf), so the worker is
        // held until the push is over: the updates of fresh work in flight are as many as the
        // workers, and their buffers are reused warm instead of faulted in afresh.
        let mut core = None;
        let finished = match orphan {
            Some(orphan) => {
                info!(client = %self.id, %fence, "the new leader asks for work already done: delivering the finished update");
                stats.redelivered += 1;
                Ok(orphan.update)
            }
            None => self
                .work(task.clone(), &fence)
                .await
                .map(|(update, worker)| {
                    core = Some(worker);
                    update
                }),
        };
        if !self.route.fleet().in_process() {
            core = None;
        }
        let update = match finished {
            Ok(update) => update,
            // The global state could not be fetched: reconnect; joining again gets the task
            // back.
            Err(err) if retryable(&err) => return Err(err),
            Err(err) => {
                warn!(client = %self.id, %fence, error = %err, "task failed; telling the coordinator");
                self.abandon(&fence, &err).await;
                stats.failed_tasks += 1;
                return Ok(Next::Pull);
            }
        };
        if let Some(Fault::Straggle(delay)) = fault {
            core = None;
            stats.straggles += 1;
            debug!(client = %self.id, %fence, ?delay, "simulated straggler");
            if sleep_or(delay, shutdown).await {
                return Ok(Next::Stop);
            }
        }
        let result = self.push(&fence, &update).await;
        drop(core);
        match disposition(&result) {
            Disposition::Delivered => stats.accepted += 1,
            Disposition::Keep => {
                debug!(client = %self.id, %fence, "push broke; keeping the update");
                *kept = Some(Box::new(KeptUpdate {
                    fence,
                    update,
                    task,
                }));
                // An error here: hand it to the loop, which reconnects.
                return result.map(|()| Next::Pull);
            }
            Disposition::Stale if stale_fence(&result) => {
                debug!(client = %self.id, %fence, "update from an earlier leader's round; kept for the new leader's task");
                self.orphan = Some(Box::new(KeptUpdate {
                    fence,
                    update,
                    task,
                }));
            }
            Disposition::Stale | Disposition::Refused => {
                stats.refused += 1;
                debug!(client = %self.id, %fence, error = ?result.err(), "update not accepted");
            }
        }
        Ok(Next::Pull)
    }

    /// The simulated fault, if any, for this task: the `nth` task of a round draws the `nth`
    /// decision of its stream, so a retried round is not doomed to repeat its faults.
    fn fault(&mut self, fence: &Fence) -> Option<Fault> {
        let nth = match &mut self.last_task {
            Some((round, nth)) if *round == fence.round => {
                *nth += 1;
                *nth
            }
            slot => {
                *slot = Some((fence.round, 0));
                0
            }
        };
        fault_for(&self.faults, self.options.seed, fence.round, &self.id, nth)
    }

    /// The share of its local steps a simulated slow device does in this round, or `None`
    /// for all of them.
    fn partial_share(&self, fence: &Fence) -> Option<f64> {
        let share = partial_share(&self.faults, self.options.seed, fence.round, &self.id);
        if let Some(share) = share {
            debug!(client = %self.id, %fence, share, "simulated partial work");
        }
        share
    }

    /// One of the fleet's workers (about one per core), for work on the CPU.
    async fn core(&self) -> Result<OwnedSemaphorePermit> {
        self.cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ClientError::Worker(e.to_string()))
    }

    /// Fetches the round's global state, then trains (or evaluates) on the client's data on
    /// one of the fleet's workers, which it hands back with the update.
    async fn work(
        &mut self,
        task: Task,
        fence: &Fence,
    ) -> Result<(LocalUpdate, OwnedSemaphorePermit)> {
        let global = self
            .cache
            .get(self.route.fleet(), &self.id, fence, task.global_len)
            .await?;
        let worker = self.core().await?;
        let data = self.data.clone();
        let trainer = self.trainer.clone();
        let mut state = std::mem::take(&mut self.state);
        let attack = self.attack;
        let collusion = self.collusion.clone();
        // Should the work panic, the client goes on with its state as last kept (its files are
        // read again), never with another client's or none.
        let fallback = state.fresh();
        let (update, state) = tokio::task::spawn_blocking(move || {
            let update = run_task(trainer.as_ref(), &task, &global, &data, &mut state)
                .and_then(|u| match (&collusion, attack) {
                    (Some(collusion), _) => collusion.forge(trainer.as_ref(), &task, &global, u),
                    (None, Some(attack)) => attack.corrupt(&task, &global, u),
                    (None, None) => Ok(u),
                })
                .and_then(|u| {
                    encode_update(&task, &global, u, &state.client_id, &mut state.feedback)
                });
            (update, state)
        })
        .await
        .map_err(|e| {
            *self.state = fallback;
            ClientError::Worker(e.to_string())
        })?;
        self.state = state;
        update.map(|update| (update, worker))
    }

    async fn push(&mut self, fence: &Fence, update: &LocalUpdate) -> Result<()> {
        // Every finished update was encoded once (`encode_update`); a plain one made by hand
        // is encoded here.
        let plain;
        let encoded = match &update.encoded {
            Some(encoded) => encoded,
            None => {
                plain = Encoded::Plain(update.payload.clone());
                &plain
            }
        };
        let header = UpdateHeader {
            client_id: self.id.clone(),
            fence: Some(fence.clone()),
            num_examples: update.num_examples,
            payload_len: encoded.values(),
            compression: encoded.compression() as i32,
            encoded_len: encoded.encoded_len(),
            counts: update.counts.clone(),
            metrics: update
                .metrics
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        };
        self.route
            .fleet()
            .push(header, encoded, self.chunk_bytes)
            .await?;
        Ok(())
    }
}

/// Whether a push was refused because its fence names an earlier coordinator or round.
fn stale_fence(result: &Result<()>) -> bool {
    matches!(result, Err(ClientError::Refused(status)) if reason(status) == Some("stale_fence"))
}

/// Sleeps for `delay` unless `shutdown` resolves first; true if it did.
async fn sleep_or<F: Future<Output = ()>>(delay: Duration, shutdown: &mut Pin<&mut F>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = shutdown.as_mut() => true,
    }
}
