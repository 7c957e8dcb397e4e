//! The round driver: runs a run's rounds on a [`Coordinator`], one at a time, through the
//! lifecycle of [`crate::engine::phase`]: wait for clients, open the round, gather updates
//! until enough arrived or the deadline passed, close it, aggregate and evaluate off the
//! runtime, record (checkpoint), and on to the next.
//!
//! A round that closes below quorum is retried with a fresh selection; after `max_retries`
//! failed attempts the run stops with a clear error rather than waiting forever. However the
//! run ends, clients hear that it ended (their pulls answer Finished).

use crate::config::{NormPolicy, QuorumPolicy};
use crate::engine::Coordinator;
use crate::engine::registry::name_some;
use crate::engine::round::{OpenRound, RoundFolds, RoundSink, SharedAccumulator, close, fold};
use crate::engine::selection::{round_size, select};
use crate::error::{CoordinatorError, Result};
use crate::store::checkpoint::Checkpoint;
use crate::store::metrics::{RoundRecord, RunSummary, sha256_f32};
use crate::store::recovery::Resume;
use crate::store::round_log::{LoggedRound, RoundLog, RoundOpened};
use crate::strategy::results::{Delivery, RoundAccumulator, RoundResults};
use crate::strategy::{Metrics, Strategy, TaskPlan};
use crate::sync::lock;
use shoal_datasets::Dataset;
use shoal_proto::v1::{Fence, ModelSpec as WireSpec};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

/// What a finished run leaves behind.
#[derive(Debug)]
pub struct RunOutcome {
    /// The summary written by `--summary-out`.
    pub summary: RunSummary,
    /// Every aggregated round.
    pub records: Vec<RoundRecord>,
    /// The final global state.
    pub global: Vec<f32>,
}

/// The stages of a round (`Fence::stage`): its training (or clustering) step, then, with
/// federated evaluation, the clients scoring the new model.
const TRAINING: u32 = 0;
const EVALUATION: u32 = 1;

/// Round-record values that say how the quorum-loss policy degraded a round.
const SHRUNK: &str = "quorum_shrunk";
const WAITED: &str = "quorum_wait_s";

/// How often a long wait says at info level what it is waiting for.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(5);
/// Most client ids a log line names.
const NAMED_IN_LOG: usize = 10;

/// A closed round's results, with what the record says of how they were gathered.
struct Gathered {
    results: RoundResults,
    selected: usize,
    attempts: u32,
    /// How the quorum-loss policy degraded the round, if it did.
    degraded: Option<Degraded>,
}

/// What the quorum-loss policy did to a round.
#[derive(Debug, Clone, Copy)]
enum Degraded {
    /// Aggregated below quorum.
    Shrunk,
    /// Reopened after waiting this long for a quorum.
    Waited(Duration),
}

/// Drives one run on a coordinator: build it with the strategy, the held-out data and where to
/// start, then [`RoundDriver::run`] it while the coordinator serves.
pub struct RoundDriver {
    coordinator: Coordinator,
    strategy: Box<dyn Strategy>,
    test: Arc<Dataset>,
    resume: Resume,
    observer: Option<UnboundedSender<RoundRecord>>,
}

/// A run being driven: what the rounds need besides the strategy, which moves between the
/// runtime and blocking threads and so is passed along explicitly.
struct Driving {
    coordinator: Coordinator,
    test: Arc<Dataset>,
    /// Whether this incarnation has waited for its clients yet: each waits for the configured
    /// number before its first round; later rounds select from whoever is available then.
    gathered: bool,
    /// Whether this incarnation carries on an earlier one.
    resumed: bool,
}

impl std::fmt::Debug for RoundDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundDriver")
            .field("strategy", &self.strategy.name())
            .field("completed", &self.resume.completed)
            .finish_non_exhaustive()
    }
}

impl RoundDriver {
    /// A driver of `coordinator`'s run with `strategy`, evaluating on `test`, starting where
    /// `resume` says.
    pub fn new(
        coordinator: Coordinator,
        strategy: Box<dyn Strategy>,
        test: Arc<Dataset>,
        resume: Resume,
    ) -> Self {
        Self {
            coordinator,
            strategy,
            test,
            resume,
            observer: None,
        }
    }

    /// Also sends each round's record to `observer` as it is made.
    pub fn observed_by(mut self, observer: Option<UnboundedSender<RoundRecord>>) -> Self {
        self.observer = observer;
        self
    }

    /// Drives the run to its end: every round, or until the strategy converged, shutdown
    /// resolved, or quorum was lost. However it ends, clients hear that it ended, unless this
    /// coordinator was deposed (the run goes on under the one that took over).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<RunOutcome> {
        let coordinator = self.coordinator.clone();
        let outcome = self.drive(shutdown).await;
        match &outcome {
            Ok(done) => coordinator.finish(&done.summary.stop_reason),
            Err(CoordinatorError::ShuttingDown) => coordinator.finish("coordinator shut down"),
            // Another coordinator carries the run on: its clients must not hear it ended.
            Err(CoordinatorError::Deposed { .. }) => coordinator.step_down(),
            Err(err) => coordinator.finish(&format!("the run failed: {err}")),
        }
        outcome
    }

    async fn drive(self, shutdown: impl Future<Output = ()>) -> Result<RunOutcome> {
        tokio::pin!(shutdown);
        let Self {
            coordinator,
            mut strategy,
            test,
            resume,
            observer,
        } = self;
        let mut driving = Driving {
            coordinator,
            test,
            gathered: false,
            resumed: resume.completed > 0 || resume.replay.is_some(),
        };
        let config = driving.coordinator.config().clone();
        let rounds = config.rounds;
        let started = Instant::now();
        let mut records = resume.records;
        let mut replay = resume.replay;
        let mut stop_reason = "all rounds completed".to_string();
        let mut round = resume.completed + 1;
        while round <= rounds {
            if strategy.converged() {
                stop_reason = "converged".into();
                break;
            }
            let round_started = Instant::now();
            let gathered = tokio::select! {
                gathered = driving.gather(strategy.as_ref(), round, replay.take()) => gathered?,
                () = &mut shutdown => return Err(CoordinatorError::ShuttingDown),
            };
            let contributors: Vec<String> = gathered.results.reports.keys().cloned().collect();
            let mut record;
            (strategy, record) = driving
                .aggregate(strategy, round, gathered, round_started)
                .await?;
            if config.eval.holdout().is_some() {
                let scores = tokio::select! {
                    scores = driving.evaluate_on_clients(strategy.model(), round, &contributors) => scores?,
                    () = &mut shutdown => return Err(CoordinatorError::ShuttingDown),
                };
                record.values.extend(scores);
                record.seconds = round_started.elapsed().as_secs_f64();
            }
            driving.coordinator.shared.telemetry.round_completed(
                record.clients,
                record.seconds,
                record.get("accuracy"),
                record.get("loss"),
            );
            if let Some(tx) = &observer {
                let _ = tx.send(record.clone());
            }
            records.push(record);
            strategy = driving.checkpoint(strategy, round, &records).await?;
            driving.coordinator.settle_round();
            round += 1;
        }
        let shrunk = records.iter().filter(|r| r.get(SHRUNK).is_some()).count();
        let waited: Vec<f64> = records.iter().filter_map(|r| r.get(WAITED)).collect();
        if shrunk > 0 {
            stop_reason.push_str(&format!(
                "; quorum lost in {shrunk} rounds, aggregated below quorum (policy shrink)"
            ));
        }
        if !waited.is_empty() {
            stop_reason.push_str(&format!(
                "; quorum lost in {} rounds, reopened after waiting {:.1} s in all (policy wait)",
                waited.len(),
                waited.iter().sum::<f64>()
            ));
        }
        let global = strategy.model().to_vec();
        let last = records.last();
        let summary = RunSummary {
            run_id: driving.coordinator.run_id().to_string(),
            strategy: strategy.name().to_string(),
            rounds_completed: records.len() as u32,
            final_accuracy: last.and_then(|r| r.get("accuracy")),
            final_loss: last.and_then(|r| r.get("loss")),
            final_inertia: last.and_then(|r| r.get("inertia")),
            model_sha256: sha256_f32(&global),
            num_params: global.len(),
            wall_seconds: started.elapsed().as_secs_f64(),
            stop_reason,
            refusals: driving.coordinator.refusals(),
        };
        Ok(RunOutcome {
            summary,
            records,
            global,
        })
    }
}

impl Driving {
    /// Aggregates and evaluates a closed round off the runtime; returns the strategy and the
    /// round's record.
    async fn aggregate(
        &self,
        strategy: Box<dyn Strategy>,
        round: u32,
        gathered: Gathered,
        round_started: Instant,
    ) -> Result<(Box<dyn Strategy>, RoundRecord)> {
        let Gathered {
            results,
            selected,
            attempts,
            degraded,
        } = gathered;
        let clients = results.contributors();
        let examples = results.total_weight();
        let client_metrics = client_averages(&results);
        let test = self.test.clone();
        let central = self.coordinator.config().eval.central();
        let (strategy, outcome) = tokio::task::spawn_blocking(move || {
            let mut strategy = strategy;
            let outcome = strategy.aggregate(round, results).and_then(|agg| {
                let scores = if central {
                    strategy.evaluate(&test)?
                } else {
                    Metrics::default()
                };
                Ok((agg, scores))
            });
            (strategy, outcome)
        })
        .await
        .map_err(|source| CoordinatorError::TaskFailed {
            task: "aggregation",
            source,
        })?;
        let (aggregated, evaluated) = outcome?;
        let mut values = client_metrics;
        values.extend(aggregated);
        values.extend(evaluated);
        match degraded {
            Some(Degraded::Shrunk) => {
                values.insert(SHRUNK.into(), 1.0);
            }
            Some(Degraded::Waited(waited)) => {
                values.insert(WAITED.into(), waited.as_secs_f64());
            }
            None => {}
        }
        let record = RoundRecord {
            round,
            clients,
            selected,
            attempts,
            examples,
            values,
            seconds: round_started.elapsed().as_secs_f64(),
        };
        info!(
            round,
            clients,
            accuracy = record.get("accuracy"),
            loss = record.get("loss"),
            "round aggregated"
        );
        Ok((strategy, record))
    }

    /// Runs attempts of `round` until one reaches quorum; returns its results, the number of
    /// clients asked, and the attempts used. A replayed log resumes its attempt where it was.
    ///
    /// Before this incarnation's first fresh selection it waits for the configured number of
    /// clients, as long as it takes, saying so; later attempts take whoever is available,
    /// waiting at most a round deadline for a quorum of them, and an attempt with too few
    /// counts as failed. A round replayed from the log keeps its logged selection and gathers
    /// nobody: the next round still waits for everyone to come back after the restart, so a
    /// resumed run selects what an uninterrupted one would (after a restart, for at most the
    /// time the round's attempts could take).
    async fn gather(
        &mut self,
        strategy: &dyn Strategy,
        round: u32,
        mut replay: Option<LoggedRound>,
    ) -> Result<Gathered> {
        let coordinator = self.coordinator.clone();
        let config = coordinator.config();
        let quorum = config.selection.min_clients.max(1);
        let first = replay.as_ref().map_or(0, |l| l.opened.attempt);
        let lost = || CoordinatorError::QuorumLost {
            round,
            quorum,
            attempts: config.max_retries + 1,
        };
        // The last attempt below quorum that got anything (what `shrink` aggregates), and
        // when `wait` began waiting.
        let mut shrunk: Option<Gathered> = None;
        let mut waiting: Option<(tokio::time::Instant, Option<tokio::time::Instant>)> = None;
        for attempt in first.. {
            let mut patience = None;
            if attempt > config.max_retries {
                match config.on_quorum_loss {
                    QuorumPolicy::Stop => return Err(lost()),
                    QuorumPolicy::Shrink => {
                        let gathered = shrunk.take().ok_or_else(lost)?;
                        warn!(
                            round,
                            got = gathered.results.contributors(),
                            quorum,
                            "quorum lost; aggregating what the last attempt got (policy shrink)"
                        );
                        return Ok(gathered);
                    }
                    QuorumPolicy::Wait { limit_ms } => {
                        let now = tokio::time::Instant::now();
                        let (_, until) = *waiting.get_or_insert_with(|| {
                            warn!(round, quorum, "quorum lost; serving the last model and reopening the round once a quorum is back (policy wait)");
                            (now, limit_ms.map(|ms| now + Duration::from_millis(ms)))
                        });
                        if until.is_some_and(|u| now >= u) {
                            return Err(lost());
                        }
                        patience = Some(until);
                    }
                }
            }
            let (selected, wanted, logged) = match replay.take() {
                Some(log) => (log.opened.selected, log.opened.wanted, log.updates),
                None => match self.select(round, attempt, quorum, patience).await {
                    Some((selected, wanted)) => (selected, wanted, Vec::new()),
                    None => continue,
                },
            };
            let plan = strategy.configure(round);
            let sink = self.sink(&plan, round, attempt, &selected, wanted)?;
            let accumulator = RoundFolds::new(sink);
            let kept = self.replay_updates(&accumulator, round, logged);
            // While clients train, fault in the accumulator's pages (not awaited: if the round
            // closes first, there is nothing left to touch).
            let warm = accumulator.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(sink) = warm.sink().as_mut() {
                    sink.accumulator.prefault();
                }
            });
            let open = self.open_round(
                strategy.global(),
                (round, TRAINING),
                plan,
                &selected,
                wanted,
                accumulator.clone(),
                kept,
            );
            coordinator
                .shared
                .telemetry
                .round_opened(round, selected.len());
            let results = self.run_stage(open, &accumulator).await?;
            if results.contributors() >= quorum {
                let degraded = waiting.map(|(since, _)| Degraded::Waited(since.elapsed()));
                return Ok(Gathered {
                    results,
                    selected: selected.len(),
                    attempts: attempt + 1,
                    degraded,
                });
            }
            coordinator.settle_round();
            warn!(
                round,
                attempt,
                got = results.contributors(),
                quorum,
                "round below quorum; retrying with a fresh selection"
            );
            if results.contributors() > 0 {
                shrunk = Some(Gathered {
                    results,
                    selected: selected.len(),
                    attempts: attempt + 1,
                    degraded: Some(Degraded::Shrunk),
                });
            }
        }
        Err(lost())
    }

    /// Waits for the clients an attempt needs and selects among them: `None` if fewer than
    /// the quorum came (the attempt fails), else the clients asked and the updates wanted.
    /// `patience`, when given, replaces the usual wait for a quorum (`Some(None)`: as long as
    /// it takes).
    async fn select(
        &mut self,
        round: u32,
        attempt: u32,
        quorum: usize,
        patience: Option<Option<tokio::time::Instant>>,
    ) -> Option<(Vec<String>, usize)> {
        let coordinator = self.coordinator.clone();
        let config = coordinator.config();
        let now = tokio::time::Instant::now();
        let (needed, deadline) = if let Some(until) = patience {
            (quorum, until)
        } else if self.gathered {
            (quorum, Some(now + config.round_timeout()))
        } else {
            // A resumed run waits for every client to come back, so it selects what an
            // uninterrupted run would; but a client may be gone for good, so only for as long
            // as the round's attempts could last.
            let patience = config.round_timeout() * (config.max_retries + 1);
            (
                quorum.max(config.selection.min_available),
                self.resumed.then(|| now + patience),
            )
        };
        let available = self.wait_for_clients(needed, deadline).await;
        self.gathered = true;
        if available.len() < needed {
            warn!(
                round,
                attempt,
                available = available.len(),
                needed,
                quorum,
                missing = %self.missing(),
                "fewer clients available than the round waits for; below quorum the attempt fails, else it goes on with those available (after a restart the result may then differ from an uninterrupted run)"
            );
        }
        // Below quorum an attempt fails, unless the policy is to shrink: then it goes on with
        // whoever is there, so that a round that loses its quorum has something to aggregate.
        let floor = match config.on_quorum_loss {
            QuorumPolicy::Shrink => 1,
            _ => quorum,
        };
        if available.len() < floor {
            return None;
        }
        let sel = &config.selection;
        let (wanted, asked) = round_size(
            available.len(),
            sel.clients_per_round,
            sel.fraction,
            sel.min_clients,
            sel.over_select,
        );
        Some((
            select(&available, asked, config.seed, round, attempt),
            wanted,
        ))
    }

    /// The open round at `(round, stage)`: the plan's task for `selected`, against the
    /// `global` state, with `done` (replayed) clients already delivered.
    #[allow(clippy::too_many_arguments)]
    fn open_round(
        &self,
        global: &[f32],
        (round, stage): (u32, u32),
        plan: TaskPlan,
        selected: &[String],
        wanted: usize,
        accumulator: SharedAccumulator,
        done: Vec<String>,
    ) -> OpenRound {
        let shared = &self.coordinator.shared;
        let fence = Fence::at(&shared.run_id, shared.epoch, round).with_stage(stage);
        let spec = &shared.spec;
        let (rows, cols) = spec.image_shape.unwrap_or((0, 0));
        let model = WireSpec {
            kind: spec.kind.to_string(),
            num_features: spec.num_features as u32,
            num_classes: spec.num_classes as u32,
            image_rows: rows as u32,
            image_cols: cols as u32,
        };
        let mut task = plan.task(fence.clone(), model, global.len());
        // With federated evaluation every task says what the clients hold out, so they never
        // train on what they evaluate on.
        task.holdout_fraction = shared.config.eval.holdout().unwrap_or(0.0);
        // Updates folded by sub-aggregators meet the same norm rule as those folded here.
        task.max_update_norm = shared.limits.max_update_norm.unwrap_or(0.0);
        task.clip_to_norm = shared.limits.norm_policy == NormPolicy::Clip;
        // Checked when the run was configured.
        let (compression, topk_fraction) = shared.codec.wire();
        task.compression = compression as i32;
        task.topk_fraction = topk_fraction;
        OpenRound {
            fence,
            plan,
            task,
            global: Arc::new(global.to_vec()),
            global_chunks: shoal_proto::encode_chunks(global, shoal_proto::DEFAULT_CHUNK_BYTES)
                .collect(),
            selected: selected.iter().cloned().collect(),
            tasked: done.iter().cloned().collect(),
            in_flight: Default::default(),
            dropped: Default::default(),
            delivered: done.into_iter().collect(),
            wanted: wanted.min(selected.len()),
            deadline: tokio::time::Instant::now() + shared.config.round_timeout(),
            accumulator,
        }
    }

    /// The evaluation stage of `round`: the round's contributors still joined evaluate the new
    /// `global` model on the examples they hold out (every task of the run says how many);
    /// the result is their weighted mean loss and accuracy (as `loss`/`accuracy` when the
    /// coordinator does not evaluate itself, else as `fed_loss`/`fed_accuracy`), with
    /// `fed_clients` and `fed_examples`. Nothing is logged: a coordinator that crashes here
    /// redoes the round's aggregation from its log and asks again. Clients that do not answer
    /// by the deadline are left out; if none answers, the round has no federated scores.
    async fn evaluate_on_clients(
        &mut self,
        global: &[f32],
        round: u32,
        contributors: &[String],
    ) -> Result<BTreeMap<String, f64>> {
        let coordinator = self.coordinator.clone();
        coordinator.settle_round();
        let asked: Vec<String> = {
            let state = lock(&coordinator.shared.state);
            contributors
                .iter()
                .filter(|c| state.registry.contains(c))
                .cloned()
                .collect()
        };
        if asked.is_empty() {
            warn!(
                round,
                "no contributor of the round is still here to evaluate it"
            );
            return Ok(BTreeMap::new());
        }
        let plan = TaskPlan::evaluation();
        let sink = RoundSink {
            accumulator: RoundAccumulator::new(&plan),
            log: None,
        };
        let accumulator = RoundFolds::new(sink);
        let open = self.open_round(
            global,
            (round, EVALUATION),
            plan,
            &asked,
            asked.len(),
            accumulator.clone(),
            Vec::new(),
        );
        let results = self.run_stage(open, &accumulator).await?;
        let scores = federated_scores(&results, !coordinator.config().eval.central());
        info!(
            round,
            clients = results.contributors(),
            asked = asked.len(),
            accuracy = scores.get("accuracy").or(scores.get("fed_accuracy")),
            "round evaluated on clients"
        );
        Ok(scores)
    }

    /// Serves `open` until it is complete or its deadline passes, then closes it and takes
    /// what its `accumulator` gathered; a failure that must end the run ends it here.
    async fn run_stage(
        &self,
        open: OpenRound,
        accumulator: &SharedAccumulator,
    ) -> Result<RoundResults> {
        let coordinator = &self.coordinator;
        coordinator.open_round(open)?;
        self.wait_for_updates().await;
        coordinator.close_round()?;
        let results = close(accumulator).ok_or(CoordinatorError::Internal("round closed twice"))?;
        match coordinator.take_fatal() {
            Some(fatal) => Err(fatal),
            None => Ok(results),
        }
    }

    /// The round's sink: an accumulator, plus a fresh round log if the run is checkpointed.
    fn sink(
        &self,
        plan: &TaskPlan,
        round: u32,
        attempt: u32,
        selected: &[String],
        wanted: usize,
    ) -> Result<RoundSink> {
        let log = match &self.coordinator.shared.checkpoints {
            Some(store) => Some(RoundLog::create(
                store,
                RoundOpened {
                    round,
                    attempt,
                    epoch: self.coordinator.shared.epoch,
                    selected: selected.to_vec(),
                    wanted,
                },
            )?),
            None => None,
        };
        Ok(RoundSink {
            accumulator: RoundAccumulator::new(plan),
            log,
        })
    }

    /// Folds updates from a crashed incarnation's log into the round about to reopen; returns
    /// the clients they came from, so only the others are asked.
    fn replay_updates(
        &self,
        accumulator: &SharedAccumulator,
        round: u32,
        updates: Vec<Delivery>,
    ) -> Vec<String> {
        let fence = shoal_proto::v1::Fence::at(
            &self.coordinator.shared.run_id,
            self.coordinator.shared.epoch,
            round,
        );
        let mut kept = Vec::new();
        for delivery in updates {
            let ids: Vec<String> = delivery.clients().into_iter().map(str::to_owned).collect();
            match fold(accumulator, delivery, &fence) {
                Ok(_) => kept.extend(ids),
                Err(e) => warn!(clients = ?ids, error = %e, "logged update not replayed"),
            }
        }
        if !kept.is_empty() {
            info!(
                round,
                updates = kept.len(),
                "kept updates from the round log"
            );
        }
        kept
    }

    /// Writes the checkpoint of a completed round (off the runtime) and retires its log.
    async fn checkpoint(
        &self,
        strategy: Box<dyn Strategy>,
        round: u32,
        records: &[RoundRecord],
    ) -> Result<Box<dyn Strategy>> {
        let Some(store) = self.coordinator.shared.checkpoints.clone() else {
            return Ok(strategy);
        };
        let config = &self.coordinator.shared.config;
        let config_json = serde_json::to_string(config)
            .map_err(|e| CoordinatorError::codec("encode config", e))?;
        let mut checkpoint = Checkpoint {
            config_hash: config.hash(),
            config_json,
            round,
            epoch: self.coordinator.shared.epoch,
            strategy: strategy.name().to_string(),
            strategy_state: Vec::new(),
            records: records.to_vec(),
            written_unix_ms: unix_ms(),
        };
        let (strategy, written) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let written = strategy.snapshot().and_then(|state| {
                checkpoint.strategy_state = state;
                store.write(&checkpoint)?;
                RoundLog::remove(&store)
            });
            (strategy, written.map(|()| started.elapsed()))
        })
        .await
        .map_err(|source| CoordinatorError::TaskFailed {
            task: "checkpoint",
            source,
        })?;
        let took = written?;
        self.coordinator.shared.telemetry.checkpoint_written(took);
        Ok(strategy)
    }

    /// Waits until at least `needed` clients are available, or `deadline` passes; returns the
    /// available clients, sorted. Says every few seconds what it is waiting for.
    async fn wait_for_clients(
        &self,
        needed: usize,
        deadline: Option<tokio::time::Instant>,
    ) -> Vec<String> {
        let mut report = tokio::time::Instant::now() + WAIT_REPORT_EVERY;
        loop {
            let notified = self.coordinator.shared.progress.notified();
            let now = tokio::time::Instant::now();
            let expired = deadline.is_some_and(|d| now >= d);
            let (joined, available) = {
                let state = lock(&self.coordinator.shared.state);
                let joined = state.registry.len();
                // Listing the available clients costs a pass over the registry: while fewer
                // than needed have even joined, the count alone says to wait (with 100,000
                // clients joining, a listing per join would take minutes).
                let available = if joined < needed && !expired {
                    Vec::new()
                } else {
                    state
                        .registry
                        .available(Instant::now(), self.coordinator.shared.limits.liveness)
                };
                (joined, available)
            };
            if available.len() >= needed || expired {
                return available;
            }
            if now >= report {
                info!(
                    joined,
                    available = available.len(),
                    needed,
                    missing = %self.missing(),
                    "waiting for clients"
                );
                report = now + WAIT_REPORT_EVERY;
            }
            let wake = deadline.map_or(report, |d| d.min(report));
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    /// Clients known to this incarnation that are not available: those that left, and those
    /// silent past the liveness window, for log lines.
    fn missing(&self) -> String {
        lock(&self.coordinator.shared.state).registry.absent(
            Instant::now(),
            self.coordinator.shared.limits.liveness,
            NAMED_IN_LOG,
        )
    }

    /// Returns when the open round has enough updates, nothing more can come, its deadline
    /// passed, or the run must stop. Says every few seconds whom it is waiting for.
    async fn wait_for_updates(&self) {
        let mut report = tokio::time::Instant::now() + WAIT_REPORT_EVERY;
        loop {
            let notified = self.coordinator.shared.progress.notified();
            if lock(&self.coordinator.shared.fatal).is_some() {
                return;
            }
            let deadline = {
                let state = lock(&self.coordinator.shared.state);
                let Some(round) = state.phase.open_round() else {
                    return;
                };
                if round.complete() {
                    return;
                }
                let now = tokio::time::Instant::now();
                if now >= report {
                    let outstanding: Vec<&String> = round.outstanding().collect();
                    info!(
                        round = round.fence.round,
                        delivered = round.delivered.len(),
                        wanted = round.wanted,
                        closes_in_s = round.deadline.saturating_duration_since(now).as_secs(),
                        waiting_for = %name_some(&outstanding, NAMED_IN_LOG),
                        "waiting for updates"
                    );
                    report = now + WAIT_REPORT_EVERY;
                }
                round.deadline
            };
            let woken = tokio::time::timeout_at(deadline.min(report), notified).await;
            if woken.is_err() && tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    }
}

/// Example-weighted averages of what clients reported, under `train_` names.
fn client_averages(results: &RoundResults) -> Metrics {
    let mut out = Metrics::new();
    for key in ["loss", "accuracy"] {
        if let Some(v) = results.weighted_metric(key) {
            out.insert(format!("train_{key}"), v);
        }
    }
    out
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Example-weighted mean loss and accuracy of an evaluation stage's reports, named `loss` and
/// `accuracy` when they are the run's only scores (`primary`), else `fed_loss` and
/// `fed_accuracy`; with `fed_clients` and `fed_examples` (the reports counted). A report
/// counts only with both metrics in range (accuracy in [0, 1], loss finite and ≥ 0): a
/// client cannot drag the means with a missing or absurd score. Each metric has its own
/// weights, summed in client-id order, so the result does not depend on arrival order.
pub fn federated_scores(results: &RoundResults, primary: bool) -> BTreeMap<String, f64> {
    let counted: Vec<(f64, f64, f64)> = results
        .reports
        .values()
        .filter_map(|r| {
            let loss = *r.metrics.get("loss")?;
            let accuracy = *r.metrics.get("accuracy")?;
            let sane = loss.is_finite() && loss >= 0.0 && (0.0..=1.0).contains(&accuracy);
            sane.then_some((r.weight as f64, loss, accuracy))
        })
        .collect();
    let examples: f64 = counted.iter().map(|c| c.0).sum();
    let mut scores = BTreeMap::new();
    if counted.is_empty() || !(examples > 0.0 && examples.is_finite()) {
        return scores;
    }
    let prefix = if primary { "" } else { "fed_" };
    let loss: f64 = counted.iter().map(|(w, l, _)| w * l).sum();
    let accuracy: f64 = counted.iter().map(|(w, _, a)| w * a).sum();
    scores.insert(format!("{prefix}loss"), loss / examples);
    scores.insert(format!("{prefix}accuracy"), accuracy / examples);
    scores.insert("fed_clients".into(), counted.len() as f64);
    scores.insert("fed_examples".into(), examples);
    scores
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::results::ClientReport;

    fn report(weight: u64, metrics: &[(&str, f64)]) -> ClientReport {
        ClientReport {
            weight,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn federated_scores_weigh_by_examples_and_ignore_absurd_reports() {
        let results = RoundResults {
            sum: None,
            counts: Vec::new(),
            collected: Vec::new(),
            reports: BTreeMap::from([
                ("a".into(), report(30, &[("loss", 1.0), ("accuracy", 0.5)])),
                ("b".into(), report(10, &[("loss", 3.0), ("accuracy", 1.0)])),
                // No scores, a score out of range, a negative loss: not counted.
                ("c".into(), report(1_000_000, &[])),
                ("d".into(), report(500, &[("loss", 1.0), ("accuracy", 7.0)])),
                (
                    "e".into(),
                    report(500, &[("loss", -1.0), ("accuracy", 0.5)]),
                ),
            ]),
        };
        let primary = federated_scores(&results, true);
        assert_eq!(primary["loss"], (30.0 + 30.0) / 40.0);
        assert_eq!(primary["accuracy"], (15.0 + 10.0) / 40.0);
        assert_eq!(primary["fed_clients"], 2.0);
        assert_eq!(primary["fed_examples"], 40.0);
        let beside = federated_scores(&results, false);
        assert_eq!(beside["fed_accuracy"], primary["accuracy"]);
        assert!(!beside.contains_key("accuracy"));
        let nobody = RoundResults {
            reports: BTreeMap::from([("c".into(), report(5, &[]))]),
            ..results
        };
        assert!(federated_scores(&nobody, true).is_empty());
    }
}
