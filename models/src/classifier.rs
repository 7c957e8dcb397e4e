//! A model loaded with its parameters, ready to compute logits: burn's module for every
//! kind, or the CNN's hand-written passes ([`crate::cnn`]), which train about twice as fast
//! on the CPU. Evaluation, training and gradients all go through it, so each model kind has one
//! forward pass wherever it runs.

use burn::tensor::{Device, Tensor};

use crate::batch::Batch;
use crate::cnn::{Buffers, CnnModel};
use crate::device::tensor_values;
use crate::error::Result;
use crate::net::Net;
use crate::params::build_loaded;
use crate::spec::{ModelKind, ModelSpec};

/// A classifier with its parameters loaded.
#[derive(Debug)]
// Built once per call and moved, never copied in bulk (as `Net` itself): boxing would buy
// nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Classifier {
    /// A burn module on `device` (plain for inference, autodiff for training).
    Burn {
        /// The module.
        net: Net,
        /// Where its tensors live; batches are created there.
        device: Device,
    },
    /// The CNN as plain vectors and matrix products.
    Cnn(CnnModel),
}

impl Classifier {
    /// The model of `spec` with `params` loaded (checked first: length, finiteness), on
    /// `device` when it is a burn module.
    pub(crate) fn load(spec: &ModelSpec, params: &[f32], device: &Device) -> Result<Self> {
        if spec.kind == ModelKind::Cnn {
            spec.manifest()?.check_params(params)?;
            return Ok(Classifier::Cnn(CnnModel::new(
                spec.num_classes,
                params.to_vec(),
            )));
        }
        Ok(Classifier::Burn {
            net: build_loaded(spec, params, device)?,
            device: device.clone(),
        })
    }

    /// Class logits of a batch, row-major `[batch, classes]`; the CNN's working memory comes
    /// from `buffers` and goes back there.
    pub(crate) fn logits(&self, batch: Batch, buffers: &mut Buffers) -> Result<Vec<f32>> {
        match self {
            Classifier::Burn { net, device } => {
                let (inputs, _) = batch.into_tensor(device);
                let logits: Tensor<2> = net.forward(inputs);
                tensor_values(logits)
            }
            Classifier::Cnn(model) => model.logits(&batch.features, buffers),
        }
    }
}
