//! Shoal's models: the burn classifiers every client trains, the flat parameter layout the
//! federation exchanges, and the pure-Rust k-means steps used for federated clustering.
//!
//! Everything crosses crate boundaries as plain data: a [`ModelSpec`] says which model,
//! a `Vec<f32>` laid out by its [`Manifest`] holds the parameters, and a
//! [`shoal_datasets::Dataset`] holds the examples. The functions here build the model once
//! per call, run synchronously on the CPU (burn's flex backend; the CNN through its own
//! hand-written passes over the backend's matrix product) and return plain data again;
//! callers on an async runtime should run them on a blocking thread.
//!
//! * [`init_params`]: a seeded, bit-reproducible starting point.
//! * [`train_local`]: plain SGD epochs on local data ([`TrainConfig`], [`TrainReport`]);
//!   [`train_local_corrected`] the same with SCAFFOLD's drift correction.
//! * [`evaluate`]: loss and accuracy ([`EvalReport`]), or an [`Evaluator`] built once and
//!   shared; [`predict`]: the predicted classes.
//! * [`to_safetensors`] / [`from_safetensors`]: the model as a file others can load.
//! * [`gradient`]: exact or mini-batch gradients ([`GradReport`]).
//! * [`kmeans`]: Lloyd statistics, seeding, local k-means and clustering scores.

mod batch;
mod classifier;
mod cnn;
mod device;
mod error;
mod eval;
mod export;
mod grad;
pub mod kmeans;
mod learner;
mod loss;
mod manifest;
mod net;
mod params;
mod peak;
mod sgd;
mod spec;
mod train;

#[cfg(test)]
mod test_util;

pub use error::{ModelError, Result};
pub use eval::{EvalReport, Evaluator, evaluate, predict};
pub use export::{from_safetensors, read_safetensors, safetensors_metadata, to_safetensors};
pub use grad::{GradReport, gradient};
pub use manifest::{Manifest, ParamEntry, max_abs_bits, module_layout};
pub use params::{init_params, load_module, module_params};
pub use peak::gemm_gflops;
pub use sgd::sgd_step;
pub use spec::{
    CNN_IMAGE_SIDE, DEFAULT_MLP_HIDDEN, EVAL_BATCH_SIZE, MAX_PARAMS, ModelKind, ModelSpec,
};
pub use train::{TrainConfig, TrainReport, train_local, train_local_corrected};
