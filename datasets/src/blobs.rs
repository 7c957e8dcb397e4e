//! Synthetic Gaussian blobs, a dataset with known clusters for testing k-means and for
//! experiments that need an arbitrary number of features or classes.
//!
//! Like scikit-learn's `make_blobs`: centres are drawn uniformly in `[-center_box,
//! center_box]^features`, and each example is its centre plus isotropic Gaussian noise of
//! standard deviation `cluster_std`. The label is the index of the blob it came from.
//!
//! # Separation rule
//!
//! A centre is rejected and redrawn if it lies closer than `6 * cluster_std` to an earlier
//! one. What decides whether two blobs can be told apart is the spread along the line joining
//! their centres, a one-dimensional Gaussian with standard deviation `cluster_std` whatever
//! the dimension; at distance `6σ` a point falls on the wrong side of the midpoint with
//! probability Φ(-3) ≈ 0.13%. So with this rule nearest-centre assignment recovers the labels
//! almost perfectly and k-means has a well-defined answer. Each centre gets at most
//! [`MAX_CENTER_DRAWS`] tries; if the box is too crowded, generation fails with a message
//! saying which knob to turn.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DatasetError, Result};
use crate::rng::{self, purpose};

/// Draws allowed per centre before giving up on placing it far enough from the others.
pub const MAX_CENTER_DRAWS: usize = 1_000;

/// Largest `samples * features` accepted (4 GiB of `f32`), so a typo on the command line
/// fails with a message instead of exhausting memory.
pub const MAX_BLOB_VALUES: usize = 1 << 30;

/// Parameters of [`blobs`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlobsConfig {
    /// Total number of examples, spread as evenly as possible over the blobs.
    pub samples: usize,
    /// Dimension of each example.
    pub features: usize,
    /// Number of blobs, which is also the number of classes.
    pub centers: usize,
    /// Standard deviation of the noise around each centre.
    pub cluster_std: f32,
    /// Half-width of the cube the centres are drawn from.
    pub center_box: f32,
    /// Seed of the generator; the same configuration always gives the same data.
    pub seed: u64,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        BlobsConfig {
            samples: 2000,
            features: 2,
            centers: 10,
            cluster_std: 0.5,
            center_box: 20.0,
            seed: 0,
        }
    }
}

impl BlobsConfig {
    /// The smallest distance allowed between two centres (see the module docs).
    pub fn min_center_distance(&self) -> f32 {
        6.0 * self.cluster_std
    }

    /// Checks the parameters without generating anything.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(DatasetError::Invalid(format!("blobs: {m}")));
        if self.features == 0 || self.centers == 0 {
            return fail("features and centers must be at least 1".into());
        }
        if self.samples < self.centers {
            return fail(format!(
                "{} samples cannot cover {} centers",
                self.samples, self.centers
            ));
        }
        if self
            .samples
            .checked_mul(self.features)
            .is_none_or(|n| n > MAX_BLOB_VALUES)
        {
            return fail(format!(
                "{} samples of {} features exceed the limit of {MAX_BLOB_VALUES} values",
                self.samples, self.features
            ));
        }
        if !(self.cluster_std >= 0.0 && self.cluster_std.is_finite()) {
            return fail(format!(
                "cluster_std {} must be finite and >= 0",
                self.cluster_std
            ));
        }
        if !(self.center_box > 0.0 && self.center_box.is_finite()) {
            return fail(format!(
                "center_box {} must be finite and > 0",
                self.center_box
            ));
        }
        Ok(())
    }
}

/// Generates the blobs described by `cfg`, in shuffled order.
///
/// `num_classes` is `cfg.centers` and the label of each example is its blob's index.
pub fn blobs(cfg: &BlobsConfig) -> Result<Dataset> {
    cfg.validate()?;
    let mut rng = rng::rng_for(cfg.seed, &[purpose::BLOBS]);
    let centers = draw_centers(cfg, &mut rng)?;
    let noise = Normal::new(0.0f32, cfg.cluster_std)
        .map_err(|e| DatasetError::Invalid(format!("blobs: {e}")))?;

    // Equal shares, the first `samples % centers` blobs taking one extra, then shuffled so
    // that prefixes of the data are not all one class.
    let (base, extra) = (cfg.samples / cfg.centers, cfg.samples % cfg.centers);
    let mut labels: Vec<u32> = (0..cfg.centers)
        .flat_map(|c| std::iter::repeat_n(c as u32, base + usize::from(c < extra)))
        .collect();
    labels.shuffle(&mut rng);

    let mut features = Vec::with_capacity(cfg.samples * cfg.features);
    for &label in &labels {
        let center = &centers[label as usize * cfg.features..][..cfg.features];
        features.extend(center.iter().map(|&c| c + noise.sample(&mut rng)));
    }
    Dataset::new(features, labels, cfg.features, cfg.centers, None)
}

/// Draws the centres one by one, rejecting any too close to those already placed.
fn draw_centers(cfg: &BlobsConfig, rng: &mut impl Rng) -> Result<Vec<f32>> {
    let d = cfg.features;
    let min_sq = cfg.min_center_distance().powi(2);
    let mut centers: Vec<f32> = Vec::with_capacity(cfg.centers * d);
    let mut candidate = vec![0.0f32; d];
    for placed in 0..cfg.centers {
        let mut accepted = false;
        for _ in 0..MAX_CENTER_DRAWS {
            for x in candidate.iter_mut() {
                *x = rng.random_range(-cfg.center_box..=cfg.center_box);
            }
            let far_enough = centers.chunks_exact(d).all(|other| {
                let dist_sq: f32 = other
                    .iter()
                    .zip(&candidate)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum();
                // Equal centres are never allowed, even with cluster_std 0.
                dist_sq >= min_sq && dist_sq > 0.0
            });
            if far_enough {
                accepted = true;
                break;
            }
        }
        if !accepted {
            return Err(DatasetError::Invalid(format!(
                "blobs: placed only {placed} of {} centers at least {} apart in [-{b}, {b}]^{d} \
                 after {MAX_CENTER_DRAWS} tries; use fewer centers, a smaller cluster_std or a \
                 larger center_box",
                cfg.centers,
                cfg.min_center_distance(),
                b = cfg.center_box
            )));
        }
        centers.extend_from_slice(&candidate);
    }
    Ok(centers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_deterministic_sized_and_labelled() {
        let cfg = BlobsConfig::default();
        let a = blobs(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let b = blobs(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let c = blobs(&BlobsConfig { seed: 1, ..cfg }).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        assert_ne!(a.features, c.features);
        assert_eq!((a.len(), a.num_features, a.num_classes), (2000, 2, 10));
        assert_eq!(a.class_counts(), vec![200; 10]);
        assert!(a.labels.iter().all(|&l| l < 10));
        // Shuffled: the first 50 examples are not all from one blob.
        assert!(a.labels[..50].iter().any(|&l| l != a.labels[0]));
    }

    #[test]
    fn blobs_are_separable_by_nearest_empirical_centre() {
        let cfg = BlobsConfig {
            features: 5,
            centers: 7,
            samples: 1403,
            ..Default::default()
        };
        let data = blobs(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let mut means = vec![0.0f64; cfg.centers * cfg.features];
        let counts = data.class_counts();
        for i in 0..data.len() {
            let label = data.labels[i] as usize;
            for (j, &v) in data.row(i).iter().enumerate() {
                means[label * cfg.features + j] += f64::from(v) / counts[label] as f64;
            }
        }
        let correct = (0..data.len())
            .filter(|&i| {
                let dist = |c: usize| -> f64 {
                    data.row(i)
                        .iter()
                        .enumerate()
                        .map(|(j, &v)| (f64::from(v) - means[c * cfg.features + j]).powi(2))
                        .sum()
                };
                let nearest = (0..cfg.centers).min_by(|&a, &b| dist(a).total_cmp(&dist(b)));
                nearest == Some(data.labels[i] as usize)
            })
            .count();
        assert!(
            correct as f64 >= 0.99 * data.len() as f64,
            "only {correct} of {} correct",
            data.len()
        );
    }

    #[test]
    fn impossible_or_invalid_configs_fail_cleanly() {
        let crowded = BlobsConfig {
            centers: 50,
            cluster_std: 5.0,
            center_box: 10.0,
            ..Default::default()
        };
        let message = blobs(&crowded)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("larger center_box"), "{message}");
        for bad in [
            BlobsConfig {
                centers: 0,
                ..Default::default()
            },
            BlobsConfig {
                features: 0,
                ..Default::default()
            },
            BlobsConfig {
                samples: 5,
                ..Default::default()
            },
            BlobsConfig {
                cluster_std: f32::NAN,
                ..Default::default()
            },
            BlobsConfig {
                cluster_std: -1.0,
                ..Default::default()
            },
            BlobsConfig {
                center_box: 0.0,
                ..Default::default()
            },
            BlobsConfig {
                samples: usize::MAX,
                ..Default::default()
            },
        ] {
            assert!(blobs(&bad).is_err(), "{bad:?} accepted");
        }
    }
}
