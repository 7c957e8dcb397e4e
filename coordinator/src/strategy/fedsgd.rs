//! FedSGD: federated gradient averaging (the baseline of McMahan et al. 2017), with a server
//! optimiser as in Reddi et al., "Adaptive Federated Optimization", ICLR 2021.
//!
//! Each selected client returns the gradient of its local loss at the global parameters; the
//! coordinator averages them by example count and takes one optimiser step. With whole-partition
//! gradients and every client taking part, a round is one step of centralised gradient descent
//! on the union of the clients' data.

use super::{
    Metrics, Strategy, TaskPlan, Work, combine, eval_metrics, fold_for, from_bytes, init_stream,
    to_bytes,
};
use crate::aggregate::robust::Rule;
use crate::config::{GradientSettings, ServerOptimizer};
use crate::error::{CoordinatorError, Result};
use crate::strategy::results::RoundResults;
use crate::strategy::server_opt::{OptimizerState, Snapshot, SnapshotRef, step};
use shoal_datasets::Dataset;
use shoal_models::{ModelSpec, init_params};
use shoal_proto::v1::{GradientConfig, TaskKind};

/// Federated gradient averaging with a server optimiser.
#[derive(Debug)]
pub struct FedSgd {
    spec: ModelSpec,
    params: Vec<f32>,
    optimizer: ServerOptimizer,
    state: OptimizerState,
    gradient: GradientSettings,
    /// How the round's gradients are combined.
    rule: Rule,
}

impl FedSgd {
    /// Starts from parameters initialised by the run seed; clients compute gradients with
    /// `gradient`, the server steps with `optimizer`.
    pub fn new(
        spec: ModelSpec,
        seed: u64,
        optimizer: ServerOptimizer,
        gradient: GradientSettings,
    ) -> Result<Self> {
        let params = init_params(&spec, init_stream(seed))?;
        Ok(Self::from_params(spec, params, optimizer, gradient))
    }

    /// Starts from `params`, a model made elsewhere (`--init`), already checked to fit.
    pub fn from_params(
        spec: ModelSpec,
        params: Vec<f32>,
        optimizer: ServerOptimizer,
        gradient: GradientSettings,
    ) -> Self {
        let state = OptimizerState::new(params.len());
        Self {
            spec,
            params,
            optimizer,
            state,
            gradient,
            rule: Rule::Mean,
        }
    }

    /// The same strategy combining each round's gradients by `rule` instead of their mean.
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.rule = rule;
        self
    }
}

impl Strategy for FedSgd {
    fn name(&self) -> &'static str {
        "fedsgd"
    }

    fn configure(&self, _round: u32) -> TaskPlan {
        TaskPlan {
            kind: TaskKind::Gradient,
            work: Work::Gradient(GradientConfig {
                batches: self.gradient.batches,
                batch_size: self.gradient.batch_size,
            }),
            update_len: self.params.len(),
            counts_len: 0,
            fold: fold_for(&self.rule),
            counts_sum_to_weight: Vec::new(),
        }
    }

    fn global(&self) -> &[f32] {
        &self.params
    }

    fn aggregate(&mut self, _round: u32, results: RoundResults) -> Result<Metrics> {
        let grad = combine(&self.rule, results, "fedsgd")?;
        let norm = grad
            .iter()
            .map(|g| f64::from(*g).powi(2))
            .sum::<f64>()
            .sqrt();
        let grad: Vec<f64> = grad.iter().map(|&g| f64::from(g)).collect();
        step(&self.optimizer, &mut self.params, &grad, &mut self.state);
        Ok(Metrics::from([("grad_norm".to_string(), norm)]))
    }

    fn evaluate(&self, test: &Dataset) -> Result<Metrics> {
        eval_metrics(&self.spec, &self.params, test)
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        to_bytes(&SnapshotRef {
            params: &self.params,
            state: &self.state,
        })
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let snap: Snapshot = from_bytes(bytes)?;
        let n = self.params.len();
        if snap.params.len() != n || !snap.state.fits(n) {
            return Err(CoordinatorError::Checkpoint(
                "fedsgd state does not fit the model".into(),
            ));
        }
        self.params = snap.params;
        self.state = snap.state;
        Ok(())
    }
}
