//! `shoal run`: the one-command demo — a coordinator on a loopback port and a simulated fleet in
//! the same process, with a progress bar, a per-round table and a summary.

use crate::data::partitions;
use crate::host::{Durability, Outputs, ctrl_c, host, prepare};
use crate::options::RunOptions;
use anyhow::{Context, Result};
use clap::Args;
use shoal_client::{FleetConfig, run_fleet};
use shoal_coordinator::{Limits, Security};
use std::time::Duration;
use tokio::net::TcpListener;

/// Options of `shoal run`.
#[derive(Debug, Args)]
pub struct RunCmd {
    #[command(flatten)]
    options: RunOptions,
    #[command(flatten)]
    outputs: Outputs,
    #[command(flatten)]
    durability: Durability,
    /// HTTP/2 channels the simulated fleet shares.
    #[arg(long, default_value_t = 4)]
    channels: usize,
}

impl RunCmd {
    /// Runs the demo.
    pub async fn execute(self) -> Result<()> {
        let mut plan = self.options.resolve()?;
        let prepared = prepare(&mut plan, Limits::default(), &self.durability)?;
        let clients = partitions(&plan.data, &prepared.split.train, "client")?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        let mut fleet = FleetConfig::new(format!("http://{}", listener.local_addr()?));
        fleet.channels = self.channels.max(1);
        fleet.options.seed = plan.run.seed;
        // The fleet stops when the coordinator says the run is over, on Ctrl-C, or at the latest
        // a grace period after the coordinator stopped serving.
        let (hosted_tx, hosted_rx) = tokio::sync::oneshot::channel::<()>();
        let fleet_stop = async move {
            tokio::select! {
                () = ctrl_c() => {}
                _ = hosted_rx => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        };
        let fleet = tokio::spawn(run_fleet(fleet, clients, fleet_stop));
        // Loopback plaintext: the fleet is in this process.
        let hosted = host(
            &plan,
            prepared,
            listener,
            Security::plaintext(),
            &self.outputs,
            ctrl_c(),
        )
        .await;
        let _ = hosted_tx.send(());
        let report = fleet.await.context("fleet task")??;
        hosted?;
        if report.failed > 0 {
            eprintln!(
                "warning: {} simulated clients stopped on errors",
                report.failed
            );
        }
        Ok(())
    }
}
