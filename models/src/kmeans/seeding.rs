//! Choosing initial centroids: k-means++ (Arthur & Vassilvitskii 2007) with point weights,
//! and farthest-first traversal (Gonzalez 1985).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shoal_datasets::rng::rng_for;

use super::{check_matrix, check_weights, sq_dist};
use crate::error::{ModelError, Result};

/// Stream tag of the k-means++ RNG (`rng_for(seed, &[0x6b70])`).
const KMEANS_PP_STREAM: u64 = 0x6b70;
/// Stream tag of the farthest-first RNG (`rng_for(seed, &[0x6666])`).
const FARTHEST_FIRST_STREAM: u64 = 0x6666;

/// k-means++ seeding over weighted points (`n x dim` row-major, one weight per point; use
/// 1.0 for raw data). Returns `k x dim` centroids, each a copy of one of the points.
///
/// The first centre is drawn with probability proportional to weight, each next one
/// proportional to `weight * D²`, where `D` is the distance to the nearest centre chosen so
/// far; when every weighted `D²` is zero (fewer distinct points than `k`) the draw falls back
/// to weight alone, so centres may repeat. Randomness comes from
/// `rng_for(seed, &[0x6b70])`. Errors when `k == 0`, `k > n`, no weight is positive, or on
/// malformed input.
pub fn kmeans_pp(
    points: &[f32],
    weights: &[f64],
    dim: usize,
    k: usize,
    seed: u64,
) -> Result<Vec<f32>> {
    let n = check_matrix("points", points, dim)?;
    check_weights(weights, n)?;
    check_k(k, n)?;
    if !weights.iter().any(|&w| w > 0.0) {
        return Err(ModelError::KMeans("no point has a positive weight".into()));
    }
    let mut rng = rng_for(seed, &[KMEANS_PP_STREAM]);
    let row = |i: usize| &points[i * dim..(i + 1) * dim];

    let first = draw(&mut rng, weights);
    let mut centres = row(first).to_vec();
    let mut best: Vec<f64> = (0..n).map(|i| sq_dist(row(i), row(first))).collect();
    while centres.len() < k * dim {
        let scores: Vec<f64> = best.iter().zip(weights).map(|(d, w)| d * w).collect();
        let next = if scores.iter().any(|&s| s > 0.0) {
            draw(&mut rng, &scores)
        } else {
            draw(&mut rng, weights)
        };
        centres.extend_from_slice(row(next));
        for (i, b) in best.iter_mut().enumerate() {
            *b = b.min(sq_dist(row(i), row(next)));
        }
    }
    Ok(centres)
}

/// Farthest-first traversal: the first centre is a point drawn uniformly with
/// `rng_for(seed, &[0x6666])`, then repeatedly the point farthest from all chosen centres
/// (ties to the lowest index). Returns `k x dim` centroids copied from `points`.
/// Errors when `k == 0`, `k > n` or on malformed input.
pub fn farthest_first(points: &[f32], dim: usize, k: usize, seed: u64) -> Result<Vec<f32>> {
    let n = check_matrix("points", points, dim)?;
    check_k(k, n)?;
    let row = |i: usize| &points[i * dim..(i + 1) * dim];
    let first = rng_for(seed, &[FARTHEST_FIRST_STREAM]).random_range(0..n);
    let mut centres = row(first).to_vec();
    let mut best: Vec<f64> = (0..n).map(|i| sq_dist(row(i), row(first))).collect();
    while centres.len() < k * dim {
        let mut next = 0;
        for (i, &d) in best.iter().enumerate() {
            if d > best[next] {
                next = i;
            }
        }
        centres.extend_from_slice(row(next));
        for (i, b) in best.iter_mut().enumerate() {
            *b = b.min(sq_dist(row(i), row(next)));
        }
    }
    Ok(centres)
}

fn check_k(k: usize, n: usize) -> Result<()> {
    if k == 0 || k > n {
        return Err(ModelError::KMeans(format!(
            "cannot choose {k} centres from {n} points"
        )));
    }
    Ok(())
}

/// Index drawn with probability proportional to the non-negative `scores` (some positive).
fn draw(rng: &mut ChaCha8Rng, scores: &[f64]) -> usize {
    let total: f64 = scores.iter().sum();
    let target = rng.random::<f64>() * total;
    let mut cumulative = 0.0;
    let mut last_positive = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > 0.0 {
            cumulative += s;
            last_positive = i;
            if cumulative > target {
                return i;
            }
        }
    }
    last_positive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmeans_pp_picks_distinct_data_points_deterministically() {
        let points = [0.0, 0.1, 5.0, 5.1, 10.0, 10.1];
        let a = kmeans_pp(&points, &[1.0; 6], 1, 3, 4).unwrap();
        assert_eq!(a, kmeans_pp(&points, &[1.0; 6], 1, 3, 4).unwrap());
        assert!(a.iter().all(|c| points.contains(c)));
        // Far-apart groups: every group gets a centre for most seeds.
        let spread = (0..20)
            .filter(|&seed| {
                let c = kmeans_pp(&points, &[1.0; 6], 1, 3, seed).unwrap();
                let mut groups: Vec<i32> = c.iter().map(|x| (x / 5.0) as i32).collect();
                groups.sort();
                groups == [0, 1, 2]
            })
            .count();
        assert!(spread >= 18, "{spread}");
    }

    #[test]
    fn kmeans_pp_respects_weights_and_duplicates() {
        // Only the weighted point can be drawn first, and a zero weight is never drawn.
        let points = [1.0, 2.0, 3.0];
        for seed in 0..10 {
            assert_eq!(
                kmeans_pp(&points, &[0.0, 1.0, 0.0], 1, 1, seed).unwrap(),
                vec![2.0]
            );
        }
        // Fewer distinct points than k: centres repeat rather than fail.
        let same = kmeans_pp(&[7.0, 7.0, 7.0], &[1.0; 3], 1, 3, 0).unwrap();
        assert_eq!(same, vec![7.0; 3]);
        assert!(kmeans_pp(&points, &[1.0; 3], 1, 4, 0).is_err());
        assert!(kmeans_pp(&points, &[1.0; 3], 1, 0, 0).is_err());
        assert!(kmeans_pp(&points, &[0.0; 3], 1, 1, 0).is_err());
        assert!(kmeans_pp(&points, &[1.0; 2], 1, 1, 0).is_err());
        assert!(kmeans_pp(&points, &[1.0, f64::NAN, 1.0], 1, 1, 0).is_err());
        assert!(kmeans_pp(&points, &[1.0; 3], 2, 1, 0).is_err());
    }

    #[test]
    fn farthest_first_takes_the_farthest_point_with_ties_to_the_lowest_index() {
        let points = [0.0, 5.0, -5.0, 1.0];
        let mut saw_first_zero = false;
        for seed in 0..32 {
            let c = farthest_first(&points, 1, 3, seed).unwrap();
            if c[0] == 0.0 {
                // 5 and -5 tie at distance 25 from 0: index 1 wins, then -5 is farthest.
                assert_eq!(c, vec![0.0, 5.0, -5.0]);
                saw_first_zero = true;
            }
            if c[0] == 5.0 {
                assert_eq!(c[1], -5.0);
            }
        }
        assert!(saw_first_zero);
        assert_eq!(
            farthest_first(&points, 1, 4, 3).unwrap(),
            farthest_first(&points, 1, 4, 3).unwrap()
        );
        assert!(farthest_first(&points, 1, 5, 0).is_err());
        assert!(farthest_first(&points, 0, 1, 0).is_err());
    }
}
