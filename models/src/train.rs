//! Local training: plain mini-batch SGD on cross-entropy, starting from a flat parameter
//! vector and returning the updated one.

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;
use shoal_datasets::rng::rng_for;

use crate::batch::{Batch, check_data};
use crate::error::{ModelError, Result};
use crate::eval::evaluate;
use crate::learner::Learner;
use crate::loss::Tally;
use crate::sgd::Terms;
use crate::spec::ModelSpec;

/// How to train locally.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the local data; 0 leaves the parameters unchanged.
    pub epochs: usize,
    /// Examples per SGD step; the last, partial batch of an epoch is used too. Memory grows
    /// with it (the CNN needs about 0.3 MB per example in a batch, beside a few fixed blocks).
    pub batch_size: usize,
    /// SGD learning rate (no momentum, no weight decay).
    pub lr: f64,
    /// Seed of the per-epoch shuffles (`rng_for(seed, &[epoch])`).
    pub seed: u64,
    /// FedProx's proximal strength μ: each step also pulls the parameters toward the ones
    /// training started from by μ·(w − w_start); 0 is plain SGD (bit for bit).
    #[serde(default)]
    pub proximal_mu: f64,
    /// Stop after this many SGD steps, mid-epoch if need be (a device that ran out of time
    /// sends what it managed); 0 takes every step of every epoch.
    #[serde(default)]
    pub max_steps: usize,
}

impl TrainConfig {
    /// Checks that the configuration is usable: positive batch size, finite non-negative
    /// learning rate.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(ModelError::InvalidConfig(
                "batch_size must be positive".into(),
            ));
        }
        if !(self.proximal_mu.is_finite() && self.proximal_mu >= 0.0) {
            return Err(ModelError::InvalidConfig(format!(
                "proximal mu must be finite and non-negative, got {}",
                self.proximal_mu
            )));
        }
        if !self.lr.is_finite() || self.lr < 0.0 {
            return Err(ModelError::InvalidConfig(format!(
                "learning rate must be finite and non-negative, got {}",
                self.lr
            )));
        }
        Ok(())
    }
}

/// What a local training run did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Mean cross-entropy over the last epoch, each example's loss taken at the moment its
    /// batch was trained on; with 0 epochs, the loss of an evaluation of the input parameters.
    pub loss: f64,
    /// Training accuracy over the last epoch, measured like `loss`.
    pub accuracy: f64,
    /// Number of local training examples (the FedAvg weight), whatever the epoch count.
    pub examples: usize,
    /// SGD steps taken over all epochs.
    pub steps: usize,
}

/// Trains the model described by `spec`, starting from `params`, on `data` with plain SGD.
///
/// Each epoch visits every example once in the order of a permutation drawn from
/// `rng_for(cfg.seed, &[epoch])`, in batches of `cfg.batch_size` (the last one may be
/// smaller). The model is built from `params` once per call.
///
/// Errors on a parameter vector of the wrong length or with non-finite values, on a dataset
/// that does not fit `spec` or is empty, on an invalid `cfg`, and with
/// [`ModelError::Diverged`] when training produces non-finite values.
pub fn train_local(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    cfg: &TrainConfig,
) -> Result<(Vec<f32>, TrainReport)> {
    train(spec, params, None, data, cfg)
}

/// [`train_local`] with SCAFFOLD's drift correction (Karimireddy et al. 2020): every step is
/// `w <- w - lr * (grad + correction)`, where `correction` is the server's control variate
/// minus the client's, laid out like `params`. A correction of zeros is plain SGD.
pub fn train_local_corrected(
    spec: &ModelSpec,
    params: &[f32],
    correction: &[f32],
    data: &Dataset,
    cfg: &TrainConfig,
) -> Result<(Vec<f32>, TrainReport)> {
    if correction.len() != params.len() {
        return Err(ModelError::InvalidConfig(format!(
            "a correction of {} values for {} parameters",
            correction.len(),
            params.len()
        )));
    }
    if !crate::manifest::all_finite(correction) {
        let i = correction.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(ModelError::InvalidConfig(format!(
            "correction value {i} is not finite"
        )));
    }
    train(spec, params, Some(correction), data, cfg)
}

/// Local SGD, with the terms FedProx (`cfg.proximal_mu`) and SCAFFOLD (`correction`) add.
fn train(
    spec: &ModelSpec,
    params: &[f32],
    correction: Option<&[f32]>,
    data: &Dataset,
    cfg: &TrainConfig,
) -> Result<(Vec<f32>, TrainReport)> {
    cfg.validate()?;
    check_data(spec, data)?;
    let n = data.labels.len();
    if n == 0 {
        return Err(ModelError::EmptyData);
    }
    if cfg.epochs == 0 {
        let eval = evaluate(spec, params, data)?;
        let report = TrainReport {
            loss: eval.loss,
            accuracy: eval.accuracy,
            examples: n,
            steps: 0,
        };
        return Ok((params.to_vec(), report));
    }

    let terms = Terms {
        proximal: (cfg.proximal_mu > 0.0).then_some((cfg.proximal_mu, params)),
        correction,
    };
    let mut learner = Learner::new(spec, params, terms)?;
    let mut steps = 0;
    let mut last = Tally::default();
    let enough = |steps: usize| cfg.max_steps > 0 && steps >= cfg.max_steps;
    for epoch in 0..cfg.epochs {
        if enough(steps) {
            break;
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng_for(cfg.seed, &[epoch as u64]));
        let mut tally = Tally::default();
        for chunk in order.chunks(cfg.batch_size) {
            if enough(steps) {
                break;
            }
            learner = learner.step(Batch::gather(data, chunk), cfg.lr, &mut tally)?;
            steps += 1;
        }
        if !tally.loss_sum.is_finite() {
            return Err(ModelError::Diverged { epoch });
        }
        last = tally;
    }

    let trained = learner.into_params()?;
    if !crate::manifest::all_finite(&trained) {
        return Err(ModelError::Diverged {
            epoch: cfg.epochs - 1,
        });
    }
    let report = TrainReport {
        loss: last.mean_loss(),
        accuracy: last.accuracy(),
        examples: n,
        steps,
    };
    tracing::debug!(
        kind = %spec.kind,
        examples = n,
        epochs = cfg.epochs,
        steps,
        loss = report.loss,
        "local training finished"
    );
    Ok((trained, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::init_params;
    use crate::spec::ModelKind;
    use crate::test_util::{
        cnn_spec, digits_head, digits_spec, digits_split, mlp_spec, tiny_images,
    };

    fn cfg(epochs: usize) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size: 32,
            lr: 0.1,
            seed: 4,
            proximal_mu: 0.0,
            max_steps: 0,
        }
    }

    #[test]
    fn training_reduces_the_loss() {
        let data = digits_head(300);
        for spec in [digits_spec(ModelKind::LogReg), mlp_spec()] {
            let params = init_params(&spec, 1).unwrap();
            let before = evaluate(&spec, &params, &data).unwrap();
            let (trained, report) = train_local(&spec, &params, &data, &cfg(5)).unwrap();
            let after = evaluate(&spec, &trained, &data).unwrap();
            assert!(
                after.loss < 0.75 * before.loss,
                "{}: {before:?} -> {after:?}",
                spec.kind
            );
            assert!(report.loss < before.loss);
            assert_eq!(report.examples, 300);
            assert_eq!(report.steps, 5 * 10);
        }
    }

    #[test]
    fn mlp_learns_digits() {
        let (train, test) = digits_split();
        let spec = mlp_spec();
        let params = init_params(&spec, 7).unwrap();
        let (trained, report) = train_local(&spec, &params, &train, &cfg(10)).unwrap();
        let eval = evaluate(&spec, &trained, &test).unwrap();
        assert!(eval.accuracy > 0.9, "test {eval:?}, train {report:?}");
        assert!(report.accuracy > 0.9, "{report:?}");
    }

    #[test]
    fn training_is_deterministic_in_the_seed() {
        let data = digits_head(100);
        let spec = mlp_spec();
        let params = init_params(&spec, 1).unwrap();
        let run =
            |seed| train_local(&spec, &params, &data, &TrainConfig { seed, ..cfg(2) }).unwrap();
        let (a, ra) = run(1);
        let (b, rb) = run(1);
        let (c, _) = run(2);
        assert_eq!(a, b);
        assert_eq!(ra, rb);
        assert_ne!(a, c);
    }

    /// The backend spreads products and convolutions over a thread pool; two trainings at
    /// once share it, and neither may see its numbers change.
    #[test]
    fn concurrent_runs_match_sequential_ones() {
        for (spec, data) in [
            (mlp_spec(), digits_head(200)),
            (cnn_spec(), tiny_images(24)),
        ] {
            let params = init_params(&spec, 1).unwrap();
            let cfg = TrainConfig {
                batch_size: 8,
                ..cfg(2)
            };
            let run =
                |seed| train_local(&spec, &params, &data, &TrainConfig { seed, ..cfg }).unwrap();
            let sequential = [run(1), run(2)];
            let concurrent = std::thread::scope(|s| {
                let handles = [s.spawn(|| run(1)), s.spawn(|| run(2))];
                handles.map(|h| h.join().unwrap())
            });
            assert_eq!(sequential, concurrent, "{}", spec.kind);
            assert_ne!(sequential[0].0, params, "{}", spec.kind);
        }
    }

    #[test]
    fn zero_epochs_return_the_input_and_an_evaluation() {
        let data = digits_head(50);
        let spec = mlp_spec();
        let params = init_params(&spec, 1).unwrap();
        let (out, report) = train_local(&spec, &params, &data, &cfg(0)).unwrap();
        assert_eq!(out, params);
        let eval = evaluate(&spec, &params, &data).unwrap();
        assert_eq!(
            (report.loss, report.accuracy, report.steps),
            (eval.loss, eval.accuracy, 0)
        );
    }

    #[test]
    fn partial_last_batches_are_trained_on() {
        let data = digits_head(33);
        let spec = mlp_spec();
        let params = init_params(&spec, 1).unwrap();
        let (_, report) = train_local(
            &spec,
            &params,
            &data,
            &TrainConfig {
                batch_size: 16,
                ..cfg(2)
            },
        )
        .unwrap();
        assert_eq!(report.steps, 2 * 3);
    }

    #[test]
    fn a_step_limit_stops_mid_epoch_with_the_steps_it_took() {
        let data = digits_head(100);
        let spec = mlp_spec();
        let params = init_params(&spec, 1).unwrap();
        let train = |max_steps| {
            let cfg = TrainConfig {
                batch_size: 10,
                max_steps,
                ..cfg(2)
            };
            train_local(&spec, &params, &data, &cfg).unwrap()
        };
        let (all, report) = train(0);
        assert_eq!(report.steps, 20);
        assert_eq!(train(20).0, all, "a limit at the work changes nothing");
        assert_eq!(train(21).0, all, "nor one above it");
        let (part, report) = train(13);
        assert_eq!((report.steps, report.examples), (13, 100));
        assert_ne!(part, all);
        assert!(report.loss.is_finite() && report.accuracy > 0.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let data = digits_head(20);
        let spec = mlp_spec();
        let params = init_params(&spec, 1).unwrap();
        let train = |spec: &ModelSpec, params: &[f32], data: &Dataset, cfg: &TrainConfig| {
            train_local(spec, params, data, cfg).unwrap_err()
        };
        assert!(matches!(
            train(&spec, &params[1..], &data, &cfg(1)),
            ModelError::ParamLength { .. }
        ));
        let mut nan = params.clone();
        nan[3] = f32::NAN;
        assert!(matches!(
            train(&spec, &nan, &data, &cfg(1)),
            ModelError::NonFiniteParams { index: 3 }
        ));
        let logreg = ModelSpec {
            num_features: 10,
            image_shape: None,
            ..digits_spec(ModelKind::LogReg)
        };
        let p = init_params(&logreg, 1).unwrap();
        assert!(matches!(
            train(&logreg, &p, &data, &cfg(1)),
            ModelError::DataMismatch(_)
        ));
        let mut bad_label = data.clone();
        bad_label.labels[0] = 10;
        assert!(matches!(
            train(&spec, &params, &bad_label, &cfg(1)),
            ModelError::DataMismatch(_)
        ));
        let mut ragged = data.clone();
        ragged.features.pop();
        assert!(matches!(
            train(&spec, &params, &ragged, &cfg(1)),
            ModelError::DataMismatch(_)
        ));
        let empty = data.subset(&[]).unwrap();
        assert!(matches!(
            train(&spec, &params, &empty, &cfg(1)),
            ModelError::EmptyData
        ));
        let zero_batch = TrainConfig {
            batch_size: 0,
            ..cfg(1)
        };
        assert!(matches!(
            train(&spec, &params, &data, &zero_batch),
            ModelError::InvalidConfig(_)
        ));
        let nan_lr = TrainConfig {
            lr: f64::NAN,
            ..cfg(1)
        };
        assert!(matches!(
            train(&spec, &params, &data, &nan_lr),
            ModelError::InvalidConfig(_)
        ));
    }

    #[test]
    fn the_proximal_term_pulls_toward_the_start_and_vanishes_at_zero() {
        let data = digits_head(200);
        let spec = mlp_spec();
        let params = init_params(&spec, 1).unwrap();
        let train = |mu| {
            train_local(
                &spec,
                &params,
                &data,
                &TrainConfig {
                    proximal_mu: mu,
                    ..cfg(3)
                },
            )
            .unwrap()
            .0
        };
        let distance = |w: &[f32]| -> f64 {
            w.iter()
                .zip(&params)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum()
        };
        let plain = train(0.0);
        let (near, nearer) = (train(0.5), train(5.0));
        assert!(
            distance(&near) < distance(&plain),
            "{} vs {}",
            distance(&near),
            distance(&plain)
        );
        assert!(distance(&nearer) < distance(&near));
        // mu = 0 is the plain SGD path, and a tiny mu is not.
        assert_ne!(train(1e-3), plain);
        let bad = TrainConfig {
            proximal_mu: -1.0,
            ..cfg(1)
        };
        assert!(matches!(
            train_local(&spec, &params, &data, &bad),
            Err(ModelError::InvalidConfig(_))
        ));
    }

    #[test]
    fn a_drift_correction_shifts_every_step_and_zero_is_plain_sgd() {
        let data = digits_head(64);
        let spec = mlp_spec();
        let params = init_params(&spec, 1).unwrap();
        // One step over the whole batch: the correction moves it by exactly -lr * correction.
        let one_step = TrainConfig {
            batch_size: 64,
            ..cfg(1)
        };
        let plain = train_local(&spec, &params, &data, &one_step).unwrap();
        let zeros = vec![0.0; params.len()];
        let same = train_local_corrected(&spec, &params, &zeros, &data, &one_step).unwrap();
        assert_eq!(plain, same);
        let correction: Vec<f32> = (0..params.len()).map(|i| (i % 7) as f32 * 0.01).collect();
        let (shifted, report) =
            train_local_corrected(&spec, &params, &correction, &data, &one_step).unwrap();
        assert_eq!(report.steps, 1);
        for ((s, p), c) in shifted.iter().zip(&plain.0).zip(&correction) {
            assert!((s - p + 0.1 * c).abs() < 1e-6, "{s} vs {p} with {c}");
        }
        let short = train_local_corrected(&spec, &params, &zeros[1..], &data, &one_step);
        assert!(matches!(short, Err(ModelError::InvalidConfig(_))));
        let mut nan = zeros.clone();
        nan[5] = f32::NAN;
        let nan = train_local_corrected(&spec, &params, &nan, &data, &one_step);
        assert!(matches!(nan, Err(ModelError::InvalidConfig(_))));
    }

    #[test]
    fn divergence_is_reported() {
        let data = digits_head(64);
        let spec = mlp_spec();
        let params = init_params(&spec, 1).unwrap();
        let wild = TrainConfig { lr: 1e30, ..cfg(3) };
        let err = train_local(&spec, &params, &data, &wild).unwrap_err();
        assert!(matches!(err, ModelError::Diverged { .. }), "{err}");
    }

    #[test]
    fn loaded_models_stay_trainable() {
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: 4,
            lr: 0.05,
            seed: 1,
            proximal_mu: 0.0,
            max_steps: 0,
        };
        let digits = digits_head(64);
        let images = tiny_images(8);
        for (spec, data) in [
            (digits_spec(ModelKind::LogReg), &digits),
            (mlp_spec(), &digits),
            (cnn_spec(), &images),
        ] {
            let params = init_params(&spec, 9).unwrap();
            let (trained, report) = train_local(&spec, &params, data, &cfg).unwrap();
            assert_eq!(trained.len(), params.len());
            assert!(report.loss.is_finite());
            // Every parameter tensor received an update.
            for entry in spec.manifest().unwrap().entries {
                let range = entry.offset..entry.offset + entry.len;
                assert_ne!(
                    &trained[range.clone()],
                    &params[range],
                    "{} {}",
                    spec.kind,
                    entry.name
                );
            }
        }
    }
}
