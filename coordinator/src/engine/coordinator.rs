//! The coordinator's shared state and the requests clients make of it.
//!
//! [`Coordinator`] is a cheap handle: the gRPC service calls its request methods, and the round
//! driver ([`crate::engine::driver`]) opens and closes rounds on it. All mutable state sits behind one
//! short-held mutex; the expensive part of an update (folding it in) runs on a blocking thread
//! against the round's own accumulator, so heartbeats never wait behind arithmetic.

use crate::aggregate::AggregateError;
use crate::aggregate::norm::NormBound;
use crate::config::{Limits, RunConfig};
use crate::engine::phase::Phase;
use crate::engine::refusals::Refusals;
use crate::engine::registry::{Registry, check_client_id};
use crate::engine::round::{OpenRound, SharedAccumulator, fold};
use crate::error::{CoordinatorError, Result};
use crate::net::upload::Decoding;
use crate::refusal::Refusal;
use crate::store::checkpoint::CheckpointStore;
use crate::strategy::results::{ClientUpdate, Delivery, PartialSum};
use crate::sync::lock;
use crate::telemetry::Telemetry;
use shoal_models::ModelSpec;
use shoal_proto::v1::{Chunk, Fence, JoinReply, PartialHeader, UpdateHeader};
use shoal_proto::{Codec, ProtoError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, watch};

/// Most metrics one update may report, and the longest metric name.
const MAX_METRICS: usize = 64;
const MAX_METRIC_NAME: usize = 64;
/// How long a draining coordinator waits for silent clients after the last request: more than
/// a client's longest reconnect delay (5 s by default).
const DRAIN_QUIET: std::time::Duration = std::time::Duration::from_secs(8);
/// Longest reason for an abandoned task that is logged, in characters.
const MAX_ABANDON_REASON: usize = 512;

/// Mutable coordinator state, behind one mutex.
#[derive(Debug)]
pub struct State {
    /// Joined clients.
    pub registry: Registry,
    /// Where the run is.
    pub phase: Phase,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) run_id: String,
    pub(crate) epoch: u64,
    pub(crate) config: RunConfig,
    pub(crate) limits: Limits,
    pub(crate) spec: ModelSpec,
    /// How clients encode FedAvg and FedSGD updates.
    pub(crate) codec: Codec,
    pub(crate) state: Mutex<State>,
    /// Bumped whenever a round opens or the run ends: wakes long-polling clients.
    pub(crate) changed: watch::Sender<u64>,
    /// Signalled when an update lands or a client joins: wakes the round driver.
    pub(crate) progress: Notify,
    /// Where checkpoints and the round log go, if the run is checkpointed.
    pub(crate) checkpoints: Option<CheckpointStore>,
    /// Refused requests by reason.
    pub(crate) refusals: Refusals,
    /// Metrics for Prometheus.
    pub(crate) telemetry: Telemetry,
    /// A failure that must end the run (the round log cannot be written): set by whoever meets
    /// it, taken by the round driver, which stops the run with it.
    pub(crate) fatal: Mutex<Option<CoordinatorError>>,
    /// Set once another coordinator leads the run (see [`Coordinator::step_down`]).
    deposed: std::sync::atomic::AtomicBool,
    /// Set at the first update this coordinator accepted.
    accepted_any: std::sync::atomic::AtomicBool,
}

/// Handle to a running coordinator; clones share the same state.
#[derive(Debug, Clone)]
pub struct Coordinator {
    pub(crate) shared: Arc<Shared>,
}

impl Coordinator {
    /// A coordinator for `config`, training models shaped by `spec`, keeping nothing on disk.
    pub fn new(config: RunConfig, limits: Limits, spec: ModelSpec) -> Self {
        Self::build(config, limits, spec, None)
    }

    /// A coordinator that checkpoints every round and logs accepted updates to `store`, so a
    /// restart on the same directory carries the run on (see [`crate::store::recovery`]).
    pub fn with_checkpoints(
        config: RunConfig,
        limits: Limits,
        spec: ModelSpec,
        store: CheckpointStore,
    ) -> Self {
        Self::build(config, limits, spec, Some(store))
    }

    fn build(
        config: RunConfig,
        limits: Limits,
        spec: ModelSpec,
        checkpoints: Option<CheckpointStore>,
    ) -> Self {
        // The epoch the state was claimed for; a coordinator keeping nothing, or not yet
        // claimed (it claims with this epoch at its first write), goes by the clock.
        let epoch = checkpoints
            .as_ref()
            .and_then(CheckpointStore::epoch)
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(1)
            });
        let (changed, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                run_id: config.run_id(),
                epoch,
                // A run's configuration is validated before a coordinator is built for it.
                codec: config.codec().unwrap_or(Codec::None),
                config,
                limits,
                spec,
                state: Mutex::new(State {
                    registry: Registry::default(),
                    phase: Phase::Waiting,
                }),
                changed,
                progress: Notify::new(),
                checkpoints,
                refusals: Refusals::default(),
                telemetry: Telemetry::default(),
                fatal: Mutex::new(None),
                deposed: Default::default(),
                accepted_any: Default::default(),
            }),
        }
    }

    /// The run id every fence carries.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// This incarnation's epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// The run configuration.
    pub fn config(&self) -> &RunConfig {
        &self.shared.config
    }

    /// Counts a refusal (a refused request, stream or connection) under its reason.
    pub fn count_refusal(&self, refusal: Refusal) {
        self.shared.refusals.record(refusal);
        self.shared.telemetry.refused(refusal);
    }

    /// This coordinator's refusal counter, for the network layers that refuse before the
    /// service does.
    pub(crate) fn refusal_counter(&self) -> crate::refusal::RefusalCounter {
        std::sync::Arc::new(self.clone())
    }

    /// The metrics, as a Prometheus scrape reads them (see [`crate::telemetry`]).
    pub fn metrics_text(&self) -> String {
        self.shared.telemetry.render(self.registered())
    }

    /// Whether a log line about `refusal` may be written now; `Some(n)` counts the refusals
    /// left unlogged since the last line (see [`Refusals::may_log`]).
    pub fn may_log_refusal(&self, refusal: Refusal) -> Option<u64> {
        self.shared
            .refusals
            .may_log(refusal.reason(), Instant::now())
    }

    /// Requests refused so far, by reason (see [`Refusal::reason`]).
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.shared.refusals.snapshot()
    }

    /// Opens `round` (see [`Phase::open`]) and wakes the clients waiting in a pull.
    pub(crate) fn open_round(&self, round: OpenRound) -> Result<()> {
        lock(&self.shared.state).phase.open(round)?;
        self.shared.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Closes the open round (see [`Phase::close`]): no update is admitted from now on.
    pub(crate) fn close_round(&self) -> Result<Box<OpenRound>> {
        lock(&self.shared.state).phase.close()
    }

    /// The closed round is recorded, or will be retried (see [`Phase::settle`]).
    pub(crate) fn settle_round(&self) {
        lock(&self.shared.state).phase.settle();
    }

    /// Ends the run: every pull from now on answers Finished. The first reason given stays.
    pub(crate) fn finish(&self, reason: &str) {
        if lock(&self.shared.state).phase.finish(reason) {
            self.shared.changed.send_modify(|v| *v += 1);
        }
    }

    /// The error that must end the run, if one was met (see [`Coordinator::stop_with`]).
    pub(crate) fn take_fatal(&self) -> Option<CoordinatorError> {
        lock(&self.shared.fatal).take()
    }

    /// Ends the run with `err` as soon as the round driver sees it (the first such error wins).
    pub(crate) fn stop_with(&self, err: CoordinatorError) {
        let mut fatal = lock(&self.shared.fatal);
        if fatal.is_none() {
            tracing::error!(error = %err, "stopping the run");
            *fatal = Some(err);
        }
        drop(fatal);
        self.shared.progress.notify_one();
    }

    /// Stops answering as the run's coordinator, without ending the run for clients: another
    /// coordinator leads it now. Every request from now on, and every pull waiting, is refused
    /// as `shutting_down`, so clients keep their updates and move to the new leader.
    pub fn step_down(&self) {
        self.shared
            .deposed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// True once this coordinator stepped down.
    pub fn has_stepped_down(&self) -> bool {
        self.shared
            .deposed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// True once the run has ended (every pull answers Finished), even while the server still
    /// drains.
    pub fn has_ended(&self) -> bool {
        lock(&self.shared.state).phase.has_finished()
    }

    /// Registered clients.
    pub fn registered(&self) -> usize {
        lock(&self.shared.state).registry.len()
    }

    /// After the run ended, waits for registered clients to hear so and leave, so stopping the
    /// server does not strand them in reconnect loops: until every client that came has left,
    /// or none has been heard from for `DRAIN_QUIET` (longer than a client's longest
    /// reconnect delay, so one backing off after a lost connection comes back within it; the
    /// rest are gone), or `limit` passed.
    pub async fn drain(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut heard = 0;
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            let (left, requests) = {
                let state = lock(&self.shared.state);
                (state.registry.len(), state.registry.heard())
            };
            let now = tokio::time::Instant::now();
            if requests != heard {
                heard = requests;
                quiet_since = now;
            }
            let quiet = now - quiet_since >= DRAIN_QUIET;
            // Nobody registered because everyone left is the end; nobody registered because
            // nobody came yet (a coordinator restarted after the last round) is a reason to
            // wait for the clients reconnecting.
            let all_left = left == 0 && requests > 0;
            if all_left || now >= deadline || quiet {
                if left > 0 {
                    tracing::info!(
                        clients = left,
                        "stopping with clients that did not hear the run ended (silent)"
                    );
                }
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Registers a client (or a reconnect under the same id). A client selected for the open
    /// round that has not delivered gets its task again on its next pull: it restarted, or lost
    /// the connection, and may have lost its work.
    pub fn join(&self, client_id: &str, num_examples: u64) -> Result<JoinReply> {
        let limits = &self.shared.limits;
        {
            let mut state = lock(&self.shared.state);
            state
                .registry
                .join(client_id, num_examples, limits.max_clients, Instant::now())?;
            if let Some(round) = state.phase.open_round_mut()
                && round.rejoined(client_id)
            {
                tracing::debug!(client = %client_id, round = round.fence.round, "selected client joined again; its task will be handed out again");
            }
        }
        self.shared.progress.notify_one();
        Ok(JoinReply {
            run_id: self.shared.run_id.clone(),
            epoch: self.shared.epoch,
            poll_timeout_ms: limits.poll_timeout.as_millis() as u32,
            max_chunk_bytes: limits.max_chunk_bytes as u32,
        })
    }

    /// Removes a client. If it was selected for the open round and had not delivered, the
    /// round stops waiting for it.
    pub fn leave(&self, client_id: &str) -> Result<()> {
        let mut state = lock(&self.shared.state);
        state.registry.leave(client_id)?;
        if let Some(round) = state.phase.open_round_mut()
            && round.drop_out(client_id)
        {
            if let Some(unlogged) = self.shared.refusals.may_log("left", Instant::now()) {
                tracing::info!(client = %client_id, round = round.fence.round, unlogged, "selected client left before delivering (unlogged: others since the last line)");
            }
            self.shared.progress.notify_one();
        }
        Ok(())
    }

    /// A selected client cannot finish its task for the round `fence` names (its local work
    /// failed): the round stops waiting for it. Refused for another round, or a client that
    /// was not selected.
    pub fn abandon(&self, client_id: &str, fence: &Fence, reason: &str) -> Result<()> {
        let mut state = lock(&self.shared.state);
        if !state.registry.contains(client_id) {
            return Err(CoordinatorError::UnknownClient(client_id.to_owned()));
        }
        match &mut state.phase {
            Phase::Open(round) if round.fence == *fence => {
                if !round.selected.contains(client_id) {
                    return Err(CoordinatorError::NotSelected(client_id.to_owned()));
                }
                if round.drop_out(client_id) {
                    let reason: String = reason
                        .chars()
                        .take(MAX_ABANDON_REASON)
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect();
                    if let Some(unlogged) =
                        self.shared.refusals.may_log("abandoned", Instant::now())
                    {
                        tracing::warn!(client = %client_id, round = fence.round, %reason, unlogged, "client could not do its task (unlogged: others since the last line)");
                    }
                    self.shared.progress.notify_one();
                }
                Ok(())
            }
            phase => Err(stale(fence, phase)),
        }
    }

    /// Holds a fetch from `client_id` to its pull rate (see [`crate::engine::pacing`]; pulls
    /// are paced in [`crate::engine::polling`]): waits out a short delay, or refuses a flood.
    async fn pace(&self, client_id: &str) -> Result<()> {
        if let Some(rate) = self.shared.limits.pull_rate {
            let delay = lock(&self.shared.state)
                .registry
                .pace(client_id, Instant::now(), rate)?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        Ok(())
    }

    /// The global state a task refers to, as wire chunks; refused for a closed round or an
    /// unselected client. Paced like pulls, so repeated fetches cannot flood the coordinator.
    pub async fn global_for(&self, client_id: &str, fence: &Fence) -> Result<Arc<[Chunk]>> {
        self.pace(client_id).await?;
        let state = lock(&self.shared.state);
        if !state.registry.contains(client_id) {
            return Err(CoordinatorError::UnknownClient(client_id.to_owned()));
        }
        match &state.phase {
            Phase::Open(round) if round.fence == *fence => {
                if round.selected.contains(client_id) {
                    // The chunks carry the global state as 4-byte floats.
                    self.shared.telemetry.sent(4 * round.global.len() as u64);
                    Ok(round.global_chunks.clone())
                } else {
                    Err(CoordinatorError::NotSelected(client_id.to_owned()))
                }
            }
            phase => Err(stale(fence, phase)),
        }
    }

    /// Checks an update's header before its payload is received; on success the client's slot
    /// in the round is held until the returned admission is delivered or dropped.
    pub fn admit(&self, header: &UpdateHeader) -> Result<Admission> {
        let client = Contributor {
            id: &header.client_id,
            examples: header.num_examples,
            metrics: &header.metrics,
        };
        let upload = Upload {
            fence: header.fence.as_ref(),
            what: "update header",
            len: header.payload_len,
            counts_len: header.counts.len(),
            // The update is folded here: the round's norm rule applies to it.
            norm: true,
        };
        self.hold_slots(&[client], upload)
    }

    /// Checks a sub-aggregator's partial sum header before its sum is received: every client
    /// it names must be known, selected, not yet delivered and not uploading, and named once;
    /// on success their slots are held until the returned admission is delivered or dropped.
    /// Partial sums are folded as they come, so the clients count, not the aggregators.
    pub fn admit_partial(&self, header: &PartialHeader) -> Result<Admission> {
        let clients: Vec<Contributor<'_>> = header
            .contributions
            .iter()
            .map(|c| Contributor {
                id: &c.client_id,
                examples: c.num_examples,
                metrics: &c.metrics,
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        if let Some(repeated) = clients.iter().find(|c| !seen.insert(c.id)) {
            return Err(CoordinatorError::Duplicate(repeated.id.to_owned()));
        }
        let upload = Upload {
            fence: header.fence.as_ref(),
            what: "partial sum",
            len: header.sum_len,
            counts_len: header.counts.len(),
            // Each update met the norm rule at the aggregator that folded it.
            norm: false,
        };
        self.hold_slots(&clients, upload)
    }

    /// What an upload of `clients`' work must satisfy before its payload is received: each
    /// client's id, examples and metrics well-formed, the payload within the limit, the fence
    /// of the open round, every client known, selected, not yet delivered and not uploading.
    /// On success their slots in the round are held until the admission is delivered or
    /// dropped.
    fn hold_slots(&self, clients: &[Contributor<'_>], upload: Upload<'_>) -> Result<Admission> {
        let limits = &self.shared.limits;
        for client in clients {
            check_client_id(client.id)?;
        }
        if upload.len > limits.max_update_values as u64 {
            return Err(ProtoError::TooLarge {
                declared: upload.len,
                limit: limits.max_update_values,
            }
            .into());
        }
        let fence = upload
            .fence
            .cloned()
            .ok_or_else(|| CoordinatorError::Malformed(format!("{} has no fence", upload.what)))?;
        for client in clients {
            if client.examples == 0 || client.examples > limits.max_examples {
                return Err(AggregateError::BadWeight {
                    weight: client.examples,
                    max: limits.max_examples,
                }
                .into());
            }
            check_metrics(client.metrics)?;
        }
        let mut state = lock(&self.shared.state);
        if let Some(unknown) = clients.iter().find(|c| !state.registry.contains(c.id)) {
            return Err(CoordinatorError::UnknownClient(unknown.id.to_owned()));
        }
        let state = &mut *state;
        match &mut state.phase {
            Phase::Open(round) => {
                let ids: Vec<String> = clients.iter().map(|c| c.id.to_owned()).collect();
                round.admit_clients(&ids, &fence, upload.len, upload.counts_len)?;
                // Only an admitted header counts as a heartbeat: a refusal changes nothing.
                let now = Instant::now();
                for id in &ids {
                    state.registry.touch(id, now)?;
                    round.in_flight.insert(id.clone());
                }
                let bound = if upload.norm {
                    NormBound::for_task(
                        round.plan.kind,
                        &round.global,
                        limits.max_update_norm,
                        limits.norm_policy,
                    )
                } else {
                    None
                };
                Ok(Admission {
                    // One upload per client at a time, of the round's length (`admit`).
                    decoding: Decoding::for_round(
                        round.plan.kind,
                        self.shared.codec,
                        &round.global,
                    )
                    .reserving_all(),
                    slot: Some(Slot {
                        coordinator: self.clone(),
                        clients: ids,
                        fence,
                        accumulator: round.accumulator.clone(),
                    }),
                    bound,
                    max_values: limits.max_update_values,
                    max_chunk_bytes: limits.max_chunk_bytes,
                })
            }
            phase => Err(stale(&fence, phase)),
        }
    }
}

/// A client an upload delivers for, as its header names it.
struct Contributor<'a> {
    id: &'a str,
    examples: u64,
    metrics: &'a HashMap<String, f64>,
}

/// What an upload's header says of the upload itself.
struct Upload<'a> {
    fence: Option<&'a Fence>,
    /// Its name in errors.
    what: &'static str,
    /// Values of its payload.
    len: u64,
    /// Integer counts it carries.
    counts_len: usize,
    /// Whether the round's update-norm rule applies to its payload.
    norm: bool,
}

/// Refuses reported metrics that could poison the round records: too many, badly named, or
/// not finite.
fn check_metrics(metrics: &HashMap<String, f64>) -> Result<()> {
    if metrics.len() > MAX_METRICS {
        return Err(CoordinatorError::Malformed(format!(
            "{} metrics reported; at most {MAX_METRICS} allowed",
            metrics.len()
        )));
    }
    for (name, value) in metrics {
        if name.is_empty()
            || name.len() > MAX_METRIC_NAME
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(CoordinatorError::Malformed(format!(
                "metric names must be 1-{MAX_METRIC_NAME} printable characters"
            )));
        }
        if !value.is_finite() {
            return Err(CoordinatorError::Malformed(format!(
                "metric {name:?} is not finite"
            )));
        }
    }
    Ok(())
}

fn stale(fence: &Fence, phase: &Phase) -> CoordinatorError {
    let open = match phase {
        Phase::Open(round) => round.fence.to_string(),
        _ => "none".into(),
    };
    CoordinatorError::StaleFence {
        got: fence.to_string(),
        open,
    }
}

/// A client's reserved slot in the open round, between header and folded payload.
#[derive(Debug)]
pub struct Admission {
    /// How the update's payload arrives.
    pub decoding: Decoding,
    /// The client's place in the round; taken by [`Admission::deliver`], freed on drop if
    /// still here.
    slot: Option<Slot>,
    /// The round's update-norm rule, if it has one.
    bound: Option<NormBound>,
    /// Largest payload accepted, in values.
    pub max_values: usize,
    /// Largest chunk accepted, in bytes.
    pub max_chunk_bytes: usize,
}

impl Admission {
    /// Applies the round's norm rule and folds the received update in (on a blocking thread),
    /// then records the delivery; returns the number of updates accepted in the round so far.
    /// The delivery is recorded by the blocking fold itself, so an upload whose request is
    /// cancelled while its update is being folded still counts as delivered.
    pub async fn deliver(self, update: ClientUpdate) -> Result<u32> {
        self.deliver_any(Delivery::Update(update)).await
    }

    /// Folds in a received partial sum for the clients admitted with it, as
    /// [`Admission::deliver`] does an update.
    pub async fn deliver_partial(self, partial: PartialSum) -> Result<u32> {
        self.deliver_any(Delivery::Partial(partial)).await
    }

    async fn deliver_any(mut self, mut delivery: Delivery) -> Result<u32> {
        let slot = self
            .slot
            .take()
            .ok_or(CoordinatorError::Internal("update delivered twice"))?;
        let bound = self.bound.take();
        let folded = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let bytes = match &delivery {
                Delivery::Update(update) => 4 * update.payload.len() as u64,
                Delivery::Partial(partial) => 16 * partial.totals.len() as u64,
            };
            let updates = delivery.clients().len() as u64;
            let folded = (|| {
                if let Delivery::Update(update) = &mut delivery
                    && let Some(bound) = &bound
                    && let Some(norm) = bound.enforce(&mut update.payload)?
                {
                    tracing::info!(client = %update.client_id, norm, "update clipped to the norm bound");
                }
                fold(&slot.accumulator, delivery, &slot.fence)
            })();
            slot.settle(folded.is_ok());
            if folded.is_ok() {
                slot.coordinator.shared.telemetry.update_accepted(updates, bytes, started.elapsed());
            }
            if folded.is_ok() && !slot.coordinator.shared.accepted_any.swap(true, std::sync::atomic::Ordering::Relaxed) {
                // Marks when a coordinator that took a run over is serving it again.
                tracing::info!(round = slot.fence.round, epoch = slot.fence.epoch, "first update accepted by this coordinator");
            }
            match folded {
                Err(err @ CoordinatorError::Storage { .. }) => {
                    // The update cannot be made durable, so it cannot be accepted, nor can
                    // any other: stop the run with the disk's error. The client hears
                    // Unavailable (the file name stays on the coordinator) and keeps its
                    // update.
                    slot.coordinator.stop_with(err);
                    Err(CoordinatorError::ShuttingDown)
                }
                other => other,
            }
        })
        .await
        .map_err(|source| CoordinatorError::TaskFailed {
            task: "fold",
            source,
        })?;
        folded.map(|n| n as u32)
    }
}

/// One client's place in the open round while its upload is received and folded: what
/// recording the outcome needs, movable to the blocking fold.
#[derive(Debug)]
struct Slot {
    coordinator: Coordinator,
    /// The client, or every client of a partial sum.
    clients: Vec<String>,
    fence: Fence,
    accumulator: SharedAccumulator,
}

impl Slot {
    /// Frees the client's place among the uploads in flight and, if `delivered`, records the
    /// delivery.
    fn settle(&self, delivered: bool) {
        let shared = &self.coordinator.shared;
        let mut state = lock(&shared.state);
        // The fence is the same in every attempt of a round; the accumulator is not. A stream
        // left over from an earlier attempt must not touch the current attempt's bookkeeping.
        if let Some(round) = state.phase.open_round_mut()
            && round.fence == self.fence
            && Arc::ptr_eq(&round.accumulator, &self.accumulator)
        {
            for client in &self.clients {
                round.in_flight.remove(client);
                if delivered {
                    round.delivered.insert(client.clone());
                }
            }
            if delivered && round.complete() {
                shared.progress.notify_one();
            }
        }
    }
}

impl Drop for Admission {
    /// An upload that ended before its update reached the fold (broken stream, refused
    /// chunk) frees the client's place, so its next attempt is admitted.
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.settle(false);
        }
    }
}

impl crate::refusal::CountRefusals for Coordinator {
    fn count_refusal(&self, refusal: Refusal) {
        Coordinator::count_refusal(self, refusal);
    }
}
