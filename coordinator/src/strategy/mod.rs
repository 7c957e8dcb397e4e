//! Strategies: what a round asks of clients and how their updates become the next global state.
//!
//! The shape follows Flower's `Strategy` (configure, aggregate, evaluate), cut down to what a
//! pull-based engine needs. One algorithm per file; the maths they share lives in
//! [`crate::aggregate`] as pure functions. The round engine never looks inside a strategy's
//! state: it hands out [`Strategy::global`], folds updates as [`Strategy::plan`] says, and calls
//! [`Strategy::aggregate`] once per closed round with every outcome, failures included.

mod fedavg;
mod fedkmeans;
mod fedsgd;

pub use fedavg::FedAvg;
pub use fedkmeans::{FedKMeans, next_centroids};
pub use fedsgd::{FedSgd, ServerOptimizer};

use crate::config::{RunConfig, StrategyConfig};
use crate::error::Result;
use crate::results::RoundResults;
use shoal_datasets::Dataset;
use shoal_models::ModelSpec;
use shoal_proto::v1::TaskKind;
use std::collections::BTreeMap;

/// How the engine combines the updates of one round before the strategy sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldMode {
    /// Fold `weight · payload` into an exact sum as updates arrive: memory O(model), any number
    /// of clients (FedAvg, FedSGD).
    WeightedSum,
    /// Fold the payloads unweighted into an exact sum (k-means per-centroid sums).
    Sum,
    /// Keep every update (small payloads only, e.g. k-FED's local centres).
    Collect,
}

/// What one round asks of every selected client.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    /// The kind of work.
    pub kind: TaskKind,
    /// f32 values each update must carry.
    pub update_len: usize,
    /// Integers each update header must carry.
    pub counts_len: usize,
    /// How updates are combined.
    pub fold: FoldMode,
    /// Ranges of the counts that must each sum to the update's weight (e.g. k-means cluster
    /// sizes add up to the client's examples), checked before anything is folded.
    pub counts_sum_to_weight: Vec<std::ops::Range<usize>>,
}

/// Evaluation of a global state on held-out data; keys like "loss", "accuracy", "inertia".
pub type Metrics = BTreeMap<String, f64>;

/// One federated algorithm.
pub trait Strategy: Send + Sync {
    /// Short name used in logs, configs and checkpoints.
    fn name(&self) -> &'static str;

    /// The work of `round` (1-based; k-means uses its first round for k-FED seeding).
    fn plan(&self, round: u32) -> TaskPlan;

    /// The state clients download for the next round: parameters or centroids.
    fn global(&self) -> &[f32];

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

/// Builds the strategy a run asks for, with its initial global state.
pub fn build(config: &RunConfig, spec: &ModelSpec) -> Result<Box<dyn Strategy>> {
    Ok(match &config.strategy {
        StrategyConfig::FedAvg => Box::new(FedAvg::new(spec.clone(), config.seed)?),
        StrategyConfig::FedSgd { optimizer } => {
            Box::new(FedSgd::new(spec.clone(), config.seed, optimizer.clone())?)
        }
        StrategyConfig::FedKMeans { k, local_k, tol } => Box::new(FedKMeans::new(
            spec.num_features,
            spec.num_classes,
            *k,
            *local_k,
            *tol,
            config.seed,
        )?),
    })
}

/// Stream tag for model initialisation in the run's RNG tree.
const INIT_STREAM: u64 = 0x1417;

/// Seed of the initial global state, derived from the run seed (public so tests and tools can
/// rebuild the initial model).
pub fn init_stream(seed: u64) -> u64 {
    shoal_datasets::rng::derive_seed(seed, &[INIT_STREAM])
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
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| {
        crate::error::CoordinatorError::Checkpoint(format!("encode strategy state: {e}"))
    })
}

/// Inverse of [`to_bytes`]; refuses trailing bytes.
pub(crate) fn from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) = crate::bounded::decode_bounded(bytes).map_err(|e| {
        crate::error::CoordinatorError::Checkpoint(format!("decode strategy state: {e}"))
    })?;
    if used != bytes.len() {
        return Err(crate::error::CoordinatorError::Checkpoint(
            "trailing bytes in strategy state".into(),
        ));
    }
    Ok(value)
}
