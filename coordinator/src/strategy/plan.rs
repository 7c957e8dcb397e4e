//! What a round asks of its clients: the kind of work and its settings (sent to clients), the
//! shape every update must have and how updates are combined (enforced by the round engine).
//! Each strategy builds its own ([`crate::strategy::Strategy::configure`]); the engine adds
//! only what is the run's, not the algorithm's: the fence, the model and each client's seed.

use shoal_proto::v1::{
    Fence, FitConfig, FoldKind, GradientConfig, KMeansConfig, ModelSpec as WireSpec, Task, TaskKind,
};

/// The settings of the clients' local work, sent with every task of the round.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Local training (FedAvg).
    Fit(FitConfig),
    /// A gradient at the global parameters (FedSGD).
    Gradient(GradientConfig),
    /// k-FED seeding or a Lloyd step (federated k-means).
    KMeans(KMeansConfig),
    /// Evaluation of the global model on held-out local data (no settings).
    Evaluate,
}

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
    /// Its settings.
    pub work: Work,
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

impl TaskPlan {
    /// A round of local training as `fit` says, with FedProx's `proximal_mu` and SCAFFOLD's
    /// `control_variate` (0 and false for FedAvg), updates of `update_len` values folded as
    /// `fold`.
    pub fn local_training(
        fit: &crate::config::FitSettings,
        proximal_mu: f64,
        control_variate: bool,
        update_len: usize,
        fold: FoldMode,
    ) -> Self {
        Self {
            kind: TaskKind::Fit,
            work: Work::Fit(FitConfig {
                epochs: fit.epochs,
                batch_size: fit.batch_size,
                lr: fit.lr,
                proximal_mu,
                control_variate,
            }),
            update_len,
            counts_len: 0,
            fold,
            counts_sum_to_weight: Vec::new(),
        }
    }

    /// The evaluation stage of a round: clients evaluate the new global model on their
    /// held-out examples and send no payload, only their example count and metrics.
    pub fn evaluation() -> Self {
        Self {
            kind: TaskKind::Evaluate,
            work: Work::Evaluate,
            update_len: 0,
            counts_len: 0,
            fold: FoldMode::Collect,
            counts_sum_to_weight: Vec::new(),
        }
    }

    /// The task every selected client receives: this plan's work, for the round `fence` names,
    /// the run's `model`, and a global state of `global_len` values. Each client's seed is added
    /// when the task is handed out.
    pub fn task(&self, fence: Fence, model: WireSpec, global_len: usize) -> Task {
        let (mut fit, mut gradient, mut kmeans) = (None, None, None);
        match &self.work {
            Work::Fit(settings) => fit = Some(*settings),
            Work::Gradient(settings) => gradient = Some(*settings),
            Work::KMeans(settings) => kmeans = Some(*settings),
            Work::Evaluate => {}
        }
        Task {
            fence: Some(fence),
            kind: self.kind as i32,
            model: Some(model),
            global_len: global_len as u64,
            seed: 0,
            fit,
            gradient,
            kmeans,
            update_len: self.update_len as u64,
            counts_len: self.counts_len as u64,
            holdout_fraction: 0.0,
            fold: self.fold.wire() as i32,
            counts_sum_to_weight: self
                .counts_sum_to_weight
                .iter()
                .flat_map(|r| [r.start as u64, r.end as u64])
                .collect(),
            // The run's, not the algorithm's: set where the task is made for a round.
            max_update_norm: 0.0,
            clip_to_norm: false,
            compression: 0,
            topk_fraction: 0.0,
        }
    }
}

impl FoldMode {
    /// The fold as tasks announce it.
    pub fn wire(self) -> FoldKind {
        match self {
            FoldMode::WeightedSum => FoldKind::WeightedSum,
            FoldMode::Sum => FoldKind::Sum,
            FoldMode::Collect => FoldKind::Collect,
        }
    }
}
