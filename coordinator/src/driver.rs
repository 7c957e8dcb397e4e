//! The round driver: opens a round, waits for updates or the deadline, aggregates, evaluates,
//! and moves on. The only code that changes the phase of a run.
//!
//! A round that closes below quorum is retried with a fresh selection; after `max_retries`
//! failed attempts the run stops with a clear error rather than waiting forever.

use crate::engine::{Coordinator, Phase};
use crate::error::{CoordinatorError, Result};
use crate::metrics::{RoundRecord, RunSummary, sha256_f32};
use crate::results::{RoundAccumulator, RoundResults};
use crate::round::{OpenRound, close, lock};
use crate::selection::{round_size, select};
use crate::strategy::{Metrics, Strategy, TaskPlan};
use shoal_datasets::Dataset;
use shoal_proto::v1::{FitConfig, GradientConfig, KMeansConfig, ModelSpec as WireSpec, Task};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;
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

/// Where a run starts: round 1 from scratch, or later from a checkpoint.
#[derive(Debug, Default)]
pub struct Resume {
    /// Rounds already completed.
    pub completed: u32,
    /// Their records.
    pub records: Vec<RoundRecord>,
}

impl Coordinator {
    /// Drives the run to its end: every round, or until the strategy converged, shutdown
    /// resolved, or quorum was lost. Each record is also sent to `observer` as it is made.
    pub async fn run(
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
        let mut stop_reason = "all rounds completed".to_string();
        let mut round = resume.completed + 1;
        while round <= config.rounds {
            if strategy.converged() {
                stop_reason = "converged".into();
                break;
            }
            let round_started = Instant::now();
            let (results, selected, attempts) = tokio::select! {
                r = self.collect_round(strategy.as_ref(), round) => match r {
                    Ok(r) => r,
                    Err(e) => { self.finish(&e.to_string()); return Err(e); }
                },
                () = &mut shutdown => {
                    self.finish("coordinator shut down");
                    return Err(CoordinatorError::ShuttingDown);
                }
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
            .map_err(|e| CoordinatorError::Strategy(format!("aggregation task failed: {e}")))?;
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
            round += 1;
        }
        self.finish(&stop_reason);
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
        };
        Ok(RunOutcome {
            summary,
            records,
            global,
        })
    }

    /// Runs attempts of `round` until one reaches quorum; returns its results, the number of
    /// clients asked, and the attempts used.
    async fn collect_round(
        &self,
        strategy: &dyn Strategy,
        round: u32,
    ) -> Result<(RoundResults, usize, u32)> {
        let config = &self.shared.config;
        let quorum = config.selection.min_clients.max(1);
        for attempt in 0..=config.max_retries {
            let available = self
                .wait_for_clients(quorum.max(config.selection.min_available))
                .await;
            let sel = &config.selection;
            let (wanted, asked) = round_size(
                available.len(),
                sel.clients_per_round,
                sel.fraction,
                sel.min_clients,
                sel.over_select,
            );
            let selected = select(&available, asked, config.seed, round, attempt);
            let plan = strategy.plan(round);
            let accumulator = Arc::new(Mutex::new(Some(RoundAccumulator::new(&plan))));
            self.open(
                round,
                plan,
                strategy.global(),
                &selected,
                wanted,
                accumulator.clone(),
            );
            self.wait_for_updates().await;
            let results = {
                let mut state = lock(&self.shared.state);
                state.phase = Phase::Idle;
                drop(state);
                close(&accumulator)
            };
            let results =
                results.ok_or_else(|| CoordinatorError::Strategy("round closed twice".into()))?;
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

    /// Waits until at least `needed` clients are available; returns them sorted.
    async fn wait_for_clients(&self, needed: usize) -> Vec<String> {
        loop {
            let notified = self.shared.progress.notified();
            let available = lock(&self.shared.state)
                .registry
                .available(Instant::now(), self.shared.limits.liveness);
            if available.len() >= needed {
                return available;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), notified).await;
        }
    }

    fn open(
        &self,
        round: u32,
        plan: TaskPlan,
        global: &[f32],
        selected: &[String],
        wanted: usize,
        accumulator: crate::round::SharedAccumulator,
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
            selected: selected.iter().cloned().collect(),
            tasked: Default::default(),
            in_flight: Default::default(),
            delivered: Default::default(),
            wanted: wanted.min(selected.len()),
            deadline: tokio::time::Instant::now() + config.round_timeout(),
            accumulator,
        };
        lock(&shared.state).phase = Phase::Open(Box::new(open));
        shared.changed.send_modify(|v| *v += 1);
    }

    /// Returns when the open round has enough updates or its deadline passed.
    async fn wait_for_updates(&self) {
        loop {
            let notified = self.shared.progress.notified();
            let deadline = {
                let state = lock(&self.shared.state);
                match &state.phase {
                    Phase::Open(round) if !round.complete() => round.deadline,
                    _ => return,
                }
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Ends the run: every pull from now on answers Finished.
    fn finish(&self, reason: &str) {
        lock(&self.shared.state).phase = Phase::Finished(reason.to_string());
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
