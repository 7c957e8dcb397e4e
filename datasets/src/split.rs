//! Seeded train/test splitting for sources that ship without a separate test set.

use rand::seq::SliceRandom;

use crate::dataset::{Dataset, Split};
use crate::error::{DatasetError, Result};
use crate::rng::{self, purpose};

/// The share of a dataset held out for testing when nothing else is said.
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;

/// Shuffles `data` with a generator derived from `seed` and holds out
/// `round(len * test_fraction)` examples as the test set.
///
/// Both halves keep the original relative order of their rows, so the result depends only on
/// which rows were chosen. Fails when `test_fraction` is not strictly between 0 and 1, or when
/// rounding would leave either side empty.
pub fn train_test_split(data: &Dataset, test_fraction: f64, seed: u64) -> Result<Split> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(DatasetError::Invalid(format!(
            "test fraction {test_fraction} must be strictly between 0 and 1"
        )));
    }
    let n = data.len();
    // The product is at most `n`, so the cast back cannot overflow.
    let n_test = (n as f64 * test_fraction).round() as usize;
    if n_test == 0 || n_test >= n {
        return Err(DatasetError::Invalid(format!(
            "a test fraction of {test_fraction} of {n} examples leaves {n_test} for testing \
             and {} for training; both need at least one",
            n.saturating_sub(n_test)
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng::rng_for(seed, &[purpose::SPLIT]));
    let (test_idx, train_idx) = order.split_at_mut(n_test);
    test_idx.sort_unstable();
    train_idx.sort_unstable();
    Ok(Split {
        train: data.subset(train_idx)?,
        test: data.subset(test_idx)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(n: usize) -> Dataset {
        let features = (0..n).map(|i| i as f32).collect();
        let labels = (0..n).map(|i| (i % 3) as u32).collect();
        Dataset::new(features, labels, 1, 3, None).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let data = counting(100);
        let a = train_test_split(&data, 0.2, 5).unwrap_or_else(|e| panic!("{e}"));
        let b = train_test_split(&data, 0.2, 5).unwrap_or_else(|e| panic!("{e}"));
        let c = train_test_split(&data, 0.2, 6).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        assert_ne!(a.test, c.test);
        assert_eq!((a.train.len(), a.test.len()), (80, 20));
        // Feature value == original index, so the union must be exactly 0..100.
        let mut all: Vec<f32> = a
            .train
            .features
            .iter()
            .chain(&a.test.features)
            .copied()
            .collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, data.features);
        // Labels must still match their rows.
        for i in 0..a.test.len() {
            assert_eq!(a.test.labels[i], (a.test.row(i)[0] as u32) % 3);
        }
    }

    #[test]
    fn bad_fractions_are_rejected() {
        let data = counting(10);
        for fraction in [0.0, 1.0, -0.5, 1.5, f64::NAN, 0.01, 0.99] {
            assert!(
                train_test_split(&data, fraction, 0).is_err(),
                "fraction {fraction} accepted"
            );
        }
    }
}
