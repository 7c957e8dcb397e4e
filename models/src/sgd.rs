//! Plain SGD (no momentum, no weight decay) applied directly to a model's parameters.
//!
//! Equivalent to burn's `SgdConfig::new().init()` optimiser without its per-parameter state
//! bookkeeping, which matters at the small batch sizes federated clients use.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Gradients, Tensor};

/// `net` (any burn module on an autodiff device) after one step `w <- w - lr * grad` on every
/// parameter that has a gradient in `grads`: the step a team's own trainer can use too.
pub fn sgd_step<M: Module>(net: M, mut grads: Gradients, lr: f64) -> M {
    net.map(&mut SgdMapper {
        grads: &mut grads,
        lr,
    })
}

struct SgdMapper<'a> {
    grads: &'a mut Gradients,
    lr: f64,
}

impl ModuleMapper for SgdMapper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|tensor| match tensor.grad_remove(self.grads) {
            Some(grad) => (tensor.inner() - grad.mul_scalar(self.lr))
                .autodiff()
                .require_grad(),
            None => tensor,
        })
    }
}
