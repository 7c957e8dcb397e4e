//! A whole federation in one process: a coordinator serving real gRPC on 127.0.0.1:0 and a
//! fleet of simulated clients dialling in, as `shoal run --over-grpc` does, with every round
//! timed.
//!
//! Each round's record arrives through the coordinator's observer channel and is stamped with
//! the time since [`Simulation::run`] began (data loading included), so "wall time until the
//! round that reached the target" is read directly. A predicate can end the run early.

use anyhow::{Context, Result};
use shoal_client::{FleetConfig, FleetReport, run_fleet};
use shoal_coordinator::config::SelectionConfig;
use shoal_coordinator::{
    Coordinator, CoordinatorError, Limits, RoundRecord, RunConfig, RunStart, RunSummary, strategy,
};
use shoal_datasets::{DatasetSource, Partition, load, partition};
use shoal_models::{ModelKind, ModelSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// What the coordinator runs (its seed also splits and partitions the data).
    pub run: RunConfig,
    /// Simulated clients; the training set is split among them.
    pub clients: usize,
    /// How the training set is split.
    pub partition: Partition,
    /// HTTP/2 channels the fleet shares (`shoal run --over-grpc` uses 4).
    pub channels: usize,
    /// Held-out fraction of the dataset.
    pub test_fraction: f64,
    /// The coordinator's operational limits (`shoal run` uses the defaults).
    pub limits: Limits,
}

impl Simulation {
    /// FedAvg on digits with `run`'s settings, split IID among `clients` clients who all take
    /// part in every round; 4 channels and a 20% test set, as `shoal run --over-grpc`.
    pub fn digits(mut run: RunConfig, clients: usize) -> Self {
        run.dataset = "digits".into();
        run.partition = "iid".into();
        run.selection = SelectionConfig {
            clients_per_round: None,
            fraction: 1.0,
            min_clients: 1,
            over_select: 1.0,
            min_available: clients,
        };
        Self {
            run,
            clients,
            partition: Partition::Iid,
            channels: 4,
            test_fraction: 0.2,
            limits: Limits::default(),
        }
    }
}

/// A round's record and when it arrived.
#[derive(Debug, Clone)]
pub struct TimedRound {
    /// The coordinator's record (its `seconds` run from selection to evaluation).
    pub record: RoundRecord,
    /// Time from the start of [`Simulation::run`] to the record's arrival.
    pub since_start: Duration,
}

/// What a simulation measured.
#[derive(Debug, Clone)]
pub struct SimulationReport {
    /// Every aggregated round, in order.
    pub rounds: Vec<TimedRound>,
    /// Loading, splitting and partitioning the data.
    pub setup: Duration,
    /// From start to the fleet's exit (shutdown included).
    pub wall: Duration,
    /// The run summary; `None` when the predicate stopped the run early.
    pub summary: Option<RunSummary>,
    /// What the fleet did.
    pub fleet: FleetReport,
    /// Parameters of the model.
    pub num_params: usize,
}

impl Simulation {
    /// Runs the federation until every round is done or `stop_when` holds for a record.
    pub async fn run(
        self,
        mut stop_when: impl FnMut(&RoundRecord) -> bool + Send + 'static,
    ) -> Result<SimulationReport> {
        let started = Instant::now();
        let split = load(&DatasetSource::Digits, self.test_fraction, self.run.seed)?;
        let kind: ModelKind = self.run.model.parse()?;
        let spec = ModelSpec::for_dataset(kind, &split.train);
        let parts = partition(
            &split.train.labels,
            split.train.num_classes,
            self.clients,
            &self.partition,
            self.run.seed,
        )?;
        let clients = parts
            .iter()
            .enumerate()
            .map(|(i, idx)| Ok((format!("client-{i:05}"), split.train.subset(idx)?)))
            .collect::<Result<Vec<_>>>()?;
        let setup = started.elapsed();

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let strategy = strategy::build(&self.run, &spec)?;
        let num_params = strategy.model().len();
        let coordinator = Coordinator::new(self.run.clone(), self.limits.clone(), spec);
        let (records_tx, mut records_rx) = mpsc::unbounded_channel::<RoundRecord>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let watcher = tokio::spawn(async move {
            let mut rounds = Vec::new();
            let mut stop_tx = Some(stop_tx);
            while let Some(record) = records_rx.recv().await {
                let reached = stop_when(&record);
                rounds.push(TimedRound {
                    record,
                    since_start: started.elapsed(),
                });
                if reached && let Some(tx) = stop_tx.take() {
                    let _ = tx.send(());
                }
            }
            rounds
        });
        let stop = async move {
            let _ = stop_rx.await;
        };
        let start = RunStart::new(strategy, Arc::new(split.test))
            .observer(records_tx)
            .drain_limit(Duration::from_secs(5));
        let hosted = coordinator.host(listener, start, stop)?;
        let mut fleet_config = FleetConfig::new(hosted.url.clone());
        fleet_config.channels = self.channels.max(1);
        fleet_config.options.seed = self.run.seed;
        let fleet = tokio::spawn(run_fleet(fleet_config, clients, std::future::pending()));
        let outcome = hosted.finish().await;
        let rounds = watcher.await.context("round watcher")?;
        let fleet = fleet.await.context("fleet task")??;
        let summary = match outcome {
            Ok(outcome) => Some(outcome.summary),
            Err(CoordinatorError::ShuttingDown) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(SimulationReport {
            rounds,
            setup,
            wall: started.elapsed(),
            summary,
            fleet,
            num_params,
        })
    }
}
