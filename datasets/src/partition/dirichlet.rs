//! Dirichlet label-skew partitioning (Hsu, Qi & Brown, "Measuring the Effects of
//! Non-Identical Data Distribution for Federated Visual Classification", 2019).
//!
//! For each class, client shares `p ~ Dir(alpha, ..., alpha)` are drawn and the class's
//! shuffled examples are cut at the rounded cumulative shares, so client `j` receives about
//! `p_j` of that class. The Dirichlet draw uses the textbook construction: independent
//! `Gamma(alpha, 1)` variables normalised by their sum (`rand_distr`'s `Dirichlet` needs the
//! number of clients at compile time). For tiny alpha every gamma variable can underflow to
//! zero; the limit of Dir(alpha) as alpha goes to 0 puts all mass on one uniformly chosen
//! client, and that is what is used then.
//!
//! # Empty clients
//!
//! With small alpha and many clients, some client may receive nothing. The whole assignment
//! is then redrawn from the same seeded generator, up to [`MAX_DIRICHLET_ATTEMPTS`] times,
//! after which the call fails saying there are too many clients for the data at this alpha.
//! Redrawing (rather than moving examples to the empty client) keeps the shares truly
//! Dirichlet-distributed, conditioned on no client being empty.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Gamma};

use crate::error::{DatasetError, Result};

/// Draws of the whole assignment before giving up on giving every client an example.
pub const MAX_DIRICHLET_ATTEMPTS: usize = 100;

/// Assigns each class's examples to clients in Dirichlet(alpha) proportions.
pub(super) fn split(
    labels: &[u32],
    num_classes: usize,
    num_clients: usize,
    alpha: f64,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<usize>>> {
    let gamma = Gamma::new(alpha, 1.0)
        .map_err(|e| DatasetError::Invalid(format!("dirichlet alpha {alpha}: {e}")))?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &label) in labels.iter().enumerate() {
        by_class[label as usize].push(i);
    }
    let mut shares = Vec::with_capacity(num_clients);

    for _ in 0..MAX_DIRICHLET_ATTEMPTS {
        let mut clients: Vec<Vec<usize>> = vec![Vec::new(); num_clients];
        for members in by_class.iter_mut().filter(|m| !m.is_empty()) {
            members.shuffle(rng);
            draw_shares(&gamma, num_clients, rng, &mut shares);
            let n = members.len();
            let (mut start, mut cumulative) = (0, 0.0);
            for (client, share) in shares.iter().enumerate() {
                cumulative += share;
                // The last cut is pinned to `n` so rounding can never drop an example.
                let end = if client + 1 == num_clients {
                    n
                } else {
                    ((cumulative * n as f64).round() as usize).clamp(start, n)
                };
                clients[client].extend_from_slice(&members[start..end]);
                start = end;
            }
        }
        if clients.iter().all(|indices| !indices.is_empty()) {
            return Ok(clients);
        }
    }
    Err(DatasetError::Partition(format!(
        "dirichlet:{alpha} left some client empty in {MAX_DIRICHLET_ATTEMPTS} draws: too many \
         clients ({num_clients}) for {} examples at this alpha; use fewer clients or a larger alpha",
        labels.len()
    )))
}

/// Fills `shares` with one Dir(alpha) draw over `k` clients (non-negative, summing to 1).
fn draw_shares(gamma: &Gamma<f64>, k: usize, rng: &mut impl Rng, shares: &mut Vec<f64>) {
    shares.clear();
    shares.extend((0..k).map(|_| gamma.sample(rng)));
    let total: f64 = shares.iter().sum();
    if total > 0.0 && total.is_finite() {
        shares.iter_mut().for_each(|share| *share /= total);
    } else {
        // All gammas underflowed (alpha near 0): use the alpha -> 0 limit, a random one-hot.
        shares.iter_mut().for_each(|share| *share = 0.0);
        shares[rng.random_range(0..k)] = 1.0;
    }
}
