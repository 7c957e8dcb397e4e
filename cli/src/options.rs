//! The run options shared by `run`, `coordinator` and `simulate`: flags, an optional TOML file,
//! and defaults, merged in that order of precedence into one resolved plan.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use shoal_coordinator::aggregate::robust::Rule;
use shoal_coordinator::config::{
    DEFAULT_CLIENTS, FitSettings, GradientSettings, MAX_ROUND_TIMEOUT_MS, SelectionConfig,
};
use shoal_coordinator::strategy::ServerOptimizer;
use shoal_coordinator::{EvalMode, RunConfig, StrategyConfig};
use shoal_datasets::{DEFAULT_TEST_FRACTION, DatasetSource, Partition};
use std::path::{Path, PathBuf};

/// The algorithms a run can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyName {
    /// Federated averaging.
    Fedavg,
    /// FedAvg with a proximal term in the clients' objective (--proximal-mu).
    Fedprox,
    /// FedAvg with control variates correcting each client's drift (SCAFFOLD).
    Scaffold,
    /// Federated gradients with a server optimiser.
    Fedsgd,
    /// Federated k-means (k-FED seeding, then Lloyd rounds).
    Fedkmeans,
}

/// The server optimiser: FedSGD's, or FedAvg's (FedOpt) when given with fedavg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// SGD, with optional momentum.
    Sgd,
    /// SGD with momentum (FedAvgM; --server-momentum, 0.9 unless given).
    Momentum,
    /// Adam.
    Adam,
    /// Adagrad (Reddi et al. 2021).
    Adagrad,
    /// Yogi (Reddi et al. 2021).
    Yogi,
}

macro_rules! options {
    ($(#[$sdoc:meta])* $name:ident / $file:ident { $( $(#[$doc:meta])* $field:ident : $ty:ty ),* $(,)? }) => {
        $(#[$sdoc])*
        #[derive(Debug, Clone, Default, Args)]
        pub struct $name {
            $( $(#[$doc])* #[arg(long, allow_negative_numbers = true)] pub $field: Option<$ty>, )*
        }

        /// The same options as read from a config file (other keys are another group's).
        #[derive(Debug, Clone, Default, Deserialize)]
        struct $file {
            $( $field: Option<$ty>, )*
        }

        impl $name {
            /// The keys of these options in a config file.
            const KEYS: &[&str] = &[$( stringify!($field) ),*];

            /// Fills every option the flags left unset from `file`.
            fn merge(mut self, file: $file) -> Self {
                $( if self.$field.is_none() { self.$field = file.$field; } )*
                self
            }
        }
    };
}

options! {
    /// Which data the clients hold and how it is split among them: all a client needs to
    /// know of a run (the coordinator's tasks say the rest).
    DataOptions / DataFile {
        /// digits, fashion-mnist[:DIR], csv:TRAIN[,TEST], blobs[:CENTERS], or (coordinator
        /// only) shape:FEATURES,CLASSES / shape:ROWSxCOLS,CLASSES for a coordinator that holds
        /// no data [default: digits].
        dataset: String,
        /// iid, dirichlet:ALPHA or shards:K [default: iid].
        partition: String,
        /// Clients the training set is split among; for a coordinator also the clients to
        /// wait for before the first round; at least 1 [default: 10].
        clients: usize,
        /// Seed of every random choice [default: 0].
        seed: u64,
        /// Held-out fraction when the dataset has no test file, in (0, 1) [default: 0.2].
        test_fraction: f64,
    }
}

/// The flags of `shoal client` and `shoal simulate`: the data options, from flags or the run's
/// config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientDataOptions {
    /// The run's TOML config file; only its data keys (dataset, partition, clients, seed,
    /// test_fraction) matter to clients.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataOptions,
}

impl ClientDataOptions {
    /// The data plan: flags, then the config file, then defaults.
    pub fn resolve(&self) -> Result<DataPlan> {
        let data = match &self.config {
            Some(path) => self.data.clone().merge(read_file(path)?.0),
            None => self.data.clone(),
        };
        data.resolve()
    }
}

/// Options that decide what a run computes. Flags override the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct RunOptions {
    /// TOML file with any of these options (keys as the flags, with underscores).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataOptions,
    #[command(flatten)]
    pub training: TrainingOptions,
}

options! {
    /// What the coordinator runs on the data: algorithm, model, rounds, selection, evaluation.
    TrainingOptions / TrainingFile {
        /// Algorithm [default: fedavg].
        strategy: StrategyName,
        /// Model: logreg, mlp, mlp:H1,H2,..., cnn, or external (the clients' own code; needs
        /// --init for its layout and --eval federated) [default: mlp].
        model: String,
        /// Rounds to run, at least 1 [default: 20].
        rounds: u32,
        /// Clients asked per round, 1..=--clients [default: all, see --fraction].
        clients_per_round: usize,
        /// Fraction of available clients asked per round, in (0, 1] [default: 1.0].
        fraction: f64,
        /// Quorum: fewest updates a round may aggregate, 1..=--clients and at most
        /// --clients-per-round [default: 1].
        min_clients: usize,
        /// Ask this many times more clients than needed; close when enough answered; at least 1
        /// [default: 1.0].
        over_select: f64,
        /// Round deadline in seconds, 0.001 to 604800 (a week) [default: 60].
        round_timeout: f64,
        /// Retries of a round below quorum before its quorum counts as lost, 0..=1000 [default: 3].
        max_retries: u32,
        /// When a round's quorum is lost: stop the run; shrink (aggregate what the last attempt
        /// got, if anything); wait (serve the last model and reopen the round once a quorum is
        /// back), or wait:SECONDS to give up after that long [default: stop].
        on_quorum_loss: String,
        /// Where each round's model is evaluated: central (the coordinator's test set), federated
        /// (the round's clients, on examples they hold out and never train on) or both
        /// [default: central].
        eval: String,
        /// Fraction of each client's examples held out for federated evaluation, in (0, 1)
        /// [default: 0.2].
        eval_holdout: f64,
        /// Start from this model (safetensors, as --model-out writes it: every tensor of the
        /// model by name and shape) instead of a seeded initialisation; FedAvg and FedSGD.
        init: PathBuf,
        /// How clients send FedAvg and FedSGD updates: none (f32), fp16, int8 (a scale per 256
        /// values), or topk:FRACTION (the largest-magnitude share, in (0, 1], the rest carried
        /// into the client's next update) [default: none].
        compress: String,
        /// How a round's FedAvg/FedSGD updates are combined: mean (their exact weighted mean),
        /// or a robust rule over every update of the round, held in memory at once: median,
        /// trimmed-mean:BETA (BETA in [0, 0.5) cut at each end), krum:F, multi-krum:F:M or
        /// bulyan:F (F attackers tolerated; every round needs 2F+3, max(2F+3, M+F) and 4F+3
        /// updates, see --min-clients) [default: mean].
        aggregator: String,
        /// Local epochs (FedAvg); 0 trains nothing: each client scores the global model and sends
        /// it back unchanged, which measures orchestration alone [default: 5].
        epochs: u32,
        /// Mini-batch size: of local training (FedAvg), and of each gradient (FedSGD; with
        /// --grad-batches 0 the whole partition is processed in chunks of this size)
        /// [default: 32 for fedavg, 256 for fedsgd].
        batch_size: u32,
        /// Local learning rate (FedAvg), above 0 [default: 0.1].
        lr: f64,
        /// Mini-batches per gradient, 0 = whole partition (FedSGD); --grad-batches × --batch-size
        /// at most 2^31 [default: 0].
        grad_batches: u32,
        /// Server optimiser of FedSGD; given with fedavg, FedOpt: the server steps along
        /// global − combined update instead of taking the combined update [default: sgd for
        /// fedsgd, none for fedavg].
        server_optimizer: OptimizerName,
        /// Server learning rate, above 0 [default: fedsgd: 0.5 for sgd, 0.01 for adam;
        /// fedavg: 1 for sgd and momentum, 0.01 for adam; 0.1 for adagrad, 0.01 for yogi].
        server_lr: f64,
        /// Server momentum (sgd, momentum), in [0, 1) [default: 0; 0.9 for momentum].
        server_momentum: f64,
        /// First-moment decay of adam, adagrad and yogi, in [0, 1) [default: 0.9; 0 for
        /// adagrad].
        server_beta1: f64,
        /// Second-moment decay of adam and yogi, in [0, 1) [default: 0.999 for adam, 0.99 for
        /// yogi].
        server_beta2: f64,
        /// Adaptivity τ of adagrad and yogi (Adam's ε), above 0 [default: 1e-3; 1e-8 for
        /// adam].
        server_tau: f64,
        /// FedProx's proximal strength μ ≥ 0: clients add μ/2·‖w − w_global‖² to their local
        /// loss [default: 0.01].
        proximal_mu: f64,
        /// Clusters (k-means), 1 to the number of training examples [default: number of classes].
        k: usize,
        /// Clusters of each client's local k-means in the k-FED seeding round, 1 to the smallest
        /// client's number of examples [default: k, capped by each client's examples].
        local_k: usize,
        /// Stop k-means when no centroid moves more than this, at least 0 [default: 1e-4].
        tol: f64,
    }
}

/// Where the data comes from and how it is split among clients.
#[derive(Debug, Clone)]
pub struct DataPlan {
    /// The dataset.
    pub source: DatasetSource,
    /// The partition scheme.
    pub partition: Partition,
    /// Number of clients the training set is split among.
    pub clients: usize,
    /// Held-out fraction (when there is no test file).
    pub test_fraction: f64,
    /// Run seed.
    pub seed: u64,
    /// `--local-k` as given for k-means: every client must hold at least this many examples.
    /// (When it defaults to k, a client with fewer examples clusters them into fewer groups.)
    pub local_k: Option<usize>,
}

/// Fully resolved options.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the coordinator runs.
    pub run: RunConfig,
    /// Where data comes from.
    pub data: DataPlan,
    /// `--init`: a safetensors file holding the model to start from.
    pub init: Option<PathBuf>,
    /// Its parameters, once read against the model's layout (`data::finish_plan`).
    pub init_params: Option<Vec<f32>>,
    /// The layout read from it, for a model Shoal has no code for (`--model external`).
    pub init_layout: Option<shoal_models::Manifest>,
}

/// Reads a config file: both groups of options, refusing a key neither knows (a typo would
/// otherwise be ignored without a word).
fn read_file(path: &Path) -> Result<(DataFile, TrainingFile)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    if let Some(key) = table.keys().find(|key| {
        !DataOptions::KEYS.contains(&key.as_str()) && !TrainingOptions::KEYS.contains(&key.as_str())
    }) {
        bail!(
            "config file {}: unknown option {key:?}; the options are {} and {}",
            path.display(),
            DataOptions::KEYS.join(", "),
            TrainingOptions::KEYS.join(", ")
        );
    }
    let parse = || format!("parsing config file {}", path.display());
    let data = table.clone().try_into().with_context(parse)?;
    let training = table.try_into().with_context(parse)?;
    Ok((data, training))
}

impl DataOptions {
    /// The data plan these options describe, defaults filled from the library's.
    fn resolve(&self) -> Result<DataPlan> {
        let defaults = RunConfig::default();
        let source: DatasetSource = self
            .dataset
            .as_deref()
            .unwrap_or(&defaults.dataset)
            .parse()?;
        let partition: Partition = self
            .partition
            .as_deref()
            .unwrap_or(&defaults.partition)
            .parse()?;
        let test_fraction = self.test_fraction.unwrap_or(DEFAULT_TEST_FRACTION);
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            bail!("--test-fraction must be in (0, 1), got {test_fraction}");
        }
        Ok(DataPlan {
            source,
            partition,
            clients: self.clients.unwrap_or(DEFAULT_CLIENTS),
            test_fraction,
            seed: self.seed.unwrap_or(defaults.seed),
            local_k: None,
        })
    }
}

impl RunOptions {
    /// Merges flags, file and defaults, and checks every value: the run config's own checks
    /// ([`RunConfig::validate`]) and those of the options only the CLI has. Options of another
    /// strategy than the chosen one are checked too: a bad value is a mistake either way.
    pub fn resolve(&self) -> Result<Plan> {
        let (data, o) = match &self.config {
            Some(path) => {
                let (data, training) = read_file(path)?;
                (
                    self.data.clone().merge(data),
                    self.training.clone().merge(training),
                )
            }
            None => (self.data.clone(), self.training.clone()),
        };
        // Every default comes from the library's: flags and file only override.
        let defaults = RunConfig::default();
        let mut data = data.resolve()?;
        // 0 stands for "from the data" in the run config, so it cannot be asked for.
        if o.k == Some(0) {
            bail!("--k must be at least 1, got 0");
        }
        if o.local_k == Some(0) {
            bail!("--local-k must be at least 1, got 0");
        }
        let model = o.model.clone().unwrap_or_else(|| defaults.model.clone());
        model.parse::<shoal_models::ModelKind>()?;
        let strategy = o.strategy.unwrap_or(StrategyName::Fedavg);
        let optimizer = o.server_optimizer.unwrap_or(OptimizerName::Sgd);
        let round_timeout_ms = match o.round_timeout {
            Some(seconds) => round_timeout_ms(seconds)?,
            None => defaults.round_timeout_ms,
        };
        let selection = &defaults.selection;
        let run = RunConfig {
            seed: data.seed,
            rounds: o.rounds.unwrap_or(defaults.rounds),
            strategy: strategy_config(&o, strategy, optimizer),
            model,
            dataset: data.source.to_string(),
            partition: data.partition.to_string(),
            selection: SelectionConfig {
                clients_per_round: o.clients_per_round.or(selection.clients_per_round),
                fraction: o.fraction.unwrap_or(selection.fraction),
                min_clients: o.min_clients.unwrap_or(selection.min_clients),
                over_select: o.over_select.unwrap_or(selection.over_select),
                min_available: data.clients,
            },
            // One --batch-size flag sets both batch sizes; each has its own default.
            fit: FitSettings {
                epochs: o.epochs.unwrap_or(defaults.fit.epochs),
                batch_size: o.batch_size.unwrap_or(defaults.fit.batch_size),
                lr: o.lr.unwrap_or(defaults.fit.lr),
            },
            gradient: GradientSettings {
                batches: o.grad_batches.unwrap_or(defaults.gradient.batches),
                batch_size: o.batch_size.unwrap_or(defaults.gradient.batch_size),
            },
            round_timeout_ms,
            max_retries: o.max_retries.unwrap_or(defaults.max_retries),
            on_quorum_loss: match &o.on_quorum_loss {
                Some(text) => text
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--on-quorum-loss {e}"))?,
                None => defaults.on_quorum_loss,
            },
            eval: match (o.eval.as_deref(), o.eval_holdout) {
                // A coordinator with no examples has nothing to score on itself.
                (None, None) if !data.source.holds_examples() => EvalMode::Federated {
                    holdout: EvalMode::HOLDOUT,
                },
                (None, None) => defaults.eval,
                (None, Some(holdout)) if !data.source.holds_examples() => {
                    EvalMode::parse("federated", Some(holdout)).map_err(|e| anyhow::anyhow!(e))?
                }
                (None | Some("central"), Some(_)) => {
                    bail!("--eval-holdout needs --eval federated or both")
                }
                (Some(mode), holdout) => {
                    EvalMode::parse(mode, holdout).map_err(|e| anyhow::anyhow!(e))?
                }
            },
            // Set once the file is read against the model (`data::finish_plan`).
            init_sha256: None,
            compress: match o.compress.as_deref().map(str::parse::<shoal_proto::Codec>) {
                None | Some(Ok(shoal_proto::Codec::None)) => None,
                Some(Ok(codec)) => Some(codec.to_string()),
                Some(Err(e)) => bail!("--compress: {e}"),
            },
            aggregator: match o.aggregator.as_deref().map(str::parse::<Rule>) {
                None | Some(Ok(Rule::Mean)) => None,
                Some(Ok(rule)) => Some(rule.to_string()),
                Some(Err(e)) => bail!("{e}"),
            },
        };
        if !data.source.holds_examples() {
            if run.eval.central() {
                bail!(
                    "--dataset {}: the coordinator holds no examples to score on; give --eval \
                     federated (the default without data)",
                    data.source
                );
            }
            if strategy == StrategyName::Fedkmeans {
                bail!(
                    "--dataset {}: federated k-means is scored on the coordinator's examples; \
                     give it a dataset",
                    data.source
                );
            }
        }
        run.validate()?;
        if strategy != StrategyName::Fedprox && o.proximal_mu.is_some() {
            bail!("--proximal-mu is FedProx's: give --strategy fedprox");
        }
        let no_server_optimizer = match strategy {
            StrategyName::Fedprox => Some(
                "FedProx's server averages; use --strategy fedavg --server-optimizer for FedOpt",
            ),
            StrategyName::Scaffold => Some(
                "SCAFFOLD's server averages models and control variates; use --strategy fedavg \
                 --server-optimizer for FedOpt",
            ),
            StrategyName::Fedkmeans => Some(
                "federated k-means computes its centroids directly; it has no server optimiser",
            ),
            StrategyName::Fedavg | StrategyName::Fedsgd => None,
        };
        if let (Some(why), Some(_)) = (no_server_optimizer, o.server_optimizer) {
            bail!("--server-optimizer: {why}");
        }
        for (name, optimizer) in [
            (StrategyName::Fedsgd, OptimizerName::Sgd),
            (StrategyName::Fedsgd, OptimizerName::Adam),
            (StrategyName::Fedsgd, OptimizerName::Adagrad),
            (StrategyName::Fedsgd, OptimizerName::Yogi),
            (StrategyName::Fedkmeans, optimizer),
        ] {
            strategy_config(&o, name, optimizer).validate()?;
        }
        if strategy == StrategyName::Fedkmeans {
            data.local_k = o.local_k;
        }
        Ok(Plan {
            run,
            data,
            init: o.init.clone(),
            init_params: None,
            init_layout: None,
        })
    }
}

/// The server optimiser `name` with the flags given and defaults for the rest (`sgd_lr` for
/// SGD and momentum).
fn server_optimizer(o: &TrainingOptions, name: OptimizerName, sgd_lr: f64) -> ServerOptimizer {
    let lr = o.server_lr;
    match name {
        OptimizerName::Sgd => ServerOptimizer::sgd(lr.or(Some(sgd_lr)), o.server_momentum),
        OptimizerName::Momentum => {
            ServerOptimizer::sgd(lr.or(Some(sgd_lr)), o.server_momentum.or(Some(0.9)))
        }
        OptimizerName::Adam => {
            ServerOptimizer::adam(lr, o.server_beta1, o.server_beta2, o.server_tau)
        }
        OptimizerName::Adagrad => ServerOptimizer::adagrad(lr, o.server_beta1, o.server_tau),
        OptimizerName::Yogi => {
            ServerOptimizer::yogi(lr, o.server_beta1, o.server_beta2, o.server_tau)
        }
    }
}

/// `--round-timeout` in milliseconds, refused outside (0.001 s, a week).
fn round_timeout_ms(seconds: f64) -> Result<u64> {
    let most = MAX_ROUND_TIMEOUT_MS / 1000;
    let ms = (seconds * 1000.0).round();
    if !(1.0..=MAX_ROUND_TIMEOUT_MS as f64).contains(&ms) {
        bail!("--round-timeout must be between 0.001 and {most} seconds, got {seconds}");
    }
    Ok(ms as u64)
}

/// The settings of algorithm `name` from `o` (with `optimizer` for FedSGD), defaults filled.
fn strategy_config(
    o: &TrainingOptions,
    name: StrategyName,
    optimizer: OptimizerName,
) -> StrategyConfig {
    match name {
        StrategyName::Fedavg => match o.server_optimizer {
            None => StrategyConfig::FedAvg,
            // FedOpt: SGD at learning rate 1 is FedAvg itself.
            Some(_) => StrategyConfig::FedOpt {
                optimizer: server_optimizer(o, optimizer, 1.0),
            },
        },
        StrategyName::Fedprox => StrategyConfig::FedProx {
            mu: o.proximal_mu.unwrap_or(0.01),
        },
        StrategyName::Scaffold => StrategyConfig::Scaffold,
        StrategyName::Fedsgd => StrategyConfig::FedSgd {
            optimizer: server_optimizer(o, optimizer, ServerOptimizer::SGD_LR),
        },
        // k 0: the number of classes, fixed once the data is loaded (`data::finish_plan`).
        StrategyName::Fedkmeans => StrategyConfig::fedkmeans(o.k, o.local_k, o.tol),
    }
}
