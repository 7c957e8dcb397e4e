//! Shard partitioning (McMahan et al., "Communication-Efficient Learning of Deep Networks
//! from Decentralized Data", AISTATS 2017): sort the examples by label, cut the sorted list
//! into `num_clients * per_client` shards of near-equal size, and deal each client
//! `per_client` shards chosen by a seeded shuffle. With few shards per client each client
//! sees only a few labels (a shard straddles at most a class boundary or two).

use rand::Rng;
use rand::seq::SliceRandom;

use crate::error::{DatasetError, Result};

/// Deals label-sorted shards to clients. Fails when there are fewer examples than shards.
pub(super) fn split(
    labels: &[u32],
    num_clients: usize,
    per_client: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<usize>>> {
    let n = labels.len();
    let num_shards = num_clients
        .checked_mul(per_client)
        .filter(|&shards| shards <= n)
        .ok_or_else(|| {
            DatasetError::Partition(format!(
                "{n} examples cannot fill {num_clients} clients x {per_client} shards; \
                 use fewer clients or fewer shards per client"
            ))
        })?;

    // A stable sort, so ties keep index order and the result depends only on the labels.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| labels[i]);

    // Shard `s` covers order[start(s)..start(s + 1)]; the first `n % num_shards` shards are
    // one longer, so sizes differ by at most one.
    let (base, extra) = (n / num_shards, n % num_shards);
    let start = |shard: usize| shard * base + shard.min(extra);

    let mut shard_ids: Vec<usize> = (0..num_shards).collect();
    shard_ids.shuffle(rng);
    Ok(shard_ids
        .chunks_exact(per_client)
        .map(|dealt| {
            dealt
                .iter()
                .flat_map(|&shard| order[start(shard)..start(shard + 1)].iter().copied())
                .collect()
        })
        .collect())
}
