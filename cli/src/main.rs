//! `shoal`: one command line for the whole system — a one-process demo (`run`), a coordinator,
//! an edge client, and a fleet of simulated clients.

mod candidate;
mod commands;
mod data;
mod fault_args;
mod host;
mod limits_args;
mod model_file;
mod options;
mod report;

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Every process moves many update-sized buffers (tens of KiB to MiB) between threads:
/// mimalloc recycles them per thread where glibc's allocator spent a fifth of a round
/// consolidating and searching its bins.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Federated learning: a crash-safe coordinator and edge clients that keep their data.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    /// Log filter for stderr, e.g. info or shoal_coordinator=debug (RUST_LOG also works)
    /// [default: info for `coordinator`, which says what each round waits for; warn otherwise].
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train end to end in one process: a coordinator on loopback and a simulated fleet.
    Run(Box<commands::run::RunCmd>),
    /// Serve a run to clients that dial in.
    Coordinator(Box<commands::coordinator::CoordinatorCmd>),
    /// Sit between clients and the coordinator, folding their updates into exact partial sums.
    Aggregator(commands::aggregator::AggregatorCmd),
    /// Run one edge client on local data.
    Client(commands::client::ClientCmd),
    /// Run many simulated clients in this process against a coordinator.
    Simulate(commands::simulate::SimulateCmd),
    /// Look into a checkpoint directory.
    Checkpoint(commands::checkpoint::CheckpointCmd),
    /// Draw accuracy and loss per round of one or more runs (their --metrics-out CSVs).
    Plot(commands::plot::PlotCmd),
    /// Make a development CA, certificates (and tokens) for a coordinator and its clients.
    Certs(commands::certs::CertsCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.command {
        Command::Coordinator(_) | Command::Aggregator(_) => "info",
        _ => "warn",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| cli.log.clone())
        .unwrap_or_else(|| default.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in files, pipes or CI logs.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(cmd) => cmd.execute().await,
            Command::Coordinator(cmd) => cmd.execute().await,
            Command::Aggregator(cmd) => cmd.execute().await,
            Command::Client(cmd) => cmd.execute().await,
            Command::Simulate(cmd) => cmd.execute().await,
            Command::Checkpoint(cmd) => cmd.execute().await,
            Command::Certs(cmd) => cmd.execute().await,
            Command::Plot(cmd) => cmd.execute().await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
