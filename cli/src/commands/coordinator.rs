//! `shoal coordinator`: serve a run to clients that dial in from other processes or machines.

use crate::host::{Durability, Outputs, ctrl_c, host, prepare};
use crate::options::RunOptions;
use anyhow::{Context, Result};
use clap::Args;
use shoal_coordinator::Limits;
use std::time::Duration;
use tokio::net::TcpListener;

/// Options of `shoal coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorCmd {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    #[command(flatten)]
    options: RunOptions,
    #[command(flatten)]
    outputs: Outputs,
    #[command(flatten)]
    durability: Durability,
    /// Longest a client's pull is held open, in seconds.
    #[arg(long, default_value_t = 10.0)]
    poll_timeout: f64,
    /// Seconds of silence after which a client is no longer offered work.
    #[arg(long, default_value_t = 120.0)]
    liveness: f64,
    /// Largest update accepted, in f32 values.
    #[arg(long, default_value_t = 256 << 20)]
    max_update_values: usize,
}

impl CoordinatorCmd {
    /// Serves the run until it ends or Ctrl-C.
    pub async fn execute(self) -> Result<()> {
        let mut plan = self.options.resolve()?;
        for (name, v) in [
            ("--poll-timeout", self.poll_timeout),
            ("--liveness", self.liveness),
        ] {
            if !(v.is_finite() && v > 0.0) {
                anyhow::bail!("{name} must be a positive number of seconds, got {v}");
            }
        }
        let limits = Limits {
            poll_timeout: Duration::from_secs_f64(self.poll_timeout),
            liveness: Duration::from_secs_f64(self.liveness),
            max_update_values: self.max_update_values,
            ..Limits::default()
        };
        let prepared = prepare(&mut plan, limits, &self.durability)?;
        let listener = TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        eprintln!(
            "coordinator listening on {} (run {}, waiting for {} clients)",
            listener.local_addr()?,
            prepared.coordinator.run_id(),
            plan.run.selection.min_available
        );
        host(&plan, prepared, listener, &self.outputs, ctrl_c()).await?;
        Ok(())
    }
}
