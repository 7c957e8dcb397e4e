//! Clustering quality against ground-truth labels: normalised mutual information (arithmetic
//! normalisation, as scikit-learn's default) and the adjusted Rand index (Hubert & Arabie
//! 1985).
//!
//! The federated path only knows per-cluster label counts, so both measures are defined on a
//! contingency table (`rows` clusters x `cols` classes, row-major); the label-vector forms
//! build that table and call them. Empty rows and columns are ignored. Degenerate cases follow
//! scikit-learn: when both sides have a single group, or both are empty, the score is 1;
//! label vectors of different lengths (or a table of the wrong size) give NaN.

use std::collections::BTreeMap;

/// Normalised mutual information of two labelings of the same points, in `[0, 1]`.
pub fn nmi(a: &[u32], b: &[u32]) -> f64 {
    match contingency(a, b) {
        Some((table, rows, cols)) => nmi_from_contingency(&table, rows, cols),
        None => f64::NAN,
    }
}

/// Adjusted Rand index of two labelings of the same points (1 for identical partitions,
/// about 0 for independent ones, possibly negative).
pub fn ari(a: &[u32], b: &[u32]) -> f64 {
    match contingency(a, b) {
        Some((table, rows, cols)) => ari_from_contingency(&table, rows, cols),
        None => f64::NAN,
    }
}

/// NMI from a contingency table (`table[r * cols + c]` = points in group `r` of the first
/// labeling and group `c` of the second).
pub fn nmi_from_contingency(table: &[u64], rows: usize, cols: usize) -> f64 {
    let Some(m) = Margins::of(table, rows, cols) else {
        return f64::NAN;
    };
    if m.n == 0.0 || m.groups() == (1, 1) {
        return 1.0;
    }
    let mut mi = 0.0;
    for (r, &a) in m.rows.iter().enumerate() {
        for (c, &b) in m.cols.iter().enumerate() {
            let nij = table[r * cols + c] as f64;
            if nij > 0.0 {
                mi += nij / m.n * (m.n * nij / (a * b)).ln();
            }
        }
    }
    let mi = mi.max(0.0);
    if mi == 0.0 {
        return 0.0;
    }
    let normaliser = (entropy(&m.rows, m.n) + entropy(&m.cols, m.n)) / 2.0;
    (mi / normaliser).min(1.0)
}

/// ARI from a contingency table (same layout as [`nmi_from_contingency`]).
pub fn ari_from_contingency(table: &[u64], rows: usize, cols: usize) -> f64 {
    let Some(m) = Margins::of(table, rows, cols) else {
        return f64::NAN;
    };
    let groups = m.groups();
    if m.n == 0.0 || groups == (1, 1) || (groups.0 == groups.1 && groups.0 as f64 == m.n) {
        return 1.0;
    }
    let pairs = |x: f64| x * (x - 1.0) / 2.0;
    let index: f64 = table.iter().map(|&x| pairs(x as f64)).sum();
    let row_pairs: f64 = m.rows.iter().map(|&x| pairs(x)).sum();
    let col_pairs: f64 = m.cols.iter().map(|&x| pairs(x)).sum();
    let expected = row_pairs * col_pairs / pairs(m.n);
    let max = (row_pairs + col_pairs) / 2.0;
    if max == expected {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// Row and column sums of a contingency table.
struct Margins {
    rows: Vec<f64>,
    cols: Vec<f64>,
    n: f64,
}

impl Margins {
    /// `None` when the table does not have `rows * cols` cells.
    fn of(table: &[u64], rows: usize, cols: usize) -> Option<Margins> {
        if Some(table.len()) != rows.checked_mul(cols) {
            return None;
        }
        let mut m = Margins {
            rows: vec![0.0; rows],
            cols: vec![0.0; cols],
            n: 0.0,
        };
        for r in 0..rows {
            for c in 0..cols {
                let x = table[r * cols + c] as f64;
                m.rows[r] += x;
                m.cols[c] += x;
                m.n += x;
            }
        }
        Some(m)
    }

    /// Numbers of non-empty rows and columns.
    fn groups(&self) -> (usize, usize) {
        let count = |sums: &[f64]| sums.iter().filter(|&&s| s > 0.0).count();
        (count(&self.rows), count(&self.cols))
    }
}

/// Entropy (nats) of the distribution `counts / n`, ignoring empty groups.
fn entropy(counts: &[f64], n: f64) -> f64 {
    counts
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| {
            let p = x / n;
            -p * p.ln()
        })
        .sum()
}

/// Contingency table of two label vectors, groups in increasing label order; `None` when the
/// lengths differ.
fn contingency(a: &[u32], b: &[u32]) -> Option<(Vec<u64>, usize, usize)> {
    if a.len() != b.len() {
        return None;
    }
    let index = |labels: &[u32]| -> BTreeMap<u32, usize> {
        let mut map: BTreeMap<u32, usize> = labels.iter().map(|&l| (l, 0)).collect();
        for (i, slot) in map.values_mut().enumerate() {
            *slot = i;
        }
        map
    };
    let (ia, ib) = (index(a), index(b));
    let (rows, cols) = (ia.len(), ib.len());
    let mut table = vec![0u64; rows * cols];
    for (x, y) in a.iter().zip(b) {
        table[ia[x] * cols + ib[y]] += 1;
    }
    Some((table, rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn identical_and_relabelled_partitions_score_one() {
        let a = [0, 0, 1, 1, 2, 2, 2];
        let b = [5, 5, 9, 9, 1, 1, 1];
        assert!(close(nmi(&a, &a), 1.0));
        assert!(close(ari(&a, &a), 1.0));
        assert!(close(nmi(&a, &b), 1.0));
        assert!(close(ari(&a, &b), 1.0));
    }

    #[test]
    fn known_small_examples() {
        // Values from scikit-learn's normalized_mutual_info_score / adjusted_rand_score.
        assert!(close(nmi(&[0, 0, 1, 1], &[0, 0, 1, 2]), 0.8));
        assert!(close(ari(&[0, 0, 1, 1], &[0, 0, 1, 2]), 4.0 / 7.0));
        assert!(close(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]), 0.0));
        assert!(close(ari(&[0, 0, 1, 1], &[0, 1, 0, 1]), -0.5));
        // Degenerate cases.
        assert!(close(nmi(&[3, 3, 3], &[1, 1, 1]), 1.0));
        assert!(close(ari(&[3, 3, 3], &[1, 1, 1]), 1.0));
        assert!(close(nmi(&[0, 1, 2], &[2, 0, 1]), 1.0));
        assert!(close(ari(&[0, 1, 2], &[2, 0, 1]), 1.0));
        assert!(close(nmi(&[0, 0, 0], &[0, 1, 2]), 0.0));
        assert!(close(ari(&[0, 0, 0], &[0, 1, 2]), 0.0));
        assert!(close(nmi(&[], &[]), 1.0));
        assert!(nmi(&[0, 1], &[0]).is_nan());
        assert!(ari(&[0, 1], &[0]).is_nan());
        assert!(nmi_from_contingency(&[1, 2, 3], 2, 2).is_nan());
    }

    #[test]
    fn empty_rows_and_columns_are_ignored() {
        // Clusters x classes with an empty cluster and an empty class.
        let table = [2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
        let plain = [2, 0, 0, 0, 1, 1];
        let (a, b) = (
            nmi_from_contingency(&table, 3, 4),
            nmi_from_contingency(&plain, 2, 3),
        );
        assert!(close(a, b) && a > 0.0 && a < 1.0);
        assert!(close(
            ari_from_contingency(&table, 3, 4),
            ari_from_contingency(&plain, 2, 3)
        ));
    }

    proptest! {
        #[test]
        fn contingency_forms_equal_label_forms(pairs in prop::collection::vec((0u32..4, 0u32..5), 1..60)) {
            let (a, b): (Vec<u32>, Vec<u32>) = pairs.into_iter().unzip();
            let mut table = vec![0u64; 4 * 5];
            for (x, y) in a.iter().zip(&b) {
                table[*x as usize * 5 + *y as usize] += 1;
            }
            prop_assert!((nmi(&a, &b) - nmi_from_contingency(&table, 4, 5)).abs() < 1e-12);
            prop_assert!((ari(&a, &b) - ari_from_contingency(&table, 4, 5)).abs() < 1e-12);
            let n = nmi(&a, &b);
            prop_assert!((0.0..=1.0).contains(&n));
            prop_assert!(ari(&a, &b) <= 1.0 + 1e-12);
        }
    }
}
