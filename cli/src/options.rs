//! The run options shared by `run`, `coordinator` and `simulate`: flags, an optional TOML file,
//! and defaults, merged in that order of precedence into one resolved plan.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use shoal_coordinator::config::{FitSettings, GradientSettings, SelectionConfig};
use shoal_coordinator::strategy::ServerOptimizer;
use shoal_coordinator::{RunConfig, StrategyConfig};
use shoal_datasets::{DatasetSource, Partition};
use std::path::{Path, PathBuf};

/// The algorithms a run can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyName {
    /// Federated averaging.
    Fedavg,
    /// Federated gradients with a server optimiser.
    Fedsgd,
    /// Federated k-means (k-FED seeding, then Lloyd rounds).
    Fedkmeans,
}

/// The server optimiser for FedSGD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// SGD, with optional momentum.
    Sgd,
    /// Adam.
    Adam,
}

macro_rules! run_options {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty ),* $(,)?) => {
        /// Options that decide what a run computes. Flags override the config file.
        #[derive(Debug, Clone, Default, Args)]
        pub struct RunOptions {
            /// TOML file with any of these options (keys as the flags, with underscores).
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $( $(#[$doc])* #[arg(long, allow_negative_numbers = true)] pub $name: Option<$ty>, )*
        }

        /// The same options as read from a TOML file.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileOptions {
            $( $name: Option<$ty>, )*
        }

        impl RunOptions {
            /// Fills every option the flags left unset from `file`.
            fn merge(mut self, file: FileOptions) -> Self {
                $( if self.$name.is_none() { self.$name = file.$name; } )*
                self
            }
        }
    };
}

run_options! {
    /// Algorithm [default: fedavg].
    strategy: StrategyName,
    /// Model: logreg, mlp, mlp:H1,H2,..., cnn [default: mlp].
    model: String,
    /// digits, fashion-mnist[:DIR], csv:TRAIN[,TEST], blobs[:CENTERS] [default: digits].
    dataset: String,
    /// iid, dirichlet:ALPHA or shards:K [default: iid].
    partition: String,
    /// Simulated clients / clients to wait for before the first round [default: 10].
    clients: usize,
    /// Rounds to run [default: 20].
    rounds: u32,
    /// Clients asked per round [default: all, see --fraction].
    clients_per_round: usize,
    /// Fraction of available clients asked per round [default: 1.0].
    fraction: f64,
    /// Quorum: fewest updates a round may aggregate [default: 1].
    min_clients: usize,
    /// Ask this many times more clients than needed; close when enough answered [default: 1.0].
    over_select: f64,
    /// Round deadline in seconds [default: 60].
    round_timeout: f64,
    /// Attempts per round below quorum before the run stops [default: 3].
    max_retries: u32,
    /// Seed of every random choice [default: 0].
    seed: u64,
    /// Local epochs (FedAvg) [default: 5].
    epochs: u32,
    /// Local mini-batch size [default: 32].
    batch_size: u32,
    /// Local learning rate (FedAvg) [default: 0.1].
    lr: f64,
    /// Mini-batches per gradient, 0 = whole partition (FedSGD) [default: 0].
    grad_batches: u32,
    /// Server optimiser (FedSGD) [default: sgd].
    server_optimizer: OptimizerName,
    /// Server learning rate (FedSGD) [default: 0.5 for sgd, 0.01 for adam].
    server_lr: f64,
    /// Server momentum (FedSGD with sgd) [default: 0].
    server_momentum: f64,
    /// Clusters (k-means) [default: number of classes].
    k: usize,
    /// Clusters of each client's local k-means in the k-FED seeding round [default: k].
    local_k: usize,
    /// Stop k-means when no centroid moves more than this [default: 1e-4].
    tol: f64,
    /// Held-out fraction when the dataset has no test file [default: 0.2].
    test_fraction: f64,
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
}

/// Fully resolved options.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the coordinator runs.
    pub run: RunConfig,
    /// Where data comes from.
    pub data: DataPlan,
}

fn read_file(path: &Path) -> Result<FileOptions> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

impl RunOptions {
    /// Merges flags, file and defaults, and checks every value.
    pub fn resolve(&self) -> Result<Plan> {
        let o = match &self.config {
            Some(path) => self.clone().merge(read_file(path)?),
            None => self.clone(),
        };
        let source: DatasetSource = o.dataset.as_deref().unwrap_or("digits").parse()?;
        let partition: Partition = o.partition.as_deref().unwrap_or("iid").parse()?;
        let rounds = o.rounds.unwrap_or(20);
        if rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        let clients = o.clients.unwrap_or(10);
        if clients == 0 {
            bail!("--clients must be at least 1");
        }
        let test_fraction = o.test_fraction.unwrap_or(0.2);
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            bail!("--test-fraction must be in (0, 1), got {test_fraction}");
        }
        let fraction = o.fraction.unwrap_or(1.0);
        if !(fraction > 0.0 && fraction <= 1.0) {
            bail!("--fraction must be in (0, 1], got {fraction}");
        }
        let over_select = o.over_select.unwrap_or(1.0);
        if !(over_select.is_finite() && over_select >= 1.0) {
            bail!("--over-select must be at least 1.0, got {over_select}");
        }
        let timeout = o.round_timeout.unwrap_or(60.0);
        if !(timeout.is_finite() && timeout > 0.0) {
            bail!("--round-timeout must be a positive number of seconds, got {timeout}");
        }
        let lr = o.lr.unwrap_or(0.1);
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--lr must be positive, got {lr}");
        }
        let batch_size = o.batch_size.unwrap_or(32);
        if batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let model = o.model.clone().unwrap_or_else(|| "mlp".into());
        model.parse::<shoal_models::ModelKind>()?;
        let strategy = self.strategy_config(&o)?;
        let min_clients = o.min_clients.unwrap_or(1).max(1);
        let run = RunConfig {
            seed: o.seed.unwrap_or(0),
            rounds,
            strategy,
            model,
            dataset: source.to_string(),
            partition: partition.to_string(),
            selection: SelectionConfig {
                clients_per_round: o.clients_per_round,
                fraction,
                min_clients,
                over_select,
                min_available: clients,
            },
            fit: FitSettings {
                epochs: o.epochs.unwrap_or(5),
                batch_size,
                lr,
            },
            gradient: GradientSettings {
                batches: o.grad_batches.unwrap_or(0),
                batch_size: batch_size.max(256),
            },
            round_timeout_ms: (timeout * 1000.0) as u64,
            max_retries: o.max_retries.unwrap_or(3),
        };
        let data = DataPlan {
            source,
            partition,
            clients,
            test_fraction,
            seed: run.seed,
        };
        Ok(Plan { run, data })
    }

    fn strategy_config(&self, o: &RunOptions) -> Result<StrategyConfig> {
        Ok(match o.strategy.unwrap_or(StrategyName::Fedavg) {
            StrategyName::Fedavg => StrategyConfig::FedAvg,
            StrategyName::Fedsgd => {
                let optimizer = match o.server_optimizer.unwrap_or(OptimizerName::Sgd) {
                    OptimizerName::Sgd => ServerOptimizer::Sgd {
                        lr: o.server_lr.unwrap_or(0.5),
                        momentum: o.server_momentum.unwrap_or(0.0),
                    },
                    OptimizerName::Adam => ServerOptimizer::Adam {
                        lr: o.server_lr.unwrap_or(0.01),
                        beta1: 0.9,
                        beta2: 0.999,
                        eps: 1e-8,
                    },
                };
                StrategyConfig::FedSgd { optimizer }
            }
            StrategyName::Fedkmeans => {
                let k = o.k.unwrap_or(0);
                StrategyConfig::FedKMeans {
                    k,
                    local_k: o.local_k.unwrap_or(k),
                    tol: o.tol.unwrap_or(1e-4),
                }
            }
        })
    }
}
