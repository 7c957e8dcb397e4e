//! Local training: plain mini-batch SGD on cross-entropy, starting from a flat parameter
//! vector and returning the updated one.

use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::Tensor;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;
use shoal_datasets::rng::rng_for;

use crate::batch::{Batch, Tally, check_data, cross_entropy};
use crate::error::{ModelError, Result};
use crate::eval::evaluate;
use crate::net::training_device;
use crate::params::{build_loaded, flatten, tensor_values};
use crate::spec::ModelSpec;

/// How to train locally.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the local data; 0 leaves the parameters unchanged.
    pub epochs: usize,
    /// Examples per SGD step; the last, partial batch of an epoch is used too.
    pub batch_size: usize,
    /// SGD learning rate (no momentum, no weight decay).
    pub lr: f64,
    /// Seed of the per-epoch shuffles (`rng_for(seed, &[epoch])`).
    pub seed: u64,
}

impl TrainConfig {
    /// Checks that the configuration is usable: positive batch size, finite non-negative
    /// learning rate.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(ModelError::InvalidConfig("batch_size must be positive".into()));
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
/// smaller). The model is built once per call on the autodiff CPU backend.
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

    let device = training_device();
    let mut net = build_loaded(spec, params, &device)?;
    let mut optim = SgdConfig::new().init();
    let mut steps = 0;
    let mut last = Tally::default();
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng_for(cfg.seed, &[epoch as u64]));
        let mut tally = Tally::default();
        for chunk in order.chunks(cfg.batch_size) {
            let batch = Batch::gather(data, chunk, &device);
            let logits: Tensor<2> = net.forward(batch.inputs);
            tally.add(&tensor_values(logits.clone().inner())?, &batch.labels);
            let loss = cross_entropy(logits, batch.targets);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(cfg.lr, net, grads);
            steps += 1;
        }
        if !tally.loss_sum.is_finite() {
            return Err(ModelError::Diverged { epoch });
        }
        last = tally;
    }

    let trained = flatten(&net)?;
    if trained.iter().any(|v| !v.is_finite()) {
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
    Ok((trained, report))
}
