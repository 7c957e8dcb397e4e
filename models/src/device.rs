//! The CPU devices models run on, and reading tensors back into plain vectors: the one place
//! that knows which burn backend the crate uses.

use burn::tensor::{Device, Tensor};

use crate::error::{ModelError, Result};

/// The plain CPU device (no autodiff), used for evaluation.
///
/// burn's flex backend: its matrix products (the `gemm` crate, spread over every core) ran the
/// 784-200-200-10 MLP about twice as fast as the ndarray backend (`benches/src/bin/compute.rs`);
/// the CNN's own passes ([`crate::cnn`]) use the same products. Products split
/// their output, never a sum, between threads, so results do not depend on the thread count.
pub(crate) fn inference_device() -> Device {
    Device::flex()
}

/// The CPU device with autodiff enabled, used for training and gradients.
pub(crate) fn training_device() -> Device {
    inference_device().autodiff()
}

/// Reads a float tensor back into a `Vec<f32>`.
pub(crate) fn tensor_values<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor
        .try_into_data()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Backend(format!("{e:?}")))
}
