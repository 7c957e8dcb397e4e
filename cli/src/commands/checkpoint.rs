//! `shoal checkpoint inspect DIR`: what a checkpoint directory holds — each checkpoint with its
//! round, size, strategy and config hash (or why it is unusable), and the round log in flight.
//! `shoal checkpoint export DIR --out FILE [--round N]`: a checkpointed global model as
//! safetensors, like `--model-out` writes at the end of a run.

use crate::model_file;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use shoal_coordinator::CheckpointStore;
use shoal_coordinator::store::metrics::sha256_f32;
use shoal_coordinator::store::round_log::RoundLog;
use shoal_coordinator::strategy;
use shoal_datasets::DatasetSource;
use shoal_models::{ModelKind, ModelSpec};
use std::path::{Path, PathBuf};

/// Options of `shoal checkpoint`.
#[derive(Debug, Args)]
pub struct CheckpointCmd {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Print what a checkpoint directory holds.
    Inspect {
        /// The checkpoint directory, or s3://BUCKET/PREFIX.
        dir: PathBuf,
    },
    /// Write a checkpointed global model as safetensors.
    Export {
        /// The checkpoint directory, or s3://BUCKET/PREFIX.
        dir: PathBuf,
        /// The round whose model to export (the newest checkpoint when not given).
        #[arg(long, value_name = "N")]
        round: Option<u32>,
        /// The safetensors file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

impl CheckpointCmd {
    /// Runs the action.
    pub async fn execute(self) -> Result<()> {
        match self.action {
            Action::Inspect { dir } => inspect(&dir),
            Action::Export { dir, round, out } => export(&dir, round, &out),
        }
    }
}

fn open(dir: &Path) -> Result<CheckpointStore> {
    let remote = dir.to_string_lossy().contains("://");
    if !remote && !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    Ok(CheckpointStore::open(dir)?)
}

/// Writes the global model of the checkpoint of `round` (else the newest usable one) to
/// `out`. The model's layout comes from the run's config and its dataset, which must be
/// readable here (the dataset is read for its shape only).
fn export(dir: &Path, round: Option<u32>, out: &Path) -> Result<()> {
    model_file::check_destination(out)?;
    let store = open(dir)?;
    let listed = store.list()?;
    let rounds: Vec<String> = listed
        .iter()
        .filter_map(|l| l.checkpoint.as_ref().ok().map(|c| c.round.to_string()))
        .collect();
    let checkpoint = listed
        .into_iter()
        .filter_map(|l| l.checkpoint.ok())
        .find(|c| round.is_none_or(|r| c.round == r))
        .with_context(|| match round {
            Some(r) if !rounds.is_empty() => format!(
                "no usable checkpoint of round {r} in {}; it holds rounds {}",
                dir.display(),
                rounds.join(", ")
            ),
            _ => format!("no usable checkpoint in {}", dir.display()),
        })?;
    let run = checkpoint.config()?;
    let source: DatasetSource = run
        .dataset
        .parse()
        .with_context(|| format!("the run's dataset {:?}", run.dataset))?;
    let data = shoal_datasets::load(&source, 0.2, run.seed)
        .with_context(|| format!("reading dataset {source} for the model's shape"))?;
    let kind: ModelKind = run.model.parse()?;
    let spec = ModelSpec::for_dataset(kind, &data.train);
    let mut strategy = strategy::build(&run, &spec)?;
    strategy.restore(&checkpoint.strategy_state)?;
    let layout = model_file::layout(&run, &spec)?;
    let global = strategy.global();
    let meta = model_file::metadata(
        &run,
        &run.run_id(),
        strategy.name(),
        checkpoint.round,
        &sha256_f32(global),
    );
    model_file::write(out, &layout, global, &meta)?;
    println!(
        "round {} of run {} -> {} ({} parameters, model sha256 {})",
        checkpoint.round,
        run.run_id(),
        out.display(),
        global.len(),
        sha256_f32(global)
    );
    Ok(())
}

fn inspect(dir: &Path) -> Result<()> {
    let store = open(dir)?;
    let listed = store.list()?;
    if listed.is_empty() {
        println!("no checkpoints in {}", dir.display());
    }
    let mut newest_usable = true;
    for item in listed {
        let name = item.name;
        match item.checkpoint {
            Ok(c) => {
                let last = c.records.last();
                let accuracy = last
                    .and_then(|r| r.get("accuracy"))
                    .map_or("-".into(), |a| format!("{a:.4}"));
                println!(
                    "{name}  {} bytes  round {}  {}  config {}…  epoch {}  accuracy {accuracy}{}",
                    item.bytes,
                    c.round,
                    c.strategy,
                    c.config_hash.get(..12).unwrap_or(&c.config_hash),
                    c.epoch,
                    if newest_usable {
                        "  (resumes here)"
                    } else {
                        ""
                    }
                );
                newest_usable = false;
            }
            Err(e) => println!("{name}  {} bytes  UNUSABLE: {e}", item.bytes),
        }
    }
    match RoundLog::read(&store)? {
        Some(log) => println!(
            "round log  round {} attempt {} epoch {}: {} of {} selected clients had delivered",
            log.opened.round,
            log.opened.attempt,
            log.opened.epoch,
            log.updates.len(),
            log.opened.selected.len()
        ),
        None => println!("no round in flight"),
    }
    Ok(())
}
