//! The client step of k-FED: cluster the local data into a few centres and report them with
//! their sizes.

use shoal_datasets::Dataset;

use super::{kmeans_pp, lloyd};
use crate::error::{ModelError, Result};

/// Lloyd iterations after seeding in [`local_kmeans`].
pub const LOCAL_KMEANS_ITERS: usize = 50;

/// Clusters the examples of `data` into `local_k` groups with k-means++ seeding (seeded by
/// `seed`) and up to [`LOCAL_KMEANS_ITERS`] Lloyd iterations (stopping early at a fixed
/// point), and returns the non-empty centres (`m x num_features` row-major, `m <= local_k`)
/// with the number of points in each.
///
/// `local_k` is clamped to the number of examples, so a client with fewer points than
/// `local_k` returns at most one centre per point; an empty dataset returns no centres.
/// Errors when `local_k == 0` or on malformed data.
pub fn local_kmeans(data: &Dataset, local_k: usize, seed: u64) -> Result<(Vec<f32>, Vec<u64>)> {
    if local_k == 0 {
        return Err(ModelError::KMeans("local_k must be positive".into()));
    }
    let dim = data.num_features;
    let n = data.labels.len();
    if Some(data.features.len()) != n.checked_mul(dim) {
        return Err(ModelError::KMeans(
            "dataset features do not match its labels".into(),
        ));
    }
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let k = local_k.min(n);
    let weights = vec![1.0; n];
    let init = kmeans_pp(&data.features, &weights, dim, k, seed)?;
    let (centres, sizes, _) = lloyd(&data.features, &weights, dim, &init, LOCAL_KMEANS_ITERS, 0.0)?;
    let mut kept = Vec::with_capacity(centres.len());
    let mut counts = Vec::with_capacity(sizes.len());
    for (centre, &size) in centres.chunks_exact(dim).zip(&sizes) {
        if size > 0.0 {
            kept.extend_from_slice(centre);
            counts.push(size.round() as u64);
        }
    }
    Ok((kept, counts))
}
