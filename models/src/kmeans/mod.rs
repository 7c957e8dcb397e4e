//! k-means building blocks for federated clustering, in plain Rust on row-major slices.
//!
//! * [`lloyd_stats`]: one client's share of a federated Lloyd step (per-cluster sums, counts,
//!   inertia and label counts for the current centroids).
//! * [`kmeans_pp`], [`farthest_first`]: seeding; [`lloyd`]: weighted Lloyd iterations;
//!   [`local_kmeans`]: the client step of k-FED (Dennis et al. 2021, "Heterogeneity for the
//!   Win: One-Shot Federated Clustering").
//! * [`nmi`], [`ari`] and their contingency-table forms: clustering quality against labels.
//!
//! Conventions: centroids are `k x dim` row-major; distances are squared euclidean, computed
//! in `f64`; a point goes to the nearest centroid, ties to the lowest index.

mod lloyd;
mod local;
mod metrics;
mod seeding;

pub use lloyd::{LloydStats, inertia, lloyd, lloyd_stats};
pub use local::local_kmeans;
pub use metrics::{ari, ari_from_contingency, nmi, nmi_from_contingency};
pub use seeding::{farthest_first, kmeans_pp};

use crate::error::{ModelError, Result};

/// Squared euclidean distance, accumulated in `f64`.
pub(crate) fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum()
}

/// Index of and squared distance to the nearest of the `dim`-wide `centroids` (ties go to the
/// lowest index). `centroids` must hold at least one row.
pub(crate) fn nearest(point: &[f32], centroids: &[f32], dim: usize) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (j, c) in centroids.chunks_exact(dim).enumerate() {
        let d = sq_dist(point, c);
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}

/// Checks a `rows x dim` matrix: positive `dim`, length a multiple of it, finite values.
/// Returns the number of rows.
pub(crate) fn check_matrix(what: &str, values: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(ModelError::KMeans("dimension must be positive".into()));
    }
    if !values.len().is_multiple_of(dim) {
        return Err(ModelError::KMeans(format!(
            "{what} hold {} values, not a multiple of dimension {dim}",
            values.len()
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::KMeans(format!(
            "{what} contain non-finite values"
        )));
    }
    Ok(values.len() / dim)
}

/// Checks per-point weights: one per point, finite and non-negative.
pub(crate) fn check_weights(weights: &[f64], n: usize) -> Result<()> {
    if weights.len() != n {
        return Err(ModelError::KMeans(format!(
            "{} weights for {n} points",
            weights.len()
        )));
    }
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(ModelError::KMeans(
            "weights must be finite and non-negative".into(),
        ));
    }
    Ok(())
}
