//! Gradients of the mean cross-entropy at a parameter vector, flattened in manifest order:
//! exact over the whole dataset, or averaged over seeded mini-batches.

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;
use shoal_datasets::rng::rng_for;

use crate::batch::{Batch, check_data};
use crate::error::{ModelError, Result};
use crate::learner::Learner;
use crate::loss::Tally;
use crate::sgd::Terms;
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
///   of `batch_size` (at most [`ModelSpec::max_chunk`]), each chunk's mean-loss gradient
///   weighted by `chunk_len / n` and summed in `f64`, so the result does not depend on
///   `batch_size` beyond rounding.
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
        return Err(ModelError::InvalidConfig(
            "batch_size must be positive".into(),
        ));
    }
    check_data(spec, data)?;
    let n = data.labels.len();
    if n == 0 {
        return Err(ModelError::EmptyData);
    }
    let mut learner = Learner::new(spec, params, Terms::default())?;
    let mut acc = Accumulator {
        sum: vec![0.0; params.len()],
        loss: 0.0,
        examples: 0,
    };

    if batches == 0 {
        let chunk = batch_size.min(spec.max_chunk());
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            let batch = Batch::range(data, start, end);
            acc.add(&mut learner, batch, (end - start) as f64 / n as f64)?;
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
            let batch = Batch::gather(data, &order[pos..pos + take]);
            pos += take;
            acc.add(&mut learner, batch, 1.0 / batches as f64)?;
        }
    }

    learner.finish();
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
    fn add(&mut self, learner: &mut Learner<'_>, batch: Batch, weight: f64) -> Result<()> {
        let examples = batch.labels.len();
        let mut tally = Tally::default();
        learner.add_gradient(batch, weight, &mut self.sum, &mut tally)?;
        self.loss += weight * tally.mean_loss();
        self.examples += examples;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::evaluate;
    use crate::params::init_params;
    use crate::spec::ModelKind;
    use crate::test_util::{digits_head, digits_spec, mlp_spec};

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn full_gradient_does_not_depend_on_batch_size() {
        let spec = mlp_spec();
        let data = digits_head(500);
        let params = init_params(&spec, 1).unwrap();
        let (reference, report) = gradient(&spec, &params, &data, 0, 500, 0).unwrap();
        assert_eq!(report.examples, 500);
        let eval = evaluate(&spec, &params, &data).unwrap();
        assert!((report.loss - eval.loss).abs() < 1e-9);
        for batch_size in [1, 7, 64, 499, 10_000] {
            let (g, r) = gradient(&spec, &params, &data, 0, batch_size, 0).unwrap();
            assert!(max_diff(&g, &reference) < 1e-6, "batch size {batch_size}");
            assert!((r.loss - report.loss).abs() < 1e-9);
        }
    }

    #[test]
    fn full_gradient_matches_finite_differences() {
        let spec = digits_spec(ModelKind::LogReg);
        let data = digits_head(200);
        let params = init_params(&spec, 2).unwrap();
        let (g, _) = gradient(&spec, &params, &data, 0, 64, 0).unwrap();
        let eps = 1e-2f32;
        // Weights of several features and classes, and two biases.
        for i in [0, 5 * 10 + 3, 20 * 10 + 7, 36 * 10, 63 * 10 + 9, 640, 649] {
            let at = |delta: f32| {
                let mut p = params.clone();
                p[i] += delta;
                evaluate(&spec, &p, &data).unwrap().loss
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * f64::from(eps));
            let analytic = f64::from(g[i]);
            assert!(
                (numeric - analytic).abs() < 1e-4 + 1e-3 * analytic.abs(),
                "coordinate {i}: numeric {numeric}, analytic {analytic}"
            );
        }
    }

    #[test]
    fn shard_gradients_average_to_the_full_gradient() {
        let spec = mlp_spec();
        let data = digits_head(300);
        let params = init_params(&spec, 3).unwrap();
        let (full, _) = gradient(&spec, &params, &data, 0, 128, 0).unwrap();
        let mut combined = vec![0.0f64; full.len()];
        let bounds = [0, 17, 150, 300];
        for pair in bounds.windows(2) {
            let idx: Vec<usize> = (pair[0]..pair[1]).collect();
            let (g, _) = gradient(&spec, &params, &data.subset(&idx).unwrap(), 0, 50, 0).unwrap();
            let w = idx.len() as f64 / 300.0;
            for (c, x) in combined.iter_mut().zip(g) {
                *c += w * f64::from(x);
            }
        }
        let combined: Vec<f32> = combined.into_iter().map(|x| x as f32).collect();
        assert!(max_diff(&combined, &full) < 1e-6);
    }

    #[test]
    fn minibatch_gradients_are_seeded() {
        let spec = mlp_spec();
        let data = digits_head(100);
        let params = init_params(&spec, 4).unwrap();
        let (a, ra) = gradient(&spec, &params, &data, 3, 16, 9).unwrap();
        let (b, _) = gradient(&spec, &params, &data, 3, 16, 9).unwrap();
        let (c, _) = gradient(&spec, &params, &data, 3, 16, 10).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(ra.examples, 48);
        // Batches as large as the data are the whole data: the exact gradient.
        let (full, _) = gradient(&spec, &params, &data, 0, 100, 0).unwrap();
        let (big, rb) = gradient(&spec, &params, &data, 2, 1000, 1).unwrap();
        assert_eq!(rb.examples, 200);
        assert!(max_diff(&big, &full) < 1e-6);
        // Seven batches of 30 from 100 examples span three passes.
        assert_eq!(
            gradient(&spec, &params, &data, 7, 30, 1)
                .unwrap()
                .1
                .examples,
            210
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let spec = mlp_spec();
        let data = digits_head(10);
        let params = init_params(&spec, 4).unwrap();
        assert!(gradient(&spec, &params, &data, 0, 0, 0).is_err());
        assert!(gradient(&spec, &params[1..], &data, 0, 8, 0).is_err());
        assert!(gradient(&spec, &params, &data.subset(&[]).unwrap(), 1, 8, 0).is_err());
        let mut nan = params.clone();
        nan[100] = f32::NAN;
        assert!(gradient(&spec, &nan, &data, 0, 8, 0).is_err());
    }
}
