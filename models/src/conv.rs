//! Convolution as im2col and one matrix product.
//!
//! burn's ndarray backend convolves with direct loops, and its backward pass (a transposed
//! convolution) runs at well under 1 GFLOP/s: the CNN trained at about a dozen examples per
//! second. Writing the stride-1 "same" convolution the CNN needs as shifted slices of the
//! padded input stacked into patch columns, multiplied by the reshaped kernel, keeps the
//! parameters in burn's `Conv2d` layout while both passes run through the GEMM kernels,
//! more than an order of magnitude faster.

use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::ops::PadMode;

/// Applies `conv` (stride 1, no dilation, one group, odd square kernel) to `x`
/// `[batch, in_channels, h, w]` with zero padding that preserves `h` and `w`.
///
/// Equals `conv.forward(x)` for a `Conv2d` built with padding `k / 2` on every side.
pub(crate) fn conv2d_same(x: Tensor<4>, conv: &Conv2d) -> Tensor<4> {
    let weight = conv.weight.val();
    let [out_channels, channels, kh, kw] = weight.dims();
    let [batch, _, h, w] = x.dims();
    let (ph, pw) = (kh / 2, kw / 2);
    let padded = x.pad((pw, kw - 1 - pw, ph, kh - 1 - ph), PadMode::Constant(0.0));
    let mut patches = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            patches.push(
                padded
                    .clone()
                    .slice([0..batch, 0..channels, i..i + h, j..j + w]),
            );
        }
    }
    // [batch, channels, kh * kw, h, w]: patch entries ordered like the kernel's (c, i, j).
    let columns: Tensor<5> = Tensor::stack(patches, 2);
    let patch_len = channels * kh * kw;
    let columns: Tensor<3> = columns.reshape([batch, patch_len, h * w]);
    let kernel: Tensor<3> = weight.reshape([1, out_channels, patch_len]);
    let mut y = kernel.matmul(columns);
    if let Some(bias) = &conv.bias {
        y = y + bias.val().reshape([1, out_channels, 1]);
    }
    y.reshape([batch, out_channels, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Initializer;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Distribution, TensorData};

    use crate::device::tensor_values;
    use crate::device::training_device;

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let (a, b) = (tensor_values(a).unwrap(), tensor_values(b).unwrap());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn matches_burns_convolution_forward_and_backward() {
        let device = training_device();
        let conv = Conv2dConfig::new([3, 4], [5, 5])
            .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
            .with_initializer(Initializer::Uniform {
                min: -0.5,
                max: 0.5,
            })
            .init(&device);
        let values: Vec<f32> = (0..2 * 3 * 9 * 7)
            .map(|i| ((i * 37) % 23) as f32 / 23.0 - 0.5)
            .collect();
        let input = || {
            Tensor::<4>::from_data(TensorData::new(values.clone(), [2, 3, 9, 7]), &device)
                .require_grad()
        };
        let (x1, x2) = (input(), input());
        let ours = conv2d_same(x1.clone(), &conv);
        let burns = conv.forward(x2.clone());
        assert_eq!(ours.dims(), [2, 4, 9, 7]);
        assert!(max_diff(ours.clone().inner(), burns.clone().inner()) < 1e-5);

        let mix = Tensor::<4>::random([2, 4, 9, 7], Distribution::Default, &device);
        let g1 = (ours * mix.clone()).sum().backward();
        let g2 = (burns * mix).sum().backward();
        let weight = conv.weight.val();
        let grad = |t: &Tensor<4>, g| t.grad(g).expect("gradient");
        assert!(max_diff(grad(&weight, &g1), grad(&weight, &g2)) < 1e-4);
        assert!(max_diff(grad(&x1, &g1), grad(&x2, &g2)) < 1e-4);
    }
}
