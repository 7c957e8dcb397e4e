//! Plain SGD (no momentum, no weight decay) applied directly to a model's parameters.
//!
//! Equivalent to burn's `SgdConfig::new().init()` optimiser without its per-parameter state
//! bookkeeping, which matters at the small batch sizes federated clients use.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Gradients, Tensor, TensorData};

use crate::device::inference_device;

/// `net` (any burn module on an autodiff device) after one step `w <- w - lr * grad` on every
/// parameter that has a gradient in `grads`: the step a team's own trainer can use too.
pub fn sgd_step<M: Module>(net: M, mut grads: Gradients, lr: f64) -> M {
    net.map(&mut StepMapper {
        grads: &mut grads,
        lr,
        anchor: None,
        next: 0,
    })
}

/// The anchor of FedProx's proximal term: the round's global parameters, one flat tensor per
/// parameter in the order burn visits them (the layout of [`crate::Manifest`]).
pub(crate) struct ProximalAnchor {
    mu: f64,
    tensors: Vec<Tensor<1>>,
}

impl ProximalAnchor {
    /// The anchor at `params` laid out by `lens` (each parameter's number of values), pulling
    /// with strength `mu`.
    pub(crate) fn new(mu: f64, params: &[f32], lens: impl Iterator<Item = usize>) -> Self {
        let device = inference_device();
        let mut offset = 0;
        let tensors = lens
            .map(|len| {
                let slice = params[offset..offset + len].to_vec();
                offset += len;
                Tensor::from_data(TensorData::new(slice, [len]), &device)
            })
            .collect();
        Self { mu, tensors }
    }
}

/// One FedProx step (Li et al. 2020): `w <- w - lr * (grad + mu * (w - anchor))`, the SGD step
/// on the local loss plus `mu / 2 * ||w - anchor||^2`.
pub(crate) fn proximal_step<M: Module>(
    net: M,
    mut grads: Gradients,
    lr: f64,
    anchor: &ProximalAnchor,
) -> M {
    net.map(&mut StepMapper {
        grads: &mut grads,
        lr,
        anchor: Some(anchor),
        next: 0,
    })
}

/// One step on every parameter, in the order burn visits them: plain SGD, or with the pull of
/// a proximal anchor.
struct StepMapper<'a> {
    grads: &'a mut Gradients,
    lr: f64,
    anchor: Option<&'a ProximalAnchor>,
    /// The index of the next parameter (its anchor tensor's).
    next: usize,
}

impl ModuleMapper for StepMapper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let pull = self
            .anchor
            .and_then(|a| Some((a.mu, a.tensors.get(self.next)?)));
        self.next += 1;
        param.map(|tensor| match tensor.grad_remove(self.grads) {
            Some(grad) => {
                let weights = tensor.inner();
                let step = match pull {
                    Some((mu, anchor)) => {
                        grad + (weights.clone() - anchor.clone().reshape(weights.dims()))
                            .mul_scalar(mu)
                    }
                    None => grad,
                };
                (weights - step.mul_scalar(self.lr))
                    .autodiff()
                    .require_grad()
            }
            None => tensor,
        })
    }
}
