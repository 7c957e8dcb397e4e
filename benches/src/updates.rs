//! Synthetic client updates and the fold loop that aggregation benchmarks time.
//!
//! Updates are deterministic pseudo-random parameters in [-1, 1) with weights of 1..=1000
//! examples. A pool holds as many distinct vectors as fit in a byte budget (at least two, at
//! most one per update); a round of N updates cycles through it, so with a budget well beyond
//! the L3 cache every fold reads its update from memory, as a fresh update from the network is.

use shoal_coordinator::aggregate::{AggregateError, ExactSum};

/// Default pool budget: 256 MiB, eight times this machine's L3.
pub const POOL_BUDGET_BYTES: usize = 256 << 20;

/// Bytes of memory a fold touches per parameter, STREAM-counted: the 4-byte update read, and
/// the 16-byte accumulator (two i64 limbs) read and written.
pub const FOLD_TRAFFIC_PER_PARAM: u64 = 4 + 16 + 16;

/// Distinct update vectors of one length, with their weights.
#[derive(Debug, Clone)]
pub struct UpdatePool {
    len: usize,
    vectors: Vec<Vec<f32>>,
    weights: Vec<u64>,
}

impl UpdatePool {
    /// A pool for rounds of up to `updates` updates of `len` values, within `budget_bytes`.
    pub fn new(len: usize, updates: usize, budget_bytes: usize) -> Self {
        let fits = budget_bytes / (len * 4).max(1);
        let count = fits.clamp(2, updates.max(2));
        let mut state = POOL_SEED;
        let vectors = (0..count)
            .map(|_| (0..len).map(|_| unit_f32(&mut state)).collect())
            .collect();
        let weights = (0..count)
            .map(|_| 1 + splitmix64(&mut state) % 1000)
            .collect();
        Self {
            len,
            vectors,
            weights,
        }
    }

    /// Values per update.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for zero-length updates.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinct vectors held.
    pub fn distinct(&self) -> usize {
        self.vectors.len()
    }

    /// Bytes the pool holds.
    pub fn bytes(&self) -> usize {
        self.vectors.len() * self.len * 4
    }

    /// Folds `updates` updates into `sum`, cycling through the pool.
    pub fn fold_into(&self, sum: &mut ExactSum, updates: usize) -> Result<(), AggregateError> {
        for i in 0..updates {
            let k = i % self.vectors.len();
            sum.fold(self.weights[k], &self.vectors[k])?;
        }
        Ok(())
    }
}

/// Update bytes folded in by `updates` updates of `len` f32 values: the throughput unit.
pub fn update_bytes(len: usize, updates: usize) -> u64 {
    len as u64 * 4 * updates as u64
}

/// The pool's fixed seed: every run folds the same bits.
const POOL_SEED: u64 = 0x5eed_0f5a_0a11;

/// SplitMix64: a tiny, well-mixed generator; enough for benchmark data.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform f32 in [-1, 1).
fn unit_f32(state: &mut u64) -> f32 {
    let bits = (splitmix64(state) >> 40) as u32; // 24 random bits
    bits as f32 / (1u32 << 23) as f32 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_respects_budget_and_round_size() {
        assert_eq!(UpdatePool::new(1000, 5, 1 << 30).distinct(), 5);
        assert_eq!(UpdatePool::new(1000, 500, 40_000).distinct(), 10);
        assert_eq!(UpdatePool::new(1000, 500, 1).distinct(), 2);
    }

    #[test]
    fn folding_a_pool_gives_its_weighted_mean() {
        let pool = UpdatePool::new(64, 3, 1 << 20);
        assert!(
            pool.vectors
                .iter()
                .flatten()
                .all(|x| (-1.0..1.0).contains(x))
        );
        let mut sum = ExactSum::new(pool.len());
        assert_eq!(pool.fold_into(&mut sum, 6), Ok(()));
        assert_eq!(sum.count(), 6);
        assert_eq!(sum.total_weight(), 2 * pool.weights.iter().sum::<u64>());
        assert_eq!(update_bytes(64, 6), 64 * 4 * 6);
    }
}
