//! The round driver: opens a round, waits for updates or the deadline, aggregates, evaluates,
//! and moves on. The only code that changes the phase of a run.
//!
//! A round that closes below quorum is retried with a fresh selection; after `max_retries`
//! failed attempts the run stops with a clear error rather than waiting forever.

use crate::engine::registry::name_some;
use crate::engine::round::{OpenRound, RoundSink, SharedAccumulator, close, fold};
use crate::engine::selection::{round_size, select};
use crate::engine::{Coordinator, Phase};
use crate::error::{CoordinatorError, Result};
use crate::store::checkpoint::Checkpoint;
use crate::store::metrics::{RoundRecord, RunSummary, sha256_f32};
use crate::store::recovery::Resume;
use crate::store::round_log::{LoggedRound, RoundLog, RoundOpened};
use crate::strategy::results::{ClientUpdate, RoundAccumulator, RoundResults};
use crate::strategy::{Metrics, Strategy, TaskPlan};
use crate::sync::lock;
use shoal_datasets::Dataset;
use shoal_proto::v1::{FitConfig, GradientConfig, KMeansConfig, ModelSpec as WireSpec, Task};
use std::future::Future;
use std::sync::{Arc, Mutex};
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

/// How often a long wait says at info level what it is waiting for.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(5);
/// Most client ids a log line names.
const NAMED_IN_LOG: usize = 10;

impl Coordinator {
    /// Drives the run to its end: every round, or until the strategy converged, shutdown
    /// resolved, or quorum was lost. Each record is also sent to `observer` as it is made.
    /// However the run ends, clients hear that it ended (their pulls answer Finished).
    pub async fn run(
        &self,
        strategy: Box<dyn Strategy>,
        test: Arc<Dataset>,
        resume: Resume,
        observer: Option<UnboundedSender<RoundRecord>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunOutcome> {
        let outcome = self.drive(strategy, test, resume, observer, shutdown).await;
        match &outcome {
            Ok(done) => self.finish(&done.summary.stop_reason),
            Err(CoordinatorError::ShuttingDown) => self.finish("coordinator shut down"),
            Err(err) => self.finish(&format!("the run failed: {err}")),
        }
        outcome
    }

    async fn drive(
        &self,
        mut strategy: Box<dyn Strategy>,
        test: Arc<Dataset>,
        resume: Resume,
        observer: Option<UnboundedSender<RoundRecord>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunOutcome> {
        tokio::pin!(shutdown);
        let config = self.shared.config.clone();
        let started = Instant::now();
        let mut records = resume.records;
        let mut replay = resume.replay;
        let mut stop_reason = "all rounds completed".to_string();
        let mut round = resume.completed + 1;
        let resumed = resume.completed > 0 || replay.is_some();
        // Each incarnation waits for the configured number of clients before its first round;
        // later rounds select from whoever is available then.
        let mut gathered = false;
        while round <= config.rounds {
            if strategy.converged() {
                stop_reason = "converged".into();
                break;
            }
            let round_started = Instant::now();
            let (results, selected, attempts) = tokio::select! {
                r = self.collect_round(strategy.as_ref(), round, replay.take(), &mut gathered, resumed) => r?,
                () = &mut shutdown => return Err(CoordinatorError::ShuttingDown),
            };
            let clients = results.contributors();
            let examples = results.total_weight();
            let client_metrics = client_averages(&results);
            let test = test.clone();
            let (back, outcome) = tokio::task::spawn_blocking(move || {
                let outcome = strategy
                    .aggregate(round, results)
                    .and_then(|agg| Ok((agg, strategy.evaluate(&test)?)));
                (strategy, outcome)
            })
            .await
            .map_err(|source| CoordinatorError::TaskFailed {
                task: "aggregation",
                source,
            })?;
            strategy = back;
            let (aggregated, evaluated) = outcome?;
            let mut values = client_metrics;
            values.extend(aggregated);
            values.extend(evaluated);
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
            if let Some(tx) = &observer {
                let _ = tx.send(record.clone());
            }
            records.push(record);
            strategy = self.checkpoint(strategy, round, &records).await?;
            round += 1;
        }
        let global = strategy.global().to_vec();
        let last = records.last();
        let summary = RunSummary {
            run_id: self.shared.run_id.clone(),
            strategy: strategy.name().to_string(),
            rounds_completed: records.len() as u32,
            final_accuracy: last.and_then(|r| r.get("accuracy")),
            final_loss: last.and_then(|r| r.get("loss")),
            final_inertia: last.and_then(|r| r.get("inertia")),
            model_sha256: sha256_f32(&global),
            num_params: global.len(),
            wall_seconds: started.elapsed().as_secs_f64(),
            stop_reason,
            refusals: self.refusals(),
        };
        Ok(RunOutcome {
            summary,
            records,
            global,
        })
    }

    /// Runs attempts of `round` until one reaches quorum; returns its results, the number of
    /// clients asked, and the attempts used. A replayed log resumes its attempt where it was.
    ///
    /// Before this incarnation's first fresh selection (`gathered` false) it waits for the
    /// configured number of clients, as long as it takes, saying so, and sets `gathered`; later
    /// attempts take whoever is available, waiting at most a round deadline for a quorum of
    /// them, and an attempt with too few counts as failed. A round replayed from the log keeps
    /// its logged selection and gathers nobody: the next round still waits for everyone to
    /// come back after the restart, so a resumed run selects what an uninterrupted one would
    /// (after a restart, `resumed`, for at most the time the round's attempts could take).
    async fn collect_round(
        &self,
        strategy: &dyn Strategy,
        round: u32,
        mut replay: Option<LoggedRound>,
        gathered: &mut bool,
        resumed: bool,
    ) -> Result<(RoundResults, usize, u32)> {
        let config = &self.shared.config;
        let quorum = config.selection.min_clients.max(1);
        let first = replay.as_ref().map_or(0, |l| l.opened.attempt);
        for attempt in first..=config.max_retries {
            let (selected, wanted, logged) = match replay.take() {
                Some(log) => (log.opened.selected, log.opened.wanted, log.updates),
                None => {
                    let now = tokio::time::Instant::now();
                    let (needed, deadline) = if *gathered {
                        (quorum, Some(now + config.round_timeout()))
                    } else {
                        // A resumed run waits for every client to come back, so it selects
                        // what an uninterrupted run would; but a client may be gone for good,
                        // so only for as long as the round's attempts could last.
                        let patience = config.round_timeout() * (config.max_retries + 1);
                        (
                            quorum.max(config.selection.min_available),
                            resumed.then(|| now + patience),
                        )
                    };
                    let available = self.wait_for_clients(needed, deadline).await;
                    *gathered = true;
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
                    if available.len() < quorum {
                        continue;
                    }
                    let sel = &config.selection;
                    let (wanted, asked) = round_size(
                        available.len(),
                        sel.clients_per_round,
                        sel.fraction,
                        sel.min_clients,
                        sel.over_select,
                    );
                    (
                        select(&available, asked, config.seed, round, attempt),
                        wanted,
                        Vec::new(),
                    )
                }
            };
            let plan = strategy.plan(round);
            let sink = self.sink(&plan, round, attempt, &selected, wanted)?;
            let accumulator = Arc::new(Mutex::new(Some(sink)));
            let kept = self.replay_updates(&accumulator, round, logged);
            // While clients train, fault in the accumulator's pages (not awaited: if the round
            // closes first, there is nothing left to touch).
            let warm = accumulator.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(sink) = lock(&warm).as_mut() {
                    sink.accumulator.prefault();
                }
            });
            self.open(
                round,
                plan,
                strategy.global(),
                &selected,
                wanted,
                accumulator.clone(),
                kept,
            );
            self.wait_for_updates().await;
            lock(&self.shared.state).phase = Phase::Idle;
            let results =
                close(&accumulator).ok_or(CoordinatorError::Internal("round closed twice"))?;
            if let Some(fatal) = lock(&self.shared.fatal).take() {
                return Err(fatal);
            }
            if results.contributors() >= quorum {
                return Ok((results, selected.len(), attempt + 1));
            }
            warn!(
                round,
                attempt,
                got = results.contributors(),
                quorum,
                "round below quorum; retrying with a fresh selection"
            );
        }
        Err(CoordinatorError::QuorumLost {
            round,
            quorum,
            attempts: config.max_retries + 1,
        })
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
        let log = match &self.shared.checkpoints {
            Some(store) => Some(RoundLog::create(
                store.dir(),
                RoundOpened {
                    round,
                    attempt,
                    epoch: self.shared.epoch,
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
        updates: Vec<ClientUpdate>,
    ) -> Vec<String> {
        let fence = shoal_proto::v1::Fence::at(&self.shared.run_id, self.shared.epoch, round);
        let mut kept = Vec::new();
        for update in updates {
            let id = update.client_id.clone();
            match fold(accumulator, update, &fence) {
                Ok(_) => kept.push(id),
                Err(e) => warn!(client = %id, error = %e, "logged update not replayed"),
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
        let Some(store) = self.shared.checkpoints.clone() else {
            return Ok(strategy);
        };
        let config = &self.shared.config;
        let config_json = serde_json::to_string(config)
            .map_err(|e| CoordinatorError::codec("encode config", e))?;
        let mut checkpoint = Checkpoint {
            config_hash: config.hash(),
            config_json,
            round,
            epoch: self.shared.epoch,
            strategy: strategy.name().to_string(),
            strategy_state: Vec::new(),
            records: records.to_vec(),
            written_unix_ms: unix_ms(),
        };
        let (strategy, written) = tokio::task::spawn_blocking(move || {
            let written = strategy.snapshot().and_then(|state| {
                checkpoint.strategy_state = state;
                store.write(&checkpoint)?;
                RoundLog::remove(store.dir())
            });
            (strategy, written)
        })
        .await
        .map_err(|source| CoordinatorError::TaskFailed {
            task: "checkpoint",
            source,
        })?;
        written?;
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
            let notified = self.shared.progress.notified();
            let now = tokio::time::Instant::now();
            let expired = deadline.is_some_and(|d| now >= d);
            let (joined, available) = {
                let state = lock(&self.shared.state);
                let joined = state.registry.len();
                // Listing the available clients costs a pass over the registry: while fewer
                // than needed have even joined, the count alone says to wait (with 100,000
                // clients joining, a listing per join would take minutes).
                let available = if joined < needed && !expired {
                    Vec::new()
                } else {
                    state
                        .registry
                        .available(Instant::now(), self.shared.limits.liveness)
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
        lock(&self.shared.state).registry.absent(
            Instant::now(),
            self.shared.limits.liveness,
            NAMED_IN_LOG,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        round: u32,
        plan: TaskPlan,
        global: &[f32],
        selected: &[String],
        wanted: usize,
        accumulator: SharedAccumulator,
        done: Vec<String>,
    ) {
        let shared = &self.shared;
        let config = &shared.config;
        let fence = shoal_proto::v1::Fence::at(&shared.run_id, shared.epoch, round);
        let spec = &shared.spec;
        let (rows, cols) = spec.image_shape.unwrap_or((0, 0));
        let kmeans = match &config.strategy {
            crate::config::StrategyConfig::FedKMeans { k, local_k, .. } => Some(KMeansConfig {
                k: *k as u32,
                local_k: *local_k as u32,
                dim: spec.num_features as u32,
            }),
            _ => None,
        };
        let task = Task {
            fence: Some(fence.clone()),
            kind: plan.kind as i32,
            model: Some(WireSpec {
                kind: spec.kind.to_string(),
                num_features: spec.num_features as u32,
                num_classes: spec.num_classes as u32,
                image_rows: rows as u32,
                image_cols: cols as u32,
            }),
            global_len: global.len() as u64,
            seed: 0,
            fit: Some(FitConfig {
                epochs: config.fit.epochs,
                batch_size: config.fit.batch_size,
                lr: config.fit.lr,
            }),
            gradient: Some(GradientConfig {
                batches: config.gradient.batches,
                batch_size: config.gradient.batch_size,
            }),
            kmeans,
            update_len: plan.update_len as u64,
            counts_len: plan.counts_len as u64,
        };
        let open = OpenRound {
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
            deadline: tokio::time::Instant::now() + config.round_timeout(),
            accumulator,
        };
        lock(&shared.state).phase = Phase::Open(Box::new(open));
        shared.changed.send_modify(|v| *v += 1);
    }

    /// Returns when the open round has enough updates, nothing more can come, its deadline
    /// passed, or the run must stop. Says every few seconds whom it is waiting for.
    async fn wait_for_updates(&self) {
        let mut report = tokio::time::Instant::now() + WAIT_REPORT_EVERY;
        loop {
            let notified = self.shared.progress.notified();
            if lock(&self.shared.fatal).is_some() {
                return;
            }
            let deadline = {
                let state = lock(&self.shared.state);
                let Phase::Open(round) = &state.phase else {
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

    /// Ends the run: every pull from now on answers Finished. The first reason given stays.
    fn finish(&self, reason: &str) {
        let mut state = lock(&self.shared.state);
        if !matches!(state.phase, Phase::Finished(_)) {
            state.phase = Phase::Finished(reason.to_string());
        }
        drop(state);
        self.shared.changed.send_modify(|v| *v += 1);
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
