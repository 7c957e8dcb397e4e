//! The CPU devices models run on, and reading tensors back into plain vectors: the one place
//! that knows which burn backend the crate uses.

use burn::tensor::{Device, Tensor};

use crate::error::{ModelError, Result};

/// The plain CPU device (ndarray backend, no autodiff), used for evaluation.
pub(crate) fn inference_device() -> Device {
    // burn 0.22 deprecates the ndarray backend in favour of flex; the workspace pins ndarray.
    #[allow(deprecated)]
    Device::ndarray()
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
