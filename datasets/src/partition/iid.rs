//! IID partitioning: a seeded shuffle cut into near-equal contiguous chunks.

use rand::Rng;
use rand::seq::SliceRandom;

/// Splits `0..n` into `k` parts whose sizes differ by at most one (the first `n % k` parts
/// are the larger ones). Requires `1 <= k <= n`, checked by the caller.
pub(super) fn split(n: usize, k: usize, rng: &mut impl Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let (base, extra) = (n / k, n % k);
    let mut rest = order.as_slice();
    (0..k)
        .map(|client| {
            let (head, tail) = rest.split_at(base + usize::from(client < extra));
            rest = tail;
            head.to_vec()
        })
        .collect()
}
