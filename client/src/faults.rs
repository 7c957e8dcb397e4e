//! Seeded fault injection for simulated fleets: clients that vanish, straggle or crash.
//!
//! Every decision is a pure function of (run seed, round, client id), drawn from the stream
//! `[FAULT_STREAM, round, client_key(id)]` of the run's RNG tree, so a faulty run replays
//! exactly, whatever order clients run in. Each draw takes three uniforms, one per fault kind,
//! always in the same order, so enabling one kind never shifts the draws of another. When
//! several fire at once the most severe wins: crash, then dropout, then straggle.
//!
//! A round that is retried (below quorum) keeps its round number; a client tasked again in the
//! same round takes the next draw of the same stream, so a retry is not doomed to repeat the
//! faults of the attempt it replaces.

use rand::Rng;
use shoal_datasets::rng::{client_key, rng_for};
use std::time::Duration;

/// Stream tag for fault decisions in the RNG tree.
pub const FAULT_STREAM: u64 = u64::from_be_bytes(*b"cl-fault");

/// How long a crashed client stays down when no duration is given.
pub const DEFAULT_CRASH_DOWNTIME: Duration = Duration::from_secs(2);

/// Which faults a simulated fleet suffers, as per-(client, round) probabilities.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Probability that a client takes its task and never delivers the update.
    pub dropout: f64,
    /// Probability that a client delays its push, and by how long.
    pub straggle: Option<(f64, Duration)>,
    /// Probability that a client dies mid-round, and how long it stays down before it joins
    /// again under the same id.
    pub crash: Option<(f64, Duration)>,
    /// Probability that a client does only part of its local training (FedProx's systems
    /// heterogeneity: a slow device sends what it managed), see [`partial_share`].
    pub partial_work: f64,
}

impl Faults {
    /// True when no fault can ever fire.
    pub fn is_none(&self) -> bool {
        self.dropout <= 0.0
            && self.straggle.is_none_or(|(p, _)| p <= 0.0)
            && self.crash.is_none_or(|(p, _)| p <= 0.0)
            && self.partial_work <= 0.0
    }
}

/// What happens to one client in one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Takes the task and never delivers; keeps pulling afterwards.
    Dropout,
    /// Delivers, but only after this delay.
    Straggle(Duration),
    /// Drops the task, goes silent for this long, then joins again under the same id.
    Crash(Duration),
}

/// The fault, if any, that hits `client_id` on its `nth` task (0 first) of `round` in the run
/// seeded with `seed`.
pub fn fault_for(
    faults: &Faults,
    seed: u64,
    round: u32,
    client_id: &str,
    nth: u32,
) -> Option<Fault> {
    if faults.is_none() {
        return None;
    }
    let mut rng = rng_for(
        seed,
        &[FAULT_STREAM, u64::from(round), client_key(client_id)],
    );
    let mut draw = [0.0f64; 3];
    for _ in 0..=nth {
        draw = [rng.random(), rng.random(), rng.random()];
    }
    let [crash, dropout, straggle] = draw;
    if let Some((p, downtime)) = faults.crash
        && crash < p
    {
        return Some(Fault::Crash(downtime));
    }
    if dropout < faults.dropout {
        return Some(Fault::Dropout);
    }
    if let Some((p, delay)) = faults.straggle
        && straggle < p
    {
        return Some(Fault::Straggle(delay));
    }
    None
}

/// Stream tag for partial-work decisions: a stream of its own, so enabling partial work
/// moves none of the other faults' draws.
pub const PARTIAL_STREAM: u64 = u64::from_be_bytes(*b"cl-part.");

/// The share of its local SGD steps, in (0, 1), that `client_id` does in `round` when partial
/// work hits it (uniform, as FedProx's stragglers' epochs are), or `None` when it does all of
/// them. A slow device stays slow for the whole round: every attempt of the round, and the
/// round asked again by a coordinator that resumed the run, gets the same share, so a run
/// with partial work replays (and resumes) exactly.
pub fn partial_share(faults: &Faults, seed: u64, round: u32, client_id: &str) -> Option<f64> {
    if faults.partial_work <= 0.0 {
        return None;
    }
    let mut rng = rng_for(
        seed,
        &[PARTIAL_STREAM, u64::from(round), client_key(client_id)],
    );
    let (fires, share): (f64, f64) = (rng.random(), rng.random());
    (fires < faults.partial_work).then_some(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<String> {
        (0..100).map(|i| format!("client-{i:05}")).collect()
    }

    /// How often each fault fires over 100 clients × 100 rounds.
    fn rates(faults: &Faults, seed: u64) -> [f64; 3] {
        let mut counts = [0usize; 3];
        let ids = ids();
        for round in 1..=100 {
            for id in &ids {
                match fault_for(faults, seed, round, id, 0) {
                    Some(Fault::Crash(_)) => counts[0] += 1,
                    Some(Fault::Dropout) => counts[1] += 1,
                    Some(Fault::Straggle(_)) => counts[2] += 1,
                    None => {}
                }
            }
        }
        counts.map(|c| c as f64 / 10_000.0)
    }

    #[test]
    fn no_faults_when_every_probability_is_zero() {
        let zero = Faults {
            dropout: 0.0,
            straggle: Some((0.0, Duration::from_secs(1))),
            crash: Some((0.0, Duration::from_secs(1))),
            partial_work: 0.0,
        };
        assert!(zero.is_none());
        assert!(Faults::default().is_none());
        for faults in [Faults::default(), zero] {
            for round in 1..50 {
                for id in ids() {
                    assert_eq!(fault_for(&faults, 7, round, &id, 0), None);
                }
            }
        }
    }

    #[test]
    fn same_seed_round_and_client_give_the_same_fault() {
        let faults = Faults {
            dropout: 0.3,
            straggle: Some((0.3, Duration::from_millis(500))),
            crash: Some((0.1, Duration::from_secs(2))),
            partial_work: 0.0,
        };
        let draws = |seed| -> Vec<Option<Fault>> {
            (1..=20)
                .flat_map(|round| ids().into_iter().map(move |id| (round, id)))
                .map(|(round, id)| fault_for(&faults, seed, round, &id, 0))
                .collect()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43), "another seed, other faults");
        // Another round or another attempt of the same round draws afresh.
        let a: Vec<_> = ids()
            .iter()
            .map(|id| fault_for(&faults, 1, 3, id, 0))
            .collect();
        let b: Vec<_> = ids()
            .iter()
            .map(|id| fault_for(&faults, 1, 4, id, 0))
            .collect();
        let c: Vec<_> = ids()
            .iter()
            .map(|id| fault_for(&faults, 1, 3, id, 1))
            .collect();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rates_are_close_to_the_probabilities() {
        let dropout_only = Faults {
            dropout: 0.3,
            ..Faults::default()
        };
        let [c, d, s] = rates(&dropout_only, 0);
        assert_eq!((c, s), (0.0, 0.0));
        assert!((d - 0.3).abs() < 0.02, "dropout rate {d}");

        let all = Faults {
            dropout: 0.2,
            straggle: Some((0.5, Duration::from_secs(1))),
            crash: Some((0.1, Duration::from_secs(1))),
            partial_work: 0.0,
        };
        let [c, d, s] = rates(&all, 5);
        // Crash wins over dropout, which wins over straggle.
        assert!((c - 0.1).abs() < 0.02, "crash rate {c}");
        assert!((d - 0.9 * 0.2).abs() < 0.02, "dropout rate {d}");
        assert!((s - 0.9 * 0.8 * 0.5).abs() < 0.02, "straggle rate {s}");
    }

    #[test]
    fn enabling_one_fault_does_not_move_another() {
        let dropout_only = Faults {
            dropout: 0.4,
            ..Faults::default()
        };
        let with_straggle = Faults {
            straggle: Some((0.9, Duration::from_secs(1))),
            ..dropout_only.clone()
        };
        for round in 1..=20 {
            for id in ids() {
                let alone = fault_for(&dropout_only, 3, round, &id, 0) == Some(Fault::Dropout);
                let mixed = fault_for(&with_straggle, 3, round, &id, 0) == Some(Fault::Dropout);
                assert_eq!(alone, mixed);
            }
        }
    }

    #[test]
    fn partial_work_is_seeded_and_leaves_the_other_faults_where_they_were() {
        let faults = Faults {
            dropout: 0.4,
            ..Faults::default()
        };
        let partial = Faults {
            partial_work: 0.5,
            ..faults.clone()
        };
        let mut hits = 0;
        for round in 1..=20 {
            for id in ids() {
                assert_eq!(
                    fault_for(&faults, 3, round, &id, 0),
                    fault_for(&partial, 3, round, &id, 0)
                );
                assert_eq!(partial_share(&faults, 3, round, &id), None);
                let share = partial_share(&partial, 3, round, &id);
                assert_eq!(share, partial_share(&partial, 3, round, &id));
                if let Some(share) = share {
                    assert!((0.0..1.0).contains(&share));
                    hits += 1;
                }
            }
        }
        assert!((hits as f64 / 2000.0 - 0.5).abs() < 0.05, "{hits} of 2000");
    }

    #[test]
    fn certain_faults_always_fire_with_their_durations() {
        let crash = Faults {
            crash: Some((1.0, Duration::from_millis(1500))),
            dropout: 1.0,
            ..Faults::default()
        };
        let straggle = Faults {
            straggle: Some((1.0, Duration::from_millis(250))),
            ..Faults::default()
        };
        for id in ids() {
            assert_eq!(
                fault_for(&crash, 0, 1, &id, 0),
                Some(Fault::Crash(Duration::from_millis(1500)))
            );
            assert_eq!(
                fault_for(&straggle, 0, 1, &id, 2),
                Some(Fault::Straggle(Duration::from_millis(250)))
            );
        }
    }
}
