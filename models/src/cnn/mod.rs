//! The McMahan et al. CNN's forward and backward passes written out as matrix products over
//! channels-last images: the same model as [`crate::net`]'s `CnnNet` (same parameters, same
//! manifest), faster on the CPU than burn's generic convolution and pooling passes (1.2–1.6×
//! in training, see benches/README.md section 11).
//!
//! Convolutions are patch rows ([`patches`]) times the kernel matrix, pooling keeps one byte
//! per output to route its gradient ([`pool`]), and every product is the backend's own
//! ([`matrix`]). A forward pass for training keeps what its backward pass needs in a
//! [`Tape`], in buffers reused from batch to batch ([`buffers`]).

mod buffers;
mod matrix;
mod patches;
mod pool;

pub(crate) use buffers::Buffers;
use matrix::Matrix;
use patches::{Images, KERNEL};

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
        let k = KERNEL * KERNEL;
        [
            C1 * k,
            C1,
            C2 * C1 * k,
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
        let k = KERNEL * KERNEL;
        // conv1 (a single input channel: the kernel's own layout is the patch's)
        let mut pooled1 = buffers.take(batch * IMAGES1.image_len());
        let mut winners1 = buffers.take_bytes(pooled1.len());
        let kernel1 = self.weight(0, C1, k);
        let conv1 = Conv {
            input: IMAGES0,
            kernel_t: &kernel1.t(),
            bias: self.param(1),
            output: CONV1_OUT,
        };
        conv1.relu_pool(inputs, &mut pooled1, &mut winners1, buffers)?;
        // conv2: its kernel reordered to the patch columns' (ky, kx, channel)
        let kernel2 = Matrix::new(
            channels_last_kernel(self.param(2), C1, k),
            C2,
            IMAGES1.row_len(),
        );
        let mut pooled2 = buffers.take(batch * FLAT);
        let mut winners2 = buffers.take_bytes(pooled2.len());
        let conv2 = Conv {
            input: IMAGES1,
            kernel_t: &kernel2.t(),
            bias: self.param(3),
            output: CONV2_OUT,
        };
        conv2.relu_pool(&pooled1, &mut pooled2, &mut winners2, buffers)?;
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
        let k = KERNEL * KERNEL;
        let g = Matrix::new(logits_grad, tape.batch, classes);
        let fc2_w = tape.hidden.t().matmul(&g);
        let fc2_b = column_sums(g.values(), classes);
        let mut hidden_grad = g.matmul(&self.weight(6, HIDDEN, classes).t());
        relu_grad(hidden_grad.values_mut(), tape.hidden.values());
        let fc1_w = Matrix::new(
            outer_product_sum(&tape.flat, &hidden_grad, buffers),
            FLAT,
            HIDDEN,
        );
        let fc1_b = column_sums(hidden_grad.values(), HIDDEN);
        let flat_grad = hidden_grad.matmul(&self.weight(4, FLAT, HIDDEN).t());
        let pooled2_grad = channels_last(flat_grad.values(), C2);
        let rows2 = tape.batch * IMAGES1.side * IMAGES1.side;
        let mut relu2_grad = buffers.take(rows2 * C2);
        let (pooled2, winners2) = (&tape.pooled2, &tape.winners2);
        pool::max_unpool_relu(&pooled2_grad, winners2, pooled2, CONV2_OUT, &mut relu2_grad);
        let relu2_grad = Matrix::new(relu2_grad, rows2, C2);
        let conv2_w = weight_grad(&tape.pooled1, IMAGES1, &relu2_grad, buffers)?;
        let conv2_b = column_sums(relu2_grad.values(), C2);
        let mut pooled1_grad = buffers.take(tape.batch * IMAGES1.image_len());
        self.conv2_input_grad(relu2_grad.values(), buffers, &mut pooled1_grad)?;
        let rows1 = tape.batch * IMAGES0.side * IMAGES0.side;
        let mut relu1_grad = buffers.take(rows1 * C1);
        let (pooled1, winners1) = (&tape.pooled1, &tape.winners1);
        pool::max_unpool_relu(&pooled1_grad, winners1, pooled1, CONV1_OUT, &mut relu1_grad);
        buffers.give(pooled1_grad);
        let relu1_grad = Matrix::new(relu1_grad, rows1, C1);
        let conv1_w = weight_grad(inputs, IMAGES0, &relu1_grad, buffers)?;
        let conv1_b = column_sums(relu1_grad.values(), C1);
        buffers.give(relu1_grad.into_values()?);
        buffers.give(relu2_grad.into_values()?);
        tape.recycle(buffers);
        Ok(CnnGrads([
            Matrix::new(conv1_w, C1, k),
            Matrix::flat(conv1_b),
            Matrix::flat(channels_first_kernel(&conv2_w, C1, k)),
            Matrix::flat(conv2_b),
            fc1_w,
            Matrix::flat(fc1_b),
            fc2_w,
            Matrix::flat(fc2_b),
        ]))
    }

    /// The gradient with respect to conv2's input (pooled, channels-last) of its output's
    /// gradient `relu2_grad` (channels-last): itself a "same" convolution, of that gradient
    /// with the kernel flipped and its channels swapped, so it runs as patch rows of the
    /// gradient times a `[25·64, 32]` matrix, a few images at a time. The product's output
    /// is the input gradient itself, 25 times smaller than the patch-row gradient that
    /// multiplying by the kernel would give (and then have to scatter back).
    fn conv2_input_grad(
        &self,
        relu2_grad: &[f32],
        buffers: &mut Buffers,
        pooled1_grad: &mut [f32],
    ) -> Result<()> {
        let flipped = Matrix::new(flipped_kernel(self.param(2)), CONV2_OUT.row_len(), C1);
        let per_image = IMAGES1.image_len();
        for_each_patch_block(
            relu2_grad,
            CONV2_OUT,
            per_image,
            buffers,
            |first, patches| {
                let product = patches.matmul(&flipped);
                let out = &mut pooled1_grad[first * per_image..];
                let len = product.values().len();
                out[..len].copy_from_slice(product.values());
                Ok(())
            },
        )
    }
}

/// Bytes of patch rows gathered at once (see [`for_each_patch_block`]).
const GATHER_BLOCK_BYTES: usize = 4 << 20;

/// Bytes of a product's output made at once from a block of patch rows (see
/// [`for_each_patch_block`]): the backend returns every product in fresh zeroed memory, and
/// an allocator returns blocks of several megabytes to the system when they are freed, so
/// larger outputs are faulted in and cleared by the kernel again at every step.
const OUTPUT_BLOCK_BYTES: usize = 1 << 20;

/// Runs `each(first_image, patches)` on the patch rows of `images` (of `shape`), a few
/// images at a time, in order: at most [`GATHER_BLOCK_BYTES`] of rows, and at most
/// [`OUTPUT_BLOCK_BYTES`] of the product `each` makes when it makes `out_per_image` values
/// an image (0: a product whose size does not grow with the block). Patch rows are 25 times
/// the size of their images: gathered block by block into one kept buffer they stay cached
/// between being written and being multiplied, and are never held for a whole batch (the
/// backward pass gathers them again).
fn for_each_patch_block(
    images: &[f32],
    shape: Images,
    out_per_image: usize,
    buffers: &mut Buffers,
    mut each: impl FnMut(usize, &Matrix) -> Result<()>,
) -> Result<()> {
    let pixels = shape.side * shape.side;
    let per_image = pixels * shape.row_len();
    let by_output = OUTPUT_BLOCK_BYTES
        .checked_div(4 * out_per_image)
        .unwrap_or(usize::MAX);
    let per_block = (GATHER_BLOCK_BYTES / (4 * per_image)).min(by_output).max(1);
    let mut rows = buffers.take(per_block * per_image);
    for (index, block) in images.chunks(per_block * shape.image_len()).enumerate() {
        let count = block.len() / shape.image_len();
        patches::gather(block, shape, &mut rows[..count * per_image]);
        let patches = Matrix::new(rows, per_block * pixels, shape.row_len());
        // A last, partial block: a view of its rows (the buffer keeps its length).
        let result = if count == per_block {
            each(index * per_block, &patches)
        } else {
            each(index * per_block, &patches.rows_view(0, count * pixels))
        };
        rows = patches.into_values()?;
        result?;
    }
    buffers.give(rows);
    Ok(())
}

/// A convolution layer's operands.
struct Conv<'a> {
    /// Its input images.
    input: Images,
    /// The kernel as `[row_len, out_channels]` (a transposed view).
    kernel_t: &'a Matrix,
    /// One bias per output channel.
    bias: &'a [f32],
    /// Its output images, before pooling.
    output: Images,
}

impl Conv<'_> {
    /// The convolution of `images`, its ReLU and 2×2 max-pooling into `pooled` and
    /// `winners`, block by block: the convolution's output is needed only until it is
    /// pooled (the backward pass reads the ReLU's sign at each winner from the pooled value,
    /// the same number), so it is never held for the whole batch.
    fn relu_pool(
        &self,
        images: &[f32],
        pooled: &mut [f32],
        winners: &mut [u8],
        buffers: &mut Buffers,
    ) -> Result<()> {
        let pooled_len = self.output.image_len() / 4;
        let pixels = self.output.side * self.output.side;
        let out_per_image = self.output.image_len();
        for_each_patch_block(
            images,
            self.input,
            out_per_image,
            buffers,
            |first, patches| {
                let mut conv = patches.matmul(self.kernel_t);
                add_bias_relu(conv.values_mut(), self.bias);
                let count = conv.values().len() / (pixels * self.output.channels);
                let range = first * pooled_len..(first + count) * pooled_len;
                pool::max_pool(
                    conv.values(),
                    self.output,
                    &mut pooled[range.clone()],
                    &mut winners[range],
                );
                Ok(())
            },
        )
    }
}

/// A convolution's kernel gradient, `[out_channels, row_len]` (patch-column order): the
/// output gradient `out_grad` (`[pixels, out_channels]`, image by image) transposed times
/// the patch rows of `images`, summed block by block in order.
fn weight_grad(
    images: &[f32],
    shape: Images,
    out_grad: &Matrix,
    buffers: &mut Buffers,
) -> Result<Vec<f32>> {
    let pixels = shape.side * shape.side;
    let mut sum = vec![0.0f32; out_grad.cols() * shape.row_len()];
    for_each_patch_block(images, shape, 0, buffers, |first, patches| {
        let rows = out_grad.rows_view(first * pixels, patches.rows());
        let part = rows.t().matmul(patches);
        for (s, v) in sum.iter_mut().zip(part.values()) {
            *s += v;
        }
        Ok(())
    })?;
    Ok(sum)
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

/// Bytes of one strip of an outer-product sum (see [`outer_product_sum`]).
const STRIP_BYTES: usize = 1 << 20;

/// `inputsᵀ × grads`, a linear layer's weight gradient (`[in, out]`), into a buffer from
/// `buffers`, computed in strips of output columns: with a batch as the only summed
/// dimension the product is all output, and one product of the whole would be a fresh
/// multi-megabyte matrix every step, zeroed and faulted in before it is written.
fn outer_product_sum(inputs: &Matrix, grads: &Matrix, buffers: &mut Buffers) -> Vec<f32> {
    let (rows, cols) = (inputs.cols(), grads.cols());
    let strip = (STRIP_BYTES / (4 * rows)).clamp(1, cols);
    let mut out = buffers.take(rows * cols);
    let inputs_t = inputs.t();
    for first in (0..cols).step_by(strip) {
        let width = strip.min(cols - first);
        let part = inputs_t.matmul(&grads.cols_view(first, width));
        for (row, values) in out
            .chunks_exact_mut(cols)
            .zip(part.values().chunks_exact(width))
        {
            row[first..first + width].copy_from_slice(values);
        }
    }
    out
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

/// A kernel `[out][in][tap]` (burn's) reordered to `[out][tap][in]` (the patch columns').
fn channels_last_kernel(kernel: &[f32], inputs: usize, taps: usize) -> Vec<f32> {
    transpose_blocks(kernel, inputs, taps)
}

/// conv2's kernel `[out][in][ky][kx]` as the matrix that takes patch rows of its output's
/// gradient (columns `(ky, kx, out)`) to its input's gradient: entry `[(ky, kx, o)][c]` is
/// `kernel[o][c][4 - ky][4 - kx]`.
fn flipped_kernel(kernel: &[f32]) -> Vec<f32> {
    let taps = KERNEL * KERNEL;
    let mut flipped = vec![0.0f32; kernel.len()];
    for (o, per_out) in kernel.chunks_exact(C1 * taps).enumerate() {
        for (c, per_in) in per_out.chunks_exact(taps).enumerate() {
            for (tap, &w) in per_in.iter().enumerate() {
                let flipped_tap = taps - 1 - tap;
                flipped[(flipped_tap * C2 + o) * C1 + c] = w;
            }
        }
    }
    flipped
}

/// The inverse of [`channels_last_kernel`].
fn channels_first_kernel(kernel: &[f32], inputs: usize, taps: usize) -> Vec<f32> {
    transpose_blocks(kernel, taps, inputs)
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
        // Thirteen images: conv2's patch rows are gathered six images at a time, its output
        // gradient's three, each ending in a partial block.
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
