//! FedAvg: federated averaging (McMahan et al., "Communication-Efficient Learning of Deep
//! Networks from Decentralized Data", AISTATS 2017).
//!
//! Each selected client trains the global model locally for a few epochs and returns its new
//! parameters; the next global model is their mean weighted by example counts.

use super::{
    FoldMode, Metrics, Strategy, TaskPlan, Work, eval_metrics, from_bytes, init_stream, to_bytes,
};
use crate::config::FitSettings;
use crate::error::{CoordinatorError, Result};
use crate::strategy::results::RoundResults;
use shoal_datasets::Dataset;
use shoal_models::{ModelSpec, init_params};
use shoal_proto::v1::{FitConfig, TaskKind};

/// Federated averaging of locally trained parameters.
#[derive(Debug)]
pub struct FedAvg {
    spec: ModelSpec,
    params: Vec<f32>,
    fit: FitSettings,
}

impl FedAvg {
    /// Starts from parameters initialised by the run seed; clients train with `fit`.
    pub fn new(spec: ModelSpec, seed: u64, fit: FitSettings) -> Result<Self> {
        let params = init_params(&spec, init_stream(seed))?;
        Ok(Self { spec, params, fit })
    }

    /// Starts from `params`, a model made elsewhere (`--init`), already checked to fit.
    pub fn from_params(spec: ModelSpec, params: Vec<f32>, fit: FitSettings) -> Self {
        Self { spec, params, fit }
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn configure(&self, _round: u32) -> TaskPlan {
        TaskPlan {
            kind: TaskKind::Fit,
            work: Work::Fit(FitConfig {
                epochs: self.fit.epochs,
                batch_size: self.fit.batch_size,
                lr: self.fit.lr,
            }),
            update_len: self.params.len(),
            counts_len: 0,
            fold: FoldMode::WeightedSum,
            counts_sum_to_weight: Vec::new(),
        }
    }

    fn global(&self) -> &[f32] {
        &self.params
    }

    fn aggregate(&mut self, _round: u32, results: RoundResults) -> Result<Metrics> {
        self.params = results
            .sum
            .and_then(|s| s.mean())
            .ok_or_else(|| CoordinatorError::Strategy("fedavg: no updates to average".into()))?;
        Ok(Metrics::new())
    }

    fn evaluate(&self, test: &Dataset) -> Result<Metrics> {
        eval_metrics(&self.spec, &self.params, test)
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        to_bytes(&self.params)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let params: Vec<f32> = from_bytes(bytes)?;
        if params.len() != self.params.len() {
            return Err(CoordinatorError::Checkpoint(format!(
                "fedavg state has {} parameters, model needs {}",
                params.len(),
                self.params.len()
            )));
        }
        self.params = params;
        Ok(())
    }
}
