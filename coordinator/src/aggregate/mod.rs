//! Order-independent, exact accumulation of weighted f32 vectors: the maths under every strategy.
//!
//! A federated round folds updates in as they arrive, and arrival order is up to the network.
//! Plain float sums depend on that order, so two runs of the same seed would drift apart. Here
//! every term `w·x` (one f64 product: exact for weights below 2^29, as x is an f32, and
//! deterministically rounded above) is rounded once to a fixed grid
//! of 2^-40 and added as a two-limb integer. Integer addition is associative, so the total is the
//! same bits whatever the order, and it is turned back into floats once, at the end.
//!
//! The price is 16 bytes of accumulator per parameter and a range: the round's total
//! Σ w·max|x| must stay below 2^62, which [`ExactSum::fold`] checks before touching anything.

pub mod norm;
pub mod robust;

use shoal_models::max_abs_bits;
use std::sync::Arc;
use thiserror::Error;

/// Fractional bits of the fixed-point grid: terms are rounded to multiples of 2^-40.
const FRAC_BITS: i32 = 40;
/// The high limb counts units of 2^12; the low limb units of 2^-40.
const HI_BITS: i32 = 12;
/// Bound on Σ w·max|x| over a round, so the high limb never overflows.
const RANGE_LIMIT: f64 = 4_611_686_018_427_387_904.0; // 2^62
/// Low-limb carries are due before 2^11 more terms could overflow it.
const CARRY_EVERY: u32 = 1024;
/// Most updates folded between two carry checks.
const BLOCK_MAX: usize = 256;
/// Vectors from this length are folded on two threads by a sum that splits its folds.
const PARALLEL_FROM: usize = 1 << 18;
/// Largest weight one update may carry.
pub const MAX_WEIGHT: u64 = 1 << 31;

/// Why a vector could not be folded in.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AggregateError {
    /// The vector's length differs from the accumulator's.
    #[error("update has {got} values, expected {expected}")]
    WrongLength {
        /// Values received.
        got: usize,
        /// Values expected.
        expected: usize,
    },
    /// A value is NaN or infinite.
    #[error("update value at index {index} is not finite")]
    NonFinite {
        /// First offending index.
        index: usize,
    },
    /// The weight (example count) is zero or above the limit in force: the coordinator's
    /// example cap at admission, [`MAX_WEIGHT`] in the sum itself.
    #[error("update weight (examples) {weight} is outside 1..={max}")]
    BadWeight {
        /// The weight claimed.
        weight: u64,
        /// The largest weight accepted.
        max: u64,
    },
    /// The update carries another number of integer counts than its task asks for.
    #[error("update has {got} counts, expected {expected}")]
    WrongCounts {
        /// Counts received.
        got: usize,
        /// Counts expected.
        expected: usize,
    },
    /// Counts that must add up to the update's weight do not.
    #[error("counts {range:?} sum to {sum}, but the update claims {weight} examples")]
    CountsMismatch {
        /// Which counts.
        range: std::ops::Range<usize>,
        /// Their sum.
        sum: u64,
        /// The update's weight.
        weight: u64,
    },
    /// Folding this update could exceed the exact range of the accumulator.
    #[error("update magnitude {0:e} would exceed the aggregation range")]
    OutOfRange(f64),
    /// A partial sum was sent for a round whose updates are kept one by one, not summed.
    #[error("this round keeps every update whole; partial sums cannot be folded into it")]
    NotSummed,
    /// A partial sum names no client.
    #[error("a partial sum must name the clients it folded")]
    NoContributors,
    /// The update's L2 norm is over the configured bound (see [`crate::aggregate::norm`]).
    #[error("update norm {norm} exceeds the bound {bound}")]
    NormTooLarge {
        /// The update's norm (of its delta from the global, for Fit tasks).
        norm: f64,
        /// The configured bound.
        bound: f64,
    },
}

/// What one scan of a vector found: every value finite, and the largest magnitude. Only
/// [`Finite::scan`] makes one, so whoever holds it need not read the values again; the scan
/// needs no accumulator, so a coordinator runs it before it waits for the lock of the fold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finite {
    max_abs: f32,
    len: usize,
}

impl Finite {
    /// Scans `values`: an error names the first value that is NaN or infinite.
    ///
    /// Branch-free over the bit patterns, so it vectorises: with the sign bit cleared, the
    /// largest pattern is the largest |x|, and a pattern at or above infinity's is NaN or
    /// infinite.
    pub fn scan(values: &[f32]) -> Result<Self, AggregateError> {
        let max_bits = max_abs_bits(values);
        if max_bits >= f32::INFINITY.to_bits() {
            let index = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(AggregateError::NonFinite { index });
        }
        Ok(Self {
            max_abs: f32::from_bits(max_bits),
            len: values.len(),
        })
    }

    /// The largest magnitude of the scanned values, once they are known to be the `expected`
    /// number (the scan was of a vector of that length, and `values` is one).
    pub fn max_abs(self, values: &[f32], expected: usize) -> Result<f32, AggregateError> {
        if values.len() != expected || self.len != expected {
            return Err(AggregateError::WrongLength {
                got: values.len(),
                expected,
            });
        }
        Ok(self.max_abs)
    }
}

/// Checks that `values` has `expected` finite entries and returns the largest magnitude.
pub fn validate(values: &[f32], expected: usize) -> Result<f32, AggregateError> {
    if values.len() != expected {
        return Err(AggregateError::WrongLength {
            got: values.len(),
            expected,
        });
    }
    Finite::scan(values)?.max_abs(values, expected)
}

/// An exact, order-independent running sum of weighted vectors; memory O(len), never O(updates).
#[derive(Debug, Clone)]
pub struct ExactSum {
    hi: Vec<i64>,
    lo: Vec<i64>,
    total_weight: u64,
    folded: u32,
    since_carry: u32,
    magnitude: f64,
    /// Whether a fold of a long vector runs on two threads.
    split: bool,
    /// Terms checked and counted ([`ExactSum::defer`]) but not added yet.
    deferred: Vec<(u64, Arc<Vec<f32>>)>,
}

impl ExactSum {
    /// An empty sum of vectors of `len` values, for a caller folding alone: a long vector is
    /// folded on two threads.
    pub fn new(len: usize) -> Self {
        Self {
            hi: vec![0; len],
            lo: vec![0; len],
            total_weight: 0,
            folded: 0,
            since_carry: 0,
            magnitude: 0.0,
            split: true,
            deferred: Vec::new(),
        }
    }

    /// An empty sum that folds on the caller's thread only: a round's sum, whose updates are
    /// received and checked by as many threads as the machine has cores while one of them
    /// folds. A second thread per fold would only take a core from another delivery (and cost
    /// a thread start each time): 1,000 in-process clients of a 1M-parameter model took
    /// 2.2–2.8 s a round with split folds, 2.2–2.5 s without, and less CPU.
    pub fn single_threaded(len: usize) -> Self {
        Self {
            split: false,
            ..Self::new(len)
        }
    }

    /// Number of values per vector.
    pub fn len(&self) -> usize {
        self.hi.len()
    }

    /// True for a zero-length accumulator.
    pub fn is_empty(&self) -> bool {
        self.hi.is_empty()
    }

    /// Sum of the weights folded in so far.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Number of vectors folded in so far.
    pub fn count(&self) -> u32 {
        self.folded
    }

    /// Checks that `weight · values` could be folded in; returns its magnitude bound.
    pub fn check(&self, weight: u64, values: &[f32]) -> Result<f64, AggregateError> {
        self.check_scanned(weight, values, Finite::scan(values)?)
    }

    /// [`ExactSum::check`] of values already scanned.
    pub fn check_scanned(
        &self,
        weight: u64,
        values: &[f32],
        scan: Finite,
    ) -> Result<f64, AggregateError> {
        let max_abs = scan.max_abs(values, self.len())?;
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(AggregateError::BadWeight {
                weight,
                max: MAX_WEIGHT,
            });
        }
        let magnitude = weight as f64 * f64::from(max_abs);
        if self.magnitude + magnitude >= RANGE_LIMIT {
            return Err(AggregateError::OutOfRange(magnitude));
        }
        Ok(magnitude)
    }

    /// Adds `weight · values`, after validating both; on error nothing changes.
    pub fn fold(&mut self, weight: u64, values: &[f32]) -> Result<(), AggregateError> {
        self.fold_block(&[(weight, values)])
    }

    /// Checks `weight · values` (already scanned) as [`ExactSum::fold`] would and counts it
    /// against the range, but leaves the addition to the next [`ExactSum::flush`], which
    /// adds every deferred term in one pass over the accumulator: several updates that arrive
    /// together cost one pass, not one each. Until then the sum's totals lack the term.
    pub fn defer(
        &mut self,
        weight: u64,
        values: Arc<Vec<f32>>,
        scan: Finite,
    ) -> Result<(), AggregateError> {
        self.magnitude += self.check_scanned(weight, &values, scan)?;
        self.total_weight += weight;
        self.folded += 1;
        self.deferred.push((weight, values));
        Ok(())
    }

    /// Adds the terms [`ExactSum::defer`] left, in one pass.
    pub fn flush(&mut self) {
        let deferred = std::mem::take(&mut self.deferred);
        let block: Vec<(u64, &[f32])> = deferred.iter().map(|(w, v)| (*w, v.as_slice())).collect();
        self.add_terms(&block);
    }

    /// Adds every `weight · values` of `block` in one pass over the accumulator, after
    /// validating them all; on error (the first bad update's) nothing changes.
    ///
    /// Same result as folding them one by one, to the bit, and faster when several updates are
    /// at hand (a replayed log, a hierarchical aggregator's children): each pass reads and
    /// writes 16 B of accumulator per value, four times the update, so a block of k updates
    /// saves k - 1 of those passes (`benches/README.md`).
    pub fn fold_block(&mut self, block: &[(u64, &[f32])]) -> Result<(), AggregateError> {
        let mut magnitude = self.magnitude;
        for (weight, values) in block {
            let m = self.check(*weight, values)?;
            if magnitude + m >= RANGE_LIMIT {
                return Err(AggregateError::OutOfRange(m));
            }
            magnitude += m;
        }
        self.magnitude = magnitude;
        self.total_weight += block.iter().map(|(w, _)| w).sum::<u64>();
        self.folded += block.len() as u32;
        self.add_terms(block);
        Ok(())
    }

    /// The additions of a checked and counted block, carrying when due.
    fn add_terms(&mut self, block: &[(u64, &[f32])]) {
        for part in block.chunks(BLOCK_MAX) {
            if self.since_carry as usize + part.len() > CARRY_EVERY as usize {
                self.carry();
            }
            self.fold_unchecked(part);
            self.since_carry += part.len() as u32;
        }
    }

    /// The hot loop, split over two threads for large vectors.
    fn fold_unchecked(&mut self, block: &[(u64, &[f32])]) {
        if !self.split || self.len() < PARALLEL_FROM {
            let terms: Vec<(f64, &[f32])> = block.iter().map(|(w, v)| (*w as f64, *v)).collect();
            fold_slices(&mut self.hi, &mut self.lo, &terms);
            return;
        }
        let mid = self.len() / 2;
        let (hi_a, hi_b) = self.hi.split_at_mut(mid);
        let (lo_a, lo_b) = self.lo.split_at_mut(mid);
        let first: Vec<(f64, &[f32])> = block.iter().map(|(w, v)| (*w as f64, &v[..mid])).collect();
        let second: Vec<(f64, &[f32])> =
            block.iter().map(|(w, v)| (*w as f64, &v[mid..])).collect();
        std::thread::scope(|s| {
            s.spawn(|| fold_slices(hi_b, lo_b, &second));
            fold_slices(hi_a, lo_a, &first);
        });
    }

    /// Writes to every memory page of the accumulator, values unchanged, so the first folds do
    /// not pay for page faults: a fresh accumulator is untouched zero pages, and faulting them in
    /// costs more than the folds themselves when a round has few updates (about 0.2 s for 10M
    /// parameters on the project VM). The coordinator calls this when a round opens, off the
    /// runtime, while clients train.
    pub fn prefault(&mut self) {
        const STRIDE: usize = 4096 / std::mem::size_of::<i64>();
        for limb in [&mut self.hi, &mut self.lo] {
            for x in limb.iter_mut().step_by(STRIDE) {
                // black_box hides that the value is unchanged, so the store is kept: the write,
                // not the value, is the point.
                *x = std::hint::black_box(*x);
            }
        }
    }

    /// Moves whole high-limb units out of the low limb, keeping it far from overflow.
    fn carry(&mut self) {
        const UNIT: i64 = 1 << (FRAC_BITS + HI_BITS);
        for (h, l) in self.hi.iter_mut().zip(self.lo.iter_mut()) {
            let c = l.div_euclid(UNIT);
            *h += c;
            *l -= c * UNIT;
        }
        self.since_carry = 0;
    }

    /// The exact totals Σ w·x, one per value, counted in units of the grid (2^-40): the same
    /// integers whatever the order of the folds or the timing of carries, so a sum can travel
    /// (a sub-aggregator's partial) and be added elsewhere without losing a bit.
    pub fn totals(&self) -> Vec<i128> {
        debug_assert!(self.deferred.is_empty(), "totals read before a flush");
        self.hi
            .iter()
            .zip(&self.lo)
            .map(|(&h, &l)| (i128::from(h) << (FRAC_BITS + HI_BITS)) + i128::from(l))
            .collect()
    }

    /// Adds another sum's [`ExactSum::totals`], which folded `count` vectors of total weight
    /// `weight`: the result is the bits of having folded those vectors here. The totals' own
    /// magnitude counts against this sum's range (checked before anything changes); on error
    /// nothing changes.
    pub fn merge(
        &mut self,
        totals: &[i128],
        count: u32,
        weight: u64,
    ) -> Result<(), AggregateError> {
        if totals.len() != self.len() {
            return Err(AggregateError::WrongLength {
                got: totals.len(),
                expected: self.len(),
            });
        }
        let largest = totals.iter().map(|t| t.unsigned_abs()).max().unwrap_or(0);
        // In the sum's units: |total| · 2^-40, below the range every fold respects.
        let magnitude = largest as f64 * (-FRAC_BITS as f64).exp2();
        if self.magnitude + magnitude >= RANGE_LIMIT {
            return Err(AggregateError::OutOfRange(magnitude));
        }
        let total_weight = self
            .total_weight
            .checked_add(weight)
            .ok_or(AggregateError::OutOfRange(weight as f64))?;
        let folded = self
            .folded
            .checked_add(count)
            .ok_or(AggregateError::OutOfRange(f64::from(count)))?;
        const UNIT: i128 = 1 << (FRAC_BITS + HI_BITS);
        for ((h, l), t) in self.hi.iter_mut().zip(self.lo.iter_mut()).zip(totals) {
            // Both terms are below 2^102 units (the range), so neither this sum nor the high
            // limb (below 2^51) can overflow.
            let v = (i128::from(*h) << (FRAC_BITS + HI_BITS)) + i128::from(*l) + t;
            *h = v.div_euclid(UNIT) as i64;
            *l = v.rem_euclid(UNIT) as i64;
        }
        self.magnitude += magnitude;
        self.total_weight = total_weight;
        self.folded = folded;
        // Every low limb was just normalised into [0, UNIT).
        self.since_carry = 0;
        Ok(())
    }

    /// The weighted mean Σ w·x / Σ w, rounded to f32; `None` if nothing was folded in.
    pub fn mean(&self) -> Option<Vec<f32>> {
        (self.total_weight > 0).then(|| self.scaled(self.total_weight as f64))
    }

    /// The plain sum Σ w·x, rounded to f32.
    pub fn sum(&self) -> Vec<f32> {
        self.scaled(1.0)
    }

    /// The exact total Σ w·x, rounded once to f64 per value (k-means divides it by counts).
    pub fn sum_f64(&self) -> Vec<f64> {
        debug_assert!(self.deferred.is_empty(), "sum read before a flush");
        let grid = (-FRAC_BITS as f64).exp2();
        self.hi
            .iter()
            .zip(&self.lo)
            .map(|(&h, &l)| {
                (((i128::from(h) << (FRAC_BITS + HI_BITS)) + i128::from(l)) as f64) * grid
            })
            .collect()
    }

    /// Σ w·x divided by `divisor`, from the exact total: one rounding to f64, one division.
    fn scaled(&self, divisor: f64) -> Vec<f32> {
        self.sum_f64()
            .into_iter()
            .map(|total| (total / divisor) as f32)
            .collect()
    }
}

/// 1.5 · 2^64: adding it to any |t| < 2^63 rounds t to a multiple of 2^12 (its ulp) and leaves
/// the sum in one binade, where the bit pattern counts ulps.
const C_HI: f64 = 27_670_116_110_564_327_424.0;
/// 1.5 · 2^12: the same for the remainder |t - t_hi| ≤ 2^11, with an ulp of 2^-40.
const C_LO: f64 = 6144.0;

/// Folds each `(weight, values)` into the limbs, walking them once per group of up to four.
fn fold_slices(hi: &mut [i64], lo: &mut [i64], terms: &[(f64, &[f32])]) {
    let mut groups = terms.chunks_exact(4);
    for g in &mut groups {
        fold_group(hi, lo, [g[0], g[1], g[2], g[3]]);
    }
    let rest = groups.remainder();
    let (pairs, single) = rest.split_at(rest.len() - rest.len() % 2);
    for p in pairs.chunks_exact(2) {
        fold_group(hi, lo, [p[0], p[1]]);
    }
    for t in single {
        fold_group(hi, lo, [*t]);
    }
}

/// Splits each term onto the two limbs. `t + C` rounds t to the grid of C's last bit (IEEE
/// arithmetic, no fast-math in Rust: exact and identical everywhere), and because the sum stays
/// in C's binade, `bits(t + C) - bits(C)` is that rounded value counted in grid units. That
/// integer subtraction replaces a float-to-integer conversion, which baseline x86-64 cannot do
/// on vectors, so this loop vectorises (`benches/README.md` has the measurements).
#[inline(always)]
fn fold_group<const N: usize>(hi: &mut [i64], lo: &mut [i64], terms: [(f64, &[f32]); N]) {
    let (k_hi, k_lo) = (C_HI.to_bits() as i64, C_LO.to_bits() as i64);
    let len = hi.len().min(lo.len());
    let w = terms.map(|(w, _)| w);
    let v = terms.map(|(_, x)| &x[..len]);
    for i in 0..len {
        let (mut h, mut l) = (hi[i], lo[i]);
        for j in 0..N {
            let t = w[j] * f64::from(v[j][i]);
            let a = t + C_HI;
            let b = (t - (a - C_HI)) + C_LO;
            h = h.wrapping_add(a.to_bits() as i64 - k_hi);
            l = l.wrapping_add(b.to_bits() as i64 - k_lo);
        }
        hi[i] = h;
        lo[i] = l;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn bits64(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn weighted_mean_of_hand_made_vectors() {
        let mut s = ExactSum::new(3);
        s.fold(1, &[1.0, 2.0, -3.0]).unwrap();
        s.fold(3, &[5.0, 2.0, 1.0]).unwrap();
        assert_eq!(s.mean().unwrap(), vec![4.0, 2.0, 0.0]);
        assert_eq!(s.total_weight(), 4);
        assert_eq!(s.sum(), vec![16.0, 8.0, 0.0]);
    }

    #[test]
    fn refusals_change_nothing() {
        let mut s = ExactSum::new(2);
        s.fold(2, &[1.0, 1.0]).unwrap();
        let before = s.mean();
        assert!(matches!(
            s.fold(1, &[1.0]),
            Err(AggregateError::WrongLength { .. })
        ));
        assert!(matches!(
            s.fold(1, &[f32::NAN, 0.0]),
            Err(AggregateError::NonFinite { index: 0 })
        ));
        assert!(matches!(
            s.fold(1, &[0.0, f32::INFINITY]),
            Err(AggregateError::NonFinite { index: 1 })
        ));
        assert!(matches!(
            s.fold(0, &[0.0, 0.0]),
            Err(AggregateError::BadWeight { weight: 0, .. })
        ));
        assert!(matches!(
            s.fold(1 << 31, &[3e38, 0.0]),
            Err(AggregateError::OutOfRange(_))
        ));
        assert_eq!(s.mean(), before);
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn deferred_terms_flushed_together_give_the_bits_of_folds() {
        let len = PARALLEL_FROM + 3;
        let update = |i: usize| -> Vec<f32> {
            (0..len)
                .map(|j| ((i * len + j) as f32 * 0.01).sin() * 1e3)
                .collect()
        };
        let mut folded = ExactSum::new(len);
        let mut deferred = ExactSum::single_threaded(len);
        for i in 0..5 {
            let values = update(i);
            folded.fold(1 + i as u64, &values).unwrap();
            let scan = Finite::scan(&values).unwrap();
            deferred
                .defer(1 + i as u64, Arc::new(values), scan)
                .unwrap();
            // Counted at once, added at the flush.
            assert_eq!(deferred.count(), folded.count());
            assert_eq!(deferred.total_weight(), folded.total_weight());
        }
        deferred.flush();
        assert_eq!(deferred.totals(), folded.totals());

        // The range counts deferred terms: what would not fit after them is refused at once.
        let mut s = ExactSum::new(2);
        let big = vec![1.5e9f32, 0.0];
        let scan = Finite::scan(&big).unwrap();
        s.defer(1 << 31, Arc::new(big.clone()), scan).unwrap();
        assert!(matches!(
            s.defer(1 << 31, Arc::new(big.clone()), scan),
            Err(AggregateError::OutOfRange(_))
        ));
        // A scan of a vector of another length does not vouch for this one.
        assert!(matches!(
            s.defer(1, Arc::new(vec![0.0; 3]), scan),
            Err(AggregateError::WrongLength { .. })
        ));
        s.flush();
        assert_eq!(s.count(), 1);
        assert_eq!(s.mean().unwrap(), big);
    }

    #[test]
    fn prefault_changes_no_value() {
        let a: Vec<f32> = (0..10_000).map(|i| (i as f32).cos()).collect();
        let mut s = ExactSum::new(a.len());
        s.fold(3, &a).unwrap();
        let before = s.sum_f64();
        s.prefault();
        assert_eq!(s.sum_f64(), before);
        s.fold(3, &a).unwrap();
        assert_eq!(bits(&s.mean().unwrap()), bits(&a));
    }

    #[test]
    fn a_block_with_one_bad_update_changes_nothing() {
        let good = [1.0f32, 2.0];
        let mut s = ExactSum::new(2);
        s.fold(1, &good).unwrap();
        let before = s.sum_f64();
        let bad = [0.0f32, f32::NAN];
        assert_eq!(
            s.fold_block(&[(1, &good), (2, &good), (1, &bad)]),
            Err(AggregateError::NonFinite { index: 1 })
        );
        assert!(matches!(
            s.fold_block(&[(1 << 31, &[1.5e9, 0.0]), (1 << 31, &[1.5e9, 0.0])]),
            Err(AggregateError::OutOfRange(_))
        ));
        assert_eq!(s.sum_f64(), before);
        assert_eq!((s.count(), s.total_weight()), (1, 1));
    }

    #[test]
    fn blocks_fold_to_the_same_bits_on_both_paths_and_across_carries() {
        for (len, updates) in [(5, 2500), (300_000, 9)] {
            let rows: Vec<(u64, Vec<f32>)> = (0..updates as u64)
                .map(|k| {
                    let v = (0..len)
                        .map(|i| ((i as f32 + 0.3) * (k + 1) as f32).sin() * 1e3)
                        .collect();
                    (k * 37 % 1000 + 1, v)
                })
                .collect();
            let views: Vec<(u64, &[f32])> = rows.iter().map(|(w, v)| (*w, v.as_slice())).collect();
            let mut one = ExactSum::new(len);
            for (w, v) in &views {
                one.fold(*w, v).unwrap();
            }
            let mut blocked = ExactSum::new(len);
            for block in views.chunks(7) {
                blocked.fold_block(block).unwrap();
            }
            let mut whole = ExactSum::new(len);
            whole.fold_block(&views).unwrap();
            assert_eq!(bits64(&blocked.sum_f64()), bits64(&one.sum_f64()));
            assert_eq!(bits64(&whole.sum_f64()), bits64(&one.sum_f64()));
            assert_eq!(whole.count(), one.count());
            assert_eq!(whole.total_weight(), one.total_weight());
        }
    }

    #[test]
    fn empty_sum_has_no_mean() {
        assert!(ExactSum::new(4).mean().is_none());
    }

    #[test]
    fn large_vectors_take_the_parallel_path_exactly() {
        let n = 300_000;
        let a: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
        let mut s = ExactSum::new(n);
        for _ in 0..3 {
            s.fold(7, &a).unwrap();
        }
        assert_eq!(bits(&s.mean().unwrap()), bits(&a));
    }

    #[test]
    fn carries_keep_long_sums_exact() {
        let mut s = ExactSum::new(2);
        for _ in 0..5000 {
            s.fold(1000, &[1999.999, -0.3333]).unwrap();
        }
        assert_eq!(bits(&s.mean().unwrap()), bits(&[1999.999, -0.3333]));
    }

    /// The fold as first written: round with `(t + C) - C`, then convert with `as i64`.
    fn fold_by_conversion(hi: &mut [i64], lo: &mut [i64], weight: f64, values: &[f32]) {
        let c_hi = 1.5 * (HI_BITS as f64 + 52.0).exp2();
        let c_lo = 1.5 * (52.0 - FRAC_BITS as f64).exp2();
        for ((h, l), &x) in hi.iter_mut().zip(lo.iter_mut()).zip(values) {
            let t = weight * f64::from(x);
            let t_hi = (t + c_hi) - c_hi;
            let t_lo = ((t - t_hi) + c_lo) - c_lo;
            *h += (t_hi * (-HI_BITS as f64).exp2()) as i64;
            *l += (t_lo * (FRAC_BITS as f64).exp2()) as i64;
        }
    }

    #[test]
    fn validation_finds_the_largest_magnitude_and_the_first_bad_value() {
        assert_eq!(validate(&[1.0, -3.0, 2.0], 3), Ok(3.0));
        assert_eq!(validate(&[-0.0], 1), Ok(0.0));
        assert_eq!(validate(&[f32::MAX, -f32::MAX], 2), Ok(f32::MAX));
        assert_eq!(
            validate(&[1.0, f32::NEG_INFINITY, f32::NAN], 3),
            Err(AggregateError::NonFinite { index: 1 })
        );
        assert_eq!(
            validate(&[-f32::NAN], 1),
            Err(AggregateError::NonFinite { index: 0 })
        );
    }

    #[test]
    fn a_merge_out_of_range_or_of_another_length_changes_nothing() {
        let mut s = ExactSum::new(2);
        s.fold(2, &[1.0, -1.0]).unwrap();
        let before = s.totals();
        assert!(matches!(
            s.merge(&[0], 1, 1),
            Err(AggregateError::WrongLength {
                got: 1,
                expected: 2
            })
        ));
        assert!(matches!(
            s.merge(&[i128::MAX, 0], 1, 1),
            Err(AggregateError::OutOfRange(_))
        ));
        assert!(matches!(
            s.merge(&[0, i128::MIN], 1, 1),
            Err(AggregateError::OutOfRange(_))
        ));
        assert_eq!(s.totals(), before);
        assert_eq!((s.count(), s.total_weight()), (1, 2));
    }

    proptest! {
        #[test]
        fn partial_sums_merged_give_the_bits_of_one_flat_sum(
            rows in proptest::collection::vec(
                (1u64..100_000, proptest::collection::vec(-1e4f32..1e4, 6)), 1..40),
            cuts in proptest::collection::vec(0usize..40, 0..4),
        ) {
            let mut flat = ExactSum::new(6);
            for (w, v) in &rows {
                flat.fold(*w, v).unwrap();
            }
            // The rows split among subtrees at `cuts`, each summed on its own, then merged.
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (rows.len() + 1)).collect();
            bounds.extend([0, rows.len()]);
            bounds.sort_unstable();
            let mut root = ExactSum::new(6);
            for pair in bounds.windows(2) {
                let mut part = ExactSum::new(6);
                for (w, v) in &rows[pair[0]..pair[1]] {
                    part.fold(*w, v).unwrap();
                }
                root.merge(&part.totals(), part.count(), part.total_weight()).unwrap();
            }
            prop_assert_eq!(root.totals(), flat.totals());
            prop_assert_eq!(bits(&root.mean().unwrap()), bits(&flat.mean().unwrap()));
            prop_assert_eq!((root.count(), root.total_weight()), (flat.count(), flat.total_weight()));
            // Folds after a merge land on the same bits too.
            root.fold(3, &rows[0].1).unwrap();
            flat.fold(3, &rows[0].1).unwrap();
            prop_assert_eq!(root.totals(), flat.totals());
        }
    }

    proptest! {
        #[test]
        fn bit_kernel_equals_the_conversion_it_replaced(
            weight in prop_oneof![1u64..100, 1u64..=MAX_WEIGHT],
            exponent in -40i32..31,
            mantissas in proptest::collection::vec(-1.0f32..1.0, 1..64),
        ) {
            // Terms up to 2^62 (the range limit), down to far below the grid.
            let scale = (exponent as f32).exp2();
            let values: Vec<f32> = mantissas.iter().map(|m| m * scale).collect();
            let n = values.len();
            let (mut hi_a, mut lo_a) = (vec![3i64; n], vec![-5i64; n]);
            let (mut hi_b, mut lo_b) = (hi_a.clone(), lo_a.clone());
            fold_slices(&mut hi_a, &mut lo_a, &[(weight as f64, &values)]);
            fold_by_conversion(&mut hi_b, &mut lo_b, weight as f64, &values);
            prop_assert_eq!(hi_a, hi_b);
            prop_assert_eq!(lo_a, lo_b);
        }

        #[test]
        fn averaging_copies_returns_the_model(
            model in proptest::collection::vec(-1e6f32..1e6, 1..64),
            weights in proptest::collection::vec(1u64..100_000, 1..40),
        ) {
            let mut s = ExactSum::new(model.len());
            for w in &weights {
                s.fold(*w, &model).unwrap();
            }
            prop_assert_eq!(bits(&s.mean().unwrap()), bits(&model));
        }

        #[test]
        fn order_does_not_change_a_single_bit(
            rows in proptest::collection::vec(
                (1u64..1000, proptest::collection::vec(-1e3f32..1e3, 8)), 2..30),
            rotate in 0usize..30,
        ) {
            let mut a = ExactSum::new(8);
            for (w, v) in &rows {
                a.fold(*w, v).unwrap();
            }
            let mut shuffled = rows.clone();
            shuffled.reverse();
            let k = rotate % shuffled.len();
            shuffled.rotate_left(k);
            let mut b = ExactSum::new(8);
            for (w, v) in &shuffled {
                b.fold(*w, v).unwrap();
            }
            prop_assert_eq!(bits(&a.mean().unwrap()), bits(&b.mean().unwrap()));
        }

        #[test]
        fn mean_matches_f64_reference(
            rows in proptest::collection::vec(
                (1u64..1000, proptest::collection::vec(-10f32..10.0, 4)), 1..20),
        ) {
            let mut s = ExactSum::new(4);
            let mut num = [0f64; 4];
            let mut den = 0f64;
            for (w, v) in &rows {
                s.fold(*w, v).unwrap();
                den += *w as f64;
                for (n, x) in num.iter_mut().zip(v) {
                    *n += *w as f64 * f64::from(*x);
                }
            }
            for (m, n) in s.mean().unwrap().iter().zip(num) {
                let r = (n / den) as f32;
                prop_assert!((m - r).abs() <= 1e-6 * r.abs().max(1.0), "{m} vs {r}");
            }
        }
    }
}
