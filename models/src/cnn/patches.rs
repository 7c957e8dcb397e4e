//! Convolution as a matrix product: each output pixel's 5×5 input patch laid out as one row
//! ("im2col").
//!
//! Images are channels-last (`[image][y][x][channel]`) so a patch row is 25 runs of
//! `channels` contiguous values, copied whole; a row's columns are ordered (ky, kx, channel).
//! Rows are written image by image over the thread pool, each image by one thread, so the
//! result does not depend on the thread count.

use rayon::prelude::*;

/// Side of the square kernels.
pub(crate) const KERNEL: usize = 5;

/// Zero padding on every side ("same" convolution at stride 1).
const PAD: usize = 2;

/// The shape of a batch of square channels-last images.
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

    /// Values of one patch row.
    pub(crate) fn row_len(self) -> usize {
        KERNEL * KERNEL * self.channels
    }

    /// The input pixel a kernel tap reads for an output pixel, `None` in the padding.
    fn source(self, out: (usize, usize), tap: (usize, usize)) -> Option<usize> {
        let y = (out.0 + tap.0)
            .checked_sub(PAD)
            .filter(|&y| y < self.side)?;
        let x = (out.1 + tap.1)
            .checked_sub(PAD)
            .filter(|&x| x < self.side)?;
        Some((y * self.side + x) * self.channels)
    }
}

/// Writes the patch rows of `images` into `rows` (one row per output pixel, image by image:
/// `images.len() / shape.image_len()` × `side²` rows of [`Images::row_len`]); every value
/// of `rows` is written, zeros in the padding.
pub(crate) fn gather(images: &[f32], shape: Images, rows: &mut [f32]) {
    let (c, pixels) = (shape.channels, shape.side * shape.side);
    rows.par_chunks_mut(pixels * shape.row_len())
        .zip(images.par_chunks(shape.image_len()))
        .for_each(|(out, image)| {
            for (pixel, row) in out.chunks_exact_mut(shape.row_len()).enumerate() {
                let at = (pixel / shape.side, pixel % shape.side);
                for ky in 0..KERNEL {
                    for kx in 0..KERNEL {
                        let tap = ky * KERNEL + kx;
                        match (shape.source(at, (ky, kx)), c) {
                            // One channel: a value, not a slice (a copy call per value is slow).
                            (Some(src), 1) => row[tap] = image[src],
                            (Some(src), _) => {
                                row[tap * c..][..c].copy_from_slice(&image[src..][..c]);
                            }
                            (None, _) => row[tap * c..][..c].fill(0.0),
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_row_holds_its_neighbourhood_and_zeros_outside() {
        let shape = Images {
            side: 3,
            channels: 2,
        };
        let image: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let mut rows = vec![f32::NAN; 9 * 50];
        gather(&image, shape, &mut rows);
        assert_eq!(rows.len(), 9 * 50);
        // Centre pixel (1, 1): tap (2, 2) is the pixel itself, tap (0, 0) is padding.
        let centre = &rows[4 * 50..5 * 50];
        assert_eq!(&centre[(2 * 5 + 2) * 2..][..2], &[8.0, 9.0]);
        assert_eq!(&centre[0..2], &[0.0, 0.0]);
        // Tap (3, 4) of pixel (0, 0) reads pixel (1, 2).
        assert_eq!(&rows[(3 * 5 + 4) * 2..][..2], &[10.0, 11.0]);
    }
}
