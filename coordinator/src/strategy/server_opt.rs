//! Server optimisers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): one step of
//! the global parameters along a round's gradient, FedSGD's averaged gradient or FedOpt's
//! pseudo-gradient (global − combined update), with the state that must survive a restart.

use crate::config::ServerOptimizer;
use serde::{Deserialize, Serialize};

/// Optimiser state that must survive a restart: steps taken and the moment estimates.
/// A checkpoint of parameters with the server optimiser's state (FedSGD, FedOpt), as read back.
#[derive(Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) params: Vec<f32>,
    pub(crate) state: OptimizerState,
}

/// The same checkpoint as written: borrowed, so nothing is copied to write it (bincode writes
/// a slice as it writes a `Vec`, so the bytes are [`Snapshot`]'s).
#[derive(Serialize)]
pub(crate) struct SnapshotRef<'a> {
    pub(crate) params: &'a [f32],
    pub(crate) state: &'a OptimizerState,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct OptimizerState {
    pub(crate) steps: u64,
    pub(crate) first: Vec<f32>,
    pub(crate) second: Vec<f32>,
}

impl OptimizerState {
    /// Fresh state for `n` parameters.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            steps: 0,
            first: vec![0.0; n],
            second: vec![0.0; n],
        }
    }

    /// Whether the state belongs to a model of `n` parameters.
    pub(crate) fn fits(&self, n: usize) -> bool {
        self.first.len() == n && self.second.len() == n
    }
}

/// One optimiser step of `params` along `grad`, updating `state`. The gradient is in f64:
/// FedOpt's pseudo-gradient is the exact difference of two f32 vectors, so plain SGD with
/// learning rate 1 lands exactly on the combined update (FedAvg).
pub(crate) fn step(
    optimizer: &ServerOptimizer,
    params: &mut [f32],
    grad: &[f64],
    state: &mut OptimizerState,
) {
    state.steps += 1;
    let moments = params
        .iter_mut()
        .zip(grad)
        .zip(state.first.iter_mut().zip(state.second.iter_mut()));
    match *optimizer {
        ServerOptimizer::Sgd { lr, momentum } => {
            for ((p, &g), (v, _)) in moments {
                let velocity = momentum * f64::from(*v) + g;
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
            for ((p, &g), (m, v)) in moments {
                let m1 = beta1 * f64::from(*m) + (1.0 - beta1) * g;
                let v1 = beta2 * f64::from(*v) + (1.0 - beta2) * g * g;
                *m = m1 as f32;
                *v = v1 as f32;
                *p = (f64::from(*p) - lr * (m1 / c1) / ((v1 / c2).sqrt() + eps)) as f32;
            }
        }
        ServerOptimizer::Adagrad { lr, beta1, tau } => {
            for ((p, &g), (m, v)) in moments {
                let m1 = beta1 * f64::from(*m) + (1.0 - beta1) * g;
                let v1 = f64::from(*v) + g * g;
                *m = m1 as f32;
                *v = v1 as f32;
                *p = (f64::from(*p) - lr * m1 / (v1.sqrt() + tau)) as f32;
            }
        }
        ServerOptimizer::Yogi {
            lr,
            beta1,
            beta2,
            tau,
        } => {
            for ((p, &g), (m, v)) in moments {
                let m1 = beta1 * f64::from(*m) + (1.0 - beta1) * g;
                let v0 = f64::from(*v);
                let v1 = v0 - (1.0 - beta2) * g * g * sign(v0 - g * g);
                *m = m1 as f32;
                *v = v1 as f32;
                *p = (f64::from(*p) - lr * m1 / (v1.sqrt() + tau)) as f32;
            }
        }
    }
}

/// -1, 0 or 1: Yogi leaves v alone where it already equals g² (`f64::signum` has no 0).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(opt: ServerOptimizer, p: &mut [f32], grads: &[&[f64]]) -> OptimizerState {
        let mut s = OptimizerState::new(p.len());
        for g in grads {
            step(&opt, p, g, &mut s);
        }
        s
    }

    #[test]
    fn sgd_without_momentum_is_gradient_descent() {
        let mut p = vec![1.0f32, -2.0];
        run(
            ServerOptimizer::Sgd {
                lr: 0.5,
                momentum: 0.0,
            },
            &mut p,
            &[&[2.0, -4.0]],
        );
        assert_eq!(p, vec![0.0, 0.0]);
    }

    #[test]
    fn momentum_accumulates_velocity() {
        let mut p = vec![0.0f32];
        let opt = ServerOptimizer::Sgd {
            lr: 1.0,
            momentum: 0.5,
        };
        run(opt, &mut p, &[&[1.0], &[1.0]]);
        assert_eq!(p, vec![-2.5]);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let mut p = vec![0.0f32, 0.0];
        let opt = ServerOptimizer::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        run(opt, &mut p, &[&[3.0, -0.01]]);
        assert!(
            (p[0] + 0.1).abs() < 1e-6 && (p[1] - 0.1).abs() < 1e-5,
            "{p:?}"
        );
    }

    /// Two steps of each adaptive rule, worked by hand from Reddi et al.'s Algorithm 2.
    #[test]
    fn adagrad_and_yogi_follow_their_formulas() {
        // Adagrad, beta1 0.5, tau 0.1, lr 1: g = 2 then 1.
        // m1 = 1, v1 = 4, p1 = 0 - 1/(2 + 0.1); m2 = 1, v2 = 5, p2 = p1 - 1/(sqrt 5 + 0.1).
        let mut p = vec![0.0f32];
        let s = run(
            ServerOptimizer::Adagrad {
                lr: 1.0,
                beta1: 0.5,
                tau: 0.1,
            },
            &mut p,
            &[&[2.0], &[1.0]],
        );
        let p1 = (0.0 - 1.0 / 2.1) as f32;
        let p2 = (f64::from(p1) - 1.0 / (5f64.sqrt() + 0.1)) as f32;
        assert_eq!((p[0], s.first[0], s.second[0]), (p2, 1.0, 5.0));
        // Yogi, beta1 0.5, beta2 0.75, tau 0.1, lr 1: g = 2 then 1.
        // v1 = 0 - 0.25*4*sign(0 - 4) = 1; m1 = 1; p1 = -1/(1 + 0.1).
        // v2 = 1 - 0.25*1*sign(1 - 1) = 1: where v already equals g², it stays.
        let mut p = vec![0.0f32];
        let s = run(
            ServerOptimizer::Yogi {
                lr: 1.0,
                beta1: 0.5,
                beta2: 0.75,
                tau: 0.1,
            },
            &mut p,
            &[&[2.0], &[1.0]],
        );
        let p1 = (0.0 - 1.0 / 1.1) as f32;
        let p2 = (f64::from(p1) - 1.0 / (1.0 + 0.1)) as f32;
        assert_eq!((p[0], s.first[0], s.second[0]), (p2, 1.0, 1.0));
    }
}
