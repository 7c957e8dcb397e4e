//! The crate's error type: every way a model call can be refused or fail.
//!
//! Inputs that peers or data control (parameter vectors, datasets, configurations) are
//! validated up front and reported here rather than reaching a panic inside burn.

use thiserror::Error;

/// Everything that can go wrong in `shoal-models`.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A model kind string could not be parsed (`"logreg"`, `"mlp"`, `"mlp:256,128"`, `"cnn"`).
    #[error("invalid model kind {input:?}: {reason}")]
    InvalidKind {
        /// The text that was given.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// The model specification is inconsistent (sizes, image shape, too many parameters).
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    /// A flat parameter vector has the wrong number of values for the model.
    #[error("parameter vector has {got} values, the model needs {expected}")]
    ParamLength {
        /// Number of parameters the manifest describes.
        expected: usize,
        /// Number of values supplied.
        got: usize,
    },
    /// A flat parameter vector holds a NaN or an infinity.
    #[error("parameter {index} is not finite")]
    NonFiniteParams {
        /// Index of the first offending value.
        index: usize,
    },
    /// The dataset does not fit the model (feature count, labels, shape).
    #[error("dataset does not match the model: {0}")]
    DataMismatch(String),
    /// The dataset has no examples where some are required.
    #[error("dataset is empty")]
    EmptyData,
    /// A training, evaluation or gradient configuration is unusable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Training produced non-finite parameters (learning rate too high, bad data).
    #[error("training diverged: non-finite parameters after epoch {epoch}")]
    Diverged {
        /// Zero-based epoch after which the parameters were found non-finite.
        epoch: usize,
    },
    /// The tensor backend reported an error (reading tensor data back).
    #[error("tensor backend error: {0}")]
    Backend(String),
    /// A model file (safetensors) is malformed or does not fit the model.
    #[error("model file: {0}")]
    ModelFile(String),
    /// Invalid input to a k-means routine.
    #[error("invalid k-means input: {0}")]
    KMeans(String),
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, ModelError>;
