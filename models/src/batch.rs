//! Dataset checks and the conversion of example batches into input tensors.

use burn::tensor::{Device, Tensor, TensorData};
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
    if let Some(bad) = data
        .labels
        .iter()
        .find(|&&l| l as usize >= spec.num_classes)
    {
        return mismatch(format!(
            "label {bad} out of range for {} classes",
            spec.num_classes
        ));
    }
    Ok(())
}

/// One batch of examples, copied out of a dataset: the features row-major, the labels on the
/// CPU (the loss is computed there, see [`crate::loss`]).
pub(crate) struct Batch {
    /// `len × width` values.
    pub(crate) features: Vec<f32>,
    /// Class labels, one per row.
    pub(crate) labels: Vec<u32>,
    /// Features per example.
    pub(crate) width: usize,
}

impl Batch {
    /// The examples `indices` of `data` (rows copied into one contiguous buffer).
    pub(crate) fn gather(data: &Dataset, indices: &[usize]) -> Batch {
        let f = data.num_features;
        let mut features = Vec::with_capacity(indices.len() * f);
        for &i in indices {
            features.extend_from_slice(&data.features[i * f..(i + 1) * f]);
        }
        let labels: Vec<u32> = indices.iter().map(|&i| data.labels[i]).collect();
        Batch {
            features,
            labels,
            width: f,
        }
    }

    /// The contiguous examples `start..end` of `data`.
    pub(crate) fn range(data: &Dataset, start: usize, end: usize) -> Batch {
        let f = data.num_features;
        Batch {
            features: data.features[start * f..end * f].to_vec(),
            labels: data.labels[start..end].to_vec(),
            width: f,
        }
    }

    /// The features as a `[len, width]` tensor on `device`, and the labels.
    pub(crate) fn into_tensor(self, device: &Device) -> (Tensor<2>, Vec<u32>) {
        let n = self.labels.len();
        let inputs = Tensor::from_data(TensorData::new(self.features, [n, self.width]), device);
        (inputs, self.labels)
    }
}
