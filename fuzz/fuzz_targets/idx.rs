#![no_main]
//! Fuzz target `idx`: the IDX (MNIST / Fashion-MNIST) image and label decoders.
//!
//! The same bytes go to both decoders. Besides "never panic, never allocate more than the
//! input justifies", a successful decode must agree with its header: `count * rows * cols`
//! pixels in `[0, 1]`, one label per byte after the 8-byte label header.

use libfuzzer_sys::fuzz_target;
use shoal_datasets::{read_idx_images, read_idx_labels};

fuzz_target!(|data: &[u8]| {
    if let Ok((count, rows, cols, pixels)) = read_idx_images(data) {
        assert!(rows > 0 && cols > 0);
        assert_eq!(Some(pixels.len()), count.checked_mul(rows * cols));
        assert_eq!(pixels.len(), data.len() - 16);
        assert!(pixels.iter().all(|p| (0.0..=1.0).contains(p)));
    }
    if let Ok(labels) = read_idx_labels(data) {
        assert_eq!(labels.len(), data.len() - 8);
        assert!(labels.iter().all(|&l| l <= 255));
    }
});
