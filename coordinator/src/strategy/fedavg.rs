//! FedAvg: federated averaging (McMahan et al., "Communication-Efficient Learning of Deep
//! Networks from Decentralized Data", AISTATS 2017).
//!
//! Each selected client trains the global model locally for a few epochs and returns its new
//! parameters; the next global model is their mean weighted by example counts.

use super::{
    Metrics, Strategy, TaskPlan, combine, eval_metrics, fold_for, from_bytes, init_stream, to_bytes,
};
use crate::aggregate::robust::Rule;
use crate::config::{FitSettings, ServerOptimizer};
use crate::error::{CoordinatorError, Result};
use crate::strategy::results::RoundResults;
use crate::strategy::server_opt::{OptimizerState, Snapshot, SnapshotRef, step};
use shoal_datasets::Dataset;
use shoal_models::{ModelSpec, init_params};

/// Federated averaging of locally trained parameters.
#[derive(Debug)]
pub struct FedAvg {
    spec: ModelSpec,
    params: Vec<f32>,
    fit: FitSettings,
    /// How the round's updates are combined.
    rule: Rule,
    /// FedOpt: the server's optimiser, stepping along global − combined update.
    optimizer: Option<ServerOptimizer>,
    /// Its state (moments and steps), checkpointed with the parameters.
    state: OptimizerState,
    /// FedProx: the clients' proximal strength μ (0 for FedAvg).
    proximal_mu: f64,
}

impl FedAvg {
    /// Starts from parameters initialised by the run seed; clients train with `fit`.
    pub fn new(spec: ModelSpec, seed: u64, fit: FitSettings) -> Result<Self> {
        let params = init_params(&spec, init_stream(seed))?;
        Ok(Self::from_params(spec, params, fit))
    }

    /// Starts from `params`, a model made elsewhere (`--init`), already checked to fit.
    pub fn from_params(spec: ModelSpec, params: Vec<f32>, fit: FitSettings) -> Self {
        Self {
            spec,
            params,
            fit,
            rule: Rule::Mean,
            optimizer: None,
            state: OptimizerState::default(),
            proximal_mu: 0.0,
        }
    }

    /// FedProx (Li et al. 2020): the same strategy whose clients add μ/2·‖w − w_global‖² to
    /// their local objective; μ = 0 is FedAvg.
    pub fn with_proximal_mu(mut self, mu: f64) -> Self {
        self.proximal_mu = mu;
        self
    }

    /// FedOpt: the same strategy whose server steps with `optimizer` along the
    /// pseudo-gradient instead of taking the combined update as the next model.
    pub fn with_optimizer(mut self, optimizer: ServerOptimizer) -> Self {
        self.state = OptimizerState::new(self.params.len());
        self.optimizer = Some(optimizer);
        self
    }

    /// The same strategy combining each round's updates by `rule` instead of their mean.
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.rule = rule;
        self
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        if self.optimizer.is_some() {
            "fedopt"
        } else if self.proximal_mu > 0.0 {
            "fedprox"
        } else {
            "fedavg"
        }
    }

    fn configure(&self, _round: u32) -> TaskPlan {
        TaskPlan::local_training(
            &self.fit,
            self.proximal_mu,
            false,
            self.params.len(),
            fold_for(&self.rule),
        )
    }

    fn global(&self) -> &[f32] {
        &self.params
    }

    fn aggregate(&mut self, _round: u32, results: RoundResults) -> Result<Metrics> {
        let combined = combine(&self.rule, results, self.name())?;
        match &self.optimizer {
            None => self.params = combined,
            Some(optimizer) => {
                // Exact in f64: with SGD at learning rate 1 the step lands on `combined`.
                let pseudo_gradient: Vec<f64> = self
                    .params
                    .iter()
                    .zip(&combined)
                    .map(|(p, c)| f64::from(*p) - f64::from(*c))
                    .collect();
                step(
                    optimizer,
                    &mut self.params,
                    &pseudo_gradient,
                    &mut self.state,
                );
            }
        }
        Ok(Metrics::new())
    }

    fn evaluate(&self, test: &Dataset) -> Result<Metrics> {
        eval_metrics(&self.spec, &self.params, test)
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        match self.optimizer {
            None => to_bytes(&self.params),
            Some(_) => to_bytes(&SnapshotRef {
                params: &self.params,
                state: &self.state,
            }),
        }
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let n = self.params.len();
        let (params, state) = match self.optimizer {
            None => (from_bytes::<Vec<f32>>(bytes)?, OptimizerState::default()),
            Some(_) => {
                let snap: Snapshot = from_bytes(bytes)?;
                if !snap.state.fits(n) {
                    return Err(CoordinatorError::Checkpoint(
                        "fedopt optimiser state does not fit the model".into(),
                    ));
                }
                (snap.params, snap.state)
            }
        };
        if params.len() != n {
            return Err(CoordinatorError::Checkpoint(format!(
                "{} state has {} parameters, model needs {n}",
                self.name(),
                params.len()
            )));
        }
        self.params = params;
        self.state = state;
        Ok(())
    }
}
