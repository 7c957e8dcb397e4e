//! What a round asks of its clients, as the round engine needs to know it: the kind of work,
//! the shape every update must have, and how updates are combined.

use shoal_proto::v1::TaskKind;

/// How the engine combines the updates of one round before the strategy sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldMode {
    /// Fold `weight · payload` into an exact sum as updates arrive: memory O(model), any number
    /// of clients (FedAvg, FedSGD).
    WeightedSum,
    /// Fold the payloads unweighted into an exact sum (k-means per-centroid sums).
    Sum,
    /// Keep every update (small payloads only, e.g. k-FED's local centres).
    Collect,
}

/// What one round asks of every selected client.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    /// The kind of work.
    pub kind: TaskKind,
    /// f32 values each update must carry.
    pub update_len: usize,
    /// Integers each update header must carry.
    pub counts_len: usize,
    /// How updates are combined.
    pub fold: FoldMode,
    /// Ranges of the counts that must each sum to the update's weight (e.g. k-means cluster
    /// sizes add up to the client's examples), checked before anything is folded.
    pub counts_sum_to_weight: Vec<std::ops::Range<usize>>,
}
