//! `shoal checkpoint inspect DIR`: what a checkpoint directory holds — each checkpoint with its
//! round, size, strategy and config hash (or why it is unusable), and the round log in flight.

use anyhow::Result;
use clap::{Args, Subcommand};
use shoal_coordinator::CheckpointStore;
use shoal_coordinator::store::round_log::RoundLog;
use std::path::PathBuf;

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
}

impl CheckpointCmd {
    /// Runs the action.
    pub async fn execute(self) -> Result<()> {
        let Action::Inspect { dir } = self.action;
        let remote = dir.to_string_lossy().contains("://");
        if !remote && !dir.is_dir() {
            anyhow::bail!("{} is not a directory", dir.display());
        }
        let store = CheckpointStore::open(&dir)?;
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
                        &c.config_hash[..12],
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
}
