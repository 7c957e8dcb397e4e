//! Byzantine-robust aggregation: the coordinate-wise median and trimmed mean, Krum, Multi-Krum
//! and Bulyan, as pure functions of a round's updates.
//!
//! Unlike the exact weighted mean these need every update of the round at once (the round
//! collects them: memory is the number of updates × 4 bytes × parameters), and they ignore the
//! clients' example counts, which a malicious client could inflate. The updates come sorted by
//! client id, every sum runs in f64 in a fixed order and every comparison is a total order, so
//! the result is the same bits whatever order the updates arrived in.
//!
//! References: Yin et al. 2018 (median, trimmed mean), Blanchard et al. 2017 (Krum,
//! Multi-Krum), El Mhamdi et al. 2018 (Bulyan).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// How a round's updates are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// The weighted mean (the exact sum; the default).
    Mean,
    /// The coordinate-wise median.
    Median,
    /// The coordinate-wise mean of what is left after dropping the `beta` share of the
    /// smallest and of the largest values, `beta` in [0, 0.5).
    TrimmedMean {
        /// Share dropped at each end.
        beta: f64,
    },
    /// The one update closest to its `n - f - 2` nearest neighbours, tolerating `f` attackers.
    Krum {
        /// Attackers tolerated.
        f: usize,
    },
    /// The mean of the `m` updates Krum scores best.
    MultiKrum {
        /// Attackers tolerated.
        f: usize,
        /// Updates averaged.
        m: usize,
    },
    /// Krum picks `n - 2f` updates one by one; per coordinate, the mean of the `n - 4f` of
    /// them closest to their median.
    Bulyan {
        /// Attackers tolerated.
        f: usize,
    },
}

/// A rule that cannot run on a round.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RuleError {
    /// Not a rule, or its numbers are out of range.
    #[error("--aggregator {0}")]
    Invalid(String),
    /// The round has fewer updates than the rule needs.
    #[error("{rule} needs at least {needed} updates, the round has {got}")]
    TooFew {
        /// The rule.
        rule: String,
        /// Updates it needs.
        needed: usize,
        /// Updates the round has.
        got: usize,
    },
    /// The updates differ in length.
    #[error("updates of different lengths")]
    Ragged,
}

impl Rule {
    /// Whether the rule needs every update at once (all but the mean).
    pub fn collects(&self) -> bool {
        *self != Rule::Mean
    }

    /// The fewest updates a round must have for the rule to hold its guarantee.
    pub fn min_updates(&self) -> usize {
        match *self {
            Rule::Mean | Rule::Median | Rule::TrimmedMean { .. } => 1,
            // Saturating: an absurd F asks for more updates than any round has, never fewer.
            Rule::Krum { f } => f.saturating_mul(2).saturating_add(3),
            Rule::MultiKrum { f, m } => f
                .saturating_mul(2)
                .saturating_add(3)
                .max(m.saturating_add(f)),
            Rule::Bulyan { f } => f.saturating_mul(4).saturating_add(3),
        }
    }

    /// Combines `updates` (each the same length; callers sort them by client id).
    pub fn apply(&self, updates: &[&[f32]]) -> Result<Vec<f32>, RuleError> {
        let (n, needed) = (updates.len(), self.min_updates());
        if n < needed {
            return Err(RuleError::TooFew {
                rule: self.to_string(),
                needed,
                got: n,
            });
        }
        let len = updates[0].len();
        if updates.iter().any(|u| u.len() != len) {
            return Err(RuleError::Ragged);
        }
        Ok(match *self {
            Rule::Mean => coordinate_wise(updates, |column| mean(column)),
            Rule::Median => coordinate_wise(updates, |column| {
                column.sort_unstable_by(f32::total_cmp);
                median_of_sorted(column) as f32
            }),
            Rule::TrimmedMean { beta } => {
                let cut = (beta * n as f64).floor() as usize;
                coordinate_wise(updates, |column| {
                    column.sort_unstable_by(f32::total_cmp);
                    mean(&column[cut..column.len() - cut])
                })
            }
            Rule::Krum { f } => {
                let all: Vec<usize> = (0..n).collect();
                updates[krum_order(&distances(updates), n, &all, f)[0]].to_vec()
            }
            Rule::MultiKrum { f, m } => {
                let all: Vec<usize> = (0..n).collect();
                let mut best = krum_order(&distances(updates), n, &all, f);
                best.truncate(m);
                best.sort_unstable();
                let chosen: Vec<&[f32]> = best.iter().map(|&i| updates[i]).collect();
                coordinate_wise(&chosen, |column| mean(column))
            }
            Rule::Bulyan { f } => {
                // Krum over what is left, n - 2f times; the distances are computed once.
                let distance = distances(updates);
                let mut left: Vec<usize> = (0..n).collect();
                let mut chosen = Vec::with_capacity(n - 2 * f);
                while chosen.len() < n - 2 * f {
                    let pick = krum_order(&distance, n, &left, f)[0];
                    left.retain(|&i| i != pick);
                    chosen.push(updates[pick]);
                }
                let keep = n - 4 * f;
                coordinate_wise(&chosen, |column| {
                    column.sort_unstable_by(f32::total_cmp);
                    let median = median_of_sorted(column);
                    // The `keep` values closest to the median, ties to the smaller value.
                    column.sort_by(|a, b| {
                        (f64::from(*a) - median)
                            .abs()
                            .total_cmp(&(f64::from(*b) - median).abs())
                            .then(a.total_cmp(b))
                    });
                    mean(&column[..keep])
                })
            }
        })
    }
}

/// Applies `combine` to each coordinate's values (in update order), reusing one buffer.
fn coordinate_wise(updates: &[&[f32]], mut combine: impl FnMut(&mut [f32]) -> f32) -> Vec<f32> {
    let len = updates.first().map_or(0, |u| u.len());
    let mut column = vec![0.0f32; updates.len()];
    (0..len)
        .map(|i| {
            for (c, u) in column.iter_mut().zip(updates) {
                *c = u[i];
            }
            combine(&mut column)
        })
        .collect()
}

/// The middle value of sorted `values`, or the mean of the middle two (in f64).
fn median_of_sorted(values: &[f32]) -> f64 {
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        f64::from(values[mid])
    } else {
        (f64::from(values[mid - 1]) + f64::from(values[mid])) / 2.0
    }
}

/// Mean in f64, summed in order.
fn mean(values: &[f32]) -> f32 {
    (values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64) as f32
}

/// Squared Euclidean distances between every two updates, row-major `n × n`.
fn distances(updates: &[&[f32]]) -> Vec<f64> {
    let n = updates.len();
    let mut distance = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let d: f64 = updates[i]
                .iter()
                .zip(updates[j])
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum();
            distance[i * n + j] = d;
            distance[j * n + i] = d;
        }
    }
    distance
}

/// `members` (indices into the `n` × `n` `distance` matrix) from the best Krum score to the
/// worst, ties to the lower index: a member's score is the sum of its squared distances to its
/// `len - f - 2` nearest other members.
fn krum_order(distance: &[f64], n: usize, members: &[usize], f: usize) -> Vec<usize> {
    let neighbours = members.len().saturating_sub(f + 2).max(1);
    let score = |i: usize| -> f64 {
        let mut others: Vec<f64> = members
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| distance[i * n + j])
            .collect();
        others.sort_unstable_by(f64::total_cmp);
        others.iter().take(neighbours).sum()
    };
    let mut scored: Vec<(f64, usize)> = members.iter().map(|&i| (score(i), i)).collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rule::Mean => f.write_str("mean"),
            Rule::Median => f.write_str("median"),
            Rule::TrimmedMean { beta } => write!(f, "trimmed-mean:{beta}"),
            Rule::Krum { f: n } => write!(f, "krum:{n}"),
            Rule::MultiKrum { f: n, m } => write!(f, "multi-krum:{n}:{m}"),
            Rule::Bulyan { f: n } => write!(f, "bulyan:{n}"),
        }
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    /// `mean`, `median`, `trimmed-mean:BETA`, `krum:F`, `multi-krum:F:M` or `bulyan:F`.
    fn from_str(s: &str) -> Result<Rule, RuleError> {
        let text = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        let bad = |why: &str| RuleError::Invalid(format!("{s:?}: {why}"));
        let count = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| bad(&format!("{v:?} is not a whole number")))
        };
        match parts.as_slice() {
            ["mean"] => Ok(Rule::Mean),
            ["median"] => Ok(Rule::Median),
            ["trimmed-mean", beta] => {
                let beta: f64 = beta
                    .parse()
                    .map_err(|_| bad(&format!("{beta:?} is not a fraction")))?;
                if (0.0..0.5).contains(&beta) {
                    Ok(Rule::TrimmedMean { beta })
                } else {
                    Err(bad("the trimmed share must be in [0, 0.5)"))
                }
            }
            ["krum", f] => Ok(Rule::Krum { f: count(f)? }),
            ["multi-krum", f, m] => match (count(f)?, count(m)?) {
                (_, 0) => Err(bad("multi-krum averages at least one update (m ≥ 1)")),
                (f, m) => Ok(Rule::MultiKrum { f, m }),
            },
            ["bulyan", f] => Ok(Rule::Bulyan { f: count(f)? }),
            _ => Err(bad(
                "expected mean, median, trimmed-mean:BETA, krum:F, multi-krum:F:M or bulyan:F",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(rule: Rule, updates: &[Vec<f32>]) -> Vec<f32> {
        let views: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
        rule.apply(&views).unwrap()
    }

    #[test]
    fn median_and_trimmed_mean_ignore_outliers() {
        let u = vec![
            vec![1.0, 10.0],
            vec![2.0, 20.0],
            vec![3.0, 30.0],
            vec![1000.0, -1e6],
        ];
        assert_eq!(apply(Rule::Median, &u), vec![2.5, 15.0]);
        assert_eq!(apply(Rule::TrimmedMean { beta: 0.25 }, &u), vec![2.5, 15.0]);
        assert_eq!(
            apply(Rule::TrimmedMean { beta: 0.0 }, &u),
            apply(Rule::Mean, &u)
        );
    }

    #[test]
    fn krum_picks_a_member_of_the_honest_cluster() {
        let mut u: Vec<Vec<f32>> = (0..6).map(|i| vec![1.0 + 0.01 * i as f32, 1.0]).collect();
        u.push(vec![-50.0, 80.0]);
        u.push(vec![60.0, -70.0]);
        let krum = apply(Rule::Krum { f: 2 }, &u);
        assert!(u[..6].contains(&krum), "{krum:?}");
        let multi = apply(Rule::MultiKrum { f: 2, m: 3 }, &u);
        assert!(
            multi[0] > 0.99 && multi[0] < 1.06 && multi[1] == 1.0,
            "{multi:?}"
        );
        let bulyan = apply(Rule::Bulyan { f: 1 }, &u[1..]);
        assert!(bulyan[0] > 0.99 && bulyan[0] < 1.06, "{bulyan:?}");
    }

    #[test]
    fn rules_refuse_rounds_too_small_for_their_guarantee() {
        let u = vec![vec![1.0f32]; 4];
        let views: Vec<&[f32]> = u.iter().map(Vec::as_slice).collect();
        assert!(matches!(
            Rule::Krum { f: 1 }.apply(&views),
            Err(RuleError::TooFew {
                needed: 5,
                got: 4,
                ..
            })
        ));
        assert!(Rule::Bulyan { f: 1 }.apply(&views).is_err());
        assert!(Rule::Krum { f: 0 }.apply(&views).is_ok());
        let absurd = "bulyan:4611686018427387904".parse::<Rule>().unwrap();
        assert_eq!(absurd.min_updates(), usize::MAX);
        assert!(absurd.apply(&views).is_err());
    }

    #[test]
    fn names_parse_and_print() {
        for name in [
            "mean",
            "median",
            "trimmed-mean:0.1",
            "krum:2",
            "multi-krum:2:5",
            "bulyan:1",
        ] {
            assert_eq!(name.parse::<Rule>().unwrap().to_string(), name);
        }
        for bad in [
            "trimmed-mean:0.5",
            "trimmed-mean:-0.1",
            "krum",
            "krum:x",
            "multi-krum:1:0",
            "avg",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    /// The direct definitions, one coordinate at a time, on sorted copies.
    fn reference_median(column: &[f32]) -> f32 {
        let mut c = column.to_vec();
        c.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = c.len();
        if n % 2 == 1 {
            c[n / 2]
        } else {
            ((c[n / 2 - 1] as f64 + c[n / 2] as f64) / 2.0) as f32
        }
    }

    proptest! {
        #[test]
        fn median_trimmed_mean_and_krum_match_their_definitions_in_any_order(
            updates in proptest::collection::vec(proptest::collection::vec(-100f32..100.0, 3), 5..12),
            beta in 0.0f64..0.49,
            rotate in 0usize..12,
        ) {
            let n = updates.len();
            let median = apply(Rule::Median, &updates);
            let trimmed = apply(Rule::TrimmedMean { beta }, &updates);
            let cut = (beta * n as f64).floor() as usize;
            for i in 0..3 {
                let column: Vec<f32> = updates.iter().map(|u| u[i]).collect();
                prop_assert_eq!(median[i], reference_median(&column));
                let mut sorted = column.clone();
                sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let kept = &sorted[cut..n - cut];
                let expected = (kept.iter().map(|&v| v as f64).sum::<f64>() / kept.len() as f64) as f32;
                prop_assert_eq!(trimmed[i], expected);
            }
            // Krum: the update whose n - f - 2 nearest neighbours are closest, by brute force.
            let f = (n - 3) / 2;
            let score = |i: usize| {
                let mut d: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| {
                    updates[i].iter().zip(&updates[j]).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>()
                }).collect();
                d.sort_by(|a, b| a.partial_cmp(b).unwrap());
                d.iter().take(n - f - 2).sum::<f64>()
            };
            let best = (0..n).min_by(|&a, &b| score(a).partial_cmp(&score(b)).unwrap().then(a.cmp(&b))).unwrap();
            prop_assert_eq!(apply(Rule::Krum { f }, &updates), updates[best].clone());
            // Arrival order does not matter to the coordinate-wise rules.
            let mut shuffled = updates.clone();
            shuffled.rotate_left(rotate % n);
            prop_assert_eq!(apply(Rule::Median, &shuffled), median);
            prop_assert_eq!(apply(Rule::TrimmedMean { beta }, &shuffled), trimmed);
        }
    }
}
