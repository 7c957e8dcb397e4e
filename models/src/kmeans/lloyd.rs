//! Lloyd's algorithm: the federated statistics of one step, weighted local iterations and
//! inertia.

use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;

use super::{check_matrix, check_weights, nearest};
use crate::error::{ModelError, Result};

/// One client's contribution to a federated Lloyd step for fixed centroids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LloydStats {
    /// `k x dim` row-major: sum of the points assigned to each centroid (accumulated in `f64`,
    /// rounded to `f32` once at the end).
    pub sums: Vec<f32>,
    /// Points assigned to each centroid.
    pub counts: Vec<u64>,
    /// Sum of squared distances of the points to their assigned centroid.
    pub inertia: f64,
    /// `k x num_classes` row-major: labels of the points assigned to each centroid.
    pub label_counts: Vec<u64>,
}

/// Assigns every example of `data` to its nearest centroid (squared euclidean, ties to the
/// lowest index) and returns the per-cluster sums, counts, label counts and the inertia.
///
/// `centroids` is `k x data.num_features` row-major. Errors when `k == 0`, on a length or
/// dimension mismatch, non-finite centroids, an inconsistent dataset, or a label not below
/// `data.num_classes`. An empty dataset yields all-zero statistics.
pub fn lloyd_stats(centroids: &[f32], k: usize, data: &Dataset) -> Result<LloydStats> {
    let dim = data.num_features;
    if k == 0 {
        return Err(ModelError::KMeans("k must be positive".into()));
    }
    if check_matrix("centroids", centroids, dim)? != k {
        return Err(ModelError::KMeans(format!(
            "{} centroid values are not {k} centroids of dimension {dim}",
            centroids.len()
        )));
    }
    let n = data.labels.len();
    if Some(data.features.len()) != n.checked_mul(dim) {
        return Err(ModelError::KMeans(
            "dataset features do not match its labels".into(),
        ));
    }
    let classes = data.num_classes;
    if let Some(bad) = data.labels.iter().find(|&&l| l as usize >= classes) {
        return Err(ModelError::KMeans(format!(
            "label {bad} out of range for {classes} classes"
        )));
    }

    let mut sums = vec![0.0f64; k * dim];
    let mut counts = vec![0u64; k];
    let mut label_counts = vec![0u64; k * classes];
    let mut total = 0.0;
    for (point, &label) in data.features.chunks_exact(dim).zip(&data.labels) {
        let (j, d) = nearest(point, centroids, dim);
        total += d;
        counts[j] += 1;
        label_counts[j * classes + label as usize] += 1;
        for (s, &x) in sums[j * dim..(j + 1) * dim].iter_mut().zip(point) {
            *s += f64::from(x);
        }
    }
    Ok(LloydStats {
        sums: sums.into_iter().map(|s| s as f32).collect(),
        counts,
        inertia: total,
        label_counts,
    })
}

/// Weighted Lloyd iterations from `init` (`k x dim`) over `points` (`n x dim`) with one
/// non-negative weight per point.
///
/// Each iteration moves every centroid to the weighted mean of its assigned points; a
/// centroid whose assigned weight is zero keeps its previous position. Stops after
/// `max_iters` iterations or once no centroid moved by more than `tol` (euclidean), so
/// `tol = 0` runs to a fixed point. Returns the centroids, the total weight assigned to each
/// and the weighted inertia, all for the returned centroids.
pub fn lloyd(
    points: &[f32],
    weights: &[f64],
    dim: usize,
    init: &[f32],
    max_iters: usize,
    tol: f64,
) -> Result<(Vec<f32>, Vec<f64>, f64)> {
    let n = check_matrix("points", points, dim)?;
    let k = check_matrix("initial centroids", init, dim)?;
    check_weights(weights, n)?;
    if k == 0 {
        return Err(ModelError::KMeans(
            "need at least one initial centroid".into(),
        ));
    }
    if !tol.is_finite() || tol < 0.0 {
        return Err(ModelError::KMeans(format!(
            "tolerance must be finite and non-negative, got {tol}"
        )));
    }
    let mut centroids = init.to_vec();
    for _ in 0..max_iters {
        let step = assign(points, weights, dim, &centroids);
        let mut max_shift: f64 = 0.0;
        for (j, c) in centroids.chunks_exact_mut(dim).enumerate() {
            let w = step.weights[j];
            if w <= 0.0 {
                continue;
            }
            let mut shift = 0.0;
            for (x, s) in c.iter_mut().zip(&step.sums[j * dim..(j + 1) * dim]) {
                let new = (s / w) as f32;
                let d = f64::from(new) - f64::from(*x);
                shift += d * d;
                *x = new;
            }
            max_shift = max_shift.max(shift.sqrt());
        }
        if max_shift <= tol {
            break;
        }
    }
    let last = assign(points, weights, dim, &centroids);
    Ok((centroids, last.weights, last.inertia))
}

/// Weighted assignment of points to centroids.
struct Assignment {
    sums: Vec<f64>,
    weights: Vec<f64>,
    inertia: f64,
}

fn assign(points: &[f32], weights: &[f64], dim: usize, centroids: &[f32]) -> Assignment {
    let k = centroids.len() / dim;
    let mut out = Assignment {
        sums: vec![0.0; k * dim],
        weights: vec![0.0; k],
        inertia: 0.0,
    };
    for (point, &w) in points.chunks_exact(dim).zip(weights) {
        if w == 0.0 {
            continue;
        }
        let (j, d) = nearest(point, centroids, dim);
        out.weights[j] += w;
        out.inertia += w * d;
        for (s, &x) in out.sums[j * dim..(j + 1) * dim].iter_mut().zip(point) {
            *s += w * f64::from(x);
        }
    }
    out
}

/// Sum over `points` (`n x dim`) of the squared distance to the nearest of the `k` centroids.
///
/// Returns NaN when the shapes are inconsistent (`k == 0`, `dim == 0` or lengths that do not
/// match) and 0 for no points.
pub fn inertia(centroids: &[f32], k: usize, points: &[f32], dim: usize) -> f64 {
    if k == 0
        || dim == 0
        || Some(centroids.len()) != k.checked_mul(dim)
        || !points.len().is_multiple_of(dim)
    {
        return f64::NAN;
    }
    points
        .chunks_exact(dim)
        .map(|p| nearest(p, centroids, dim).1)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::sq_dist;

    fn data() -> Dataset {
        let features = vec![
            0.0, 0.0, 1.0, 0.0, 10.0, 10.0, 11.0, 10.0, 5.0, 5.0, -3.0, 2.0,
        ];
        Dataset::new(features, vec![0, 0, 1, 1, 2, 0], 2, 3, None).unwrap()
    }

    #[test]
    fn lloyd_stats_match_a_naive_computation() {
        let data = data();
        let centroids = [0.0, 0.0, 10.0, 10.0, 100.0, 100.0];
        let stats = lloyd_stats(&centroids, 3, &data).unwrap();
        let (mut sums, mut counts, mut labels, mut total) =
            (vec![0.0f32; 6], vec![0u64; 3], vec![0u64; 9], 0.0);
        for i in 0..data.len() {
            let p = data.row(i);
            let d: Vec<f64> = (0..3)
                .map(|j| sq_dist(p, &centroids[2 * j..2 * j + 2]))
                .collect();
            let j = (0..3).fold(0, |b, j| if d[j] < d[b] { j } else { b });
            counts[j] += 1;
            labels[j * 3 + data.labels[i] as usize] += 1;
            sums[2 * j] += p[0];
            sums[2 * j + 1] += p[1];
            total += d[j];
        }
        assert_eq!(stats.counts, counts);
        assert_eq!(stats.sums, sums);
        assert_eq!(stats.label_counts, labels);
        assert!((stats.inertia - total).abs() < 1e-9);
        assert_eq!(stats.counts, vec![4, 2, 0]);
        // (5, 5), label 2, is equidistant from both centres: the lower index wins.
        assert_eq!(stats.label_counts[..3], [3, 0, 1]);
        assert!((inertia(&centroids, 3, &data.features, 2) - total).abs() < 1e-9);
    }

    #[test]
    fn lloyd_stats_refuse_bad_input() {
        let data = data();
        assert!(lloyd_stats(&[], 0, &data).is_err());
        assert!(lloyd_stats(&[0.0; 3], 1, &data).is_err());
        assert!(lloyd_stats(&[0.0; 4], 1, &data).is_err());
        assert!(lloyd_stats(&[0.0, f32::NAN], 1, &data).is_err());
        let mut bad = data.clone();
        bad.labels[0] = 3;
        assert!(lloyd_stats(&[0.0; 2], 1, &bad).is_err());
        let empty = data.subset(&[]).unwrap();
        let stats = lloyd_stats(&[0.0; 2], 1, &empty).unwrap();
        assert_eq!((stats.counts, stats.inertia), (vec![0], 0.0));
    }

    #[test]
    fn lloyd_uses_weights_and_keeps_empty_clusters() {
        let points = [0.0, 4.0, 100.0];
        let (c, w, inertia) = lloyd(&points, &[3.0, 1.0, 0.0], 1, &[1.0, 50.0], 10, 0.0).unwrap();
        // The zero-weight point is ignored, so the second centroid keeps its place.
        assert_eq!(c, vec![1.0, 50.0]);
        assert_eq!(w, vec![4.0, 0.0]);
        assert!((inertia - (3.0 * 1.0 + 9.0)).abs() < 1e-12);
        assert!(lloyd(&points, &[1.0; 2], 1, &[0.0], 10, 0.0).is_err());
        assert!(lloyd(&points, &[1.0; 3], 1, &[], 10, 0.0).is_err());
        assert!(lloyd(&points, &[1.0; 3], 1, &[0.0], 10, -1.0).is_err());
    }

    #[test]
    fn lloyd_converges_on_two_groups() {
        let points = [0.0, 0.0, 1.0, 1.0, 9.0, 9.0, 10.0, 10.0];
        let (c, w, inertia) = lloyd(&points, &[1.0; 4], 2, &[0.0, 0.0, 1.0, 1.0], 20, 0.0).unwrap();
        assert_eq!(c, vec![0.5, 0.5, 9.5, 9.5]);
        assert_eq!(w, vec![2.0, 2.0]);
        assert!((inertia - 2.0).abs() < 1e-12);
    }
}
