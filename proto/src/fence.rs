//! Fences: the (run, epoch, round) triple that every task and update carries, so that anything
//! belonging to another run, an earlier coordinator incarnation or a closed round is refused.

use crate::v1::Fence;

impl Fence {
    /// Builds a fence for `round` of `run_id` in coordinator incarnation `epoch`.
    pub fn at(run_id: &str, epoch: u64, round: u32) -> Self {
        Fence {
            run_id: run_id.to_owned(),
            epoch,
            round,
            stage: 0,
        }
    }

    /// The same round's fence at `stage` (see [`Fence::stage`]).
    pub fn with_stage(mut self, stage: u32) -> Self {
        self.stage = stage;
        self
    }
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} epoch {} round {}",
            self.run_id, self.epoch, self.round
        )?;
        if self.stage > 0 {
            write!(f, " stage {}", self.stage)?;
        }
        Ok(())
    }
}
