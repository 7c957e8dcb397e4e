//! The McMahan et al. CNN's forward and backward passes written out over channels-last
//! images: the same model as [`crate::net`]'s `CnnNet` (same parameters, same manifest),
//! faster on the CPU than burn's generic convolution and pooling passes (about twice in
//! training, see benches/README.md section 11).
//!
//! Convolutions and their gradients are computed directly in registers ([`direct`]), pooling
//! keeps one byte per output to route its gradient ([`pool`]), and the fully connected
//! layers' products are the backend's own ([`matrix`]) but fc1's weight gradient
//! ([`direct::outer_product_sum`]). A forward pass for training keeps what its backward pass
//! needs in a [`Tape`], in buffers reused from batch to batch ([`buffers`]).

mod buffers;
mod direct;
mod matrix;
mod pool;

use rayon::prelude::*;

pub(crate) use buffers::Buffers;
use direct::{Images, TAPS};
use matrix::Matrix;

use crate::error::Result;
use crate::spec::CNN_IMAGE_SIDE;

/// Output channels of the first convolution.
const C1: usize = 32;
/// Output channels of the second convolution.
const C2: usize = 64;
/// Width of the hidden fully connected layer.
const HIDDEN: usize = 512;
/// Side after both poolings.
const SIDE2: usize = CNN_IMAGE_SIDE / 4;
/// Inputs of the first fully connected layer.
const FLAT: usize = C2 * SIDE2 * SIDE2;

/// The input images.
const IMAGES0: Images = Images {
    side: CNN_IMAGE_SIDE,
    channels: 1,
};
/// conv2's input: conv1's output pooled.
const IMAGES1: Images = Images {
    side: CNN_IMAGE_SIDE / 2,
    channels: C1,
};
/// conv2's output, before pooling.
const CONV2_OUT: Images = Images {
    side: CNN_IMAGE_SIDE / 2,
    channels: C2,
};
/// conv1's output, before pooling.
const CONV1_OUT: Images = Images {
    side: CNN_IMAGE_SIDE,
    channels: C1,
};

/// Where each parameter sits in the flat vector: the manifest's order (`conv1.weight`,
/// `conv1.bias`, `conv2.weight`, `conv2.bias`, `fc1.weight`, `fc1.bias`, `fc2.weight`,
/// `fc2.bias`) and burn's shapes (convolution weights `[out, in, ky, kx]`, linear weights
/// `[in, out]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CnnLayout {
    classes: usize,
}

impl CnnLayout {
    /// The layout of the CNN with `classes` outputs.
    pub(crate) fn new(classes: usize) -> Self {
        Self { classes }
    }

    /// Values of each parameter, in manifest order.
    pub(crate) fn lens(self) -> [usize; 8] {
        [
            C1 * TAPS,
            C1,
            C2 * C1 * TAPS,
            C2,
            FLAT * HIDDEN,
            HIDDEN,
            HIDDEN * self.classes,
            self.classes,
        ]
    }

    /// Offset of each parameter, in manifest order.
    fn offsets(self) -> [usize; 8] {
        let mut offsets = [0; 8];
        let mut at = 0;
        for (offset, len) in offsets.iter_mut().zip(self.lens()) {
            *offset = at;
            at += len;
        }
        offsets
    }
}

/// A CNN's parameters, held as one flat vector with views of each weight.
#[derive(Debug)]
pub(crate) struct CnnModel {
    layout: CnnLayout,
    params: Matrix,
}

/// What a training forward pass keeps for its backward pass.
pub(crate) struct Tape {
    batch: usize,
    pooled1: Vec<f32>,
    winners1: Vec<u8>,
    pooled2: Vec<f32>,
    winners2: Vec<u8>,
    flat: Matrix,
    hidden: Matrix,
}

impl CnnModel {
    /// The model with `params` (already checked against the manifest: length, finiteness).
    pub(crate) fn new(classes: usize, params: Vec<f32>) -> Self {
        Self {
            layout: CnnLayout::new(classes),
            params: Matrix::flat(params),
        }
    }

    /// The parameters, taken out (without a copy).
    pub(crate) fn into_params(self) -> Result<Vec<f32>> {
        self.params.into_values()
    }

    /// The parameters to change in place (an SGD step).
    pub(crate) fn params_mut(&mut self) -> &mut [f32] {
        self.params.values_mut()
    }

    fn weight(&self, index: usize, rows: usize, cols: usize) -> Matrix {
        self.params.block(self.layout.offsets()[index], rows, cols)
    }

    fn param(&self, index: usize) -> &[f32] {
        let (offset, len) = (self.layout.offsets()[index], self.layout.lens()[index]);
        &self.params.values()[offset..offset + len]
    }

    /// Class logits `[batch, classes]` of `inputs` (`batch` rows of 28×28 pixels).
    pub(crate) fn logits(&self, inputs: &[f32], buffers: &mut Buffers) -> Result<Vec<f32>> {
        let (logits, tape) = self.forward(inputs, buffers)?;
        tape.recycle(buffers);
        Ok(logits)
    }

    /// The logits and the tape their gradient is backpropagated through; its large buffers
    /// come from `buffers` (give them back with [`CnnModel::backward`] or [`Tape::recycle`]).
    pub(crate) fn forward(
        &self,
        inputs: &[f32],
        buffers: &mut Buffers,
    ) -> Result<(Vec<f32>, Tape)> {
        let batch = inputs.len() / IMAGES0.image_len();
        let mut pooled1 = buffers.take(batch * IMAGES1.image_len());
        let mut winners1 = buffers.take_bytes(pooled1.len());
        let conv1 = Conv {
            input: IMAGES0,
            panels: &direct::panels(&taps_first(self.param(0), C1, 1), C1),
            bias: self.param(1),
            output: CONV1_OUT,
        };
        conv1.relu_pool(inputs, &mut pooled1, &mut winners1);
        let mut pooled2 = buffers.take(batch * FLAT);
        let mut winners2 = buffers.take_bytes(pooled2.len());
        let conv2 = Conv {
            input: IMAGES1,
            panels: &direct::panels(&taps_first(self.param(2), C2, C1), C2),
            bias: self.param(3),
            output: CONV2_OUT,
        };
        conv2.relu_pool(&pooled1, &mut pooled2, &mut winners2);
        // fc1 reads burn's flattening of `[channel, y, x]`
        let flat = Matrix::new(channels_first(&pooled2, C2), batch, FLAT);
        let mut hidden = flat.matmul(&self.weight(4, FLAT, HIDDEN));
        add_bias_relu(hidden.values_mut(), self.param(5));
        let mut logits = hidden.matmul(&self.weight(6, HIDDEN, self.layout.classes));
        add_bias(logits.values_mut(), self.param(7));
        let tape = Tape {
            batch,
            pooled1,
            winners1,
            pooled2,
            winners2,
            flat,
            hidden,
        };
        Ok((logits.into_values()?, tape))
    }

    /// The gradient of every parameter, in manifest order, given the gradient of the loss
    /// with respect to the logits of the pass that recorded `tape` on `inputs`; the tape's
    /// buffers go back to `buffers`.
    pub(crate) fn backward(
        &self,
        tape: Tape,
        inputs: &[f32],
        logits_grad: Vec<f32>,
        buffers: &mut Buffers,
    ) -> Result<CnnGrads> {
        let classes = self.layout.classes;
        let g = Matrix::new(logits_grad, tape.batch, classes);
        let fc2_w = tape.hidden.t().matmul(&g);
        let fc2_b = column_sums(g.values(), classes);
        let mut hidden_grad = g.matmul(&self.weight(6, HIDDEN, classes).t());
        relu_grad(hidden_grad.values_mut(), tape.hidden.values());
        let mut fc1_w = buffers.take(FLAT * HIDDEN);
        direct::outer_product_sum(tape.flat.values(), hidden_grad.values(), HIDDEN, &mut fc1_w);
        let fc1_w = Matrix::new(fc1_w, FLAT, HIDDEN);
        let fc1_b = column_sums(hidden_grad.values(), HIDDEN);
        let flat_grad = hidden_grad.matmul(&self.weight(4, FLAT, HIDDEN).t());
        let pooled2_grad = channels_last(flat_grad.values(), C2);
        let mut relu2_grad = buffers.take(tape.batch * CONV2_OUT.image_len());
        let (pooled2, winners2) = (&tape.pooled2, &tape.winners2);
        pool::max_unpool_relu(&pooled2_grad, winners2, pooled2, CONV2_OUT, &mut relu2_grad);
        let conv2_w = kernel_grad(&tape.pooled1, IMAGES1, &relu2_grad, C2, buffers);
        let conv2_b = column_sums(&relu2_grad, C2);
        let mut pooled1_grad = buffers.take(tape.batch * IMAGES1.image_len());
        self.conv2_input_grad(&relu2_grad, &mut pooled1_grad);
        let mut relu1_grad = buffers.take(tape.batch * CONV1_OUT.image_len());
        let (pooled1, winners1) = (&tape.pooled1, &tape.winners1);
        pool::max_unpool_relu(&pooled1_grad, winners1, pooled1, CONV1_OUT, &mut relu1_grad);
        buffers.give(pooled1_grad);
        let conv1_w = kernel_grad(inputs, IMAGES0, &relu1_grad, C1, buffers);
        let conv1_b = column_sums(&relu1_grad, C1);
        buffers.give(relu1_grad);
        buffers.give(relu2_grad);
        tape.recycle(buffers);
        Ok(CnnGrads([
            Matrix::flat(conv1_w),
            Matrix::flat(conv1_b),
            Matrix::flat(conv2_w),
            Matrix::flat(conv2_b),
            fc1_w,
            Matrix::flat(fc1_b),
            fc2_w,
            Matrix::flat(fc2_b),
        ]))
    }

    /// The gradient with respect to conv2's input (pooled, channels-last) of its output's
    /// gradient `relu2_grad` (channels-last): itself a "same" convolution, of that gradient
    /// with the kernel flipped and its channels swapped, image by image.
    fn conv2_input_grad(&self, relu2_grad: &[f32], pooled1_grad: &mut [f32]) {
        let panels = direct::panels(&flipped_kernel(self.param(2)), C1);
        let source = direct::Source::Padded(CONV2_OUT);
        pooled1_grad
            .par_chunks_mut(IMAGES1.image_len())
            .zip(relu2_grad.par_chunks(CONV2_OUT.image_len()))
            .for_each_init(
                || vec![0.0f32; source.scratch_len()],
                |padded, (out, grad)| {
                    source.fill(grad, padded);
                    direct::convolve(padded, source, &panels, C1, out);
                },
            );
    }
}

/// A convolution layer's operands.
struct Conv<'a> {
    /// Its input images.
    input: Images,
    /// The kernel as [`direct::panels`].
    panels: &'a [f32],
    /// One bias per output channel.
    bias: &'a [f32],
    /// Its output images, before pooling.
    output: Images,
}

impl Conv<'_> {
    /// The convolution of `images`, its ReLU and 2×2 max-pooling into `pooled` and
    /// `winners`, image by image over the thread pool: the convolution's output is needed
    /// only until it is pooled (the backward pass reads the ReLU's sign at each winner from
    /// the pooled value, the same number), so it is never held for the whole batch.
    fn relu_pool(&self, images: &[f32], pooled: &mut [f32], winners: &mut [u8]) {
        let pooled_len = self.output.image_len() / 4;
        // One input channel: patch rows (25 values a pixel) rather than a padded image.
        let source = if self.input.channels == 1 {
            direct::Source::Patches(self.input)
        } else {
            direct::Source::Padded(self.input)
        };
        pooled
            .par_chunks_mut(pooled_len)
            .zip(winners.par_chunks_mut(pooled_len))
            .zip(images.par_chunks(self.input.image_len()))
            .for_each_init(
                || {
                    (
                        vec![0.0f32; source.scratch_len()],
                        vec![0.0f32; self.output.image_len()],
                    )
                },
                |(scratch, conv), ((pooled, winners), image)| {
                    source.fill(image, scratch);
                    let outputs = self.output.channels;
                    direct::convolve(scratch, source, self.panels, outputs, conv);
                    add_bias_relu(conv, self.bias);
                    pool::max_pool(conv, self.output, pooled, winners);
                },
            );
    }
}

/// At most this many parts of a batch (of ⌈images / 8⌉ images each) are summed in parallel
/// for a kernel gradient: set by the batch size alone, so the sums (each part's, then the
/// parts' in order) do not depend on the thread count.
const KERNEL_GRAD_PARTS: usize = 8;

/// A convolution's kernel gradient in burn's layout, `[output][input][tap]`: for each output
/// channel, the sum over images and pixels of its gradient `out_grad` (channels-last,
/// `outputs` channels) times the input each tap reads from `images` (channels-last, `shape`).
/// With many input channels, parts of the batch ([`KERNEL_GRAD_PARTS`]) are summed in
/// parallel, images and pixels in order, then added in order; with one (conv1), panels of
/// output channels are, each by one thread over all images in order. Either way the result
/// does not depend on the thread count.
fn kernel_grad(
    images: &[f32],
    shape: Images,
    out_grad: &[f32],
    outputs: usize,
    buffers: &mut Buffers,
) -> Vec<f32> {
    let count = images.len() / shape.image_len();
    let mut padded = buffers.take(count * shape.padded_len());
    padded
        .par_chunks_mut(shape.padded_len())
        .zip(images.par_chunks(shape.image_len()))
        .for_each(|(padded, image)| direct::pad(image, shape, padded));
    let (width, rows) = (direct::panel_width(), TAPS * shape.channels);
    let kernel = if shape.channels.is_multiple_of(width) {
        // Many input channels: fixed parts of the batch summed in parallel, then in order.
        let per_part = count.div_ceil(KERNEL_GRAD_PARTS).max(1);
        let parts: Vec<Vec<f32>> = padded
            .par_chunks(per_part * shape.padded_len())
            .zip(out_grad.par_chunks(per_part * shape.pixels() * outputs))
            .map(|(padded, grad)| {
                let mut sums = vec![0.0f32; outputs * rows];
                for terms in grad_terms(padded, grad, shape, outputs) {
                    direct::add_kernel_grad_wide(terms, &mut sums);
                }
                sums
            })
            .collect();
        let mut parts = parts.into_iter();
        let mut sums = parts.next().unwrap_or_else(|| vec![0.0f32; outputs * rows]);
        for part in parts {
            for (s, p) in sums.iter_mut().zip(&part) {
                *s += p;
            }
        }
        // [output][tap][input] to burn's [output][input][tap]
        transpose_blocks(&sums, TAPS, shape.channels)
    } else {
        let panels: Vec<Vec<f32>> = (0..outputs / width)
            .into_par_iter()
            .map(|panel| {
                let mut sums = vec![0.0f32; rows * width];
                for terms in grad_terms(&padded, out_grad, shape, outputs) {
                    direct::add_kernel_grad(terms, panel, &mut sums);
                }
                sums
            })
            .collect();
        let mut kernel = vec![0.0f32; outputs * rows];
        for (panel, sums) in panels.iter().enumerate() {
            for (row, values) in sums.chunks_exact(width).enumerate() {
                let (tap, input) = (row / shape.channels, row % shape.channels);
                for (v, &value) in values.iter().enumerate() {
                    let output = panel * width + v;
                    kernel[(output * shape.channels + input) * TAPS + tap] = value;
                }
            }
        }
        kernel
    };
    buffers.give(padded);
    kernel
}

/// Each image's padded values and output gradient, in order.
fn grad_terms<'a>(
    padded: &'a [f32],
    grad: &'a [f32],
    shape: Images,
    outputs: usize,
) -> impl Iterator<Item = direct::GradTerms<'a>> {
    let images = padded.chunks_exact(shape.padded_len());
    let grads = grad.chunks_exact(shape.pixels() * outputs);
    images
        .zip(grads)
        .map(move |(padded, grad)| direct::GradTerms {
            padded,
            grad,
            shape,
            outputs,
        })
}

/// The gradient of every parameter, in manifest order.
pub(crate) struct CnnGrads([Matrix; 8]);

impl CnnGrads {
    /// Each parameter's gradient values, in manifest order.
    pub(crate) fn parts(&self) -> impl Iterator<Item = &[f32]> {
        self.0.iter().map(Matrix::values)
    }

    /// Gives the largest gradient's memory (fc1's, 6.4 MB) back to `buffers`.
    pub(crate) fn recycle(self, buffers: &mut Buffers) -> Result<()> {
        let [_, _, _, _, fc1_w, ..] = self.0;
        buffers.give(fc1_w.into_values()?);
        Ok(())
    }
}

impl Tape {
    /// Gives the tape's buffers back.
    fn recycle(self, buffers: &mut Buffers) {
        buffers.give(self.pooled1);
        buffers.give(self.pooled2);
        buffers.give_bytes(self.winners1);
        buffers.give_bytes(self.winners2);
    }
}

/// Adds `bias` to every row of `values` (rows as long as the bias).
fn add_bias(values: &mut [f32], bias: &[f32]) {
    for row in values.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Adds `bias` to every row, then the ReLU. A NaN stays NaN (as in burn's ReLU), so a
/// training that diverges is seen in that batch's loss.
fn add_bias_relu(values: &mut [f32], bias: &[f32]) {
    for row in values.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            let x = *v + b;
            *v = if x > 0.0 || x.is_nan() { x } else { 0.0 };
        }
    }
}

/// Zeroes the gradient where the ReLU's output was not positive (burn's rule at zero).
fn relu_grad(grad: &mut [f32], activations: &[f32]) {
    for (g, &a) in grad.iter_mut().zip(activations) {
        if a <= 0.0 {
            *g = 0.0;
        }
    }
}

/// The sum of each column of row-major `values` with `cols` columns, rows in order.
fn column_sums(values: &[f32], cols: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; cols];
    for row in values.chunks_exact(cols) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    sums
}

/// Pooled conv2 outputs `[image][pixel][channel]` reordered to `[image][channel][pixel]`
/// (burn's flattening).
fn channels_first(values: &[f32], channels: usize) -> Vec<f32> {
    transpose_blocks(values, SIDE2 * SIDE2, channels)
}

/// The inverse of [`channels_first`].
fn channels_last(values: &[f32], channels: usize) -> Vec<f32> {
    transpose_blocks(values, channels, SIDE2 * SIDE2)
}

/// Every block of `rows × cols` values transposed to `cols × rows`.
fn transpose_blocks(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for (src, dst) in values
        .chunks_exact(rows * cols)
        .zip(out.chunks_exact_mut(rows * cols))
    {
        for r in 0..rows {
            for c in 0..cols {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
    }
    out
}

/// A kernel in burn's layout, `[output][input][tap]`, as `[tap][input][output]` (rows of
/// output channels, what [`direct::panels`] takes).
fn taps_first(kernel: &[f32], outputs: usize, inputs: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; kernel.len()];
    for (o, per_out) in kernel.chunks_exact(inputs * TAPS).enumerate() {
        for (c, per_in) in per_out.chunks_exact(TAPS).enumerate() {
            for (tap, &w) in per_in.iter().enumerate() {
                out[(tap * inputs + c) * outputs + o] = w;
            }
        }
    }
    out
}

/// conv2's kernel `[out][in][ky][kx]` as the kernel `[tap][out][in]` that convolves its
/// output's gradient into its input's: entry `[(ky, kx)][o][c]` is
/// `kernel[o][c][4 - ky][4 - kx]`.
fn flipped_kernel(kernel: &[f32]) -> Vec<f32> {
    let mut flipped = vec![0.0f32; kernel.len()];
    for (o, per_out) in kernel.chunks_exact(C1 * TAPS).enumerate() {
        for (c, per_in) in per_out.chunks_exact(TAPS).enumerate() {
            for (tap, &w) in per_in.iter().enumerate() {
                let flipped_tap = TAPS - 1 - tap;
                flipped[(flipped_tap * C2 + o) * C1 + c] = w;
            }
        }
    }
    flipped
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::*;
    use crate::device::{tensor_values, training_device};
    use crate::loss::{Tally, cross_entropy_backward};
    use crate::params::{build_loaded, init_params};
    use crate::test_util::{cnn_spec, param_grads, tiny_images};

    fn max_relative_diff(ours: &[f32], burns: &[f32]) -> f32 {
        assert_eq!(ours.len(), burns.len());
        let scale = burns.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        ours.iter()
            .zip(burns)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale
    }

    #[test]
    fn the_layout_is_the_manifests() {
        let manifest = cnn_spec().manifest().unwrap();
        let lens: Vec<usize> = manifest.entries.iter().map(|e| e.len).collect();
        assert_eq!(lens, CnnLayout::new(10).lens());
        assert_eq!(
            manifest.total(),
            CnnLayout::new(10).lens().iter().sum::<usize>()
        );
    }

    #[test]
    fn logits_and_gradients_are_burns() {
        let spec = cnn_spec();
        // Thirteen images: the kernel gradients' parts hold two images each but the last
        // (one); every image's pixels (784, 196) end in a short block of six.
        let data = tiny_images(13);
        let params = init_params(&spec, 3).unwrap();

        let device = training_device();
        let net = build_loaded(&spec, &params, &device).unwrap();
        let inputs: Tensor<2> =
            Tensor::from_data(TensorData::new(data.features.clone(), [13, 784]), &device);
        let logits = net.forward(inputs);
        let burn_logits = tensor_values(logits.clone().inner()).unwrap();
        let grads =
            cross_entropy_backward(logits, &data.labels, &mut Tally::default(), &device).unwrap();
        let burns = param_grads(&net, &grads);

        let model = CnnModel::new(10, params);
        let mut buffers = Buffers::default();
        let (logits, tape) = model.forward(&data.features, &mut buffers).unwrap();
        assert!(max_relative_diff(&logits, &burn_logits) < 1e-5);
        let grad = Tally::default().add_with_grad(&logits, &data.labels);
        let ours = model
            .backward(tape, &data.features, grad, &mut buffers)
            .unwrap();
        for (i, (a, b)) in ours.parts().zip(&burns).enumerate() {
            let diff = max_relative_diff(a, b);
            assert!(diff < 1e-4, "parameter {i}: relative difference {diff}");
        }
    }
}
