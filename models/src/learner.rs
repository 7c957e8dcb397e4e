//! The model as training and gradients see it: the gradient of the mean cross-entropy on a
//! batch, and an SGD step. Burn's autodiff differentiates every burn module; the CNN
//! backpropagates through its own hand-written passes. [`crate::train`] and [`crate::grad`]
//! each have one loop for every model kind.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor};

use crate::batch::Batch;
use crate::classifier::Classifier;
use crate::cnn::{Buffers, CnnGrads, CnnModel};
use crate::device::{tensor_values, training_device};
use crate::error::{ModelError, Result};
use crate::loss::{Tally, cross_entropy_backward};
use crate::manifest::Manifest;
use crate::net::Net;
use crate::params::flatten;
use crate::sgd::{ParamTensors, StepTerms, Terms, step, step_flat};
use crate::spec::ModelSpec;

/// A model being trained, with the terms its steps add.
// Built once per call and moved, never copied in bulk (as `Net` itself): boxing would buy
// nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Learner<'a> {
    /// A burn module on the autodiff device.
    Burn {
        /// The module.
        net: Net,
        /// The autodiff device.
        device: Device,
        /// The step's terms, laid out as the module's tensors.
        terms: Option<StepTerms>,
    },
    /// The CNN's hand-written passes.
    Cnn {
        /// Its parameters.
        model: CnnModel,
        /// The step's terms, as flat vectors.
        terms: Terms<'a>,
        /// Working memory kept from step to step.
        buffers: Buffers,
    },
}

impl<'a> Learner<'a> {
    /// The model of `spec` at `params`, whose steps add `terms` (laid out like `params`: the
    /// callers check a correction's length; the anchor is `params` itself).
    pub(crate) fn new(spec: &ModelSpec, params: &[f32], terms: Terms<'a>) -> Result<Self> {
        let device = training_device();
        Ok(match Classifier::load(spec, params, &device)? {
            Classifier::Cnn(model) => Learner::Cnn {
                model,
                terms,
                buffers: Buffers::spare(),
            },
            Classifier::Burn { net, device } => {
                let terms = (!terms.is_plain()).then(|| {
                    let lens: Vec<usize> =
                        Manifest::of(&net).entries.iter().map(|e| e.len).collect();
                    let laid_out = |values: &[f32]| ParamTensors::new(values, lens.iter().copied());
                    StepTerms {
                        proximal: terms.proximal.map(|(mu, anchor)| (mu, laid_out(anchor))),
                        correction: terms.correction.map(laid_out),
                    }
                });
                Learner::Burn { net, device, terms }
            }
        })
    }

    /// The model after one SGD step on `batch` at learning rate `lr`; the batch's loss and
    /// accuracy are added to `tally`.
    pub(crate) fn step(self, batch: Batch, lr: f64, tally: &mut Tally) -> Result<Self> {
        Ok(match self {
            Learner::Burn { net, device, terms } => {
                let (inputs, labels) = batch.into_tensor(&device);
                let grads = cross_entropy_backward(net.forward(inputs), &labels, tally, &device)?;
                let net = step(net, grads, lr, terms.as_ref());
                Learner::Burn { net, device, terms }
            }
            Learner::Cnn {
                mut model,
                terms,
                mut buffers,
            } => {
                let grads = cnn_gradient(&model, &batch, tally, &mut buffers)?;
                step_flat(model.params_mut(), grads.parts(), lr, terms);
                grads.recycle(&mut buffers)?;
                Learner::Cnn {
                    model,
                    terms,
                    buffers,
                }
            }
        })
    }

    /// Adds `weight` times the gradient of the mean loss on `batch` into `sum` (laid out like
    /// the parameters) and the batch to `tally`.
    pub(crate) fn add_gradient(
        &mut self,
        batch: Batch,
        weight: f64,
        sum: &mut [f64],
        tally: &mut Tally,
    ) -> Result<()> {
        match self {
            Learner::Burn { net, device, .. } => {
                let (inputs, labels) = batch.into_tensor(device);
                let grads = cross_entropy_backward(net.forward(inputs), &labels, tally, device)?;
                let mut collector = GradCollector {
                    grads: &grads,
                    sum,
                    offset: 0,
                    weight,
                    error: None,
                };
                net.visit(&mut collector);
                collector.error.map_or(Ok(()), Err)
            }
            Learner::Cnn { model, buffers, .. } => {
                let grads = cnn_gradient(model, &batch, tally, buffers)?;
                for (s, g) in sum.iter_mut().zip(grads.parts().flatten()) {
                    *s += weight * f64::from(*g);
                }
                grads.recycle(buffers)?;
                Ok(())
            }
        }
    }

    /// The parameters, flattened in manifest order.
    pub(crate) fn into_params(self) -> Result<Vec<f32>> {
        match self {
            Learner::Burn { net, .. } => flatten(&net),
            Learner::Cnn { model, buffers, .. } => {
                buffers.put_back();
                model.into_params()
            }
        }
    }

    /// Done without the parameters: the working memory is kept for the next model call.
    pub(crate) fn finish(self) {
        if let Learner::Cnn { buffers, .. } = self {
            buffers.put_back();
        }
    }
}

/// The CNN's gradient of the mean loss on `batch`, the batch added to `tally`.
fn cnn_gradient(
    model: &CnnModel,
    batch: &Batch,
    tally: &mut Tally,
    buffers: &mut Buffers,
) -> Result<CnnGrads> {
    let (logits, tape) = model.forward(&batch.features, buffers)?;
    let logits_grad = tally.add_with_grad(&logits, &batch.labels);
    model.backward(tape, &batch.features, logits_grad, buffers)
}

/// Adds `weight * grad` of every float parameter into `sum`, in manifest order. A parameter
/// without a gradient (unused by the forward pass) contributes zero.
struct GradCollector<'a> {
    grads: &'a Gradients,
    sum: &'a mut [f64],
    offset: usize,
    weight: f64,
    error: Option<ModelError>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let len = tensor.shape().num_elements();
        let start = self.offset;
        self.offset += len;
        if self.error.is_some() {
            return;
        }
        let Some(grad) = tensor.grad(self.grads) else {
            return;
        };
        match tensor_values(grad) {
            Ok(values) => match self.sum.get_mut(start..start + len) {
                Some(slot) if values.len() == len => {
                    for (s, g) in slot.iter_mut().zip(values) {
                        *s += self.weight * f64::from(g);
                    }
                }
                _ => self.error = Some(ModelError::Backend("gradient shape mismatch".into())),
            },
            Err(err) => self.error = Some(err),
        }
    }
}
