//! Hosting a run: the coordinator, its gRPC server and its round driver, shared by `shoal run`
//! and `shoal coordinator`.

use crate::data::{finish_plan, load};
use crate::options::Plan;
use crate::report::{summary_text, table_header, table_row, write_outputs};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use shoal_coordinator::{Coordinator, Limits, Resume, RunOutcome, StrategyConfig, serve, strategy};
use shoal_datasets::{Dataset, Split};
use shoal_models::ModelSpec;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Where a run's results go.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Outputs {
    /// Write one CSV row per round to FILE.
    #[arg(long, value_name = "FILE")]
    pub metrics_out: Option<PathBuf>,
    /// Write the run summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub summary_out: Option<PathBuf>,
    /// Print only the summary, not the per-round table.
    #[arg(long)]
    pub quiet: bool,
}

/// A coordinator ready to serve, with the data it was prepared from.
pub struct Prepared {
    /// The coordinator.
    pub coordinator: Coordinator,
    /// The dataset split (the fleet trains on `train`, the coordinator evaluates on `test`).
    pub split: Split,
    /// The model every client trains.
    pub spec: ModelSpec,
}

/// Loads data, fixes the plan, and builds the coordinator.
pub fn prepare(plan: &mut Plan, limits: Limits) -> Result<Prepared> {
    let split = load(&plan.data)?;
    let spec = finish_plan(plan, &split.train)?;
    let coordinator = Coordinator::new(plan.run.clone(), limits, spec.clone());
    Ok(Prepared {
        coordinator,
        split,
        spec,
    })
}

/// Serves `coordinator` on `listener` and drives the run to its end, printing the table and
/// writing the outputs; the server stops once clients have heard the run is over.
pub async fn host(
    plan: &Plan,
    coordinator: Coordinator,
    spec: ModelSpec,
    test: Dataset,
    listener: TcpListener,
    outputs: &Outputs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunOutcome> {
    let strategy = strategy::build(&plan.run, &spec)?;
    let test = Arc::new(test);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, coordinator.clone(), async move {
        let _ = server_stopped.await;
    }));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let clustering = matches!(plan.run.strategy, StrategyConfig::FedKMeans { .. });
    let bar = progress_bar(plan.run.rounds, outputs.quiet);
    let printer = {
        let bar = bar.clone();
        let quiet = outputs.quiet;
        tokio::spawn(async move {
            say(&bar, quiet, &table_header(clustering));
            while let Some(record) = rx.recv().await {
                say(&bar, quiet, &table_row(&record, clustering));
                bar.inc(1);
            }
        })
    };
    let outcome = coordinator
        .run(strategy, test, Resume::default(), Some(tx), shutdown)
        .await;
    let _ = printer.await;
    bar.finish_and_clear();
    coordinator.drain(Duration::from_secs(3)).await;
    let _ = stop_server.send(());
    let _ = server.await;
    let outcome = outcome?;
    write_outputs(
        outputs.metrics_out.as_deref(),
        outputs.summary_out.as_deref(),
        &outcome.records,
        &outcome.summary,
    )?;
    print_line(&summary_text(&outcome.summary));
    Ok(outcome)
}

fn progress_bar(rounds: u32, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(u64::from(rounds));
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} rounds  {elapsed}") {
        bar.set_style(style);
    }
    bar
}

/// Prints above the bar on a terminal, plainly otherwise.
fn say(bar: &ProgressBar, quiet: bool, line: &str) {
    if quiet {
        return;
    }
    if bar.is_hidden() {
        print_line(line);
    } else {
        bar.println(line);
    }
}

/// Resolves on Ctrl-C (or never, if the signal cannot be installed).
pub async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Prints to stdout, ignoring a closed pipe (e.g. `shoal run | head`).
fn print_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}
