//! Federated k-means: one-shot k-FED seeding (Dennis, Li & Smith, "Heterogeneity for the Win:
//! One-Shot Federated Clustering", ICML 2021), then federated Lloyd rounds.
//!
//! Round 1 asks every client for the centres of a local k-means (k-means++ seeded) with their
//! counts; the coordinator picks k of those centres by seeded farthest-first traversal and
//! refines them with a weighted Lloyd pass over the uploaded centres. No raw point ever leaves a
//! client. Each later round sends the centroids; clients return per-centroid sums, counts, label
//! counts and local inertia, and the new centroid is total sum / total count — exactly one Lloyd
//! iteration over the union of the clients' data.
//!
//! Empty clusters: a centroid that no point chose keeps its previous position (deterministic,
//! and the same rule as the centralised `shoal_models::kmeans::lloyd`).

use super::{FoldMode, Metrics, Strategy, TaskPlan, Work, from_bytes, to_bytes};
use crate::error::{CoordinatorError, Result};
use crate::strategy::results::RoundResults;
use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;
use shoal_datasets::rng::derive_seed;
use shoal_models::kmeans::{
    ari_from_contingency, farthest_first, lloyd, lloyd_stats, nmi_from_contingency,
};
use shoal_proto::v1::{KMeansConfig, TaskKind};

/// Stream tag for the coordinator's seeding choices.
const SEEDING_STREAM: u64 = 0x6b_fed;
/// Weighted Lloyd iterations over the uploaded centres in the seeding round.
const SEEDING_ITERS: usize = 100;

/// The part of the state that changes from round to round (and is checkpointed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct KMeansState {
    /// `k × dim` centroids; empty until the seeding round aggregated.
    centroids: Vec<f32>,
    /// Largest centroid movement of the last Lloyd round.
    last_shift: Option<f64>,
}

/// Federated k-means.
#[derive(Debug)]
pub struct FedKMeans {
    dim: usize,
    classes: usize,
    k: usize,
    local_k: usize,
    tol: f64,
    seed: u64,
    state: KMeansState,
}

impl FedKMeans {
    /// k clusters over `dim` features; clients run local k-means with `local_k` clusters in the
    /// seeding round; the run stops once no centroid moves more than `tol`.
    pub fn new(
        dim: usize,
        classes: usize,
        k: usize,
        local_k: usize,
        tol: f64,
        seed: u64,
    ) -> Result<Self> {
        if dim == 0 || k == 0 || local_k == 0 {
            return Err(CoordinatorError::Config(format!(
                "k-means needs dim, k and local_k ≥ 1 (got dim {dim}, k {k}, local_k {local_k})"
            )));
        }
        if !(tol.is_finite() && tol >= 0.0) {
            return Err(CoordinatorError::Config(format!(
                "k-means tol must be ≥ 0, got {tol}"
            )));
        }
        Ok(Self {
            dim,
            classes,
            k,
            local_k,
            tol,
            seed,
            state: KMeansState::default(),
        })
    }

    fn seeded(&self) -> bool {
        !self.state.centroids.is_empty()
    }

    /// k-FED: farthest-first over the uploaded centres, then weighted Lloyd on them.
    fn seed_from_local_centres(&mut self, results: &RoundResults) -> Result<Metrics> {
        let mut points = Vec::new();
        let mut weights = Vec::new();
        for update in &results.collected {
            for (centre, &count) in update.payload.chunks_exact(self.dim).zip(&update.counts) {
                if count > 0 {
                    points.extend_from_slice(centre);
                    weights.push(count as f64);
                }
            }
        }
        let uploaded = weights.len();
        if uploaded < self.k {
            return Err(CoordinatorError::Strategy(format!(
                "k-FED: clients uploaded {uploaded} non-empty local centres, fewer than k = {}",
                self.k
            )));
        }
        let seed = derive_seed(self.seed, &[SEEDING_STREAM]);
        let init = farthest_first(&points, self.dim, self.k, seed)?;
        let (centroids, _, weighted_inertia) =
            lloyd(&points, &weights, self.dim, &init, SEEDING_ITERS, 0.0)?;
        self.state.centroids = centroids;
        Ok(Metrics::from([
            ("local_centres".to_string(), uploaded as f64),
            ("seeding_inertia".to_string(), weighted_inertia),
        ]))
    }

    /// One Lloyd step from the clients' sums and counts.
    fn lloyd_step(&mut self, results: &RoundResults) -> Result<Metrics> {
        let sums = results
            .sum
            .as_ref()
            .map(|s| s.sum_f64())
            .ok_or_else(|| CoordinatorError::Strategy("k-means: no sums".into()))?;
        let (counts, labels) = results.counts.split_at(self.k);
        let (centroids, shift, empty) =
            next_centroids(&self.state.centroids, &sums, counts, self.dim);
        let mut metrics = Metrics::from([
            ("shift".to_string(), shift),
            ("empty_clusters".to_string(), empty as f64),
        ]);
        if let Some(inertia) = results.summed_metric("inertia") {
            metrics.insert("inertia".into(), inertia);
        }
        if self.classes > 0 {
            metrics.insert(
                "nmi".into(),
                nmi_from_contingency(labels, self.k, self.classes),
            );
            metrics.insert(
                "ari".into(),
                ari_from_contingency(labels, self.k, self.classes),
            );
        }
        self.state.centroids = centroids;
        self.state.last_shift = Some(shift);
        Ok(metrics)
    }
}

/// New centroid = total sum / total count; an empty cluster keeps its previous centroid.
/// Returns the centroids, the largest movement, and the number of empty clusters.
pub fn next_centroids(
    previous: &[f32],
    sums: &[f64],
    counts: &[u64],
    dim: usize,
) -> (Vec<f32>, f64, usize) {
    let mut next = previous.to_vec();
    let mut shift = 0.0f64;
    let mut empty = 0;
    for (j, &count) in counts.iter().enumerate() {
        let row = j * dim..(j + 1) * dim;
        if count == 0 {
            empty += 1;
            continue;
        }
        let mut moved = 0.0;
        for (c, s) in next[row.clone()].iter_mut().zip(&sums[row]) {
            let v = (s / count as f64) as f32;
            moved += (f64::from(v) - f64::from(*c)).powi(2);
            *c = v;
        }
        shift = shift.max(moved.sqrt());
    }
    (next, shift, empty)
}

impl Strategy for FedKMeans {
    fn name(&self) -> &'static str {
        "fedkmeans"
    }

    fn configure(&self, _round: u32) -> TaskPlan {
        let work = Work::KMeans(KMeansConfig {
            k: self.k as u32,
            local_k: self.local_k as u32,
            dim: self.dim as u32,
        });
        if self.seeded() {
            TaskPlan {
                kind: TaskKind::KmeansStep,
                work,
                update_len: self.k * self.dim,
                counts_len: self.k + self.k * self.classes,
                fold: FoldMode::Sum,
                counts_sum_to_weight: if self.classes > 0 {
                    vec![0..self.k, self.k..self.k + self.k * self.classes]
                } else {
                    std::iter::once(0..self.k).collect()
                },
            }
        } else {
            TaskPlan {
                kind: TaskKind::KmeansInit,
                work,
                update_len: self.local_k * self.dim,
                counts_len: self.local_k,
                fold: FoldMode::Collect,
                counts_sum_to_weight: std::iter::once(0..self.local_k).collect(),
            }
        }
    }

    fn global(&self) -> &[f32] {
        &self.state.centroids
    }

    fn aggregate(&mut self, _round: u32, results: RoundResults) -> Result<Metrics> {
        if self.seeded() {
            self.lloyd_step(&results)
        } else {
            self.seed_from_local_centres(&results)
        }
    }

    fn evaluate(&self, test: &Dataset) -> Result<Metrics> {
        if !self.seeded() || test.is_empty() {
            return Ok(Metrics::new());
        }
        let stats = lloyd_stats(&self.state.centroids, self.k, test)?;
        let mut metrics = Metrics::from([("test_inertia".to_string(), stats.inertia)]);
        if test.num_classes == self.classes && self.classes > 0 {
            metrics.insert(
                "test_nmi".into(),
                nmi_from_contingency(&stats.label_counts, self.k, self.classes),
            );
            metrics.insert(
                "test_ari".into(),
                ari_from_contingency(&stats.label_counts, self.k, self.classes),
            );
        }
        Ok(metrics)
    }

    fn converged(&self) -> bool {
        self.state.last_shift.is_some_and(|s| s <= self.tol)
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        to_bytes(&self.state)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let state: KMeansState = from_bytes(bytes)?;
        if !state.centroids.is_empty() && state.centroids.len() != self.k * self.dim {
            return Err(CoordinatorError::Checkpoint(
                "k-means state does not fit k × dim".into(),
            ));
        }
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{FedKMeans, Strategy, lloyd, lloyd_stats, next_centroids};
    use crate::strategy::results::{ClientUpdate, RoundAccumulator};
    use proptest::prelude::*;
    use shoal_datasets::Dataset;
    use shoal_datasets::{BlobsConfig, blobs};
    use std::collections::BTreeMap;

    #[test]
    fn an_empty_cluster_keeps_its_centroid() {
        let previous = [0.0f32, 0.0, 5.0, 5.0];
        let (next, shift, empty) = next_centroids(&previous, &[2.0, 4.0, 0.0, 0.0], &[2, 0], 2);
        assert_eq!(next, vec![1.0, 2.0, 5.0, 5.0]);
        assert_eq!(empty, 1);
        assert!((shift - 5f64.sqrt()).abs() < 1e-12);
    }

    /// Runs one federated Lloyd round over the given partition, without the network.
    fn federated_step(km: &mut FedKMeans, data: &Dataset, parts: &[Vec<usize>]) -> Vec<f32> {
        let mut acc = RoundAccumulator::new(&km.configure(2));
        for (i, idx) in parts.iter().enumerate() {
            let local = data.subset(idx).unwrap();
            let stats = lloyd_stats(&km.state.centroids, km.k, &local).unwrap();
            let mut counts = stats.counts;
            counts.extend(stats.label_counts);
            acc.accept(ClientUpdate {
                client_id: format!("c{i}"),
                weight: local.len() as u64,
                payload: stats.sums.into(),
                counts,
                metrics: BTreeMap::from([("inertia".to_string(), stats.inertia)]),
            })
            .unwrap();
        }
        km.aggregate(2, acc.finish()).unwrap();
        km.state.centroids.clone()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn one_federated_round_is_one_centralised_lloyd_iteration(
            seed in 0u64..1000,
            clients in 1usize..12,
            k in 1usize..8,
        ) {
            let data = blobs(&BlobsConfig { samples: 300, features: 3, centers: 5, seed, ..BlobsConfig::default() }).unwrap();
            let parts = shoal_datasets::partition(&data.labels, data.num_classes, clients.min(300), &shoal_datasets::Partition::Dirichlet { alpha: 0.3 }, seed).unwrap();
            let init: Vec<f32> = data.features[..k * 3].to_vec();
            let mut km = FedKMeans::new(3, data.num_classes, k, k, 0.0, seed).unwrap();
            km.state.centroids = init.clone();
            let federated = federated_step(&mut km, &data, &parts);
            let weights = vec![1.0; data.len()];
            let (central, _, _) = lloyd(&data.features, &weights, 3, &init, 1, 0.0).unwrap();
            for (f, c) in federated.iter().zip(&central) {
                prop_assert!((f - c).abs() <= 1e-5 * c.abs().max(1.0), "{f} vs {c}");
            }
        }
    }

    #[test]
    fn refuses_counts_that_do_not_add_up() {
        let km = FedKMeans::new(2, 0, 2, 2, 0.0, 0).unwrap();
        let mut acc = RoundAccumulator::new(&km.configure(1));
        let update = ClientUpdate {
            client_id: "a".into(),
            weight: 5,
            payload: vec![0.0; 4].into(),
            counts: vec![1, 1],
            metrics: BTreeMap::new(),
        };
        assert!(matches!(
            acc.accept(update),
            Err(crate::aggregate::AggregateError::CountsMismatch { .. })
        ));
        assert_eq!(acc.accepted(), 0);
    }

    #[test]
    fn seeding_needs_at_least_k_centres() {
        let mut km = FedKMeans::new(2, 0, 3, 1, 0.0, 0).unwrap();
        let mut acc = RoundAccumulator::new(&km.configure(1));
        acc.accept(ClientUpdate {
            client_id: "a".into(),
            weight: 4,
            payload: vec![1.0, 1.0].into(),
            counts: vec![4],
            metrics: BTreeMap::new(),
        })
        .unwrap();
        let err = km.aggregate(1, acc.finish()).unwrap_err();
        assert!(err.to_string().contains("fewer than k"), "{err}");
        assert!(FedKMeans::new(0, 0, 3, 1, 0.0, 0).is_err());
        assert!(FedKMeans::new(2, 0, 3, 1, f64::NAN, 0).is_err());
    }
}
