//! The in-memory dataset type every loader returns, and the train/test pair.
//!
//! Storage is deliberately plain: one row-major `Vec<f32>` of features and one `Vec<u32>` of
//! labels, so models, partitioners and the wire format can slice it without conversions.

use crate::error::{DatasetError, Result};

/// A labelled classification dataset stored row-major.
///
/// The fields are public plain data; [`Dataset::new`] is the checked way to build one and
/// every loader in this crate goes through it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// All feature values, example after example: `len() * num_features` values.
    pub features: Vec<f32>,
    /// One class label per example, each below `num_classes`.
    pub labels: Vec<u32>,
    /// Values per example (64 for digits, 784 for Fashion-MNIST).
    pub num_features: usize,
    /// Number of classes a model must output; labels range over `0..num_classes`.
    pub num_classes: usize,
    /// `(rows, cols)` when each example is an image, so convolutional models can reshape it.
    pub image_shape: Option<(usize, usize)>,
}

/// A training set and a held-out test set with the same features and classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Examples used for training (and partitioned among clients).
    pub train: Dataset,
    /// Held-out examples for evaluation.
    pub test: Dataset,
}

impl Dataset {
    /// Builds a dataset after checking that it is internally consistent.
    ///
    /// Fails when `num_features` or `num_classes` is zero, when `features` does not hold
    /// exactly `labels.len() * num_features` values, when a label is not below `num_classes`,
    /// when a feature is NaN or infinite, or when `image_shape` does not cover `num_features`.
    pub fn new(
        features: Vec<f32>,
        labels: Vec<u32>,
        num_features: usize,
        num_classes: usize,
        image_shape: Option<(usize, usize)>,
    ) -> Result<Dataset> {
        if num_features == 0 {
            return Err(invalid("a dataset needs at least one feature"));
        }
        if num_classes == 0 {
            return Err(invalid("a dataset needs at least one class"));
        }
        let expected = labels.len().checked_mul(num_features);
        if expected != Some(features.len()) {
            return Err(invalid(format!(
                "{} feature values do not fit {} examples of {num_features} features",
                features.len(),
                labels.len()
            )));
        }
        if let Some((i, label)) = labels
            .iter()
            .enumerate()
            .find(|(_, label)| **label as usize >= num_classes)
        {
            return Err(invalid(format!(
                "label {label} of example {i} is not below num_classes {num_classes}"
            )));
        }
        if let Some(pos) = features.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "feature {} of example {} is not finite ({})",
                pos % num_features,
                pos / num_features,
                features[pos]
            )));
        }
        if let Some((rows, cols)) = image_shape
            && rows.checked_mul(cols) != Some(num_features)
        {
            return Err(invalid(format!(
                "image shape {rows}x{cols} does not match {num_features} features"
            )));
        }
        Ok(Dataset {
            features,
            labels,
            num_features,
            num_classes,
            image_shape,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The features of example `i`.
    ///
    /// # Panics
    ///
    /// When `i >= self.len()`, like slice indexing; callers iterate over `0..len()`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.num_features..(i + 1) * self.num_features]
    }

    /// A new dataset holding copies of the given rows, in the given order, with the same
    /// metadata. Indices may repeat (useful for bootstrap samples).
    ///
    /// Fails, without copying anything, when an index is out of range: indices usually come
    /// from a partition computed elsewhere, and a mismatch there should be an error, not a
    /// crash.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(invalid(format!(
                "index {bad} is out of range for a dataset of {} examples",
                self.len()
            )));
        }
        let mut features = Vec::with_capacity(indices.len() * self.num_features);
        for &i in indices {
            features.extend_from_slice(self.row(i));
        }
        Ok(Dataset {
            features,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            num_features: self.num_features,
            num_classes: self.num_classes,
            image_shape: self.image_shape,
        })
    }

    /// How many examples each class has, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &label in &self.labels {
            // Labels are checked by `new`, but the fields are public: skip rather than panic.
            if let Some(count) = counts.get_mut(label as usize) {
                *count += 1;
            }
        }
        counts
    }
}

fn invalid(message: impl Into<String>) -> DatasetError {
    DatasetError::Invalid(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        Dataset::new(
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            vec![0, 1, 2],
            2,
            3,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rows_and_subset_copy_the_right_values() {
        let data = tiny();
        assert_eq!(data.len(), 3);
        assert!(!data.is_empty());
        assert_eq!(data.row(1), &[2.0, 3.0]);
        let sub = data.subset(&[2, 0, 2]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub.features, vec![4.0, 5.0, 0.0, 1.0, 4.0, 5.0]);
        assert_eq!(sub.labels, vec![2, 0, 2]);
        assert_eq!(sub.num_classes, 3);
        assert_eq!(data.class_counts(), vec![1, 1, 1]);
    }

    #[test]
    fn subset_out_of_range_is_an_error() {
        let err = tiny().subset(&[0, 3]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("index 3")));
    }

    #[test]
    fn new_rejects_inconsistent_data() {
        let cases = [
            Dataset::new(vec![0.0; 5], vec![0, 1, 2], 2, 3, None),
            Dataset::new(vec![0.0; 6], vec![0, 1, 3], 2, 3, None),
            Dataset::new(vec![0.0, f32::NAN, 0.0, 0.0], vec![0, 1], 2, 3, None),
            Dataset::new(vec![0.0, f32::INFINITY], vec![0], 2, 3, None),
            Dataset::new(vec![0.0; 6], vec![0, 1, 2], 2, 3, Some((3, 3))),
            Dataset::new(vec![], vec![], 0, 3, None),
            Dataset::new(vec![], vec![], 2, 0, None),
        ];
        for (i, case) in cases.into_iter().enumerate() {
            assert!(case.is_err(), "case {i} was accepted");
        }
    }
}
