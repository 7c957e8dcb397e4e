//! "A little is enough" (Baruch et al., NeurIPS 2019): attackers who collude. Each estimates
//! what benign updates look like from the honest updates of all its colluders, and all send
//! the same forgery: the mean change shifted by `z` standard deviations, coordinate by
//! coordinate. Within a few deviations of the mean, it passes distance- and median-based
//! defences, and many identical votes pull the aggregate where the attackers want.
//!
//! The colluders are the attackers whose data this process holds (all of them in one
//! process; in a fleet split over processes, each process's attackers collude among
//! themselves). The honest updates are trained with seeds every colluder derives alike from
//! the run seed, round and colluder, so every attacker forges the same bits, whichever comes
//! first, and a seeded run replays exactly. The forgery is made once per round and task kind.

use crate::error::{ClientError, Result};
use crate::trainer::LocalTrainer;
use crate::work::{ClientState, LocalUpdate, change_base, run_task};
use shoal_datasets::Dataset;
use shoal_datasets::rng::{client_key, derive_seed};
use shoal_proto::v1::Task;
use std::sync::{Arc, Mutex};

/// Stream tag for the colluders' honest training seeds.
const COLLUSION_STREAM: u64 = u64::from_be_bytes(*b"alie-zed");

/// Which forgery is cached: run, round, stage, task kind.
type ForgeryKey = (String, u32, u32, i32);

/// The colluding attackers of one fleet process.
#[derive(Debug)]
pub struct Collusion {
    /// Every colluder's id and honest (unpoisoned) data, by id.
    colluders: Vec<(String, Arc<Dataset>)>,
    /// Standard deviations the forgery sits below the mean.
    z: f64,
    /// The run seed the colluders' training seeds derive from.
    seed: u64,
    /// The newest forgery, shared by every attacker of its round.
    forged: Mutex<Option<(ForgeryKey, Arc<Vec<f32>>)>>,
}

impl Collusion {
    /// Colluders `colluders` (id, honest data) forging at `z` deviations, their training
    /// seeded from the run seed `seed`.
    pub fn new(mut colluders: Vec<(String, Arc<Dataset>)>, z: f64, seed: u64) -> Self {
        colluders.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            colluders,
            z,
            seed,
            forged: Mutex::new(None),
        }
    }

    /// The paper's `z` for `attackers` among `population` clients: the largest shift that
    /// still leaves the forgery closer to the mean than `s = ⌊n/2 + 1⌋ − m` benign updates
    /// are, `z = Φ⁻¹((n − s) / n)` (capped at Φ⁻¹(0.999) when attackers are a majority).
    pub fn paper_z(population: usize, attackers: usize) -> f64 {
        let n = population.max(1) as f64;
        let s = (population / 2 + 1) as f64 - attackers as f64;
        inverse_normal_cdf(((n - s) / n).clamp(0.5, 0.999))
    }

    /// The update an attacker sends for `task`: its own weight and metrics, the colluders'
    /// forged payload. Tasks that are no change of the model (k-means, evaluation) stay honest.
    pub fn forge(
        &self,
        trainer: &dyn LocalTrainer,
        task: &Task,
        global: &Arc<Vec<f32>>,
        mut update: LocalUpdate,
    ) -> Result<LocalUpdate> {
        let Some(base) = change_base(task, global, update.payload.len())? else {
            return Ok(update);
        };
        let fence = task.fence.clone().unwrap_or_default();
        let key = (fence.run_id, fence.round, fence.stage, task.kind);
        let mut forged = self
            .forged
            .lock()
            .map_err(|_| ClientError::Worker("a colluder panicked while forging".into()))?;
        let payload = match forged.as_ref() {
            Some((k, payload)) if *k == key => payload.clone(),
            _ => {
                let changes = self.honest_changes(trainer, task, global, base, &key)?;
                let payload = Arc::new(forgery(&changes, base, self.z, update.payload.len()));
                *forged = Some((key, payload.clone()));
                payload
            }
        };
        update.payload = payload;
        Ok(update)
    }

    /// Every colluder's honest change for `task`, trained with seeds they all derive alike.
    fn honest_changes(
        &self,
        trainer: &dyn LocalTrainer,
        task: &Task,
        global: &Arc<Vec<f32>>,
        base: &[f32],
        key: &ForgeryKey,
    ) -> Result<Vec<Vec<f32>>> {
        self.colluders
            .iter()
            .map(|(id, data)| {
                let seed = derive_seed(
                    self.seed,
                    &[COLLUSION_STREAM, u64::from(key.1), client_key(id)],
                );
                let honest_task = Task {
                    seed,
                    ..task.clone()
                };
                let mut state = ClientState {
                    client_id: id.clone(),
                    ..ClientState::default()
                };
                let mut payload = Arc::unwrap_or_clone(
                    run_task(trainer, &honest_task, global, data, &mut state)?.payload,
                );
                payload.iter_mut().zip(base).for_each(|(v, b)| *v -= b);
                Ok(payload)
            })
            .collect()
    }
}

/// `base + mean − z·std` of `changes`, coordinate by coordinate (population deviation), as
/// `len` values.
pub fn forgery(changes: &[Vec<f32>], base: &[f32], z: f64, len: usize) -> Vec<f32> {
    let m = changes.len().max(1) as f64;
    (0..len)
        .map(|j| {
            let column = changes
                .iter()
                .map(|c| f64::from(c.get(j).copied().unwrap_or(0.0)));
            let mean = column.clone().sum::<f64>() / m;
            let var = column.map(|v| (v - mean).powi(2)).sum::<f64>() / m;
            let at = f64::from(base.get(j).copied().unwrap_or(0.0));
            (at + mean - z * var.sqrt()) as f32
        })
        .collect()
}

/// Φ⁻¹(p) for p in (0, 1), by bisection on Φ(x) = (1 + erf(x/√2)) / 2: exact to f64 and the
/// same bits everywhere.
fn inverse_normal_cdf(p: f64) -> f64 {
    let cdf = |x: f64| 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
    let (mut lo, mut hi) = (-10.0f64, 10.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forgery_sits_z_deviations_below_the_mean_change() {
        let changes = vec![vec![1.0, 0.0], vec![3.0, 0.0]];
        // Mean [2, 0], deviation [1, 0]; base [10, 5].
        assert_eq!(forgery(&changes, &[10.0, 5.0], 1.5, 2), vec![10.5, 5.0]);
        // A gradient has no base: the change is itself.
        assert_eq!(forgery(&changes, &[], 0.0, 2), vec![2.0, 0.0]);
    }

    #[test]
    fn the_papers_z_follows_the_population_and_the_attackers() {
        // n = 50, m = 24: s = 2, Φ⁻¹(48/50) ≈ 1.75 (Baruch et al.'s worked example).
        assert!((Collusion::paper_z(50, 24) - 1.7507).abs() < 1e-3);
        // n = 10, m = 2: s = 4, Φ⁻¹(0.6) ≈ 0.2533.
        assert!((Collusion::paper_z(10, 2) - 0.2533).abs() < 1e-3);
        // A majority of attackers is capped, not infinite.
        assert!(Collusion::paper_z(10, 9) < 3.1);
        assert!((inverse_normal_cdf(0.5)).abs() < 1e-12);
    }

    #[test]
    fn every_colluder_sends_the_same_forgery_and_it_replays() {
        use crate::trainer::BuiltinTrainer;
        use shoal_proto::v1::{Fence, FitConfig, ModelSpec, TaskKind};
        let data = |offset: usize| {
            let features: Vec<f32> = (0..40).map(|i| ((i + offset) % 7) as f32 / 7.0).collect();
            Arc::new(Dataset {
                features,
                labels: (0..20).map(|i| ((i + offset) % 2) as u32).collect(),
                num_features: 2,
                num_classes: 2,
                image_shape: None,
            })
        };
        let colluders = vec![("a".to_string(), data(0)), ("b".to_string(), data(3))];
        let task = Task {
            kind: TaskKind::Fit as i32,
            model: Some(ModelSpec {
                kind: "logreg".into(),
                num_features: 2,
                num_classes: 2,
                ..Default::default()
            }),
            fit: Some(FitConfig {
                epochs: 1,
                batch_size: 5,
                lr: 0.5,
                ..Default::default()
            }),
            fence: Some(Fence {
                run_id: "run".into(),
                round: 3,
                ..Default::default()
            }),
            seed: 1,
            ..Default::default()
        };
        let global = Arc::new(vec![0.0f32; 6]);
        let forge = |collusion: &Collusion, seed: u64, weight: u64| {
            let honest = LocalUpdate::plain(weight, vec![9.0; 6]);
            let task = Task {
                seed,
                ..task.clone()
            };
            collusion
                .forge(&BuiltinTrainer::default(), &task, &global, honest)
                .unwrap()
        };
        let first = Collusion::new(colluders.clone(), 1.0, 4);
        let a = forge(&first, 1, 20);
        let b = forge(&first, 2, 30);
        assert_eq!(a.payload, b.payload, "colluders send one forgery");
        assert_eq!((a.num_examples, b.num_examples), (20, 30));
        assert_ne!(*a.payload, vec![9.0; 6]);
        // Another process with the same colluders forges the same bits.
        let again = Collusion::new(colluders.into_iter().rev().collect(), 1.0, 4);
        assert_eq!(forge(&again, 5, 1).payload, a.payload);
    }
}
