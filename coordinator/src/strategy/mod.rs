//! Strategies: what a round asks of clients and how their updates become the next global state.
//!
//! The shape follows Flower's `Strategy` (configure, aggregate, evaluate), cut down to what a
//! pull-based engine needs. One algorithm per file; the maths they share lives in
//! [`crate::aggregate`] as pure functions. The round engine never looks inside a strategy's
//! state: it hands out [`Strategy::global`], folds updates as [`Strategy::plan`] says, and calls
//! [`Strategy::aggregate`] once per closed round with every outcome, failures included.

mod build;
mod fedavg;
mod fedkmeans;
mod fedsgd;
mod plan;
pub mod results;
mod scaffold;
mod server_opt;

pub use build::{build, build_from};
pub use fedavg::FedAvg;
pub use fedkmeans::{FedKMeans, next_centroids};
pub use fedsgd::FedSgd;
pub use plan::{FoldMode, TaskPlan, Work};
pub use scaffold::Scaffold;

pub use crate::config::ServerOptimizer;

use crate::aggregate::robust::Rule;
use crate::error::Result;
use crate::strategy::results::RoundResults;
use shoal_datasets::Dataset;
use shoal_models::ModelSpec;
use std::collections::BTreeMap;

/// Evaluation of a global state on held-out data; keys like "loss", "accuracy", "inertia".
pub type Metrics = BTreeMap<String, f64>;

/// One federated algorithm.
pub trait Strategy: Send + Sync {
    /// Short name used in logs, configs and checkpoints.
    fn name(&self) -> &'static str;

    /// What `round` (1-based) asks of every selected client: the work and its settings, and
    /// the shape of the updates it expects (k-means uses its first round for k-FED seeding).
    /// A round with several stages (key exchange, masked upload, unmasking) will return one
    /// plan per stage here.
    fn configure(&self, round: u32) -> TaskPlan;

    /// The state clients download for the next round: parameters or centroids, and whatever
    /// else the algorithm sends them (SCAFFOLD's control variate).
    fn global(&self) -> &[f32];

    /// The trained model the run produces, scores and exports: the global state, unless the
    /// algorithm sends clients more than the model.
    fn model(&self) -> &[f32] {
        self.global()
    }

    /// Turns a closed round's results into the next global state; returns round metrics
    /// (e.g. centroid shift) to record beside the evaluation.
    fn aggregate(&mut self, round: u32, results: RoundResults) -> Result<Metrics>;

    /// Evaluates the current global state on held-out data.
    fn evaluate(&self, test: &Dataset) -> Result<Metrics>;

    /// True once the strategy has converged and no more rounds are useful.
    fn converged(&self) -> bool {
        false
    }

    /// Everything needed to resume this strategy exactly (global state, optimiser state...).
    fn snapshot(&self) -> Result<Vec<u8>>;

    /// Restores a [`Strategy::snapshot`].
    fn restore(&mut self, bytes: &[u8]) -> Result<()>;
}

/// Stream tag for model initialisation in the run's RNG tree.
const INIT_STREAM: u64 = 0x1417;

/// Seed of the initial global state, derived from the run seed (public so tests and tools can
/// rebuild the initial model).
pub fn init_stream(seed: u64) -> u64 {
    shoal_datasets::rng::derive_seed(seed, &[INIT_STREAM])
}

/// A round's combined update: the exact weighted mean of its sum, or `rule` over every
/// collected update (sorted by client id, so the result does not depend on arrival order).
pub(crate) fn combine(rule: &Rule, results: RoundResults, name: &str) -> Result<Vec<f32>> {
    if rule.collects() {
        let updates: Vec<&[f32]> = results
            .collected
            .iter()
            .map(|u| u.payload.as_slice())
            .collect();
        return rule
            .apply(&updates)
            .map_err(|e| crate::CoordinatorError::Strategy(format!("{name}: {e}")));
    }
    results
        .sum
        .and_then(|s| s.mean())
        .ok_or_else(|| crate::CoordinatorError::Strategy(format!("{name}: no updates to combine")))
}

/// How a round of `rule` folds its updates: summed as they come, or collected whole.
pub(crate) fn fold_for(rule: &Rule) -> FoldMode {
    if rule.collects() {
        FoldMode::Collect
    } else {
        FoldMode::WeightedSum
    }
}

/// Test loss and accuracy of classification parameters.
pub(crate) fn eval_metrics(spec: &ModelSpec, params: &[f32], test: &Dataset) -> Result<Metrics> {
    let report = shoal_models::evaluate(spec, params, test)?;
    Ok(Metrics::from([
        ("loss".to_string(), report.loss),
        ("accuracy".to_string(), report.accuracy),
    ]))
}

/// Strategy state as bytes (serde + bincode), for checkpoints.
pub(crate) fn to_bytes<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| crate::error::CoordinatorError::codec("encode strategy state", e))
}

/// Inverse of [`to_bytes`]; refuses trailing bytes.
pub(crate) fn from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) = crate::bounded::decode_bounded(bytes)
        .map_err(|e| crate::error::CoordinatorError::codec("decode strategy state", e))?;
    if used != bytes.len() {
        return Err(crate::error::CoordinatorError::Checkpoint(
            "trailing bytes in strategy state".into(),
        ));
    }
    Ok(value)
}
