//! Choosing a round's clients: a pure, seeded function, so a replayed run picks the same ones.

use rand::seq::index::sample;
use shoal_datasets::rng::rng_for;

/// Stream tag for selection in the run's RNG tree.
const SELECTION_STREAM: u64 = 0x5e1e_c710;

/// Picks `count` of `available` (which must be sorted, so the result does not depend on join
/// order) for attempt `attempt` of `round`; returns them sorted. Takes all when count ≥ len.
pub fn select(
    available: &[String],
    count: usize,
    seed: u64,
    round: u32,
    attempt: u32,
) -> Vec<String> {
    if count >= available.len() {
        return available.to_vec();
    }
    let mut rng = rng_for(
        seed,
        &[SELECTION_STREAM, u64::from(round), u64::from(attempt)],
    );
    let mut picked: Vec<String> = sample(&mut rng, available.len(), count)
        .into_iter()
        .map(|i| available[i].clone())
        .collect();
    picked.sort();
    picked
}

/// How many clients to ask: the configured number or fraction of `available`, at least `min`,
/// times the over-selection factor, never more than are available.
pub fn round_size(
    available: usize,
    clients_per_round: Option<usize>,
    fraction: f64,
    min: usize,
    over_select: f64,
) -> (usize, usize) {
    let wanted = clients_per_round
        .unwrap_or_else(|| (fraction * available as f64).ceil() as usize)
        .max(min)
        .max(1);
    let asked = ((wanted as f64) * over_select.max(1.0)).ceil() as usize;
    (wanted.min(available), asked.min(available))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i:04}")).collect()
    }

    #[test]
    fn seeded_and_sorted() {
        let a = select(&ids(100), 10, 7, 3, 0);
        assert_eq!(a, select(&ids(100), 10, 7, 3, 0));
        assert_ne!(a, select(&ids(100), 10, 7, 4, 0));
        assert_ne!(a, select(&ids(100), 10, 7, 3, 1));
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn takes_everyone_when_asked_for_more() {
        assert_eq!(select(&ids(5), 9, 0, 1, 0), ids(5));
    }

    #[test]
    fn sizes_follow_fraction_min_and_over_selection() {
        assert_eq!(round_size(100, None, 0.1, 1, 1.0), (10, 10));
        assert_eq!(round_size(100, Some(20), 0.1, 1, 1.3), (20, 26));
        assert_eq!(round_size(10, None, 0.1, 3, 1.0), (3, 3));
        assert_eq!(round_size(4, Some(10), 1.0, 1, 2.0), (4, 4));
    }
}
