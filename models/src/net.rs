//! The burn modules behind each [`ModelKind`].
//!
//! Models are built with an all-zero initializer and a lazy parameter state: the real values
//! always come from a flat parameter vector (see [`crate::params`]), so building a model for a
//! manifest or before a load allocates nothing it throws away.

use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::spec::{CNN_IMAGE_SIDE, ModelKind, ModelSpec};

/// A classifier of any supported kind.
///
/// The enum layer is invisible in parameter names: [`crate::manifest`] skips enum variants when
/// building paths, so names read `layers.0.weight` or `conv1.weight`.
// The CNN variant is larger, but a `Net` is built once per call and only moved, never copied
// in bulk, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub(crate) enum Net {
    /// Logistic regression and MLPs: a stack of linear layers.
    Dense(DenseNet),
    /// The McMahan et al. 2017 CNN.
    Cnn(CnnNet),
}

impl Net {
    /// Builds the (lazily initialised, all-zero) model described by `spec` on `device`.
    pub(crate) fn build(spec: &ModelSpec, device: &Device) -> Result<Net> {
        spec.validate()?;
        Ok(match spec.kind {
            ModelKind::LogReg | ModelKind::Mlp { .. } => {
                Net::Dense(DenseNet::new(&spec.dense_widths(), device))
            }
            ModelKind::Cnn => Net::Cnn(CnnNet::new(spec.num_classes, device)),
            ModelKind::External => {
                return Err(crate::ModelError::InvalidSpec(crate::spec::EXTERNAL.into()));
            }
        })
    }

    /// Class logits `[batch, classes]` for a batch of flat examples `[batch, features]`.
    pub(crate) fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        match self {
            Net::Dense(net) => net.forward(input),
            Net::Cnn(net) => net.forward(input),
        }
    }
}

/// Linear layers with ReLU between them (none after the last).
#[derive(Module, Debug)]
pub(crate) struct DenseNet {
    /// The layers, input to output.
    layers: Vec<Linear>,
}

impl DenseNet {
    fn new(widths: &[usize], device: &Device) -> Self {
        let layers = widths
            .windows(2)
            .map(|pair| {
                LinearConfig::new(pair[0], pair[1])
                    .with_initializer(Initializer::Zeros)
                    .init(device)
            })
            .collect();
        DenseNet { layers }
    }

    fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        let mut x = input;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

/// conv5x5(32) relu pool2, conv5x5(64) relu pool2, fc 512 relu, fc classes. This module
/// gives the CNN its parameter layout (manifest, model files); training and evaluation run
/// [`crate::cnn`]'s hand-written passes over the same parameters, which its tests check
/// against this module's forward pass and burn's autodiff.
#[derive(Module, Debug)]
pub(crate) struct CnnNet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

impl CnnNet {
    fn new(num_classes: usize, device: &Device) -> Self {
        let conv = |channels: [usize; 2]| {
            Conv2dConfig::new(channels, [5, 5])
                .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        let linear = |d_in: usize, d_out: usize| {
            LinearConfig::new(d_in, d_out)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        let pooled = CNN_IMAGE_SIDE / 4;
        CnnNet {
            conv1: conv([1, 32]),
            conv2: conv([32, 64]),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: linear(64 * pooled * pooled, 512),
            fc2: linear(512, num_classes),
        }
    }

    fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let [batch, _] = input.dims();
        let x = input.reshape([batch, 1, CNN_IMAGE_SIDE, CNN_IMAGE_SIDE]);
        let x = self.pool.forward(relu(self.conv1.forward(x)));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let x: Tensor<2> = x.flatten(1, 3);
        let x = relu(self.fc1.forward(x));
        self.fc2.forward(x)
    }
}
