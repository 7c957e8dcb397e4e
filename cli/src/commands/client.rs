//! `shoal client`: one edge client. Its data is either its own file (`--data csv:PATH`) or, for
//! demos, one partition of a shared dataset (`--dataset`, `--partition`, `--clients`, `--index`).

use crate::data::{client_id, load, partitions};
use crate::host::ctrl_c;
use crate::options::RunOptions;
use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_client::connection::{channel, fleet_client};
use shoal_client::{ClientOptions, EdgeClient, cache::GlobalCache};
use shoal_datasets::{Dataset, DatasetSource};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Options of `shoal client`.
#[derive(Debug, Args)]
pub struct ClientCmd {
    /// Coordinator URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
    /// Stable client id [default: client-INDEX].
    #[arg(long)]
    id: Option<String>,
    /// This client's own data (e.g. csv:PATH); all of it is used for training.
    #[arg(long, value_name = "SOURCE")]
    data: Option<String>,
    /// Which partition of --dataset to use when --data is not given.
    #[arg(long, default_value_t = 0)]
    index: usize,
    #[command(flatten)]
    options: RunOptions,
}

impl ClientCmd {
    /// Runs the client until the coordinator ends the run.
    pub async fn execute(self) -> Result<()> {
        let plan = self.options.resolve()?;
        let data: Dataset = match &self.data {
            Some(source) => {
                let source: DatasetSource = source.parse()?;
                let split = shoal_datasets::load(&source, plan.data.test_fraction, plan.data.seed)
                    .with_context(|| format!("loading {source}"))?;
                split.train
            }
            None => {
                if self.index >= plan.data.clients {
                    bail!(
                        "--index {} is out of range for --clients {}",
                        self.index,
                        plan.data.clients
                    );
                }
                let split = load(&plan.data)?;
                partitions(&plan.data, &split.train, "client")?
                    .swap_remove(self.index)
                    .1
            }
        };
        let id = self.id.unwrap_or_else(|| client_id("client", self.index));
        let fleet = fleet_client(channel(&self.coordinator)?);
        let options = ClientOptions {
            seed: plan.run.seed,
            ..ClientOptions::default()
        };
        let client = EdgeClient::new(
            id.clone(),
            Arc::new(data),
            fleet,
            GlobalCache::default(),
            Arc::new(Semaphore::new(1)),
            options,
        );
        let stats = client.run(ctrl_c()).await?;
        eprintln!(
            "client {id}: {} updates accepted, {} refused",
            stats.accepted, stats.refused
        );
        Ok(())
    }
}
