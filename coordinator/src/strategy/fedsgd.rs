//! FedSGD: federated gradient averaging (the baseline of McMahan et al. 2017), with a server
//! optimiser as in Reddi et al., "Adaptive Federated Optimization", ICLR 2021.
//!
//! Each selected client returns the gradient of its local loss at the global parameters; the
//! coordinator averages them by example count and takes one optimiser step. With whole-partition
//! gradients and every client taking part, a round is one step of centralised gradient descent
//! on the union of the clients' data.

use super::{
    FoldMode, Metrics, Strategy, TaskPlan, Work, eval_metrics, from_bytes, init_stream, to_bytes,
};
use crate::config::{GradientSettings, ServerOptimizer};
use crate::error::{CoordinatorError, Result};
use crate::strategy::results::RoundResults;
use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;
use shoal_models::{ModelSpec, init_params};
use shoal_proto::v1::{GradientConfig, TaskKind};

/// Optimiser state that must survive a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct OptimizerState {
    steps: u64,
    first: Vec<f32>,
    second: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    params: Vec<f32>,
    state: OptimizerState,
}

/// Federated gradient averaging with a server optimiser.
#[derive(Debug)]
pub struct FedSgd {
    spec: ModelSpec,
    params: Vec<f32>,
    optimizer: ServerOptimizer,
    state: OptimizerState,
    gradient: GradientSettings,
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
        let state = OptimizerState {
            steps: 0,
            first: vec![0.0; params.len()],
            second: vec![0.0; params.len()],
        };
        Self {
            spec,
            params,
            optimizer,
            state,
            gradient,
        }
    }
}

/// One optimiser step of `params` along `grad`, updating `state`; pure, so tests can compare it
/// with a centralised step.
fn step(optimizer: &ServerOptimizer, params: &mut [f32], grad: &[f32], state: &mut OptimizerState) {
    state.steps += 1;
    match *optimizer {
        ServerOptimizer::Sgd { lr, momentum } => {
            for ((p, g), v) in params.iter_mut().zip(grad).zip(state.first.iter_mut()) {
                let velocity = momentum * f64::from(*v) + f64::from(*g);
                *v = velocity as f32;
                *p = (f64::from(*p) - lr * velocity) as f32;
            }
        }
        ServerOptimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => {
            let t = state.steps as i32;
            let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
            for (((p, g), m), v) in params
                .iter_mut()
                .zip(grad)
                .zip(state.first.iter_mut())
                .zip(state.second.iter_mut())
            {
                let g = f64::from(*g);
                let m1 = beta1 * f64::from(*m) + (1.0 - beta1) * g;
                let v1 = beta2 * f64::from(*v) + (1.0 - beta2) * g * g;
                *m = m1 as f32;
                *v = v1 as f32;
                *p = (f64::from(*p) - lr * (m1 / c1) / ((v1 / c2).sqrt() + eps)) as f32;
            }
        }
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
            fold: FoldMode::WeightedSum,
            counts_sum_to_weight: Vec::new(),
        }
    }

    fn global(&self) -> &[f32] {
        &self.params
    }

    fn aggregate(&mut self, _round: u32, results: RoundResults) -> Result<Metrics> {
        let grad = results
            .sum
            .and_then(|s| s.mean())
            .ok_or_else(|| CoordinatorError::Strategy("fedsgd: no gradients to average".into()))?;
        let norm = grad
            .iter()
            .map(|g| f64::from(*g).powi(2))
            .sum::<f64>()
            .sqrt();
        step(&self.optimizer, &mut self.params, &grad, &mut self.state);
        Ok(Metrics::from([("grad_norm".to_string(), norm)]))
    }

    fn evaluate(&self, test: &Dataset) -> Result<Metrics> {
        eval_metrics(&self.spec, &self.params, test)
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        to_bytes(&Snapshot {
            params: self.params.clone(),
            state: self.state.clone(),
        })
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let snap: Snapshot = from_bytes(bytes)?;
        let n = self.params.len();
        if snap.params.len() != n || snap.state.first.len() != n || snap.state.second.len() != n {
            return Err(CoordinatorError::Checkpoint(
                "fedsgd state does not fit the model".into(),
            ));
        }
        self.params = snap.params;
        self.state = snap.state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_without_momentum_is_gradient_descent() {
        let mut p = vec![1.0f32, -2.0];
        let mut s = OptimizerState {
            steps: 0,
            first: vec![0.0; 2],
            second: vec![0.0; 2],
        };
        step(
            &ServerOptimizer::Sgd {
                lr: 0.5,
                momentum: 0.0,
            },
            &mut p,
            &[2.0, -4.0],
            &mut s,
        );
        assert_eq!(p, vec![0.0, 0.0]);
    }

    #[test]
    fn momentum_accumulates_velocity() {
        let mut p = vec![0.0f32];
        let mut s = OptimizerState {
            steps: 0,
            first: vec![0.0],
            second: vec![0.0],
        };
        let opt = ServerOptimizer::Sgd {
            lr: 1.0,
            momentum: 0.5,
        };
        step(&opt, &mut p, &[1.0], &mut s);
        step(&opt, &mut p, &[1.0], &mut s);
        assert_eq!(p, vec![-2.5]);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let mut p = vec![0.0f32, 0.0];
        let mut s = OptimizerState {
            steps: 0,
            first: vec![0.0; 2],
            second: vec![0.0; 2],
        };
        let opt = ServerOptimizer::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        step(&opt, &mut p, &[3.0, -0.01], &mut s);
        assert!(
            (p[0] + 0.1).abs() < 1e-6 && (p[1] - 0.1).abs() < 1e-5,
            "{p:?}"
        );
    }
}
