//! `shoal run`: the one-command demo — a coordinator on a loopback port and a simulated fleet in
//! the same process, with a progress bar, a per-round table and a summary.

use crate::data::partitions;
use crate::host::{Outputs, Prepared, ctrl_c, host, prepare};
use crate::options::RunOptions;
use anyhow::{Context, Result};
use clap::Args;
use shoal_client::{FleetConfig, run_fleet};
use shoal_coordinator::Limits;
use tokio::net::TcpListener;

/// Options of `shoal run`.
#[derive(Debug, Args)]
pub struct RunCmd {
    #[command(flatten)]
    options: RunOptions,
    #[command(flatten)]
    outputs: Outputs,
    /// HTTP/2 channels the simulated fleet shares.
    #[arg(long, default_value_t = 4)]
    channels: usize,
}

impl RunCmd {
    /// Runs the demo.
    pub async fn execute(self) -> Result<()> {
        let mut plan = self.options.resolve()?;
        let Prepared {
            coordinator,
            split,
            spec,
        } = prepare(&mut plan, Limits::default())?;
        let clients = partitions(&plan.data, &split.train, "client")?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut fleet = FleetConfig::new(url);
        fleet.channels = self.channels.max(1);
        fleet.options.seed = plan.run.seed;
        let fleet = tokio::spawn(run_fleet(fleet, clients, ctrl_c()));
        let hosted = host(
            &plan,
            coordinator,
            spec,
            split.test,
            listener,
            &self.outputs,
            ctrl_c(),
        )
        .await;
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
