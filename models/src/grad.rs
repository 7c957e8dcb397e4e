//! Gradients of the mean cross-entropy at a parameter vector, flattened in manifest order:
//! exact over the whole dataset, or averaged over seeded mini-batches.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;
use shoal_datasets::rng::rng_for;

use crate::batch::{Batch, Tally, check_data, cross_entropy};
use crate::error::{ModelError, Result};
use crate::net::{Net, training_device};
use crate::params::{build_loaded, tensor_values};
use crate::spec::ModelSpec;

/// What a gradient computation looked at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradReport {
    /// Mean cross-entropy at the given parameters: over the whole dataset when `batches == 0`,
    /// otherwise the mean of the mini-batch means.
    pub loss: f64,
    /// Examples used (the dataset size when `batches == 0`, counted with repeats otherwise).
    pub examples: usize,
}

/// The gradient of the mean cross-entropy at `params`, flattened in manifest order.
///
/// * `batches == 0`: the exact full-data gradient. The data is processed in contiguous chunks
///   of `batch_size`, each chunk's mean-loss gradient weighted by `chunk_len / n` and summed in
///   `f64`, so the result does not depend on `batch_size` beyond rounding.
/// * `batches > 0`: the mean of the gradients of `batches` mini-batches of `batch_size`
///   (the whole dataset when it is smaller). Batches are consecutive slices of a permutation
///   drawn from `rng_for(seed, &[pass])`; when fewer than `batch_size` examples remain the next
///   pass starts with a fresh permutation, so no example repeats within a pass.
pub fn gradient(
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    batches: usize,
    batch_size: usize,
    seed: u64,
) -> Result<(Vec<f32>, GradReport)> {
    if batch_size == 0 {
        return Err(ModelError::InvalidConfig("batch_size must be positive".into()));
    }
    check_data(spec, data)?;
    let n = data.labels.len();
    if n == 0 {
        return Err(ModelError::EmptyData);
    }
    let device = training_device();
    let net = build_loaded(spec, params, &device)?;
    let mut acc = Accumulator {
        sum: vec![0.0; params.len()],
        loss: 0.0,
        examples: 0,
    };

    if batches == 0 {
        let mut start = 0;
        while start < n {
            let end = (start + batch_size).min(n);
            let batch = Batch::range(data, start, end, &device);
            acc.add(&net, batch, (end - start) as f64 / n as f64)?;
            start = end;
        }
    } else {
        let take = batch_size.min(n);
        let mut pass = 0u64;
        let mut order = permutation(n, seed, pass);
        let mut pos = 0;
        for _ in 0..batches {
            if n - pos < take {
                pass += 1;
                order = permutation(n, seed, pass);
                pos = 0;
            }
            let batch = Batch::gather(data, &order[pos..pos + take], &device);
            pos += take;
            acc.add(&net, batch, 1.0 / batches as f64)?;
        }
    }

    let report = GradReport {
        loss: acc.loss,
        examples: acc.examples,
    };
    Ok((acc.sum.into_iter().map(|g| g as f32).collect(), report))
}

fn permutation(n: usize, seed: u64, pass: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng_for(seed, &[pass]));
    order
}

/// Weighted sums of batch gradients and losses.
struct Accumulator {
    sum: Vec<f64>,
    loss: f64,
    examples: usize,
}

impl Accumulator {
    /// Adds `weight` times the gradient and mean loss of `batch`.
    fn add(&mut self, net: &Net, batch: Batch, weight: f64) -> Result<()> {
        let logits: Tensor<2> = net.forward(batch.inputs);
        let mut tally = Tally::default();
        tally.add(&tensor_values(logits.clone().inner())?, &batch.labels);
        let grads = cross_entropy(logits, batch.targets).backward();
        let mut collector = GradCollector {
            grads: &grads,
            sum: &mut self.sum,
            offset: 0,
            weight,
            error: None,
        };
        net.visit(&mut collector);
        if let Some(err) = collector.error {
            return Err(err);
        }
        self.loss += weight * tally.mean_loss();
        self.examples += batch.labels.len();
        Ok(())
    }
}

/// Adds `weight * grad` of every float parameter into `sum`, in manifest order. A parameter
/// without a gradient (unused by the forward pass) contributes zero.
struct GradCollector<'a> {
    grads: &'a Gradients,
    sum: &'a mut [f64],
    offset: usize,
    weight: f64,
    error: Option<ModelError>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let len = tensor.shape().num_elements();
        let start = self.offset;
        self.offset += len;
        if self.error.is_some() {
            return;
        }
        let Some(grad) = tensor.grad(self.grads) else {
            return;
        };
        match tensor_values(grad) {
            Ok(values) => match self.sum.get_mut(start..start + len) {
                Some(slot) if values.len() == len => {
                    for (s, g) in slot.iter_mut().zip(values) {
                        *s += self.weight * f64::from(g);
                    }
                }
                _ => self.error = Some(ModelError::Backend("gradient shape mismatch".into())),
            },
            Err(err) => self.error = Some(err),
        }
    }
}
