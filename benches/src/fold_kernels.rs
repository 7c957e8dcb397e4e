//! What-if: blocked exact folding, measured against [`ExactSum::fold`]. A prototype for the
//! benchmark report; the coordinator does not use it.
//!
//! [`BlockSum`] keeps `ExactSum`'s arithmetic bit for bit (the same 2^-40 grid, the same two
//! i64 limbs, the same bit-pattern extraction, the same result) but folds several updates per
//! pass over the accumulator, so its 16 B per value are read and written once per block
//! instead of once per update. A coordinator would buffer a few arriving updates to use it.
//!
//! [`ExactSum::fold`]: shoal_coordinator::aggregate::ExactSum::fold

use shoal_coordinator::aggregate::{AggregateError, validate};

const C_HI: f64 = 27_670_116_110_564_327_424.0; // 1.5 · 2^64: ulp 2^12
const C_LO: f64 = 6144.0; // 1.5 · 2^12: ulp 2^-40
const FRAC_BITS: i32 = 40;
const HI_BITS: i32 = 12;
/// Parallel from the same length as `ExactSum`.
const PARALLEL_FROM: usize = 1 << 18;

/// An exact sum like `ExactSum`, folding blocks (no range or carry bookkeeping: the benchmark
/// stays far inside the range, and carries cost one pass per 1,024 folds).
#[derive(Debug, Clone)]
pub struct BlockSum {
    hi: Vec<i64>,
    lo: Vec<i64>,
    total_weight: u64,
}

impl BlockSum {
    /// An empty sum of vectors of `len` values.
    pub fn new(len: usize) -> Self {
        Self {
            hi: vec![0; len],
            lo: vec![0; len],
            total_weight: 0,
        }
    }

    /// Validates every update of `block`, then folds them all in one pass over the accumulator.
    pub fn fold_block(&mut self, block: &[(u64, &[f32])]) -> Result<(), AggregateError> {
        for (_, values) in block {
            if values.len() != self.hi.len() {
                return Err(AggregateError::WrongLength {
                    got: values.len(),
                    expected: self.hi.len(),
                });
            }
        }
        let checked = run_split(&mut self.hi, &mut self.lo, block, &|_, values| {
            values
                .iter()
                .try_for_each(|v| validate(v, v.len()).map(|_| ()))
        });
        if checked.is_err() {
            // Halves report indices within themselves: find the first bad value in full.
            for (_, values) in block {
                validate(values, values.len())?;
            }
        }
        let weights: Vec<f64> = block.iter().map(|(w, _)| *w as f64).collect();
        run_split(&mut self.hi, &mut self.lo, block, &|(hi, lo), values| {
            fold_slices(hi, lo, &weights, values);
            Ok(())
        })?;
        self.total_weight += block.iter().map(|(w, _)| w).sum::<u64>();
        Ok(())
    }

    /// The exact total Σ w·x, rounded once to f64 per value (as `ExactSum::sum_f64`).
    pub fn sum_f64(&self) -> Vec<f64> {
        let grid = (-FRAC_BITS as f64).exp2();
        self.hi
            .iter()
            .zip(&self.lo)
            .map(|(&h, &l)| {
                (((i128::from(h) << (FRAC_BITS + HI_BITS)) + i128::from(l)) as f64) * grid
            })
            .collect()
    }
}

type Limbs<'a> = (&'a mut [i64], &'a mut [i64]);
/// Work on a part of the accumulator and the matching parts of a block's updates.
type PartWork<'w> = dyn Fn(Limbs<'_>, &[&[f32]]) -> Result<(), AggregateError> + Sync + 'w;

/// Runs `work` over the accumulator and the block's values, in two halves on two threads for
/// large vectors (as `ExactSum` does).
fn run_split(
    hi: &mut [i64],
    lo: &mut [i64],
    block: &[(u64, &[f32])],
    work: &PartWork<'_>,
) -> Result<(), AggregateError> {
    let values: Vec<&[f32]> = block.iter().map(|(_, v)| *v).collect();
    if hi.len() < PARALLEL_FROM {
        return work((hi, lo), &values);
    }
    let mid = hi.len() / 2;
    let (hi_a, hi_b) = hi.split_at_mut(mid);
    let (lo_a, lo_b) = lo.split_at_mut(mid);
    let first: Vec<&[f32]> = values.iter().map(|v| &v[..mid]).collect();
    let second: Vec<&[f32]> = values.iter().map(|v| &v[mid..]).collect();
    std::thread::scope(|s| {
        let other = s.spawn(|| work((hi_b, lo_b), &second));
        let here = work((hi_a, lo_a), &first);
        let there = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        here.and(there)
    })
}

/// Folds each update into the limbs, walking the limbs once per group of four updates.
fn fold_slices(hi: &mut [i64], lo: &mut [i64], weights: &[f64], values: &[&[f32]]) {
    for (ws, vs) in weights.chunks(4).zip(values.chunks(4)) {
        match vs {
            [a] => fold_n(hi, lo, [ws[0]], [a]),
            [a, b] => fold_n(hi, lo, [ws[0], ws[1]], [a, b]),
            [a, b, c] => fold_n(hi, lo, [ws[0], ws[1], ws[2]], [a, b, c]),
            [a, b, c, d] => fold_n(hi, lo, [ws[0], ws[1], ws[2], ws[3]], [a, b, c, d]),
            _ => {}
        }
    }
}

#[inline(always)]
fn fold_n<const N: usize>(hi: &mut [i64], lo: &mut [i64], w: [f64; N], v: [&[f32]; N]) {
    let (k_hi, k_lo) = (C_HI.to_bits() as i64, C_LO.to_bits() as i64);
    for i in 0..hi.len().min(lo.len()) {
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
    use shoal_coordinator::aggregate::ExactSum;

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn same_bits_as_exact_sum_on_both_paths() {
        for len in [1000, PARALLEL_FROM + 3] {
            let vectors: Vec<(u64, Vec<f32>)> = (0..7u64)
                .map(|k| {
                    (
                        k * 37 + 1,
                        (0..len)
                            .map(|i| ((i as f32 + 0.3) * (k + 1) as f32).sin() * 1e3)
                            .collect(),
                    )
                })
                .collect();
            let mut exact = ExactSum::new(len);
            let mut blocked = BlockSum::new(len);
            for (w, v) in &vectors {
                assert_eq!(exact.fold(*w, v), Ok(()));
            }
            let block: Vec<(u64, &[f32])> =
                vectors.iter().map(|(w, v)| (*w, v.as_slice())).collect();
            assert_eq!(blocked.fold_block(&block), Ok(()));
            assert_eq!(bits(&blocked.sum_f64()), bits(&exact.sum_f64()));
        }
    }
}
