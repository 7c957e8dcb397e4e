//! Dataset checks and the conversion of example batches into tensors, plus the per-example
//! loss and accuracy bookkeeping shared by training, evaluation and gradients.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use shoal_datasets::Dataset;

use crate::error::{ModelError, Result};
use crate::spec::ModelSpec;

/// Checks that `data` is internally consistent and fits `spec`: same feature count, a
/// feature buffer of `len * num_features` values and every label below `spec.num_classes`.
/// Feature values themselves are not inspected.
pub(crate) fn check_data(spec: &ModelSpec, data: &Dataset) -> Result<()> {
    let mismatch = |msg: String| Err(ModelError::DataMismatch(msg));
    if data.num_features != spec.num_features {
        return mismatch(format!(
            "dataset has {} features, the model expects {}",
            data.num_features, spec.num_features
        ));
    }
    if Some(data.features.len()) != data.labels.len().checked_mul(data.num_features) {
        return mismatch(format!(
            "feature buffer holds {} values, expected {} rows of {}",
            data.features.len(),
            data.labels.len(),
            data.num_features
        ));
    }
    if let Some(bad) = data.labels.iter().find(|&&l| l as usize >= spec.num_classes) {
        return mismatch(format!(
            "label {bad} out of range for {} classes",
            spec.num_classes
        ));
    }
    Ok(())
}

/// Input and target tensors for one batch.
pub(crate) struct Batch {
    /// `[batch, features]`.
    pub(crate) inputs: Tensor<2>,
    /// `[batch, 1]` class indices.
    pub(crate) targets: Tensor<2, Int>,
    /// The labels, kept on the CPU for accuracy and loss bookkeeping.
    pub(crate) labels: Vec<u32>,
}

impl Batch {
    /// The examples `indices` of `data` (rows copied into one contiguous buffer).
    pub(crate) fn gather(data: &Dataset, indices: &[usize], device: &Device) -> Batch {
        let f = data.num_features;
        let mut features = Vec::with_capacity(indices.len() * f);
        for &i in indices {
            features.extend_from_slice(&data.features[i * f..(i + 1) * f]);
        }
        let labels: Vec<u32> = indices.iter().map(|&i| data.labels[i]).collect();
        Batch::from_parts(features, labels, f, device)
    }

    /// The contiguous examples `start..end` of `data`.
    pub(crate) fn range(data: &Dataset, start: usize, end: usize, device: &Device) -> Batch {
        let f = data.num_features;
        let features = data.features[start * f..end * f].to_vec();
        let labels = data.labels[start..end].to_vec();
        Batch::from_parts(features, labels, f, device)
    }

    fn from_parts(features: Vec<f32>, labels: Vec<u32>, f: usize, device: &Device) -> Batch {
        let n = labels.len();
        let inputs = Tensor::from_data(TensorData::new(features, [n, f]), device);
        let targets_data: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
        let targets = Tensor::from_data(TensorData::new(targets_data, [n, 1]), device);
        Batch {
            inputs,
            targets,
            labels,
        }
    }
}

/// Mean cross-entropy of `logits` `[batch, classes]` against `targets` `[batch, 1]`.
pub(crate) fn cross_entropy(logits: Tensor<2>, targets: Tensor<2, Int>) -> Tensor<1> {
    log_softmax(logits, 1).gather(1, targets).mean().neg()
}

/// Summed cross-entropy and number of correct predictions of a batch, computed in `f64` on the
/// CPU from the logits (`classes` per row). Predictions take the lowest index among ties.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    /// Sum of per-example cross-entropy.
    pub(crate) loss_sum: f64,
    /// Correct predictions.
    pub(crate) correct: usize,
    /// Examples counted.
    pub(crate) examples: usize,
}

impl Tally {
    /// Adds a batch of logits (row-major, `labels.len()` rows).
    pub(crate) fn add(&mut self, logits: &[f32], labels: &[u32]) {
        let classes = logits.len() / labels.len().max(1);
        if classes == 0 {
            return;
        }
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            let (mut best, mut max) = (0, f64::NEG_INFINITY);
            for (c, &v) in row.iter().enumerate() {
                if f64::from(v) > max {
                    best = c;
                    max = f64::from(v);
                }
            }
            let sum_exp: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            let target = row.get(label as usize).copied().map_or(f64::NAN, f64::from);
            self.loss_sum += max + sum_exp.ln() - target;
            self.correct += usize::from(best == label as usize);
            self.examples += 1;
        }
    }

    /// Mean loss (NaN when empty).
    pub(crate) fn mean_loss(&self) -> f64 {
        self.loss_sum / self.examples as f64
    }

    /// Fraction correct (NaN when empty).
    pub(crate) fn accuracy(&self) -> f64 {
        self.correct as f64 / self.examples as f64
    }
}
