//! "Same" 5×5 convolutions at stride 1 computed directly from zero-padded channels-last
//! images, in registers: no patch rows gathered (but a single channel's 25 values a pixel),
//! no product outputs allocated.
//!
//! Every kernel holds 6 × 2 SIMD vectors of sums in registers (the shape of a GEMM
//! micro-kernel): a convolution step takes 6 output pixels × 2 vectors of output channels
//! and, for each tap and input channel, broadcasts 6 input values against 2 vectors of
//! weights; a kernel-gradient step takes 6 kernel rows (tap, input channel) × 2 vectors of
//! output channels, or with many input channels 6 output channels × 2 vectors of input
//! channels, and runs over every pixel. Each sum runs over its terms in the same order
//! whatever the vector width, as fused multiply-adds, so AVX2 and the plain scalar code
//! machines without it run give the same bits (`the_scalar_code_gives_the_same_bits`).
//! Code is generic over pulp's [`Simd`] and runs on the widest set [`dispatch`] finds.

use pulp::{Simd, WithSimd};

/// Side of the square kernels.
pub(crate) const KERNEL: usize = 5;
/// Kernel taps.
pub(crate) const TAPS: usize = KERNEL * KERNEL;
/// Zero padding on every side.
const PAD: usize = 2;
/// Rows (output pixels, or kernel rows) a step sums at once.
const ROWS: usize = 6;
/// SIMD vectors of output channels a step sums at once.
const VECTORS: usize = 2;

/// The shape of a batch of square channels-last images (`[image][y][x][channel]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Images {
    /// Height and width.
    pub(crate) side: usize,
    /// Values per pixel.
    pub(crate) channels: usize,
}

impl Images {
    /// Values of one image.
    pub(crate) fn image_len(self) -> usize {
        self.side * self.side * self.channels
    }

    /// Pixels of one image.
    pub(crate) fn pixels(self) -> usize {
        self.side * self.side
    }

    /// Values of one image with its padding.
    pub(crate) fn padded_len(self) -> usize {
        let side = self.side + 2 * PAD;
        side * side * self.channels
    }

    /// Offset in a padded image of the input a tap reads for output pixel 0 (the tap's
    /// offset for every other pixel is this plus the pixel's own, [`Images::pixel_offset`]).
    fn tap_offset(self, tap: usize) -> usize {
        let (ky, kx) = (tap / KERNEL, tap % KERNEL);
        (ky * (self.side + 2 * PAD) + kx) * self.channels
    }

    /// Offset in a padded image of output pixel `pixel`'s top-left tap.
    fn pixel_offset(self, pixel: usize) -> usize {
        let (y, x) = (pixel / self.side, pixel % self.side);
        (y * (self.side + 2 * PAD) + x) * self.channels
    }
}

/// The `ROWS` indices of the block starting at `first` among `count`: a last, short block
/// repeats its last index (summed, not written back: callers write `count - first` rows at
/// most).
fn block(first: usize, count: usize) -> [usize; ROWS] {
    std::array::from_fn(|i| (first + i).min(count - 1))
}

/// Runs `op` with the widest instruction set this machine has: AVX2 and FMA, or else scalar
/// code (the same bits; on an x86 machine without FMA much slower, every fused multiply-add
/// then being a library call).
pub(crate) fn dispatch<Op: WithSimd>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return Simd::vectorize(simd, op);
    }
    Simd::vectorize(pulp::Scalar::new(), op)
}

/// Output channels a panel of weights holds on this machine.
pub(crate) fn panel_width() -> usize {
    struct Width;
    impl WithSimd for Width {
        type Output = usize;
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) -> usize {
            S::F32_LANES * VECTORS
        }
    }
    dispatch(Width)
}

/// `image` (channels-last, `shape`) with `PAD` zeros around it, into `padded`.
pub(crate) fn pad(image: &[f32], shape: Images, padded: &mut [f32]) {
    let c = shape.channels;
    let row = (shape.side + 2 * PAD) * c;
    padded.fill(0.0);
    for (y, src) in image.chunks_exact(shape.side * c).enumerate() {
        padded[(y + PAD) * row + PAD * c..][..src.len()].copy_from_slice(src);
    }
}

/// A kernel `[tap][input][output]` regrouped as panels of [`panel_width`] output channels,
/// `[panel][tap][input][width]`, so that a convolution step reads its weights in order.
/// `outputs` must be a multiple of the width (the CNN's 32 and 64 are, on every machine).
pub(crate) fn panels(kernel: &[f32], outputs: usize) -> Vec<f32> {
    panels_of_width(kernel, outputs, panel_width())
}

fn panels_of_width(kernel: &[f32], outputs: usize, width: usize) -> Vec<f32> {
    debug_assert_eq!(outputs % width, 0);
    let mut out = Vec::with_capacity(kernel.len());
    for first in (0..outputs).step_by(width) {
        for row in kernel.chunks_exact(outputs) {
            out.extend_from_slice(&row[first..first + width]);
        }
    }
    out
}

/// What a convolution reads for each output pixel.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// A zero-padded image ([`pad`]), read at each of the 25 taps.
    Padded(Images),
    /// Patch rows of a single-channel image ([`patches`]): one read per pixel of its 25 taps
    /// side by side (one channel read tap by tap would leave a step one term long).
    Patches(Images),
}

impl Source {
    fn pixels(self) -> usize {
        match self {
            Source::Padded(shape) | Source::Patches(shape) => shape.pixels(),
        }
    }

    /// Values read together at each tap.
    fn channels(self) -> usize {
        match self {
            Source::Padded(shape) => shape.channels,
            Source::Patches(_) => TAPS,
        }
    }

    fn pixel_offset(self, pixel: usize) -> usize {
        match self {
            Source::Padded(shape) => shape.pixel_offset(pixel),
            Source::Patches(_) => pixel * TAPS,
        }
    }

    /// Values of the scratch one image is read from.
    pub(crate) fn scratch_len(self) -> usize {
        match self {
            Source::Padded(shape) => shape.padded_len(),
            Source::Patches(shape) => shape.pixels() * TAPS,
        }
    }

    /// Writes `image` (channels-last) into `scratch` as this source reads it.
    pub(crate) fn fill(self, image: &[f32], scratch: &mut [f32]) {
        match self {
            Source::Padded(shape) => pad(image, shape, scratch),
            Source::Patches(shape) => patches(image, shape.side, scratch),
        }
    }

    /// Reads a pixel takes.
    fn taps(self) -> usize {
        match self {
            Source::Padded(_) => TAPS,
            Source::Patches(_) => 1,
        }
    }

    /// Where each read starts, for output pixel 0.
    fn tap_offsets(self) -> impl Iterator<Item = usize> {
        (0..self.taps()).map(move |tap| match self {
            Source::Padded(shape) => shape.tap_offset(tap),
            Source::Patches(_) => 0,
        })
    }
}

/// The patch rows of a single-channel image of side `side` into `rows` (`[pixel][tap]`, zeros
/// in the padding).
fn patches(image: &[f32], side: usize, rows: &mut [f32]) {
    for (pixel, row) in rows.chunks_exact_mut(TAPS).enumerate() {
        let (y, x) = (pixel / side, pixel % side);
        for (tap, value) in row.iter_mut().enumerate() {
            let (ky, kx) = (tap / KERNEL, tap % KERNEL);
            let inside = |v: usize| v.checked_sub(PAD).filter(|&v| v < side);
            *value = match (inside(y + ky), inside(x + kx)) {
                (Some(y), Some(x)) => image[y * side + x],
                _ => 0.0,
            };
        }
    }
}

/// Convolves one image, read as `source` says, with a kernel given as [`panels`]: `out`
/// (`[pixel][outputs]`) gets the sums, without bias.
pub(crate) fn convolve(
    input: &[f32],
    source: Source,
    panels: &[f32],
    outputs: usize,
    out: &mut [f32],
) {
    dispatch(Convolve {
        input,
        source,
        panels,
        outputs,
        out,
    });
}

struct Convolve<'a> {
    input: &'a [f32],
    source: Source,
    panels: &'a [f32],
    outputs: usize,
    out: &'a mut [f32],
}

impl WithSimd for Convolve<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let Convolve {
            input,
            source,
            panels,
            outputs,
            out,
        } = self;
        let c = source.channels();
        let width = S::F32_LANES * VECTORS;
        let pixels = source.pixels();
        let (panels, _) = S::as_simd_f32s(panels);
        for (p, panel) in panels.chunks_exact(source.taps() * c * VECTORS).enumerate() {
            for first in (0..pixels).step_by(ROWS) {
                let at = block(first, pixels).map(|pixel| source.pixel_offset(pixel));
                let mut acc = [simd.splat_f32s(0.0); ROWS * VECTORS];
                let taps = panel.chunks_exact(c * VECTORS).zip(source.tap_offsets());
                for (w, offset) in taps {
                    let xs: [&[f32]; ROWS] = std::array::from_fn(|i| &input[at[i] + offset..][..c]);
                    step(simd, &xs, w, &mut acc);
                }
                for (i, acc) in acc.chunks_exact(VECTORS).enumerate().take(pixels - first) {
                    let at = (first + i) * outputs + p * width;
                    let (dst, _) = S::as_mut_simd_f32s(&mut out[at..][..width]);
                    dst.copy_from_slice(acc);
                }
            }
        }
    }
}

/// What a kernel gradient sums over: one padded image (`shape` before padding) and the
/// gradient of its convolution's output (`[pixel][outputs]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GradTerms<'a> {
    pub(crate) padded: &'a [f32],
    pub(crate) grad: &'a [f32],
    pub(crate) shape: Images,
    pub(crate) outputs: usize,
}

/// Adds to `sums` (`[tap · input][width]`, the kernel gradient's rows for one panel of output
/// channels) the terms of one padded image: row `r` (tap `r / c`, input channel `r % c`)
/// gets `Σ_pixel padded[pixel + tap][channel] · grad[pixel][panel's channels]`, pixels in
/// order.
pub(crate) fn add_kernel_grad(terms: GradTerms, panel: usize, sums: &mut [f32]) {
    dispatch(KernelGrad { terms, panel, sums });
}

struct KernelGrad<'a> {
    terms: GradTerms<'a>,
    panel: usize,
    sums: &'a mut [f32],
}

impl WithSimd for KernelGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let KernelGrad {
            terms:
                GradTerms {
                    padded,
                    grad,
                    shape,
                    outputs,
                },
            panel,
            sums,
        } = self;
        let c = shape.channels;
        let width = S::F32_LANES * VECTORS;
        let rows = TAPS * c;
        let row_len = (shape.side + 2 * PAD) * c;
        let (sums, _) = S::as_mut_simd_f32s(sums);
        for first in (0..rows).step_by(ROWS) {
            let row = block(first, rows);
            let offsets: [usize; ROWS] =
                std::array::from_fn(|i| shape.tap_offset(row[i] / c) + row[i] % c);
            let mut acc: [S::f32s; ROWS * VECTORS] =
                std::array::from_fn(|i| sums[row[i / VECTORS] * VECTORS + i % VECTORS]);
            for (y, grad_row) in grad.chunks_exact(shape.side * outputs).enumerate() {
                let padded_row = &padded[y * row_len..];
                for (x, g) in grad_row.chunks_exact(outputs).enumerate() {
                    let (g, _) = S::as_simd_f32s(&g[panel * width..][..width]);
                    let at = x * c;
                    let xs: [f32; ROWS] = std::array::from_fn(|i| padded_row[at + offsets[i]]);
                    step_transposed(simd, &xs, g, &mut acc);
                }
            }
            for (i, acc) in acc.chunks_exact(VECTORS).enumerate().take(rows - first) {
                sums[(first + i) * VECTORS..][..VECTORS].copy_from_slice(acc);
            }
        }
    }
}

/// Adds to `sums` (`[output][tap][input]`) the kernel-gradient terms of one padded image
/// with many input channels (a multiple of [`panel_width`]): entry (o, tap, ci) gets
/// `Σ_pixel padded[pixel + tap][ci] · grad[pixel][o]`, pixels in order. A step holds 6
/// output channels × 2 vectors of input channels, loading the inputs a tap reads as vectors
/// (they are contiguous) and broadcasting the gradients.
pub(crate) fn add_kernel_grad_wide(terms: GradTerms, sums: &mut [f32]) {
    dispatch(KernelGradWide { terms, sums });
}

struct KernelGradWide<'a> {
    terms: GradTerms<'a>,
    sums: &'a mut [f32],
}

impl WithSimd for KernelGradWide<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let KernelGradWide {
            terms:
                GradTerms {
                    padded,
                    grad,
                    shape,
                    outputs,
                },
            sums,
        } = self;
        let (c, side) = (shape.channels, shape.side);
        let width = S::F32_LANES * VECTORS;
        let row_len = (side + 2 * PAD) * c;
        let per_output = TAPS * c / S::F32_LANES;
        let (sums, _) = S::as_mut_simd_f32s(sums);
        for tap in 0..TAPS {
            let offset = shape.tap_offset(tap);
            for first_input in (0..c).step_by(width) {
                let column = (tap * c + first_input) / S::F32_LANES;
                for first in (0..outputs).step_by(ROWS) {
                    let o = block(first, outputs);
                    let mut acc: [S::f32s; ROWS * VECTORS] = std::array::from_fn(|i| {
                        sums[o[i / VECTORS] * per_output + column + i % VECTORS]
                    });
                    for (y, grad_row) in grad.chunks_exact(side * outputs).enumerate() {
                        let inputs = &padded[y * row_len + offset + first_input..];
                        for (x, g) in grad_row.chunks_exact(outputs).enumerate() {
                            let (xs, _) = S::as_simd_f32s(&inputs[x * c..][..width]);
                            let gs: [f32; ROWS] = std::array::from_fn(|i| g[o[i]]);
                            step_transposed(simd, &gs, xs, &mut acc);
                        }
                    }
                    for (i, acc) in acc.chunks_exact(VECTORS).enumerate().take(outputs - first) {
                        sums[(first + i) * per_output + column..][..VECTORS].copy_from_slice(acc);
                    }
                }
            }
        }
    }
}

/// `inputsᵀ × grads` (`inputs` `[batch][rows]`, `grads` `[batch][outputs]`, `outputs` a
/// multiple of [`panel_width`]) into `out` (`[rows][outputs]`): a linear layer's weight
/// gradient written in place, each entry summed over the batch in order. Blocks of rows go to
/// the thread pool, each written by one thread.
pub(crate) fn outer_product_sum(inputs: &[f32], grads: &[f32], outputs: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    let rows = out.len() / outputs;
    out.par_chunks_mut(OUTER_BLOCK_ROWS * outputs)
        .enumerate()
        .for_each(|(block, out)| {
            dispatch(OuterSum {
                inputs,
                rows,
                first_row: block * OUTER_BLOCK_ROWS,
                grads,
                outputs,
                out,
            })
        });
}

/// Rows of an outer-product sum a task writes: 48 (8 steps), so fc1's 3,136 rows make 66
/// tasks to share between cores.
const OUTER_BLOCK_ROWS: usize = ROWS * 8;

struct OuterSum<'a> {
    inputs: &'a [f32],
    rows: usize,
    first_row: usize,
    grads: &'a [f32],
    outputs: usize,
    out: &'a mut [f32],
}

impl WithSimd for OuterSum<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let OuterSum {
            inputs,
            rows,
            first_row,
            grads,
            outputs,
            out,
        } = self;
        let width = S::F32_LANES * VECTORS;
        let count = out.len() / outputs;
        for first in (0..count).step_by(ROWS) {
            let row = block(first, count).map(|r| first_row + r);
            for panel in 0..outputs / width {
                let mut acc = [simd.splat_f32s(0.0); ROWS * VECTORS];
                for (x, g) in inputs.chunks_exact(rows).zip(grads.chunks_exact(outputs)) {
                    let (g, _) = S::as_simd_f32s(&g[panel * width..][..width]);
                    let xs: [f32; ROWS] = std::array::from_fn(|i| x[row[i]]);
                    step_transposed(simd, &xs, g, &mut acc);
                }
                for (i, acc) in acc.chunks_exact(VECTORS).enumerate().take(count - first) {
                    let at = (first + i) * outputs + panel * width;
                    let (dst, _) = S::as_mut_simd_f32s(&mut out[at..][..width]);
                    dst.copy_from_slice(acc);
                }
            }
        }
    }
}

/// One input channel after another: `acc[r · 2 + v] += xs[r][ci] · w[ci · 2 + v]`, the sums
/// held in registers.
#[inline(always)]
fn step<S: Simd>(simd: S, xs: &[&[f32]; ROWS], w: &[S::f32s], acc: &mut [S::f32s; 12]) {
    let [x0, x1, x2, x3, x4, x5] = *xs;
    let c = x0.len();
    let (x1, x2, x3, x4, x5) = (&x1[..c], &x2[..c], &x3[..c], &x4[..c], &x5[..c]);
    let w = &w[..VECTORS * c];
    let [
        mut a0,
        mut a1,
        mut a2,
        mut a3,
        mut a4,
        mut a5,
        mut a6,
        mut a7,
        mut a8,
        mut a9,
        mut a10,
        mut a11,
    ] = *acc;
    for ci in 0..c {
        let (w0, w1) = (w[2 * ci], w[2 * ci + 1]);
        let b = simd.splat_f32s(x0[ci]);
        a0 = simd.mul_add_f32s(b, w0, a0);
        a1 = simd.mul_add_f32s(b, w1, a1);
        let b = simd.splat_f32s(x1[ci]);
        a2 = simd.mul_add_f32s(b, w0, a2);
        a3 = simd.mul_add_f32s(b, w1, a3);
        let b = simd.splat_f32s(x2[ci]);
        a4 = simd.mul_add_f32s(b, w0, a4);
        a5 = simd.mul_add_f32s(b, w1, a5);
        let b = simd.splat_f32s(x3[ci]);
        a6 = simd.mul_add_f32s(b, w0, a6);
        a7 = simd.mul_add_f32s(b, w1, a7);
        let b = simd.splat_f32s(x4[ci]);
        a8 = simd.mul_add_f32s(b, w0, a8);
        a9 = simd.mul_add_f32s(b, w1, a9);
        let b = simd.splat_f32s(x5[ci]);
        a10 = simd.mul_add_f32s(b, w0, a10);
        a11 = simd.mul_add_f32s(b, w1, a11);
    }
    *acc = [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11];
}

/// One pixel's terms: `acc[r · 2 + v] += xs[r] · g[v]`.
#[inline(always)]
fn step_transposed<S: Simd>(simd: S, xs: &[f32; ROWS], g: &[S::f32s], acc: &mut [S::f32s; 12]) {
    let (g0, g1) = (g[0], g[1]);
    for (pair, &x) in acc.chunks_exact_mut(VECTORS).zip(xs) {
        let b = simd.splat_f32s(x);
        pair[0] = simd.mul_add_f32s(b, g0, pair[0]);
        pair[1] = simd.mul_add_f32s(b, g1, pair[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 2_654_435_761) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    /// The input value a tap reads for an output pixel (zero in the padding).
    fn source(image: &[f32], shape: Images, pixel: usize, tap: usize, ci: usize) -> f32 {
        let (y, x) = (pixel / shape.side, pixel % shape.side);
        let (y, x) = (y + tap / KERNEL, x + tap % KERNEL);
        let inside = |v: usize| (PAD..shape.side + PAD).contains(&v);
        if inside(y) && inside(x) {
            image[((y - PAD) * shape.side + x - PAD) * shape.channels + ci]
        } else {
            0.0
        }
    }

    #[test]
    fn convolution_and_kernel_gradient_are_the_plain_sums() {
        // 7×7 images: blocks of six pixels end in a short one; three channels: kernel rows
        // (75) too.
        let shape = Images {
            side: 7,
            channels: 3,
        };
        let outputs = panel_width() * 2;
        let image = values(shape.image_len(), 1);
        let kernel = values(TAPS * shape.channels * outputs, 2);
        let mut padded = vec![f32::NAN; shape.padded_len()];
        pad(&image, shape, &mut padded);
        let mut out = vec![f32::NAN; shape.pixels() * outputs];
        convolve(
            &padded,
            Source::Padded(shape),
            &panels(&kernel, outputs),
            outputs,
            &mut out,
        );
        let c = shape.channels;
        for pixel in 0..shape.pixels() {
            for o in 0..outputs {
                let want: f64 = (0..TAPS * c)
                    .map(|r| {
                        let x = source(&image, shape, pixel, r / c, r % c);
                        f64::from(x) * f64::from(kernel[r * outputs + o])
                    })
                    .sum();
                let got = out[pixel * outputs + o];
                assert!((f64::from(got) - want).abs() < 1e-4, "{pixel} {o}");
            }
        }

        let grad = values(shape.pixels() * outputs, 3);
        let width = panel_width();
        let want = |r: usize, o: usize| -> f64 {
            (0..shape.pixels())
                .map(|p| {
                    let x = source(&image, shape, p, r / c, r % c);
                    f64::from(x) * f64::from(grad[p * outputs + o])
                })
                .sum()
        };
        for panel in 0..2 {
            let mut sums = vec![1.0f32; TAPS * c * width];
            let terms = GradTerms {
                padded: &padded,
                grad: &grad,
                shape,
                outputs,
            };
            add_kernel_grad(terms, panel, &mut sums);
            for r in 0..TAPS * c {
                for v in 0..width {
                    let want = 1.0 + want(r, panel * width + v);
                    let got = sums[r * width + v];
                    assert!((f64::from(got) - want).abs() < 1e-4, "{r} {v}");
                }
            }
        }
    }

    #[test]
    fn the_wide_kernel_gradient_is_the_plain_sums() {
        // As many input channels as a panel has outputs; 7 outputs: a block of six, then a
        // short one.
        let shape = Images {
            side: 7,
            channels: panel_width(),
        };
        let (c, outputs) = (shape.channels, 7);
        let image = values(shape.image_len(), 4);
        let mut padded = vec![f32::NAN; shape.padded_len()];
        pad(&image, shape, &mut padded);
        let grad = values(shape.pixels() * outputs, 5);
        let mut sums = vec![1.0f32; outputs * TAPS * c];
        let terms = GradTerms {
            padded: &padded,
            grad: &grad,
            shape,
            outputs,
        };
        add_kernel_grad_wide(terms, &mut sums);
        for o in 0..outputs {
            for tap in 0..TAPS {
                for ci in 0..c {
                    let want: f64 = 1.0
                        + (0..shape.pixels())
                            .map(|p| {
                                let x = source(&image, shape, p, tap, ci);
                                f64::from(x) * f64::from(grad[p * outputs + o])
                            })
                            .sum::<f64>();
                    let got = sums[(o * TAPS + tap) * c + ci];
                    assert!((f64::from(got) - want).abs() < 1e-4, "{o} {tap} {ci}");
                }
            }
        }
    }

    #[test]
    fn patch_rows_convolve_as_the_padded_image() {
        let shape = Images {
            side: 9,
            channels: 1,
        };
        let outputs = panel_width();
        let image = values(shape.image_len(), 6);
        let kernel = values(TAPS * outputs, 7);
        let panels = panels(&kernel, outputs);
        let mut padded = vec![f32::NAN; shape.padded_len()];
        pad(&image, shape, &mut padded);
        let mut rows = vec![f32::NAN; shape.pixels() * TAPS];
        patches(&image, shape.side, &mut rows);
        let (mut a, mut b) = (vec![f32::NAN; 81 * outputs], vec![f32::NAN; 81 * outputs]);
        convolve(&padded, Source::Padded(shape), &panels, outputs, &mut a);
        convolve(&rows, Source::Patches(shape), &panels, outputs, &mut b);
        // The same terms in the same order: the same bits.
        assert_eq!(a, b);
    }

    #[test]
    fn the_scalar_code_gives_the_same_bits() {
        let Some(v3) = pulp::x86::V3::try_new() else {
            return; // nothing wider than scalar code here: nothing to compare
        };
        let scalar = pulp::Scalar::new();
        let shape = Images {
            side: 7,
            channels: 16,
        };
        let (c, outputs) = (shape.channels, 32);
        let image = values(shape.image_len(), 8);
        let kernel = values(TAPS * c * outputs, 9);
        let grad = values(shape.pixels() * outputs, 10);
        let mut padded = vec![f32::NAN; shape.padded_len()];
        pad(&image, shape, &mut padded);
        let run = |wide: bool| {
            let width = if wide { 16 } else { 2 };
            let panels = panels_of_width(&kernel, outputs, width);
            let mut out = vec![f32::NAN; shape.pixels() * outputs];
            let op = Convolve {
                input: &padded,
                source: Source::Padded(shape),
                panels: &panels,
                outputs,
                out: &mut out,
            };
            let mut narrow_sums = vec![0.0f32; TAPS * c * width];
            let terms = GradTerms {
                padded: &padded,
                grad: &grad,
                shape,
                outputs,
            };
            let narrow = KernelGrad {
                terms,
                panel: 1,
                sums: &mut narrow_sums,
            };
            let mut wide_sums = vec![0.0f32; outputs * TAPS * c];
            let wide_op = KernelGradWide {
                terms,
                sums: &mut wide_sums,
            };
            if wide {
                Simd::vectorize(v3, op);
                Simd::vectorize(v3, narrow);
                Simd::vectorize(v3, wide_op);
            } else {
                Simd::vectorize(scalar, op);
                Simd::vectorize(scalar, narrow);
                Simd::vectorize(scalar, wide_op);
            }
            // The narrow gradient's panel 1, as output channels 16..32 (or 2..4).
            let narrow: Vec<f32> = narrow_sums
                .chunks_exact(width)
                .flat_map(|row| row[..2].to_vec())
                .collect();
            (out, narrow, wide_sums)
        };
        let (v3_out, v3_narrow, v3_wide) = run(true);
        let (scalar_out, scalar_narrow, scalar_wide) = run(false);
        assert_eq!(v3_out, scalar_out);
        assert_eq!(v3_wide, scalar_wide);
        // Panel 1 is output channels 2 and 3 in scalar code.
        for (r, pair) in scalar_narrow.chunks_exact(2).enumerate() {
            let (tap, ci) = (r / c, r % c);
            for (v, &value) in pair.iter().enumerate() {
                assert_eq!(value, v3_wide[((2 + v) * TAPS + tap) * c + ci]);
            }
        }
        // Panel 1 is outputs 16.. with AVX2 and 2.. in scalar code: compare output channel
        // 16's and 17's sums through the narrow kernel against the wide kernel's.
        for (r, pair) in v3_narrow.chunks_exact(2).enumerate() {
            let (tap, ci) = (r / c, r % c);
            for (v, &value) in pair.iter().enumerate() {
                assert_eq!(value, v3_wide[((16 + v) * TAPS + tap) * c + ci]);
            }
        }
    }

    #[test]
    fn an_outer_product_sum_is_the_plain_one() {
        // 53 rows: a task's 48, then 5 (a short block); three examples.
        let (batch, rows, outputs) = (3, 53, 2 * panel_width());
        let inputs = values(batch * rows, 11);
        let grads = values(batch * outputs, 12);
        let mut out = vec![f32::NAN; rows * outputs];
        outer_product_sum(&inputs, &grads, outputs, &mut out);
        for r in 0..rows {
            for o in 0..outputs {
                let want: f64 = (0..batch)
                    .map(|b| f64::from(inputs[b * rows + r]) * f64::from(grads[b * outputs + o]))
                    .sum();
                assert!(
                    (f64::from(out[r * outputs + o]) - want).abs() < 1e-5,
                    "{r} {o}"
                );
            }
        }
    }
}
