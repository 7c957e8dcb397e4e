//! Starting from a run's stored state: this coordinator claims it (fencing out the one before),
//! the newest usable committed checkpoint restores the strategy and the completed rounds, and
//! the round log, if it belongs to the next round, replays the updates that round had already
//! accepted.

use crate::config::RunConfig;
use crate::error::{CoordinatorError, Result};
use crate::store::checkpoint::CheckpointStore;
use crate::store::metrics::RoundRecord;
use crate::store::round_log::{LoggedRound, RoundLog};
use crate::strategy::Strategy;
use tracing::{info, warn};

/// Claims `store` (for the epoch already claimed, else the next by the clock), restores
/// `strategy` from the newest usable checkpoint and returns where the run resumes. A
/// checkpoint written under another config is refused unless `allow_config_change`. A store
/// whose checkpoints are all unusable is refused unless `start_over`, which sets them aside
/// and starts from round 1.
pub fn recover(
    store: &CheckpointStore,
    config: &RunConfig,
    strategy: &mut dyn Strategy,
    allow_config_change: bool,
    start_over: bool,
) -> Result<Resume> {
    if store.epoch().is_none() {
        store.claim(store.next_epoch()?)?;
    }
    let mut resume = Resume::default();
    let latest = match store.latest() {
        Err(CoordinatorError::NoUsableCheckpoint { files, .. }) if start_over => {
            store.set_aside_unusable()?;
            warn!(location = %store.location(), files, "no checkpoint is usable; starting the run over as asked (the unusable ones are renamed *.unusable)");
            // The round log belongs to the lost run.
            RoundLog::remove(store)?;
            None
        }
        other => other?,
    };
    if let Some(checkpoint) = latest {
        if checkpoint.config_hash != config.hash() {
            if !allow_config_change {
                return Err(CoordinatorError::Config(format!(
                    "the checkpoint in {} was written under a different run config (hash {}…, this run {}…); \
                     use another --checkpoint-dir, or pass --allow-config-change to resume it under the new config",
                    store.location(),
                    &checkpoint.config_hash[..12],
                    &config.hash()[..12]
                )));
            }
            warn!(location = %store.location(), "resuming a checkpoint written under a different config");
        }
        if checkpoint.strategy != strategy.name() {
            return Err(CoordinatorError::Config(format!(
                "the checkpoint holds a {} run, this run is {}",
                checkpoint.strategy,
                strategy.name()
            )));
        }
        strategy.restore(&checkpoint.strategy_state)?;
        resume.completed = checkpoint.round;
        resume.records = checkpoint.records;
        info!(round = checkpoint.round, "resumed from checkpoint");
    }
    match RoundLog::read(store)? {
        Some(logged) if logged.opened.round == resume.completed + 1 => {
            info!(
                round = logged.opened.round,
                updates = logged.updates.len(),
                "replaying the round log"
            );
            resume.replay = Some(logged);
        }
        Some(_) => RoundLog::remove(store)?,
        None => {}
    }
    Ok(resume)
}

/// Where a run starts: round 1 from scratch, or later from a checkpoint.
#[derive(Debug, Default)]
pub struct Resume {
    /// Rounds already completed.
    pub completed: u32,
    /// Their records.
    pub records: Vec<RoundRecord>,
    /// Updates the next round had accepted before a crash.
    pub replay: Option<LoggedRound>,
}
