//! Plain SGD (no momentum, no weight decay) applied directly to a model's parameters.
//!
//! Equivalent to burn's `SgdConfig::new().init()` optimiser without its per-parameter state
//! bookkeeping, which matters at the small batch sizes federated clients use.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Gradients, Tensor, TensorData};

use crate::device::inference_device;

/// `net` (any burn module on an autodiff device) after one step `w <- w - lr * grad` on every
/// parameter that has a gradient in `grads`: the step a team's own trainer can use too.
pub fn sgd_step<M: Module>(net: M, grads: Gradients, lr: f64) -> M {
    step(net, grads, lr, None)
}

/// Values laid out like a model's parameters: one flat tensor per parameter, in the order burn
/// visits them (the layout of [`crate::Manifest`]).
pub(crate) struct ParamTensors(Vec<Tensor<1>>);

impl ParamTensors {
    /// `values` cut into tensors of `lens` values each (each parameter's number of values).
    pub(crate) fn new(values: &[f32], lens: impl Iterator<Item = usize>) -> Self {
        let device = inference_device();
        let mut offset = 0;
        Self(
            lens.map(|len| {
                let slice = values[offset..offset + len].to_vec();
                offset += len;
                Tensor::from_data(TensorData::new(slice, [len]), &device)
            })
            .collect(),
        )
    }
}

/// What a local step adds to the loss's gradient, beyond plain SGD, as flat vectors laid
/// out like the parameters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Terms<'a> {
    /// FedProx's strength μ and the parameters training started from.
    pub(crate) proximal: Option<(f64, &'a [f32])>,
    /// SCAFFOLD's drift correction.
    pub(crate) correction: Option<&'a [f32]>,
}

impl Terms<'_> {
    /// True when a step is plain SGD.
    pub(crate) fn is_plain(&self) -> bool {
        self.proximal.is_none() && self.correction.is_none()
    }
}

/// One step `w <- w - lr * (grad + terms)` on flat parameters, given the gradient in
/// manifest order as consecutive pieces; the same arithmetic, in the same `f32` order, as
/// [`step`] does on tensors.
pub(crate) fn step_flat<'g>(
    params: &mut [f32],
    grads: impl Iterator<Item = &'g [f32]>,
    lr: f64,
    terms: Terms<'_>,
) {
    let lr = lr as f32;
    let proximal = terms.proximal.map(|(mu, anchor)| (mu as f32, anchor));
    let mut offset = 0;
    // Parameter by parameter, so each loop runs over plain slices the compiler vectorises.
    for grad in grads {
        let Some(weights) = params.get_mut(offset..offset + grad.len()) else {
            return;
        };
        let range = offset..offset + grad.len();
        offset += grad.len();
        match (proximal, terms.correction) {
            (None, None) => {
                for (w, &g) in weights.iter_mut().zip(grad) {
                    *w -= g * lr;
                }
            }
            (proximal, correction) => {
                for (i, (w, &g)) in range.zip(weights.iter_mut().zip(grad)) {
                    let mut step = g;
                    if let Some((mu, anchor)) = proximal {
                        step += (*w - anchor[i]) * mu;
                    }
                    if let Some(correction) = correction {
                        step += correction[i];
                    }
                    *w -= step * lr;
                }
            }
        }
    }
}

/// [`Terms`] laid out as one tensor per parameter, for steps on burn modules.
#[derive(Default)]
pub(crate) struct StepTerms {
    /// FedProx (Li et al. 2020): strength μ and the round's global parameters; the step adds
    /// `mu * (w - anchor)`, the gradient of `mu / 2 * ||w - anchor||^2`.
    pub(crate) proximal: Option<(f64, ParamTensors)>,
    /// SCAFFOLD (Karimireddy et al. 2020): the drift correction `c - c_i` (server variate
    /// minus the client's), added to every gradient.
    pub(crate) correction: Option<ParamTensors>,
}

/// One step `w <- w - lr * (grad + terms)` on every parameter with a gradient in `grads`
/// (plain SGD without terms).
pub(crate) fn step<M: Module>(
    net: M,
    mut grads: Gradients,
    lr: f64,
    terms: Option<&StepTerms>,
) -> M {
    net.map(&mut StepMapper {
        grads: &mut grads,
        lr,
        terms,
        next: 0,
    })
}

/// One step on every parameter, in the order burn visits them: plain SGD, or with the terms
/// of FedProx or SCAFFOLD.
struct StepMapper<'a> {
    grads: &'a mut Gradients,
    lr: f64,
    terms: Option<&'a StepTerms>,
    /// The index of the next parameter (its tensor in the terms).
    next: usize,
}

impl ModuleMapper for StepMapper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let index = self.next;
        self.next += 1;
        let terms = self.terms;
        param.map(|tensor| match tensor.grad_remove(self.grads) {
            Some(grad) => {
                let weights = tensor.inner();
                let dims = weights.dims();
                let mut step = grad;
                if let Some((mu, anchor)) = terms.and_then(|t| t.proximal.as_ref())
                    && let Some(anchor) = anchor.0.get(index)
                {
                    step = step + (weights.clone() - anchor.clone().reshape(dims)).mul_scalar(*mu);
                }
                if let Some(correction) = terms
                    .and_then(|t| t.correction.as_ref())
                    .and_then(|c| c.0.get(index))
                {
                    step = step + correction.clone().reshape(dims);
                }
                (weights - step.mul_scalar(self.lr))
                    .autodiff()
                    .require_grad()
            }
            None => tensor,
        })
    }
}
