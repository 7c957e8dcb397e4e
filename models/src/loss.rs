//! Cross-entropy: the loss and accuracy bookkeeping, and its backward pass.
//!
//! Logits are read back to the CPU after every forward pass anyway (the reports need the loss
//! and accuracy), so the loss is computed there in `f64`, together with its gradient with
//! respect to the logits, `G = (softmax(z) - onehot(y)) / batch`. Burn's autodiff then
//! backpropagates `G` through the model from the surrogate scalar `sum(z * G)`, whose
//! gradient with respect to `z` is exactly `G`. The parameter gradients are those of the mean
//! cross-entropy, and the autodiff graph of log-softmax, gather and mean is never built (about
//! a tenth of an MLP step at batch size 32).

use burn::tensor::{Device, Gradients, Tensor, TensorData};

use crate::device::tensor_values;
use crate::error::Result;

/// Running totals of cross-entropy and correct predictions.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    /// Sum of per-example cross-entropy.
    pub(crate) loss_sum: f64,
    /// Correct predictions (highest logit, ties to the lowest class).
    pub(crate) correct: usize,
    /// Examples counted.
    pub(crate) examples: usize,
}

impl Tally {
    /// Adds a batch of logits (row-major, one row per label).
    pub(crate) fn add(&mut self, logits: &[f32], labels: &[u32]) {
        self.add_rows(logits, labels, |_, _| {});
    }

    /// Adds a batch and returns `d(mean loss of the batch) / d(logits)`, row-major.
    pub(crate) fn add_with_grad(&mut self, logits: &[f32], labels: &[u32]) -> Vec<f32> {
        let mut grad = vec![0.0f32; logits.len()];
        let classes = logits.len() / labels.len().max(1);
        let scale = 1.0 / labels.len() as f64;
        self.add_rows(logits, labels, |row, probs| {
            let out = &mut grad[row * classes..(row + 1) * classes];
            for (c, (g, p)) in out.iter_mut().zip(probs).enumerate() {
                let target = if c == labels[row] as usize { 1.0 } else { 0.0 };
                *g = ((p - target) * scale) as f32;
            }
        });
        grad
    }

    /// Accumulates loss and accuracy row by row and hands each row's softmax to `on_row`.
    fn add_rows(&mut self, logits: &[f32], labels: &[u32], mut on_row: impl FnMut(usize, &[f64])) {
        let classes = logits.len() / labels.len().max(1);
        if classes == 0 {
            return;
        }
        let mut probs = vec![0.0f64; classes];
        for (i, (row, &label)) in logits.chunks_exact(classes).zip(labels).enumerate() {
            let (mut best, mut max) = (0, f64::NEG_INFINITY);
            for (c, &v) in row.iter().enumerate() {
                if f64::from(v) > max {
                    best = c;
                    max = f64::from(v);
                }
            }
            let mut sum = 0.0;
            for (p, &v) in probs.iter_mut().zip(row) {
                *p = (f64::from(v) - max).exp();
                sum += *p;
            }
            probs.iter_mut().for_each(|p| *p /= sum);
            let target = row.get(label as usize).map_or(f64::NAN, |&v| f64::from(v));
            self.loss_sum += max + sum.ln() - target;
            self.correct += usize::from(best == label as usize);
            self.examples += 1;
            on_row(i, &probs);
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

/// Backpropagates the mean cross-entropy of `logits` (an autodiff tensor `[batch, classes]`)
/// against `labels`, adding the batch to `tally`.
pub(crate) fn cross_entropy_backward(
    logits: Tensor<2>,
    labels: &[u32],
    tally: &mut Tally,
    device: &Device,
) -> Result<Gradients> {
    let dims = logits.dims();
    let values = tensor_values(logits.clone().inner())?;
    let grad = tally.add_with_grad(&values, labels);
    let grad: Tensor<2> = Tensor::from_data(TensorData::new(grad, dims), device);
    Ok((logits * grad).sum().backward())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Int;
    use burn::tensor::activation::log_softmax;

    use crate::batch::Batch;
    use crate::device::training_device;
    use crate::params::{build_loaded, init_params};
    use crate::test_util::{digits_head, mlp_spec, param_grads};

    #[test]
    fn tally_matches_a_hand_computation() {
        let mut tally = Tally::default();
        // Row 0: uniform logits over 2 classes, ties predict class 0. Row 1: confident, wrong.
        tally.add(&[0.0, 0.0, 5.0, 0.0], &[1, 1]);
        let expected = 2f64.ln() + (5.0 + (1.0 + (-5f64).exp()).ln());
        assert!((tally.loss_sum - expected).abs() < 1e-12);
        assert_eq!(tally.correct, 0);
        assert_eq!(tally.examples, 2);
        let grad = Tally::default().add_with_grad(&[0.0, 0.0], &[1]);
        assert_eq!(grad, vec![0.5, -0.5]);
    }

    #[test]
    fn analytic_backward_matches_burns_log_softmax_cross_entropy() {
        let spec = mlp_spec();
        let data = digits_head(40);
        let params = init_params(&spec, 2).unwrap();
        let device = training_device();
        let net = build_loaded(&spec, &params, &device).unwrap();
        let idx: Vec<usize> = (0..40).collect();

        let (inputs, labels) = Batch::gather(&data, &idx).into_tensor(&device);
        let ours =
            cross_entropy_backward(net.forward(inputs), &labels, &mut Tally::default(), &device)
                .unwrap();

        let (inputs, labels) = Batch::gather(&data, &idx).into_tensor(&device);
        let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
        let targets: Tensor<2, Int> = Tensor::from_data(TensorData::new(targets, [40, 1]), &device);
        let loss = log_softmax(net.forward(inputs), 1)
            .gather(1, targets)
            .mean()
            .neg();
        let burns = loss.backward();

        let (a, b) = (
            param_grads(&net, &ours).concat(),
            param_grads(&net, &burns).concat(),
        );
        assert_eq!(a.len(), params.len());
        let max_diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(max_diff < 1e-6, "max difference {max_diff}");
    }
}
