//! The machine's practical matrix-product speed, as the models' backend reaches it: the
//! yardstick training and evaluation throughput is reported against.

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};

use crate::device::{inference_device, tensor_values};
use crate::error::Result;

/// Single-precision GFLOP/s of the backend's product of two `n`×`n` matrices, the best of
/// `repeats` timed products after one untimed one (all cores the backend uses).
pub fn gemm_gflops(n: usize, repeats: usize) -> Result<f64> {
    let device = inference_device();
    let a = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, &device);
    let mut best = f64::INFINITY;
    for i in 0..=repeats {
        let start = Instant::now();
        let product = a.clone().matmul(b.clone());
        // Reading one value back forces the product on lazy backends too.
        tensor_values(product.slice([0..1, 0..1]))?;
        if i > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}
