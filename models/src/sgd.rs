//! Plain SGD (no momentum, no weight decay) applied directly to a model's parameters.
//!
//! Equivalent to burn's `SgdConfig::new().init()` optimiser without its per-parameter state
//! bookkeeping, which matters at the small batch sizes federated clients use.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Gradients, Tensor};

use crate::net::Net;

/// `net` after one step `w <- w - lr * grad` on every parameter that has a gradient.
pub(crate) fn sgd_step(net: Net, mut grads: Gradients, lr: f64) -> Net {
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
