//! `shoal simulate`: many simulated clients in this process, each with its own partition of
//! the dataset, against a coordinator elsewhere, optionally suffering seeded faults (dropouts,
//! stragglers, crashes) that replay exactly for the same `--seed`. Over `https://` each client
//! can prove its id with its own certificate (`--certs-dir`) and/or token (`--tokens-file`).

use crate::commands::client::{TlsArgs, identity, read_tokens};
use crate::data::{load, partitions};
use crate::fault_args::FaultArgs;
use crate::host::ctrl_c;
use crate::options::ClientDataOptions;
use anyhow::{Result, bail};
use clap::Args;
use shoal_client::{Credentials, FleetConfig, run_fleet};
use shoal_coordinator::net::certs::bundle::{CA_CERT, client_cert_file, client_key_file};
use std::path::PathBuf;

/// Options of `shoal simulate`.
#[derive(Debug, Args)]
pub struct SimulateCmd {
    /// Coordinator URL; with standby coordinators, all their URLs, comma-separated (the
    /// client follows whichever leads).
    #[arg(
        long,
        value_name = "URL[,URL...]",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    /// Spread the clients over the --coordinator URLs (client i starts at URL i mod n; when
    /// one fails, its clients move along the list): one process feeding several sub-aggregators.
    #[arg(long)]
    spread: bool,
    #[command(flatten)]
    options: ClientDataOptions,
    /// HTTP/2 channels the clients share, 1..=65535.
    #[arg(long, default_value_t = shoal_client::DEFAULT_CHANNELS)]
    channels: usize,
    /// Client ids are PREFIX-00000, PREFIX-00001, ... (the ids seed each client's work, so
    /// keep the default to reproduce a `shoal run`).
    #[arg(long, default_value = "client")]
    id_prefix: String,
    /// Run only these partitions, e.g. 0..10, leaving the rest to other processes [default: all].
    #[arg(long, value_name = "START..END", value_parser = parse_range)]
    indices: Option<std::ops::Range<usize>>,
    #[command(flatten)]
    faults: FaultArgs,
    #[command(flatten)]
    tls: TlsArgs,
    /// Mutual TLS: a directory with client-ID.pem and client-ID.key for every simulated client
    /// (as `shoal certs` writes it); its ca.pem is the default --ca.
    #[arg(long, value_name = "DIR")]
    certs_dir: Option<PathBuf>,
    /// Bearer tokens: a file of `CLIENT_ID TOKEN` lines with every simulated client (tokens.txt
    /// from `shoal certs --tokens`).
    #[arg(long, value_name = "FILE")]
    tokens_file: Option<PathBuf>,
}

/// Most HTTP/2 channels a fleet may open: each is a TCP connection with a local port of its own.
const MAX_CHANNELS: usize = 65_535;

/// Refuses a `--channels` outside 1..=[`MAX_CHANNELS`] (none would leave the clients no
/// connection to talk over).
pub fn check_channels(channels: usize) -> Result<()> {
    if !(1..=MAX_CHANNELS).contains(&channels) {
        bail!("--channels must be in 1..={MAX_CHANNELS}, got {channels}");
    }
    Ok(())
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
        check_channels(self.channels)?;
        let plan = self.options.resolve()?;
        let split = load(&plan)?;
        let mut clients = partitions(&plan, &split.train, &self.id_prefix)?;
        // Attackers are a share of every client, whichever process runs them.
        let population: Vec<String> = clients.iter().map(|(id, _)| id.clone()).collect();
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
        let default_ca = self.certs_dir.as_ref().map(|dir| dir.join(CA_CERT));
        fleet.tls = self.tls.load(default_ca.as_deref())?;
        let mut tokens = match &self.tokens_file {
            Some(path) => Some(read_tokens(path)?),
            None => None,
        };
        for (id, _) in &clients {
            let mut credentials = Credentials::default();
            if let Some(dir) = &self.certs_dir {
                let cert = dir.join(client_cert_file(id));
                let key = dir.join(client_key_file(id));
                credentials.identity = Some(identity(&cert, &key)?);
            }
            if let Some(tokens) = &mut tokens {
                let Some(token) = tokens.remove(id) else {
                    bail!("--tokens-file has no token for {id}");
                };
                credentials.token = Some(token);
            }
            fleet.credentials.insert(id.clone(), credentials);
        }
        fleet.channels = self.channels;
        fleet.spread = self.spread;
        fleet.options.seed = plan.seed;
        self.faults.apply(&mut fleet);
        fleet.population = population;
        let faulty = !fleet.faults.is_none();
        let report = run_fleet(fleet, clients, ctrl_c()).await?;
        let t = &report.totals;
        eprintln!(
            "{n} simulated clients: {} updates accepted ({} after reconnecting), {} refused, \
             {} kept updates dropped as stale, {} reconnects",
            t.accepted, t.redelivered, t.refused, t.dropped_stale, t.reconnects
        );
        if faulty {
            eprintln!(
                "simulated faults: {} dropouts, {} stragglers, {} crashes",
                t.dropouts, t.straggles, t.crashes
            );
        }
        if report.failed > 0 {
            bail!(
                "{} of {n} simulated clients stopped on errors",
                report.failed
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_flags_reach_the_command() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            simulate: SimulateCmd,
        }
        let cli = Cli::try_parse_from([
            "shoal",
            "--dropout",
            "0.5",
            "--straggle",
            "0.2:3",
            "--crash",
            "0.1",
            "--byzantine",
            "0.2:sign-flip",
        ])
        .unwrap();
        let mut fleet = FleetConfig::new("http://127.0.0.1:1");
        cli.simulate.faults.apply(&mut fleet);
        assert_eq!(fleet.faults.dropout, 0.5);
        assert_eq!(fleet.faults.straggle, Some((0.2, Duration::from_secs(3))));
        assert_eq!(fleet.faults.crash, Some((0.1, Duration::from_secs(2))));
        assert_eq!(
            fleet.byzantine.map(|b| b.to_string()),
            Some("0.2:sign-flip".into())
        );
        let err = Cli::try_parse_from(["shoal", "--dropout", "1.2"]).unwrap_err();
        assert!(err.to_string().contains("between 0 and 1"), "{err}");
    }
}
