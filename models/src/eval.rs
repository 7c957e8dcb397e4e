//! Evaluation: mean cross-entropy and accuracy of a parameter vector on a dataset.

use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;

use crate::batch::{Batch, Tally, check_data};
use crate::error::{ModelError, Result};
use crate::net::{Net, inference_device};
use crate::params::{build_loaded, tensor_values};
use crate::spec::ModelSpec;

/// Examples per forward pass during evaluation.
pub const EVAL_BATCH_SIZE: usize = 1024;

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
/// in batches of [`EVAL_BATCH_SIZE`].
///
/// Errors on a parameter vector of the wrong length or with non-finite values, on a dataset
/// that does not fit `spec`, and on an empty dataset.
pub fn evaluate(spec: &ModelSpec, params: &[f32], data: &Dataset) -> Result<EvalReport> {
    check_data(spec, data)?;
    if data.labels.is_empty() {
        return Err(ModelError::EmptyData);
    }
    let device = inference_device();
    let net = build_loaded(spec, params, &device)?;
    evaluate_net(&net, data)
}

/// Evaluates a model loaded on the inference device over `data`.
pub(crate) fn evaluate_net(net: &Net, data: &Dataset) -> Result<EvalReport> {
    let device = inference_device();
    let n = data.labels.len();
    let mut tally = Tally::default();
    let mut start = 0;
    while start < n {
        let end = (start + EVAL_BATCH_SIZE).min(n);
        let batch = Batch::range(data, start, end, &device);
        let logits = tensor_values(net.forward(batch.inputs))?;
        tally.add(&logits, &batch.labels);
        start = end;
    }
    Ok(EvalReport {
        loss: tally.mean_loss(),
        accuracy: tally.accuracy(),
        examples: tally.examples,
    })
}
