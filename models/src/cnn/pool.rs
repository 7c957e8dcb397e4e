//! 2×2 max pooling of channels-last images at stride 2, remembering which of the four inputs
//! won (a byte per output, not an index tensor), and its gradient.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::direct::Images;

/// Writes one pooled image (channels-last, half the side) into `pooled` and, per output,
/// which of its four inputs was the largest into `winners` (`dy * 2 + dx`; the first on
/// ties). Every value of both is written.
pub(crate) fn max_pool(image: &[f32], shape: Images, pooled: &mut [f32], winners: &mut [u8]) {
    super::direct::dispatch(MaxPool {
        image,
        shape,
        pooled,
        winners,
    });
}

/// [`max_pool`]'s loop, branch-free per channel and compiled (inlined into pulp's dispatch)
/// for the machine's vector instructions.
struct MaxPool<'a> {
    image: &'a [f32],
    shape: Images,
    pooled: &'a mut [f32],
    winners: &'a mut [u8],
}

impl WithSimd for MaxPool<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let MaxPool {
            image,
            shape,
            pooled,
            winners,
        } = self;
        let (c, half) = (shape.channels, shape.side / 2);
        let quad = pooled.chunks_exact_mut(c).zip(winners.chunks_exact_mut(c));
        for (out, (dst, won)) in quad.enumerate() {
            let (py, px) = (out / half, out % half);
            let at = |dy: usize, dx: usize| {
                &image[((2 * py + dy) * shape.side + 2 * px + dx) * c..][..c]
            };
            let (a, b, cc, d) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
            for i in 0..c {
                let (mut m, mut w) = (a[i], 0u8);
                if b[i] > m {
                    (m, w) = (b[i], 1);
                }
                if cc[i] > m {
                    (m, w) = (cc[i], 2);
                }
                if d[i] > m {
                    (m, w) = (d[i], 3);
                }
                dst[i] = m;
                won[i] = w;
            }
        }
    }
}

/// Writes into `input_grad` the gradient with respect to the pooling's input, through a ReLU
/// before it: each output's gradient goes to the input that won, where that input (after
/// the ReLU) is positive, which is where the pooled value (`pooled`, the winner's own) is;
/// every other input gets zero.
pub(crate) fn max_unpool_relu(
    grad: &[f32],
    winners: &[u8],
    pooled: &[f32],
    shape: Images,
    input_grad: &mut [f32],
) {
    let out_len = shape.image_len() / 4;
    input_grad
        .par_chunks_mut(shape.image_len())
        .zip(pooled.par_chunks(out_len))
        .zip(grad.par_chunks(out_len).zip(winners.par_chunks(out_len)))
        .for_each(|((input_grad, pooled), (grad, winners))| {
            super::direct::dispatch(Unpool {
                grad,
                winners,
                pooled,
                shape,
                input_grad,
            })
        });
}

/// [`max_unpool_relu`] for one image: every input written once (each belongs to one output),
/// branch-free per channel.
struct Unpool<'a> {
    grad: &'a [f32],
    winners: &'a [u8],
    pooled: &'a [f32],
    shape: Images,
    input_grad: &'a mut [f32],
}

impl WithSimd for Unpool<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Unpool {
            grad,
            winners,
            pooled,
            shape,
            input_grad,
        } = self;
        let (c, half) = (shape.channels, shape.side / 2);
        let outputs = grad.chunks_exact(c).zip(winners.chunks_exact(c));
        for (out, ((g, won), pooled)) in outputs.zip(pooled.chunks_exact(c)).enumerate() {
            let (py, px) = (out / half, out % half);
            for tap in 0..4u8 {
                let (y, x) = (2 * py + usize::from(tap / 2), 2 * px + usize::from(tap % 2));
                let dst = &mut input_grad[(y * shape.side + x) * c..][..c];
                for (((d, &g), &w), &p) in dst.iter_mut().zip(g).zip(won).zip(pooled) {
                    *d = if w == tap && p > 0.0 { g } else { 0.0 };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_keeps_the_largest_and_routes_its_gradient_back() {
        let shape = Images {
            side: 2,
            channels: 2,
        };
        // Pixels (0,0) (0,1) (1,0) (1,1), two channels each.
        let input = [1.0, 0.0, 3.0, 0.0, 2.0, 0.0, 3.0, 0.0];
        let (mut pooled, mut winners) = (vec![f32::NAN; 2], vec![9; 2]);
        max_pool(&input, shape, &mut pooled, &mut winners);
        assert_eq!(pooled, vec![3.0, 0.0]);
        // A tie goes to the first; channel 1 is all zeros (after a ReLU: no gradient).
        assert_eq!(winners, vec![1, 0]);
        let mut grad = vec![f32::NAN; 8];
        max_unpool_relu(&[5.0, 7.0], &winners, &pooled, shape, &mut grad);
        assert_eq!(grad, vec![0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
