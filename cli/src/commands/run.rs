//! `shoal run`: the one-command demo — a coordinator on a loopback port and a simulated fleet in
//! the same process, with a progress bar, a per-round table and a summary. The fleet calls the
//! coordinator in place (no protobuf, HTTP/2 or socket between them) unless `--over-grpc`.

use crate::commands::simulate::check_channels;
use crate::data::{partitions, require_examples};
use crate::fault_args::FaultArgs;
use crate::host::{Durability, Outputs, ctrl_c, host, prepare};
use crate::options::RunOptions;
use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_client::{FleetConfig, run_fleet};
use shoal_coordinator::{Limits, Security};
use std::sync::Arc;
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
    /// The simulated fleet talks to the coordinator over gRPC on the loopback port, as remote
    /// clients do, instead of calling it in this process (same rounds and model, slower for
    /// large models).
    #[arg(long)]
    over_grpc: bool,
    /// HTTP/2 channels the simulated fleet shares with --over-grpc, 1..=65535.
    #[arg(long, default_value_t = shoal_client::DEFAULT_CHANNELS)]
    channels: usize,
    #[command(flatten)]
    faults: FaultArgs,
}

impl RunCmd {
    /// Runs the demo.
    pub async fn execute(self) -> Result<()> {
        check_channels(self.channels)?;
        let mut plan = self.options.resolve()?;
        if plan.run.external_model() {
            anyhow::bail!(
                "--model external: shoal run's simulated clients run the built-in models; serve \
                 it with shoal coordinator to clients built with your own LocalTrainer (see \
                 client/examples/own_trainer.rs)"
            );
        }
        require_examples(&plan.data)?;
        let prepared = prepare(&mut plan, Limits::default(), &self.durability)?;
        let clients = partitions(&plan.data, &prepared.split.train, "client")?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        let mut fleet = FleetConfig::new(format!("http://{}", listener.local_addr()?));
        fleet.channels = self.channels;
        if !self.over_grpc {
            fleet.direct = Some(prepared.coordinator.in_process());
        }
        fleet.options.seed = plan.run.seed;
        self.faults.apply(&mut fleet);
        // The fleet stops when the coordinator says the run is over, on Ctrl-C, or at the latest
        // a grace period after the coordinator stopped serving.
        let (hosted_tx, hosted_rx) = tokio::sync::oneshot::channel::<()>();
        let fleet_stop = async move {
            tokio::select! {
                () = ctrl_c() => {}
                _ = hosted_rx => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        };
        // A simulated client that stops on an error will not come back: the run stops then,
        // with that error, rather than wait for it.
        let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel();
        fleet.failures = Some(failed_tx);
        let fleet = tokio::spawn(run_fleet(fleet, clients, fleet_stop));
        let failure = Arc::new(std::sync::Mutex::new(None));
        let stop = {
            let failure = failure.clone();
            async move {
                tokio::select! {
                    () = ctrl_c() => {}
                    Some(failed) = failed_rx.recv() => {
                        if let Ok(mut slot) = failure.lock() {
                            *slot = Some(failed);
                        }
                    }
                }
            }
        };
        // Loopback plaintext: the fleet is in this process.
        let hosted = host(
            &plan,
            prepared,
            listener,
            Security::plaintext(),
            &self.outputs,
            stop,
            std::future::pending(),
        )
        .await;
        let _ = hosted_tx.send(());
        let report = fleet.await.context("fleet task")??;
        let failed = failure.lock().ok().and_then(|mut slot| slot.take());
        if let Some((client, err)) = failed {
            bail!(
                "simulated client {client} stopped: {err}; the in-process fleet cannot keep its \
                 clients, so the run stopped ({} of them stopped on errors)",
                report.failed
            );
        }
        hosted?;
        Ok(())
    }
}
