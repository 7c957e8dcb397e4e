//! `shoal simulate`: many simulated clients in this process, each with its own partition of
//! the dataset, against a coordinator elsewhere.

use crate::data::{load, partitions};
use crate::host::ctrl_c;
use crate::options::RunOptions;
use anyhow::{Result, bail};
use clap::Args;
use shoal_client::{FleetConfig, run_fleet};

/// Options of `shoal simulate`.
#[derive(Debug, Args)]
pub struct SimulateCmd {
    /// Coordinator URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
    #[command(flatten)]
    options: RunOptions,
    /// HTTP/2 channels the clients share.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Client ids are PREFIX-00000, PREFIX-00001, ... (the ids seed each client's work, so
    /// keep the default to reproduce a `shoal run`).
    #[arg(long, default_value = "client")]
    id_prefix: String,
    /// Run only these partitions, e.g. 0..10, leaving the rest to other processes [default: all].
    #[arg(long, value_name = "START..END", value_parser = parse_range)]
    indices: Option<std::ops::Range<usize>>,
}

/// Parses "START..END".
fn parse_range(s: &str) -> Result<std::ops::Range<usize>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected START..END, got {s:?}"))?;
    let start: usize = a
        .trim()
        .parse()
        .map_err(|_| format!("bad start in {s:?}"))?;
    let end: usize = b.trim().parse().map_err(|_| format!("bad end in {s:?}"))?;
    if start >= end {
        return Err(format!("empty range {s:?}"));
    }
    Ok(start..end)
}

impl SimulateCmd {
    /// Runs the fleet until the coordinator ends the run.
    pub async fn execute(self) -> Result<()> {
        let plan = self.options.resolve()?;
        let split = load(&plan.data)?;
        let mut clients = partitions(&plan.data, &split.train, &self.id_prefix)?;
        if let Some(range) = &self.indices {
            if range.end > clients.len() {
                bail!(
                    "--indices {range:?} is out of range for --clients {}",
                    clients.len()
                );
            }
            clients = clients.drain(range.clone()).collect();
        }
        let n = clients.len();
        let mut fleet = FleetConfig::new(self.coordinator);
        fleet.channels = self.channels.max(1);
        fleet.options.seed = plan.run.seed;
        let report = run_fleet(fleet, clients, ctrl_c()).await?;
        eprintln!(
            "{n} simulated clients: {} updates accepted, {} refused, {} reconnects",
            report.totals.accepted, report.totals.refused, report.totals.reconnects
        );
        if report.failed > 0 {
            bail!(
                "{} of {n} simulated clients stopped on errors",
                report.failed
            );
        }
        Ok(())
    }
}
