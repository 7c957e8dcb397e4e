//! Bounding how far one update may move the model: the L2 norm of an update, and what happens
//! when it is over the bound (the update is refused, or clipped to the bound).
//!
//! What is measured depends on what the payload is:
//! - **Fit** (FedAvg): the payload is the client's new parameters, so the norm is that of the
//!   *delta* from the round's global parameters, i.e. the step the client proposes.
//! - **Gradient** (FedSGD): the payload is the step direction itself; its own norm.
//! - **k-means** (k-FED seeding centres, per-centroid sums): exempt. A centroid sum grows with
//!   the points behind it, and the counts that must add up to the update's weight already tie
//!   it to the client's data; a bound in data units would need a data radius the coordinator
//!   does not know. The aggregation range check ([`crate::aggregate::ExactSum::check`]) still
//!   applies. This is an accepted risk: the counts bound how many points a client claims, not
//!   where its sums put them, so one authenticated client can still drag a centroid. Robust
//!   aggregation of centroids (a median, on the roadmap) is the defence that fits k-means.
//!
//! Clipping multiplies the delta (or gradient) by `bound / norm` in f64 and rounds each value
//! once to f32, in index order, so the same update clips to the same bits on every machine.
//! Norm bounding against model replacement follows Sun et al. 2019, "Can you really backdoor
//! federated learning?".

use crate::aggregate::{AggregateError, validate};
use serde::{Deserialize, Serialize};
use shoal_proto::v1::TaskKind;
use std::sync::Arc;

/// What to do with an update whose norm is over the bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPolicy {
    /// Refuse it with `InvalidArgument` ("update norm X exceeds the bound Y").
    #[default]
    Reject,
    /// Scale its delta (or gradient) down to the bound and accept it.
    Clip,
}

impl std::str::FromStr for NormPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "reject" => Ok(Self::Reject),
            "clip" => Ok(Self::Clip),
            other => Err(format!("unknown norm policy {other:?}: use reject or clip")),
        }
    }
}

impl std::fmt::Display for NormPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reject => "reject",
            Self::Clip => "clip",
        })
    }
}

/// Independent partial sums of a norm: value `i` goes to lane `i mod LANES`. One running sum
/// is a chain of dependent additions (a million values, a millisecond); eight run side by side.
const LANES: usize = 8;

/// The sum of `square(v, r)` over the pairs of `values` and `reference` (equal lengths), in
/// f64, in a fixed order: value `i` goes to lane `i mod LANES`, the lanes are added together
/// at the end, so the result depends on the values alone. Whole groups of eight are walked as
/// arrays, which the compiler keeps in vector registers without bounds checks.
fn sum_of_squares(values: &[f32], reference: &[f32], square: impl Fn(f32, f32) -> f64) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let (groups, tail) = values.as_chunks::<LANES>();
    let (reference_groups, reference_tail) = reference.as_chunks::<LANES>();
    for (group, reference) in groups.iter().zip(reference_groups) {
        for lane in 0..LANES {
            lanes[lane] += square(group[lane], reference[lane]);
        }
    }
    for (lane, (&v, &r)) in tail.iter().zip(reference_tail).enumerate() {
        lanes[lane] += square(v, r);
    }
    let [a, b, c, d, e, f, g, h] = lanes;
    ((a + b) + (c + d)) + ((e + f) + (g + h))
}

/// L2 norm of `values`, summed in f64 in a fixed order (deterministic).
pub fn l2_norm(values: &[f32]) -> f64 {
    sum_of_squares(values, values, |v, _| {
        let v = f64::from(v);
        v * v
    })
    .sqrt()
}

/// L2 norm of `values − reference` (equal lengths), summed in f64 in a fixed order.
pub fn l2_distance(values: &[f32], reference: &[f32]) -> f64 {
    let len = values.len().min(reference.len());
    sum_of_squares(&values[..len], &reference[..len], |v, r| {
        let d = f64::from(v) - f64::from(r);
        d * d
    })
    .sqrt()
}

/// Scales `values − reference` (or `values` itself without a reference) by `scale`, rounding
/// each result once to f32.
pub fn scale_delta(values: &mut [f32], reference: Option<&[f32]>, scale: f64) {
    match reference {
        Some(reference) => {
            for (v, &r) in values.iter_mut().zip(reference) {
                let r = f64::from(r);
                *v = (r + (f64::from(*v) - r) * scale) as f32;
            }
        }
        None => {
            for v in values.iter_mut() {
                *v = (f64::from(*v) * scale) as f32;
            }
        }
    }
}

/// The norm rule of one round: the bound, the policy, and what the norm is measured from.
#[derive(Debug, Clone)]
pub struct NormBound {
    max_norm: f64,
    policy: NormPolicy,
    /// The round's global parameters for Fit tasks; `None` measures the payload itself.
    reference: Option<Arc<Vec<f32>>>,
}

impl NormBound {
    /// The rule for a round of `kind` whose global state is `global`; `None` when there is no
    /// bound or the task is exempt (k-means).
    pub fn for_task(
        kind: TaskKind,
        global: &Arc<Vec<f32>>,
        max_norm: Option<f64>,
        policy: NormPolicy,
    ) -> Option<Self> {
        let max_norm = max_norm?;
        let reference = match kind {
            TaskKind::Fit => Some(global.clone()),
            TaskKind::Gradient => None,
            TaskKind::KmeansInit
            | TaskKind::KmeansStep
            | TaskKind::Evaluate
            | TaskKind::Unspecified => return None,
        };
        Some(Self {
            max_norm,
            policy,
            reference,
        })
    }

    /// The norm of `payload` under this rule.
    pub fn norm(&self, payload: &[f32]) -> f64 {
        match &self.reference {
            Some(reference) => l2_distance(payload, reference),
            None => l2_norm(payload),
        }
    }

    /// Checks `payload` (its length, then the norm, through which a value that is not finite
    /// shows and is named) and applies the policy:
    /// returns `Ok(None)` if it is within the bound, `Ok(Some(norm))` if it was clipped from
    /// `norm`, or the refusal.
    pub fn enforce(&self, payload: &mut Arc<Vec<f32>>) -> Result<Option<f64>, AggregateError> {
        let expected = self.reference.as_ref().map_or(payload.len(), |r| r.len());
        if payload.len() != expected {
            validate(payload, expected)?;
        }
        let norm = self.norm(payload);
        // The global state is finite, so a norm that is not comes from a value that is not:
        // the full check names it. One pass over the update instead of two.
        if !norm.is_finite() {
            validate(payload, expected)?;
        }
        // At debug level, so an operator can see honest norms before choosing a tighter bound.
        tracing::debug!(norm, bound = self.max_norm, "update norm");
        if norm <= self.max_norm {
            return Ok(None);
        }
        match self.policy {
            NormPolicy::Reject => Err(AggregateError::NormTooLarge {
                norm,
                bound: self.max_norm,
            }),
            NormPolicy::Clip => {
                let reference = self.reference.as_deref().map(Vec::as_slice);
                // A shared payload is copied here, and only here: most are within the bound.
                scale_delta(
                    Arc::make_mut(payload).as_mut_slice(),
                    reference,
                    self.max_norm / norm,
                );
                Ok(Some(norm))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shared(values: &[f32]) -> Arc<Vec<f32>> {
        Arc::new(values.to_vec())
    }

    fn bound(kind: TaskKind, global: Vec<f32>, max: f64, policy: NormPolicy) -> NormBound {
        NormBound::for_task(kind, &Arc::new(global), Some(max), policy).unwrap()
    }

    #[test]
    fn norms_of_hand_made_vectors() {
        assert_eq!(l2_norm(&[3.0, 4.0]), 5.0);
        assert_eq!(l2_distance(&[4.0, 6.0], &[1.0, 2.0]), 5.0);
        assert_eq!(l2_norm(&[]), 0.0);
    }

    #[test]
    fn fit_measures_the_delta_and_gradient_the_payload() {
        let fit = bound(TaskKind::Fit, vec![10.0, 10.0], 5.0, NormPolicy::Reject);
        assert_eq!(
            fit.enforce(&mut shared(&[13.0, 14.0])),
            Ok(None),
            "delta norm is exactly 5"
        );
        let grad = bound(
            TaskKind::Gradient,
            vec![10.0, 10.0],
            5.0,
            NormPolicy::Reject,
        );
        assert_eq!(
            grad.enforce(&mut shared(&[3.0, 4.0])),
            Ok(None),
            "payload norm is exactly 5"
        );
        assert!(matches!(
            grad.enforce(&mut shared(&[13.0, 14.0])),
            Err(AggregateError::NormTooLarge { .. })
        ));
    }

    #[test]
    fn reject_names_the_norm_and_the_bound() {
        let fit = bound(TaskKind::Fit, vec![0.0, 0.0], 1.0, NormPolicy::Reject);
        let mut payload = shared(&[3.0, 4.0]);
        let err = fit.enforce(&mut payload).unwrap_err();
        assert_eq!(
            err,
            AggregateError::NormTooLarge {
                norm: 5.0,
                bound: 1.0
            }
        );
        assert!(err.to_string().contains("update norm 5"), "{err}");
        assert!(err.to_string().contains("exceeds the bound 1"), "{err}");
        assert_eq!(*payload, [3.0, 4.0], "a refused payload is untouched");
    }

    #[test]
    fn clip_scales_the_delta_onto_the_bound() {
        let fit = bound(TaskKind::Fit, vec![1.0, 1.0], 1.0, NormPolicy::Clip);
        let mut payload = shared(&[4.0, 5.0]);
        assert_eq!(fit.enforce(&mut payload), Ok(Some(5.0)));
        assert_eq!(*payload, [1.6, 1.8]);
        let grad = bound(TaskKind::Gradient, vec![], 2.5, NormPolicy::Clip);
        let mut g = shared(&[3.0, -4.0]);
        assert_eq!(grad.enforce(&mut g), Ok(Some(5.0)));
        assert_eq!(*g, [1.5, -2.0]);
    }

    #[test]
    fn clipping_a_shared_payload_leaves_the_other_holders_vector_alone() {
        // An in-process client's update can be the very vector the client keeps (the global
        // it sends back unchanged): the clipped values are the coordinator's own copy.
        let fit = bound(TaskKind::Fit, vec![1.0, 1.0], 1.0, NormPolicy::Clip);
        let client = shared(&[4.0, 5.0]);
        let mut payload = client.clone();
        assert_eq!(fit.enforce(&mut payload), Ok(Some(5.0)));
        assert_eq!(*payload, [1.6, 1.8]);
        assert_eq!(*client, [4.0, 5.0]);
        // Within the bound nothing is copied.
        let mut within = client.clone();
        let loose = bound(TaskKind::Fit, vec![1.0, 1.0], 10.0, NormPolicy::Clip);
        assert_eq!(loose.enforce(&mut within), Ok(None));
        assert!(Arc::ptr_eq(&within, &client));
    }

    #[test]
    fn validation_comes_before_the_norm() {
        let fit = bound(TaskKind::Fit, vec![0.0, 0.0], 1.0, NormPolicy::Clip);
        assert_eq!(
            fit.enforce(&mut shared(&[f32::NAN, 0.0])),
            Err(AggregateError::NonFinite { index: 0 })
        );
        assert!(matches!(
            fit.enforce(&mut shared(&[0.0])),
            Err(AggregateError::WrongLength { .. })
        ));
    }

    #[test]
    fn kmeans_and_unbounded_runs_are_exempt() {
        let g = Arc::new(vec![0.0]);
        for kind in [TaskKind::KmeansInit, TaskKind::KmeansStep] {
            assert!(NormBound::for_task(kind, &g, Some(1.0), NormPolicy::Reject).is_none());
        }
        assert!(NormBound::for_task(TaskKind::Fit, &g, None, NormPolicy::Reject).is_none());
    }

    #[test]
    fn policies_parse_and_print() {
        assert_eq!("clip".parse::<NormPolicy>(), Ok(NormPolicy::Clip));
        assert_eq!("Reject".parse::<NormPolicy>(), Ok(NormPolicy::Reject));
        assert!("drop".parse::<NormPolicy>().is_err());
        assert_eq!(NormPolicy::Clip.to_string(), "clip");
    }

    proptest! {
        #[test]
        fn lane_sums_agree_with_a_sum_in_index_order(
            values in proptest::collection::vec(-1e3f32..1e3, 0..300),
        ) {
            let reference: Vec<f32> = values.iter().map(|v| v * 0.5 - 1.0).collect();
            let direct = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
                    .sum::<f64>()
                    .sqrt()
            };
            let zeros = vec![0.0f32; values.len()];
            for (got, want) in [
                (l2_norm(&values), direct(&values, &zeros)),
                (l2_distance(&values, &reference), direct(&values, &reference)),
            ] {
                prop_assert!((got - want).abs() <= 1e-12 * want.max(1.0), "{got} vs {want}");
            }
            // The lanes as they were first written, one index at a time: the same bits, so
            // norms (and clipping) are those of earlier releases.
            let by_index = |a: &[f32], b: &[f32]| {
                let mut lanes = [0.0f64; LANES];
                for i in 0..a.len() {
                    lanes[i % LANES] += (f64::from(a[i]) - f64::from(b[i])).powi(2);
                }
                let [a, b, c, d, e, f, g, h] = lanes;
                (((a + b) + (c + d)) + ((e + f) + (g + h))).sqrt()
            };
            prop_assert_eq!(
                l2_distance(&values, &reference).to_bits(),
                by_index(&values, &reference).to_bits()
            );
            prop_assert_eq!(l2_norm(&values).to_bits(), by_index(&values, &zeros).to_bits());
        }

        #[test]
        fn clipped_updates_land_on_the_bound_deterministically(
            rows in proptest::collection::vec((-1e3f32..1e3, -1e3f32..1e3), 1..64),
            max in 1e-2f64..1e2,
        ) {
            let (global, payload): (Vec<f32>, Vec<f32>) = rows.into_iter().unzip();
            let rule = bound(TaskKind::Fit, global.clone(), max, NormPolicy::Clip);
            let mut a = shared(&payload);
            let clipped = rule.enforce(&mut a).unwrap();
            let mut b = shared(&payload);
            rule.enforce(&mut b).unwrap();
            prop_assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let after = l2_distance(&a, &global);
            match clipped {
                None => prop_assert_eq!(&*a, &payload),
                // One f32 rounding per value: within a few ulps of the global's magnitude.
                Some(before) => {
                    prop_assert!(before > max);
                    let slack = 1e-6 * (max + 1e3 * (global.len() as f64).sqrt());
                    prop_assert!((after - max).abs() <= slack, "{after} vs {max}");
                }
            }
        }

        #[test]
        fn within_the_bound_nothing_changes(
            payload in proptest::collection::vec(-1.0f32..1.0, 1..64),
        ) {
            let rule = bound(TaskKind::Gradient, vec![], 1e3, NormPolicy::Clip);
            let mut p = shared(&payload);
            prop_assert_eq!(rule.enforce(&mut p), Ok(None));
            prop_assert_eq!(&*p, &payload);
        }
    }
}
