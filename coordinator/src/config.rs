//! The run configuration: everything that decides what a run computes.
//!
//! It is hashed into the run id, so a checkpoint or an update from a run with another config is
//! recognised as foreign. Operational knobs (poll timeouts, liveness, limits on what clients
//! may send) live in [`crate::Limits`] instead: they change a result only by refusing or
//! clipping something an honest client sent.

pub use crate::aggregate::norm::NormPolicy;
use crate::aggregate::robust::{Rule, RuleError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_proto::Codec;
use std::time::Duration;

/// The server's optimiser; its state is part of the strategy state (and of checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ServerOptimizer {
    /// SGD with optional heavy-ball momentum: v ← μv + g; p ← p − ηv.
    Sgd {
        /// Server learning rate η.
        lr: f64,
        /// Momentum μ (0 for plain gradient descent).
        momentum: f64,
    },
    /// Adam (Kingma & Ba 2015) with bias correction.
    Adam {
        /// Step size.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator guard.
        eps: f64,
    },
    /// Adagrad as in Reddi et al. 2021: m ← β1·m + (1−β1)·g; v ← v + g²; p ← p − η·m/(√v + τ).
    Adagrad {
        /// Server learning rate η.
        lr: f64,
        /// First-moment decay β1 (0: no momentum).
        beta1: f64,
        /// Adaptivity τ: the smaller, the more adaptive.
        tau: f64,
    },
    /// Yogi (Zaheer et al. 2018; Reddi et al. 2021): as Adam without bias correction, but
    /// v ← v − (1−β2)·g²·sign(v − g²), so v grows slowly and shrinks fast.
    Yogi {
        /// Server learning rate η.
        lr: f64,
        /// First-moment decay β1.
        beta1: f64,
        /// Second-moment decay β2.
        beta2: f64,
        /// Adaptivity τ.
        tau: f64,
    },
}

/// How often one client may pull.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PullRate {
    /// Sustained pulls per second (positive and finite, else the rate is not enforced).
    pub per_second: f64,
    /// Pulls allowed back to back before pacing starts.
    pub burst: u32,
}

impl PullRate {
    /// Time between two pulls at the sustained rate; `None` if the rate is not enforceable.
    pub(crate) fn interval(&self) -> Option<Duration> {
        (self.per_second.is_finite() && self.per_second > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / self.per_second).ok())
            .flatten()
    }
}

/// Which algorithm the run uses, with its own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum StrategyConfig {
    /// Federated averaging (McMahan et al. 2017).
    FedAvg,
    /// Federated gradient averaging with a server optimiser.
    FedSgd {
        /// The server's optimiser.
        optimizer: ServerOptimizer,
    },
    /// FedOpt (Reddi et al. 2021): FedAvg whose server steps along the pseudo-gradient
    /// (global − combined update) with an optimiser; SGD with learning rate 1 is FedAvg.
    FedOpt {
        /// The server's optimiser.
        optimizer: ServerOptimizer,
    },
    /// FedProx (Li et al. 2020): FedAvg whose clients add μ/2·‖w − w_global‖² to their
    /// local objective.
    FedProx {
        /// The proximal strength μ, finite and ≥ 0 (0 is FedAvg).
        mu: f64,
    },
    /// SCAFFOLD (Karimireddy et al. 2020): FedAvg whose clients correct their local steps
    /// by control variates, the server's and their own; the server's moves by the share of
    /// the population (`selection.min_available`, `--clients`) each round hears from.
    Scaffold,
    /// Federated k-means: k-FED seeding, then Lloyd rounds.
    FedKMeans {
        /// Number of global clusters.
        k: usize,
        /// Clusters of each client's local k-means in the seeding round.
        local_k: usize,
        /// Stop once no centroid moves more than this (Euclidean).
        tol: f64,
    },
}

/// How many clients a round asks, and how many it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionConfig {
    /// Clients asked per round; `None` means use `fraction`.
    pub clients_per_round: Option<usize>,
    /// Fraction of the available clients asked per round, when `clients_per_round` is unset.
    pub fraction: f64,
    /// Quorum: fewest updates a round may aggregate.
    pub min_clients: usize,
    /// Ask this many times more clients than needed and close when enough answered (≥ 1).
    pub over_select: f64,
    /// Clients that must have joined before the first round starts.
    pub min_available: usize,
}

/// Local training settings sent with every FedAvg task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitSettings {
    /// Local epochs; 0 trains nothing (clients send the global model back, scored).
    pub epochs: u32,
    /// Mini-batch size.
    pub batch_size: u32,
    /// Client learning rate.
    pub lr: f64,
}

/// Gradient settings sent with every FedSGD task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientSettings {
    /// Mini-batches per gradient; 0 means the whole local partition.
    pub batches: u32,
    /// Mini-batch size.
    pub batch_size: u32,
}

/// Everything that determines a run's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Seed of every random choice in the run.
    pub seed: u64,
    /// Rounds to run.
    pub rounds: u32,
    /// The algorithm.
    pub strategy: StrategyConfig,
    /// Model kind, e.g. "mlp" or "mlp:256,128" (ignored by k-means).
    pub model: String,
    /// Dataset source string, for the record and the run id.
    pub dataset: String,
    /// Partition scheme string, for the record and the run id.
    pub partition: String,
    /// Client selection rules.
    pub selection: SelectionConfig,
    /// Local training settings (FedAvg).
    pub fit: FitSettings,
    /// Gradient settings (FedSGD).
    pub gradient: GradientSettings,
    /// Round deadline in milliseconds.
    pub round_timeout_ms: u64,
    /// Failed attempts (below quorum) allowed per round before the quorum counts as lost.
    pub max_retries: u32,
    /// What the run does when a round's quorum is lost (left out of the config's JSON, and so
    /// of its hash, when it is the default: runs from before it existed keep their id).
    #[serde(default, skip_serializing_if = "QuorumPolicy::is_stop")]
    pub on_quorum_loss: QuorumPolicy,
    /// Where the global model is evaluated after each round (left out of the config's JSON
    /// when central, as runs from before it existed were).
    #[serde(default, skip_serializing_if = "EvalMode::is_central")]
    pub eval: EvalMode,
    /// SHA-256 of the initial parameters when the run starts from a given model (`--init`)
    /// rather than from the seed; part of the run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_sha256: Option<String>,
    /// How clients encode FedAvg and FedSGD updates (`--compress`: fp16, int8, topk:FRACTION);
    /// `None` for plain f32 (left out of the JSON, so runs from before it existed keep their
    /// id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<String>,
    /// How a round's FedAvg or FedSGD updates are combined (`--aggregator`): `None` for the
    /// exact weighted mean, else a robust rule (median, trimmed-mean:BETA, krum:F,
    /// multi-krum:F:M, bulyan:F; left out of the JSON when the mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<String>,
}

/// Where a round's new global model is evaluated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum EvalMode {
    /// On the coordinator's held-out test set.
    #[default]
    Central,
    /// On the clients: after aggregating, the round's contributors evaluate the new model on
    /// the last `holdout` fraction of their local examples (which they then never train on)
    /// and report loss and accuracy weighted by their held-out examples.
    Federated {
        /// Fraction of each client's examples held out.
        holdout: f64,
    },
    /// Both: central metrics as `loss`/`accuracy`, federated ones as `fed_loss`/`fed_accuracy`.
    Both {
        /// Fraction of each client's examples held out.
        holdout: f64,
    },
}

impl EvalMode {
    /// Held out by clients when nothing else is said.
    pub const HOLDOUT: f64 = 0.2;

    /// True for the default, [`EvalMode::Central`].
    pub fn is_central(&self) -> bool {
        matches!(self, Self::Central)
    }

    /// Whether the coordinator evaluates on its own test set.
    pub fn central(&self) -> bool {
        matches!(self, Self::Central | Self::Both { .. })
    }

    /// The fraction clients hold out, when the clients evaluate.
    pub fn holdout(&self) -> Option<f64> {
        match self {
            Self::Central => None,
            Self::Federated { holdout } | Self::Both { holdout } => Some(*holdout),
        }
    }

    /// `central`, `federated` or `both`, with clients holding out `holdout` (or
    /// [`EvalMode::HOLDOUT`]).
    pub fn parse(mode: &str, holdout: Option<f64>) -> std::result::Result<Self, String> {
        let holdout = holdout.unwrap_or(Self::HOLDOUT);
        if !(holdout > 0.0 && holdout < 1.0) {
            return Err(format!("--eval-holdout must be in (0, 1), got {holdout}"));
        }
        match mode {
            "central" => Ok(Self::Central),
            "federated" => Ok(Self::Federated { holdout }),
            "both" => Ok(Self::Both { holdout }),
            other => Err(format!(
                "--eval {other:?}: expected central, federated or both"
            )),
        }
    }
}

/// What a run does when a round still has fewer updates than its quorum after all its
/// attempts: the explicit degradation policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase")]
pub enum QuorumPolicy {
    /// Stop the run with an error naming the round.
    #[default]
    Stop,
    /// Aggregate what the last attempt gathered, if anything, and go on: a smaller round rather
    /// than none. The round's record says it was shrunk.
    Shrink,
    /// Keep serving the last global model and open the round again as soon as a quorum of
    /// clients is available, for at most `limit_ms` in all (`None`: as long as it takes); the
    /// round's record says how long it waited.
    Wait {
        /// Longest wait for one round, in milliseconds.
        limit_ms: Option<u64>,
    },
}

impl QuorumPolicy {
    /// True for the default policy, [`QuorumPolicy::Stop`].
    pub fn is_stop(&self) -> bool {
        matches!(self, Self::Stop)
    }
}

impl std::fmt::Display for QuorumPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stop => f.write_str("stop"),
            Self::Shrink => f.write_str("shrink"),
            Self::Wait { limit_ms: None } => f.write_str("wait"),
            Self::Wait { limit_ms: Some(ms) } => write!(f, "wait:{}", *ms as f64 / 1000.0),
        }
    }
}

impl std::str::FromStr for QuorumPolicy {
    type Err = String;

    /// `stop`, `shrink`, `wait` or `wait:SECONDS`.
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text {
            "stop" => Ok(Self::Stop),
            "shrink" => Ok(Self::Shrink),
            "wait" => Ok(Self::Wait { limit_ms: None }),
            other => {
                let seconds = other
                    .strip_prefix("wait:")
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 604_800.0)
                    .ok_or_else(|| {
                        format!(
                            "{other:?}: expected stop, shrink, wait or wait:SECONDS \
                             (0 < SECONDS <= 604800)"
                        )
                    })?;
                Ok(Self::Wait {
                    limit_ms: Some((seconds * 1000.0).round().max(1.0) as u64),
                })
            }
        }
    }
}

impl RunConfig {
    /// SHA-256 of the canonical JSON form: two configs with the same hash compute the same run.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }

    /// Whether the model is one Shoal has no code for (`--model external`).
    pub fn external_model(&self) -> bool {
        matches!(self.model.parse(), Ok(shoal_models::ModelKind::External))
    }

    /// The run id: a short prefix of the config hash.
    pub fn run_id(&self) -> String {
        self.hash()[..16].to_string()
    }

    /// The round deadline.
    pub fn round_timeout(&self) -> Duration {
        Duration::from_millis(self.round_timeout_ms)
    }

    /// How clients encode their updates (`Codec::None` without `--compress`).
    pub fn codec(&self) -> crate::Result<Codec> {
        match &self.compress {
            None => Ok(Codec::None),
            Some(name) => name
                .parse()
                .map_err(|e| crate::CoordinatorError::Config(format!("--compress: {e}"))),
        }
    }

    /// How a round's updates are combined (`Rule::Mean` without `--aggregator`).
    pub fn rule(&self) -> crate::Result<Rule> {
        match &self.aggregator {
            None => Ok(Rule::Mean),
            Some(name) => name
                .parse()
                .map_err(|e: RuleError| crate::CoordinatorError::Config(e.to_string())),
        }
    }

    /// Checks every value against its range and against the others, without looking at data.
    ///
    /// Messages name the `shoal` flag that sets the value (the config file uses the same names
    /// with underscores) and the range it allows. k-means' `k` and `local_k` may still be 0
    /// here, standing for values taken from the data (the number of classes, and `k`); the
    /// checks that need the data (k at most the training examples, local_k at most a client's
    /// examples) are the caller's.
    pub fn validate(&self) -> crate::Result<()> {
        if self.rounds == 0 {
            return invalid("--rounds must be at least 1, got 0".into());
        }
        self.strategy.validate()?;
        self.selection.validate()?;
        self.fit.validate()?;
        self.gradient.validate()?;
        if self.round_timeout_ms == 0 || self.round_timeout_ms > MAX_ROUND_TIMEOUT_MS {
            return invalid(format!(
                "--round-timeout must be between 0.001 and {} seconds, got {}",
                MAX_ROUND_TIMEOUT_MS / 1000,
                self.round_timeout_ms as f64 / 1000.0
            ));
        }
        if self.max_retries > MAX_RETRIES {
            return invalid(format!(
                "--max-retries must be in 0..={MAX_RETRIES}, got {}",
                self.max_retries
            ));
        }
        if self.external_model() && self.eval.central() {
            return invalid(
                "--model external: the coordinator has no code to score it; give --eval \
                 federated (the clients score it with their own trainer)"
                    .into(),
            );
        }
        let codec = self.codec()?;
        if codec != Codec::None && matches!(self.strategy, StrategyConfig::FedKMeans { .. }) {
            return invalid(format!(
                "--compress {codec}: federated k-means sends counts and centroid sums, which are \
                 not compressed; drop --compress"
            ));
        }
        let rule = self.rule()?;
        if rule.collects() {
            if matches!(self.strategy, StrategyConfig::FedKMeans { .. }) {
                return invalid(format!(
                    "--aggregator {rule}: robust rules combine FedAvg and FedSGD updates; \
                     federated k-means has its own"
                ));
            }
            if self.strategy == StrategyConfig::Scaffold {
                return invalid(format!(
                    "--aggregator {rule}: SCAFFOLD averages its clients' control variates with \
                     their models; it takes the mean only"
                ));
            }
            let quorum = self.selection.min_clients;
            if rule.min_updates() > 1 && self.on_quorum_loss == QuorumPolicy::Shrink {
                return invalid(format!(
                    "--aggregator {rule} needs {} updates a round, and --on-quorum-loss shrink \
                     would aggregate fewer; use stop or wait",
                    rule.min_updates()
                ));
            }
            if rule.min_updates() > quorum {
                return invalid(format!(
                    "--aggregator {rule} needs at least {} updates in every round it \
                     aggregates: raise --min-clients (now {quorum}) to {0} or more, or \
                     tolerate fewer attackers",
                    rule.min_updates()
                ));
            }
        }
        if let Some(holdout) = self.eval.holdout() {
            if !(holdout > 0.0 && holdout < 1.0) {
                return invalid(format!("--eval-holdout must be in (0, 1), got {holdout}"));
            }
            if matches!(self.strategy, StrategyConfig::FedKMeans { .. }) {
                return invalid(
                    "--eval federated|both needs a classifier; federated k-means is scored \
                     centrally"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// Longest round deadline a run may have, in milliseconds: a week. Far longer than any round
/// needs, far below what would overflow a deadline computed from the clock.
pub const MAX_ROUND_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;

/// Most retries a round may have. Each retry can last a whole round deadline, so more would
/// only keep a run that cannot reach quorum alive for longer.
pub const MAX_RETRIES: u32 = 1000;

/// A [`crate::CoordinatorError::Config`] with `message`.
fn invalid(message: String) -> crate::Result<()> {
    Err(crate::CoordinatorError::Config(message))
}

/// `value` is a finite number above 0.
fn positive(value: f64) -> bool {
    value.is_finite() && value > 0.0
}

/// `value` lies in [0, 1).
fn unit_open(value: f64) -> bool {
    (0.0..1.0).contains(&value)
}

impl StrategyConfig {
    /// Checks the algorithm's settings against their ranges (see [`RunConfig::validate`]).
    pub fn validate(&self) -> crate::Result<()> {
        match self {
            Self::FedAvg | Self::Scaffold => {}
            Self::FedSgd { optimizer } | Self::FedOpt { optimizer } => optimizer.validate()?,
            Self::FedProx { mu } => {
                if !(mu.is_finite() && *mu >= 0.0) {
                    return invalid(format!(
                        "--proximal-mu must be a finite number ≥ 0, got {mu}"
                    ));
                }
            }
            Self::FedKMeans { tol, .. } => {
                if !(tol.is_finite() && *tol >= 0.0) {
                    return invalid(format!("--tol must be a finite number ≥ 0, got {tol}"));
                }
            }
        }
        Ok(())
    }
}

impl SelectionConfig {
    /// Checks the selection rules against their ranges and each other (see
    /// [`RunConfig::validate`]).
    pub fn validate(&self) -> crate::Result<()> {
        let clients = self.min_available;
        if clients == 0 {
            return invalid("--clients must be at least 1, got 0".into());
        }
        if let Some(per_round) = self.clients_per_round
            && !(1..=clients).contains(&per_round)
        {
            return invalid(format!(
                "--clients-per-round must be in 1..={clients} (at most --clients), got {per_round}"
            ));
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return invalid(format!(
                "--fraction must be in (0, 1], got {}",
                self.fraction
            ));
        }
        // The quorum can be met only if that many clients are asked, and a round waits for
        // `min_available` clients: a larger quorum would wait forever.
        let most = self.clients_per_round.unwrap_or(clients);
        if !(1..=most).contains(&self.min_clients) {
            let bound = match self.clients_per_round {
                Some(_) => "at most --clients-per-round",
                None => "at most --clients",
            };
            return invalid(format!(
                "--min-clients must be in 1..={most} ({bound}), got {}",
                self.min_clients
            ));
        }
        if !(self.over_select.is_finite() && self.over_select >= 1.0) {
            return invalid(format!(
                "--over-select must be at least 1.0, got {}",
                self.over_select
            ));
        }
        Ok(())
    }
}

impl FitSettings {
    /// Checks the local training settings against their ranges (see [`RunConfig::validate`]).
    pub fn validate(&self) -> crate::Result<()> {
        if self.batch_size == 0 {
            return invalid("--batch-size must be at least 1, got 0".into());
        }
        if !positive(self.lr) {
            return invalid(format!(
                "--lr must be positive (a finite number above 0), got {}",
                self.lr
            ));
        }
        Ok(())
    }
}

impl GradientSettings {
    /// Checks the gradient settings against their ranges (see [`RunConfig::validate`]).
    pub fn validate(&self) -> crate::Result<()> {
        if self.batch_size == 0 {
            return invalid("--batch-size must be at least 1, got 0".into());
        }
        // A gradient's weight is the examples it saw, at most batches × batch size.
        let examples = u64::from(self.batches) * u64::from(self.batch_size);
        if examples > crate::aggregate::MAX_WEIGHT {
            return invalid(format!(
                "--grad-batches × --batch-size must be at most {} examples, got {} × {}",
                crate::aggregate::MAX_WEIGHT,
                self.batches,
                self.batch_size
            ));
        }
        Ok(())
    }
}

/// The library's defaults: one local epoch at lr 0.05, where `shoal run` uses 5 epochs at
/// lr 0.1 (the CLI sets every field itself). The coordinator's tests and benches build on these
/// values, so changing them changes what those runs compute.
/// Clients a run waits for before its first round when nothing else is said.
pub const DEFAULT_CLIENTS: usize = 10;

/// The defaults of every run, for the library and the CLI alike (the CLI starts from these and
/// overrides what its flags or config file give).
impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            rounds: 20,
            strategy: StrategyConfig::FedAvg,
            model: "mlp".into(),
            dataset: "digits".into(),
            partition: "iid".into(),
            selection: SelectionConfig {
                clients_per_round: None,
                fraction: 1.0,
                min_clients: 1,
                over_select: 1.0,
                min_available: DEFAULT_CLIENTS,
            },
            fit: FitSettings {
                epochs: 5,
                batch_size: 32,
                lr: 0.1,
            },
            // A gradient is one step, so a larger batch than training's makes it less noisy.
            gradient: GradientSettings {
                batches: 0,
                batch_size: 256,
            },
            round_timeout_ms: 60_000,
            max_retries: 3,
            on_quorum_loss: QuorumPolicy::Stop,
            eval: EvalMode::Central,
            init_sha256: None,
            compress: None,
            aggregator: None,
        }
    }
}

impl ServerOptimizer {
    /// Checks the optimiser's settings against their ranges.
    pub fn validate(&self) -> crate::Result<()> {
        let lr = match *self {
            Self::Sgd { lr, .. }
            | Self::Adam { lr, .. }
            | Self::Adagrad { lr, .. }
            | Self::Yogi { lr, .. } => lr,
        };
        if !positive(lr) {
            return invalid(format!(
                "--server-lr must be a finite number above 0, got {lr}"
            ));
        }
        match *self {
            Self::Sgd { momentum, .. } if !unit_open(momentum) => invalid(format!(
                "--server-momentum must be in [0, 1), got {momentum}"
            )),
            Self::Adam { beta1, beta2, .. } | Self::Yogi { beta1, beta2, .. }
                if !(unit_open(beta1) && unit_open(beta2)) =>
            {
                invalid(format!(
                    "--server-beta1 and --server-beta2 must be in [0, 1), got {beta1} and {beta2}"
                ))
            }
            Self::Adagrad { beta1, .. } if !unit_open(beta1) => {
                invalid(format!("--server-beta1 must be in [0, 1), got {beta1}"))
            }
            Self::Adam { eps: tau, .. } | Self::Adagrad { tau, .. } | Self::Yogi { tau, .. }
                if !positive(tau) =>
            {
                invalid(format!(
                    "--server-tau must be a finite number above 0, got {tau}"
                ))
            }
            _ => Ok(()),
        }
    }

    /// Adagrad with Reddi et al.'s defaults for what is not given (η 0.1, β1 0, τ 1e-3).
    pub fn adagrad(lr: Option<f64>, beta1: Option<f64>, tau: Option<f64>) -> Self {
        Self::Adagrad {
            lr: lr.unwrap_or(0.1),
            beta1: beta1.unwrap_or(0.0),
            tau: tau.unwrap_or(1e-3),
        }
    }

    /// Yogi with Reddi et al.'s defaults for what is not given (η 0.01, β1 0.9, β2 0.99,
    /// τ 1e-3).
    pub fn yogi(lr: Option<f64>, beta1: Option<f64>, beta2: Option<f64>, tau: Option<f64>) -> Self {
        Self::Yogi {
            lr: lr.unwrap_or(0.01),
            beta1: beta1.unwrap_or(0.9),
            beta2: beta2.unwrap_or(0.99),
            tau: tau.unwrap_or(1e-3),
        }
    }

    /// Server learning rate of SGD when none is given.
    pub const SGD_LR: f64 = 0.5;
    /// Server learning rate of Adam when none is given.
    pub const ADAM_LR: f64 = 0.01;

    /// SGD with the given learning rate and momentum, defaults for what is not given.
    pub fn sgd(lr: Option<f64>, momentum: Option<f64>) -> Self {
        Self::Sgd {
            lr: lr.unwrap_or(Self::SGD_LR),
            momentum: momentum.unwrap_or(0.0),
        }
    }

    /// Adam with the usual defaults for what is not given (η [`Self::ADAM_LR`], β1 0.9,
    /// β2 0.999, ε 1e-8).
    pub fn adam(lr: Option<f64>, beta1: Option<f64>, beta2: Option<f64>, eps: Option<f64>) -> Self {
        Self::Adam {
            lr: lr.unwrap_or(Self::ADAM_LR),
            beta1: beta1.unwrap_or(0.9),
            beta2: beta2.unwrap_or(0.999),
            eps: eps.unwrap_or(1e-8),
        }
    }
}

impl StrategyConfig {
    /// k-means stops when no centroid moves more than this, when nothing else is said.
    pub const KMEANS_TOL: f64 = 1e-4;

    /// Federated k-means with defaults for what is not given: `k` 0 stands for "the number of
    /// classes" until the data is known, `local_k` follows `k`.
    pub fn fedkmeans(k: Option<usize>, local_k: Option<usize>, tol: Option<f64>) -> Self {
        let k = k.unwrap_or(0);
        Self::FedKMeans {
            k,
            local_k: local_k.unwrap_or(k),
            tol: tol.unwrap_or(Self::KMEANS_TOL),
        }
    }
}

#[cfg(test)]
// Each test changes one field of the defaults at a time, and says which.
#[allow(clippy::field_reassign_with_default)]
mod validate_tests {
    use super::*;

    fn sgd(lr: f64, momentum: f64) -> StrategyConfig {
        StrategyConfig::FedSgd {
            optimizer: ServerOptimizer::Sgd { lr, momentum },
        }
    }

    /// Asserts `run` is refused with a message containing every one of `words`.
    fn refused(run: &RunConfig, words: &[&str]) {
        let err = run.validate().unwrap_err().to_string();
        for word in words {
            assert!(err.contains(word), "{word:?} not in {err:?}");
        }
        assert!(!err.contains('\n'), "one line: {err:?}");
    }

    #[test]
    fn nonsensical_strategy_settings_are_refused_at_start() {
        let base = RunConfig::default();
        let id = base.run_id();
        let with = |f: &dyn Fn(&mut RunConfig)| {
            let mut run = base.clone();
            f(&mut run);
            run
        };
        refused(
            &with(&|r| r.aggregator = Some("krum:2".into())),
            &["krum:2", "--min-clients", "7"],
        );
        let quorate = with(&|r| {
            r.aggregator = Some("krum:2".into());
            r.selection.min_clients = 7;
        });
        quorate.validate().unwrap();
        assert_ne!(quorate.run_id(), id, "the rule is part of the run");
        refused(
            &with(&|r| r.aggregator = Some("trimmed-mean:0.5".into())),
            &["[0, 0.5)"],
        );
        refused(
            &with(&|r| {
                r.aggregator = Some("krum:1".into());
                r.selection.min_clients = 5;
                r.on_quorum_loss = QuorumPolicy::Shrink;
            }),
            &["shrink"],
        );
        let kmeans = StrategyConfig::fedkmeans(None, None, None);
        refused(
            &with(&|r| {
                r.strategy = kmeans.clone();
                r.aggregator = Some("median".into());
            }),
            &["k-means"],
        );
        refused(
            &with(&|r| {
                r.strategy = StrategyConfig::Scaffold;
                r.aggregator = Some("median".into());
            }),
            &["SCAFFOLD", "mean only"],
        );
        refused(
            &with(&|r| {
                r.strategy = kmeans.clone();
                r.compress = Some("int8".into());
            }),
            &["k-means"],
        );
        refused(
            &with(&|r| r.strategy = StrategyConfig::FedProx { mu: -1.0 }),
            &["--proximal-mu"],
        );
        refused(
            &with(&|r| {
                r.strategy = StrategyConfig::FedOpt {
                    optimizer: ServerOptimizer::yogi(None, Some(1.0), None, None),
                }
            }),
            &["--server-beta1"],
        );
        refused(
            &with(&|r| {
                r.strategy = StrategyConfig::FedOpt {
                    optimizer: ServerOptimizer::adagrad(None, None, Some(0.0)),
                }
            }),
            &["--server-tau"],
        );
        refused(
            &with(&|r| r.compress = Some("topk:2".into())),
            &["--compress"],
        );
        // Plain values and the mean leave the run id of runs from before either existed.
        assert_eq!(
            with(&|r| {
                r.compress = None;
                r.aggregator = None;
            })
            .run_id(),
            id
        );
    }

    #[test]
    fn quorum_policies_parse_and_the_default_leaves_the_run_id_alone() {
        assert_eq!("stop".parse(), Ok(QuorumPolicy::Stop));
        assert_eq!("shrink".parse(), Ok(QuorumPolicy::Shrink));
        assert_eq!("wait".parse(), Ok(QuorumPolicy::Wait { limit_ms: None }));
        assert_eq!(
            "wait:2.5".parse(),
            Ok(QuorumPolicy::Wait {
                limit_ms: Some(2500)
            })
        );
        for bad in [
            "", "halt", "wait:", "wait:0", "wait:-1", "wait:nan", "wait:1e9",
        ] {
            assert!(bad.parse::<QuorumPolicy>().is_err(), "{bad:?}");
        }
        for policy in ["stop", "shrink", "wait", "wait:2.5"] {
            let parsed: QuorumPolicy = policy.parse().unwrap();
            assert_eq!(parsed.to_string(), policy);
        }
        let json = serde_json::to_string(&RunConfig::default()).unwrap();
        assert!(!json.contains("quorum"), "{json}");
        let waiting = RunConfig {
            on_quorum_loss: QuorumPolicy::Shrink,
            ..RunConfig::default()
        };
        assert_ne!(waiting.run_id(), RunConfig::default().run_id());
        let back: RunConfig =
            serde_json::from_str(&serde_json::to_string(&waiting).unwrap()).unwrap();
        assert_eq!(back, waiting);
    }

    #[test]
    fn defaults_pass() {
        RunConfig::default().validate().unwrap();
        let mut run = RunConfig::default();
        run.strategy = sgd(0.5, 0.9);
        run.validate().unwrap();
        run.strategy = StrategyConfig::FedSgd {
            optimizer: ServerOptimizer::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        };
        run.validate().unwrap();
        // k and local_k of 0 are filled from the data later.
        run.strategy = StrategyConfig::FedKMeans {
            k: 0,
            local_k: 0,
            tol: 0.0,
        };
        run.validate().unwrap();
    }

    #[test]
    fn edges_of_the_ranges_pass() {
        let mut run = RunConfig::default();
        run.selection.min_clients = 10;
        run.selection.clients_per_round = Some(10);
        run.round_timeout_ms = MAX_ROUND_TIMEOUT_MS;
        run.max_retries = MAX_RETRIES;
        run.strategy = sgd(1e-9, 0.0);
        run.validate().unwrap();
        run.selection.clients_per_round = Some(1);
        run.selection.min_clients = 1;
        run.round_timeout_ms = 1;
        run.max_retries = 0;
        run.validate().unwrap();
    }

    #[test]
    fn selection_out_of_range() {
        let mut run = RunConfig::default();
        run.selection.min_clients = 11;
        refused(&run, &["--min-clients", "1..=10", "--clients", "got 11"]);
        run.selection.min_clients = 0;
        refused(&run, &["--min-clients", "1..=10", "got 0"]);
        run.selection.min_clients = 5;
        run.selection.clients_per_round = Some(4);
        refused(
            &run,
            &["--min-clients", "1..=4", "--clients-per-round", "got 5"],
        );
        run.selection.min_clients = 1;
        run.selection.clients_per_round = Some(0);
        refused(&run, &["--clients-per-round", "1..=10", "got 0"]);
        run.selection.clients_per_round = Some(11);
        refused(&run, &["--clients-per-round", "1..=10", "got 11"]);
        run.selection.clients_per_round = None;
        run.selection.min_available = 0;
        refused(&run, &["--clients", "at least 1"]);
        run.selection.min_available = 10;
        for fraction in [0.0, 1.5, f64::NAN] {
            run.selection.fraction = fraction;
            refused(&run, &["--fraction", "(0, 1]"]);
        }
        run.selection.fraction = 1.0;
        for over in [0.5, f64::INFINITY] {
            run.selection.over_select = over;
            refused(&run, &["--over-select", "at least 1.0"]);
        }
    }

    #[test]
    fn server_optimizer_out_of_range() {
        let mut run = RunConfig::default();
        for lr in [-0.5, 0.0, f64::NAN, f64::INFINITY] {
            run.strategy = sgd(lr, 0.0);
            refused(&run, &["--server-lr", "above 0"]);
        }
        for momentum in [2.0, 1.0, -0.1, f64::NAN] {
            run.strategy = sgd(0.5, momentum);
            refused(&run, &["--server-momentum", "[0, 1)"]);
        }
        run.strategy = StrategyConfig::FedSgd {
            optimizer: ServerOptimizer::Adam {
                lr: -1.0,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        };
        refused(&run, &["--server-lr", "got -1"]);
        run.strategy = StrategyConfig::FedSgd {
            optimizer: ServerOptimizer::Adam {
                lr: 0.01,
                beta1: 1.0,
                beta2: 0.999,
                eps: 1e-8,
            },
        };
        refused(&run, &["beta1", "[0, 1)"]);
    }

    #[test]
    fn kmeans_tol_out_of_range() {
        let mut run = RunConfig::default();
        for tol in [-1e-4, f64::NAN, f64::INFINITY] {
            run.strategy = StrategyConfig::FedKMeans {
                k: 10,
                local_k: 10,
                tol,
            };
            refused(&run, &["--tol", "≥ 0"]);
        }
    }

    #[test]
    fn training_settings_out_of_range() {
        let mut run = RunConfig::default();
        run.rounds = 0;
        refused(&run, &["--rounds", "at least 1"]);
        run.rounds = 20;
        // No local training at all is a setting (orchestration alone), not a mistake.
        run.fit.epochs = 0;
        assert!(run.validate().is_ok());
        run.fit.epochs = 5;
        run.fit.batch_size = 0;
        refused(&run, &["--batch-size", "at least 1"]);
        run.fit.batch_size = 32;
        for lr in [-1.0, 0.0, f64::NAN] {
            run.fit.lr = lr;
            refused(&run, &["--lr must be positive"]);
        }
        run.fit.lr = 0.1;
        run.gradient.batch_size = 0;
        refused(&run, &["--batch-size", "at least 1"]);
        run.gradient.batch_size = 256;
        run.gradient.batches = u32::MAX;
        refused(
            &run,
            &["--grad-batches", "--batch-size", "at most 2147483648"],
        );
    }

    #[test]
    fn deadline_and_retries_out_of_range() {
        let mut run = RunConfig::default();
        run.round_timeout_ms = 0;
        refused(&run, &["--round-timeout", "0.001", "604800 seconds"]);
        run.round_timeout_ms = u64::MAX;
        refused(&run, &["--round-timeout", "604800 seconds"]);
        run.round_timeout_ms = 60_000;
        run.max_retries = MAX_RETRIES + 1;
        refused(&run, &["--max-retries", "0..=1000", "got 1001"]);
    }
}

/// Operational limits: they protect the coordinator from broken and hostile clients.
///
/// They are not part of the run config (nor its hash): a limit changes what a run computes
/// only when it refuses or clips an update an honest client sent, so set them wide enough for
/// honest clients. Defaults are safe for a public endpoint; [`Limits::check`] rejects nonsense.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest a Pull is held open before answering Wait.
    pub poll_timeout: Duration,
    /// Largest payload chunk accepted, in bytes (at most 1 MiB).
    pub max_chunk_bytes: usize,
    /// Largest update accepted, in f32 values; a larger declared payload is refused with
    /// `ResourceExhausted` before anything is allocated.
    pub max_update_values: usize,
    /// Most clients that may be registered at once.
    pub max_clients: usize,
    /// Largest example count (the update's weight) one update may claim; it must also be > 0.
    pub max_examples: u64,
    /// A client silent for longer is not offered work until it pulls again.
    pub liveness: Duration,
    /// How often one client may pull; `None` leaves pulls unpaced. Excess pulls are delayed
    /// up to a second, then refused with `ResourceExhausted` (see [`crate::engine::pacing`]).
    pub pull_rate: Option<PullRate>,
    /// Largest L2 norm an update may have: of its delta from the global parameters for Fit
    /// tasks, of the payload for gradients; k-means is exempt (see [`crate::aggregate::norm`]).
    /// `None`: unbounded.
    pub max_update_norm: Option<f64>,
    /// What happens to an update over `max_update_norm`: refused, or clipped to the bound.
    pub norm_policy: NormPolicy,
    /// Most connections open at once, lowered at start to fit under the process's open-file
    /// limit. At the cap a new connection sheds the one worth least (never sent a byte, never
    /// carried a request, or idle longest), or is closed (see `listener.rs`).
    pub max_connections: usize,
    /// Most streams (requests in flight) one HTTP/2 connection may have, sent to clients in
    /// SETTINGS; clients queue requests past it.
    pub max_streams_per_connection: u32,
    /// Most streams open across all connections; past it a request gets `Unavailable` at once
    /// (see `admission.rs`).
    pub max_streams: usize,
    /// A connection that has sent no byte this long after it was accepted (under TLS: no byte
    /// after its handshake, which must finish by then too) is closed.
    pub first_bytes_timeout: Duration,
    /// A connection that has sent no byte for this long is closed. The server pings every
    /// connection at a third of it, so a live peer never reaches it.
    pub idle_timeout: Duration,
    /// Longest a request may take, from its headers to the end of its response: a long-poll
    /// is held `poll_timeout`, an upload or a download takes as long as the link needs.
    pub request_timeout: Duration,
}

/// Longest time limit [`Limits::check`] accepts: a year, far below what would overflow a
/// deadline computed from the clock.
const MAX_LIMIT_SECS: u64 = 365 * 24 * 3600;

impl Limits {
    /// Refuses limits that would make the coordinator refuse everything or nothing by mistake.
    pub fn check(&self) -> crate::Result<()> {
        let bad = |what: String| Err(crate::CoordinatorError::Config(what));
        if self.max_chunk_bytes == 0 || self.max_chunk_bytes > shoal_proto::MAX_CHUNK_BYTES {
            return bad(format!(
                "max chunk bytes must be 1..={}, got {}",
                shoal_proto::MAX_CHUNK_BYTES,
                self.max_chunk_bytes
            ));
        }
        if self.max_update_values == 0 || self.max_clients == 0 || self.max_examples == 0 {
            return bad("max update values, clients and examples must be positive".into());
        }
        if self.max_examples > crate::aggregate::MAX_WEIGHT {
            return bad(format!(
                "max examples must be at most {}, got {}",
                crate::aggregate::MAX_WEIGHT,
                self.max_examples
            ));
        }
        if let Some(rate) = &self.pull_rate
            && !(rate.per_second.is_finite() && rate.per_second > 0.0)
        {
            return bad(format!(
                "pulls per second must be a positive number, got {}",
                rate.per_second
            ));
        }
        if let Some(norm) = self.max_update_norm
            && !(norm.is_finite() && norm > 0.0)
        {
            return bad(format!(
                "max update norm must be a positive number, got {norm}"
            ));
        }
        if self.max_connections == 0
            || self.max_streams_per_connection == 0
            || self.max_streams == 0
        {
            return bad(
                "max connections, streams per connection and streams must be positive".into(),
            );
        }
        for (what, limit) in [
            ("first bytes timeout", self.first_bytes_timeout),
            ("idle timeout", self.idle_timeout),
            ("request timeout", self.request_timeout),
        ] {
            if limit.is_zero() || limit.as_secs() > MAX_LIMIT_SECS {
                return bad(format!(
                    "{what} must be positive and at most {MAX_LIMIT_SECS} s, got {limit:?}"
                ));
            }
        }
        if self.request_timeout <= self.poll_timeout {
            return bad(format!(
                "request timeout ({:?}) must be longer than the poll timeout ({:?}), or every \
                 held pull is cut",
                self.request_timeout, self.poll_timeout
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            poll_timeout: Duration::from_secs(10),
            max_chunk_bytes: shoal_proto::MAX_CHUNK_BYTES,
            max_update_values: 256 << 20,
            max_clients: 1_000_000,
            // Far above any honest client's count (a FedSGD client's count is batches × batch
            // size), far below the 2^31 the exact aggregate could take: one update cannot claim
            // more than 16.7M examples' worth of weight.
            max_examples: 1 << 24,
            liveness: Duration::from_secs(120),
            // An honest client pulls about once per round (fast simulated rounds take a few
            // milliseconds); 500/s with a burst of 1,000 never slows it, while a flood of
            // thousands of pulls a second is cut off.
            pull_rate: Some(PullRate {
                per_second: 500.0,
                burst: 1000,
            }),
            // A loose bound that no honest update of the shipped models comes near (on digits,
            // MLP and logreg deltas and FedSGD gradients have norms of 0.2-1.2; `--log
            // shoal_coordinator::aggregate::norm=debug` shows them) but that stops an update scaled up to
            // take over the average. A tight bound depends on the model and learning rate: set
            // one (a few times the honest norms) on open deployments.
            max_update_norm: Some(1e4),
            norm_policy: NormPolicy::Reject,
            // Room for 10,000 edge clients with a connection each (a simulated fleet shares a
            // few), well under the usual hard open-file limit of 2^20; lowered at start to fit
            // the soft limit.
            max_connections: 10_000,
            // A simulated fleet holds one long-poll per client on a shared connection (at most
            // 500 clients share one): 1,024 leaves room to spare. An edge client uses a handful.
            // Much more would let a few connections hold all of `max_streams`.
            max_streams_per_connection: 1_024,
            // One held Pull per client for 100,000 clients at once.
            max_streams: 100_000,
            // An honest client sends its first request right after connecting; 10 s covers a
            // TLS handshake over a slow link.
            first_bytes_timeout: Duration::from_secs(10),
            // Three server pings (every 20 s) go unanswered before a connection is shed.
            idle_timeout: Duration::from_secs(60),
            // A 256 MiB upload at about 1 MB/s; Pulls are held 10 s.
            request_timeout: Duration::from_secs(300),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_pass_their_own_check() {
        Limits::default().check().unwrap();
    }

    #[test]
    fn nonsense_limits_are_refused() {
        for limits in [
            Limits {
                max_update_norm: Some(0.0),
                ..Limits::default()
            },
            Limits {
                max_update_norm: Some(f64::NAN),
                ..Limits::default()
            },
            Limits {
                pull_rate: Some(PullRate {
                    per_second: -1.0,
                    burst: 1,
                }),
                ..Limits::default()
            },
            Limits {
                max_chunk_bytes: (1 << 20) + 1,
                ..Limits::default()
            },
            Limits {
                max_examples: 0,
                ..Limits::default()
            },
        ] {
            assert!(limits.check().is_err(), "{limits:?}");
        }
    }
}
