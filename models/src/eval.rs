//! Evaluation: mean cross-entropy and accuracy of a parameter vector on a dataset.

use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;

use crate::batch::{Batch, check_data};
use crate::classifier::Classifier;
use crate::cnn::Buffers;
use crate::device::inference_device;
use crate::error::{ModelError, Result};
use crate::loss::Tally;
use crate::spec::ModelSpec;

/// Loss and accuracy of a model on a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean cross-entropy over all examples.
    pub loss: f64,
    /// Fraction of examples whose highest logit is the label (ties go to the lowest class).
    pub accuracy: f64,
    /// Number of examples evaluated.
    pub examples: usize,
}

/// Evaluates `params` on every example of `data` with the plain (non-autodiff) CPU backend,
/// in chunks of [`ModelSpec::max_chunk`] examples.
///
/// Errors on a parameter vector of the wrong length or with non-finite values, on a dataset
/// that does not fit `spec`, and on an empty dataset.
pub fn evaluate(spec: &ModelSpec, params: &[f32], data: &Dataset) -> Result<EvalReport> {
    Evaluator::new(spec, params)?.evaluate(data)
}

/// A model built once from a parameter vector, to be scored on many datasets: the clients of
/// one process that all score a round's global model share one, instead of each copying the
/// parameters into a model of its own. Shared between threads as it is (`Send + Sync`); its
/// results are [`evaluate`]'s, to the bit.
#[derive(Debug)]
pub struct Evaluator {
    spec: ModelSpec,
    model: Classifier,
}

impl Evaluator {
    /// Builds the model of `spec` with `params` loaded, after checking them (length and
    /// finiteness) against its manifest.
    pub fn new(spec: &ModelSpec, params: &[f32]) -> Result<Self> {
        let model = Classifier::load(spec, params, &inference_device())?;
        Ok(Self {
            spec: spec.clone(),
            model,
        })
    }

    /// The model it was built for.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Loss and accuracy on every example of `data`, as [`evaluate`] gives them.
    pub fn evaluate(&self, data: &Dataset) -> Result<EvalReport> {
        check_data(&self.spec, data)?;
        if data.labels.is_empty() {
            return Err(ModelError::EmptyData);
        }
        evaluate_model(&self.model, data, self.spec.max_chunk())
    }
}

/// The class `params` predicts for each example of `data` (highest logit; ties go to the
/// lowest class), as [`evaluate`] counts them.
pub fn predict(spec: &ModelSpec, params: &[f32], data: &Dataset) -> Result<Vec<usize>> {
    check_data(spec, data)?;
    let model = Classifier::load(spec, params, &inference_device())?;
    let width = spec.num_classes.max(1);
    let mut classes = Vec::with_capacity(data.labels.len());
    for_each_chunk(&model, data, spec.max_chunk(), |_, logits| {
        classes.extend(logits.chunks_exact(width).map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0
        }));
    })?;
    Ok(classes)
}

/// Evaluates a loaded model over `data`.
fn evaluate_model(model: &Classifier, data: &Dataset, chunk: usize) -> Result<EvalReport> {
    let mut tally = Tally::default();
    for_each_chunk(model, data, chunk, |labels, logits| {
        tally.add(logits, labels)
    })?;
    Ok(EvalReport {
        loss: tally.mean_loss(),
        accuracy: tally.accuracy(),
        examples: tally.examples,
    })
}

/// Runs `each(labels, logits)` on consecutive chunks of `data` of at most `chunk` examples,
/// in order.
fn for_each_chunk(
    model: &Classifier,
    data: &Dataset,
    chunk: usize,
    mut each: impl FnMut(&[u32], &[f32]),
) -> Result<()> {
    let n = data.labels.len();
    let mut buffers = Buffers::spare();
    let mut start = 0;
    while start < n {
        let end = (start + chunk.max(1)).min(n);
        let logits = model.logits(Batch::range(data, start, end), &mut buffers)?;
        each(&data.labels[start..end], &logits);
        start = end;
    }
    buffers.put_back();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::init_params;
    use crate::spec::{EVAL_BATCH_SIZE, ModelKind};
    use crate::test_util::{digits_head, digits_spec, mlp_spec};

    #[test]
    fn zero_parameters_give_uniform_predictions() {
        let spec = digits_spec(ModelKind::LogReg);
        let data = digits_head(1500);
        let report = evaluate(&spec, &[0.0; 650], &data).unwrap();
        assert_eq!(report.examples, 1500);
        assert!((report.loss - 10f64.ln()).abs() < 1e-9, "{report:?}");
        // All logits tie, so every prediction is class 0.
        let zeros = data.labels.iter().filter(|&&l| l == 0).count();
        assert_eq!(report.accuracy, zeros as f64 / 1500.0);
    }

    #[test]
    fn batching_does_not_change_the_result() {
        let spec = mlp_spec();
        let data = digits_head(EVAL_BATCH_SIZE + 100);
        let params = init_params(&spec, 3).unwrap();
        let whole = evaluate(&spec, &params, &data).unwrap();
        let head = evaluate(&spec, &params, &digits_head(EVAL_BATCH_SIZE)).unwrap();
        let idx: Vec<usize> = (EVAL_BATCH_SIZE..EVAL_BATCH_SIZE + 100).collect();
        let tail = evaluate(&spec, &params, &data.subset(&idx).unwrap()).unwrap();
        let n = whole.examples as f64;
        let combined = (head.loss * EVAL_BATCH_SIZE as f64 + tail.loss * 100.0) / n;
        assert!((whole.loss - combined).abs() < 1e-12);
    }

    #[test]
    fn an_evaluator_shared_by_threads_gives_what_evaluate_gives() {
        fn shared<T: Send + Sync>(_: &T) {}
        let spec = mlp_spec();
        let params = init_params(&spec, 9).unwrap();
        let evaluator = Evaluator::new(&spec, &params).unwrap();
        shared(&evaluator);
        let parts: Vec<Dataset> = (0..4)
            .map(|i| {
                let idx: Vec<usize> = (i * 30..i * 30 + 30).collect();
                digits_head(120).subset(&idx).unwrap()
            })
            .collect();
        let together: Vec<EvalReport> = std::thread::scope(|s| {
            let threads: Vec<_> = parts
                .iter()
                .map(|part| s.spawn(|| evaluator.evaluate(part).unwrap()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for (part, report) in parts.iter().zip(together) {
            assert_eq!(report, evaluate(&spec, &params, part).unwrap());
        }
        assert!(
            evaluator
                .evaluate(&digits_head(3).subset(&[]).unwrap())
                .is_err()
        );
        assert!(Evaluator::new(&spec, &params[1..]).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let spec = mlp_spec();
        let data = digits_head(10);
        let mut params = init_params(&spec, 3).unwrap();
        assert!(evaluate(&spec, &params[..10], &data).is_err());
        assert!(evaluate(&spec, &params, &data.subset(&[]).unwrap()).is_err());
        params[0] = f32::NAN;
        assert!(matches!(
            evaluate(&spec, &params, &data),
            Err(ModelError::NonFiniteParams { index: 0 })
        ));
    }
}
