//! Hosting a run: the coordinator, its gRPC server and its round driver, shared by `shoal run`
//! and `shoal coordinator`.

use crate::data::{finish_plan, load};
use crate::options::Plan;
use crate::report::{summary_text, table_header, table_row, write_outputs};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_coordinator::store::object::S3Settings;
use shoal_coordinator::strategy::{self, Strategy};
use shoal_coordinator::telemetry::serve_metrics;
use shoal_coordinator::{
    CheckpointStore, Coordinator, Limits, Resume, RunOutcome, RunStart, Security, StrategyConfig,
    recover,
};
use shoal_datasets::Split;
use shoal_models::ModelSpec;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Write the final global model to FILE as safetensors (one named tensor per parameter;
    /// k-means: the centroid matrix), readable by burn, Python's safetensors and PyTorch.
    #[arg(long, value_name = "FILE")]
    pub model_out: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run is hosted (round,
    /// clients, updates, refusals by reason, bytes, round/fold/checkpoint durations).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Print only the summary, not the per-round table.
    #[arg(long)]
    pub quiet: bool,
}

/// Crash safety: where checkpoints go, and whether a foreign one may be resumed.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Durability {
    /// Checkpoint every round (and log accepted updates) in DIR, or in an S3-compatible store
    /// with s3://BUCKET/PREFIX (endpoint, region and credentials from the AWS_* environment
    /// variables or the --s3-* flags); restarted on the same location, on this machine or
    /// another, the coordinator resumes the run by itself.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Endpoint URL of the S3-compatible store (else AWS_ENDPOINT, else AWS itself).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Region of the S3-compatible store (else AWS_REGION).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Allow a plain-HTTP S3 endpoint (e.g. a store on loopback; else AWS_ALLOW_HTTP).
    #[arg(long)]
    pub s3_allow_http: bool,
    /// Resume a checkpoint even though it was written under a different run config.
    #[arg(long)]
    pub allow_config_change: bool,
    /// If the checkpoint directory holds checkpoints but none is usable, set them aside
    /// (renamed *.unusable) and start the run over from round 1, instead of stopping.
    #[arg(long)]
    pub start_over: bool,
}

/// A coordinator ready to serve, with the data it was prepared from.
pub struct Prepared {
    /// The coordinator.
    pub coordinator: Coordinator,
    /// The dataset split (the fleet trains on `train`, the coordinator evaluates on `test`).
    pub split: Split,
    /// Where the run resumes.
    pub resume: Resume,
    /// The strategy, restored from a checkpoint if there was one.
    pub strategy: Box<dyn Strategy>,
    /// The model the coordinator announces.
    pub spec: ModelSpec,
}

/// Loads data, fixes the plan, builds the strategy and the coordinator, and recovers from the
/// checkpoint directory if one is given.
pub fn prepare(plan: &mut Plan, limits: Limits, durability: &Durability) -> Result<Prepared> {
    let split = load(&plan.data)?;
    let spec = finish_plan(plan, &split.train)?;
    restore(plan, split, &spec, limits, durability, None)
}

/// Builds the strategy and the coordinator for `plan` on data already loaded, and recovers
/// from the checkpoint location if one is given; with `epoch`, the state is claimed for that
/// (elected) epoch first, and a newer owner makes this [`CoordinatorError::Deposed`].
pub fn restore(
    plan: &Plan,
    split: Split,
    spec: &ModelSpec,
    limits: Limits,
    durability: &Durability,
    epoch: Option<u64>,
) -> Result<Prepared> {
    let mut strategy = strategy::build_from(&plan.run, spec, plan.init_params.clone())?;
    let (coordinator, resume) = match &durability.checkpoint_dir {
        Some(dir) => {
            let s3 = S3Settings {
                endpoint: durability.s3_endpoint.clone(),
                region: durability.s3_region.clone(),
                credentials: None,
                allow_http: durability.s3_allow_http,
            };
            let store = CheckpointStore::open_with(dir, &s3)?;
            if let Some(epoch) = epoch {
                store.claim(epoch)?;
            }
            let resume = recover(
                &store,
                &plan.run,
                strategy.as_mut(),
                durability.allow_config_change,
                durability.start_over,
            )?;
            if resume.completed > 0 {
                eprintln!(
                    "resuming after round {} from {}",
                    resume.completed,
                    dir.display()
                );
            }
            if let Some(log) = &resume.replay {
                eprintln!(
                    "round {} had {} accepted updates in its log; they are kept",
                    log.opened.round,
                    log.updates.len()
                );
            }
            (
                Coordinator::with_checkpoints(plan.run.clone(), limits, spec.clone(), store),
                resume,
            )
        }
        None => (
            Coordinator::new(plan.run.clone(), limits, spec.clone()),
            Resume::default(),
        ),
    };
    Ok(Prepared {
        coordinator,
        split,
        resume,
        strategy,
        spec: spec.clone(),
    })
}

/// A leader stopped serving because its lease was lost (see `crate::candidate`).
#[derive(Debug)]
pub struct SteppedDown;

impl std::fmt::Display for SteppedDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("leadership lost: stopped serving the run")
    }
}

impl std::error::Error for SteppedDown {}

/// Serves `coordinator` on `listener` with `security` and drives the run to its end, printing
/// the table and writing the outputs; the server stops once clients have heard the run is over.
/// If `lost` resolves first, serving stops at once, as a crash would (a leader whose lease
/// lapsed), and the result is [`SteppedDown`].
pub async fn host(
    plan: &Plan,
    prepared: Prepared,
    listener: TcpListener,
    security: Security,
    outputs: &Outputs,
    shutdown: impl Future<Output = ()> + Send + 'static,
    lost: impl Future<Output = ()>,
) -> Result<RunOutcome> {
    let Prepared {
        coordinator,
        split,
        resume,
        strategy,
        spec,
    } = prepared;
    // Checked before the run, so a run never ends without the file it was asked for.
    let layout = match &outputs.model_out {
        Some(path) => {
            crate::model_file::check_destination(path)?;
            match &plan.init_layout {
                Some(layout) => Some(layout.clone()),
                None => Some(crate::model_file::layout(&plan.run, &spec)?),
            }
        }
        None => None,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let clustering = matches!(plan.run.strategy, StrategyConfig::FedKMeans { .. });
    let bar = progress_bar(plan.run.rounds, outputs.quiet);
    bar.set_position(u64::from(resume.completed));
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
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = outputs.metrics_addr {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-addr {addr}: cannot listen there"))?;
        let local = listener.local_addr()?;
        eprintln!("metrics at http://{local}/metrics");
        tokio::spawn(serve_metrics(listener, coordinator.clone(), async move {
            let _ = metrics_stopped.await;
        }));
    }
    let start = RunStart::new(strategy, Arc::new(split.test))
        .resume(resume)
        .observer(tx)
        .security(security);
    let outcome = match coordinator.host(listener, start, shutdown) {
        Ok(hosted) => {
            let step_down = hosted.step_down_handle();
            tokio::select! {
                outcome = hosted.finish() => outcome.map_err(anyhow::Error::from),
                () = lost => {
                    step_down.now();
                    Err(SteppedDown.into())
                }
            }
        }
        Err(e) => Err(e.into()),
    };
    let _ = printer.await;
    let _ = metrics_stop.send(());
    bar.finish_and_clear();
    let outcome = outcome?;
    write_outputs(
        outputs.metrics_out.as_deref(),
        outputs.summary_out.as_deref(),
        &outcome.records,
        &outcome.summary,
    )?;
    if let (Some(path), Some(layout)) = (&outputs.model_out, &layout) {
        let s = &outcome.summary;
        let meta = crate::model_file::metadata(
            &plan.run,
            &s.run_id,
            &s.strategy,
            s.rounds_completed,
            &s.model_sha256,
        );
        crate::model_file::write(path, layout, &outcome.global, &meta)?;
    }
    let on_clients = !plan.run.eval.central();
    print_line(&summary_text(&outcome.summary, on_clients));
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
