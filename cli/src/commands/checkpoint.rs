//! `shoal checkpoint inspect DIR`: what a checkpoint directory holds — each checkpoint with its
//! round, size, strategy and config hash (or why it is unusable), and the round log in flight.
//! `shoal checkpoint export DIR --out FILE [--round N]`: a checkpointed global model as
//! safetensors, like `--model-out` writes at the end of a run.

use crate::model_file;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use shoal_coordinator::CheckpointStore;
use shoal_coordinator::store::metrics::sha256_f32;
use shoal_coordinator::store::round_log::RoundLog;
use shoal_coordinator::strategy;
use shoal_datasets::{DEFAULT_TEST_FRACTION, DatasetSource};
use shoal_models::{Manifest, ModelKind, ModelSpec};
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
        /// For a model Shoal has no code for (`--model external`): the file the run started
        /// from (its --init), which gives the tensors' names and shapes.
        #[arg(long, value_name = "FILE")]
        layout: Option<PathBuf>,
    },
}

impl CheckpointCmd {
    /// Runs the action.
    pub async fn execute(self) -> Result<()> {
        match self.action {
            Action::Inspect { dir } => inspect(&dir),
            Action::Export {
                dir,
                round,
                out,
                layout,
            } => export(&dir, round, &out, layout.as_deref()),
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
/// readable here (the dataset is read for its shape only), or for an external model from
/// `layout`, the run's --init file.
fn export(dir: &Path, round: Option<u32>, out: &Path, layout: Option<&Path>) -> Result<()> {
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
    let data = shoal_datasets::load(&source, DEFAULT_TEST_FRACTION, run.seed)
        .with_context(|| format!("reading dataset {source} for the model's shape"))?;
    let kind: ModelKind = run.model.parse()?;
    let spec = ModelSpec::for_dataset(kind, &data.train);
    let (layout, init) = match (run.external_model(), layout) {
        (true, Some(path)) => {
            let (layout, init) = external_layout(path, run.init_sha256.as_deref())?;
            (layout, Some(init))
        }
        (true, None) => bail!(
            "the run's model is external: give --layout FILE, the model file it started from \
             (its --init), for the tensors' names and shapes"
        ),
        (false, Some(_)) => bail!(
            "--layout is for external models; the run's model {} has its own layout",
            run.model
        ),
        (false, None) => (model_file::layout(&run, &spec)?, None),
    };
    let mut strategy = strategy::build_from(&run, &spec, init)?;
    strategy.restore(&checkpoint.strategy_state)?;
    if strategy.model().len() != layout.total() {
        bail!(
            "the checkpoint holds {} parameters but the layout has {}",
            strategy.model().len(),
            layout.total()
        );
    }
    let global = strategy.model();
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

/// The layout in `path`, an external model's --init file, and its parameters, checked to be
/// the file the run started from (`init_sha256`).
fn external_layout(path: &Path, init_sha256: Option<&str>) -> Result<(Manifest, Vec<f32>)> {
    let (layout, params) = model_file::read_external(path, "--layout")?;
    let sha = sha256_f32(&params);
    if init_sha256.is_some_and(|expected| expected != sha) {
        bail!(
            "--layout {}: not the model file this run started from (its parameters' sha256 is \
             {sha}, the run's --init had {})",
            path.display(),
            init_sha256.unwrap_or_default()
        );
    }
    Ok((layout, params))
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
