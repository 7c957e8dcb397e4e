//! The round in flight: who was asked, who has a task, who delivered, and the running aggregate.
//!
//! Every check an update must pass before it touches the aggregate lives here, so the gRPC
//! handlers stay thin and the rules of DESIGN.md ("Round rules") read in one place.

use crate::aggregate::Finite;
use crate::error::{CoordinatorError, Result};
use crate::store::round_log::RoundLog;
use crate::strategy::TaskPlan;
use crate::strategy::results::{Delivery, RoundAccumulator, RoundResults};
use crate::sync::lock;
use shoal_proto::v1::{Chunk, Fence, Task};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// Where a round's accepted updates go: the running aggregate and, when the run is
/// checkpointed, the write-ahead log that lets a restarted coordinator keep them.
#[derive(Debug)]
pub struct RoundSink {
    /// The running aggregate.
    pub accumulator: RoundAccumulator,
    /// The round's log, if the run is checkpointed.
    pub log: Option<RoundLog>,
}

/// The sink of a round, shared by concurrent folds; `None` once the round closed.
pub type SharedAccumulator = Arc<Mutex<Option<RoundSink>>>;

/// State of the one open round.
#[derive(Debug)]
pub struct OpenRound {
    /// Run, incarnation and round every message of this round must carry.
    pub fence: Fence,
    /// What the round asks.
    pub plan: TaskPlan,
    /// The task every selected client receives, less its per-client seed.
    pub task: Task,
    /// The global state clients download.
    pub global: Arc<Vec<f32>>,
    /// The same, encoded once as wire chunks and shared by every fetch of the round: a chunk's
    /// bytes are reference-counted, so serving a client costs no copy of the model.
    pub global_chunks: Arc<[Chunk]>,
    /// Clients asked.
    pub selected: BTreeSet<String>,
    /// Clients that received their task.
    pub tasked: HashSet<String>,
    /// Clients whose update is being received or folded.
    pub in_flight: HashSet<String>,
    /// Clients whose update was accepted.
    pub delivered: HashSet<String>,
    /// Selected clients that will not deliver: they left, or said their task failed. A client
    /// that joins again is taken off this list and handed its task once more.
    pub dropped: HashSet<String>,
    /// Accepted updates after which the round closes early.
    pub wanted: usize,
    /// When the round closes at the latest.
    pub deadline: Instant,
    /// The running aggregate.
    pub accumulator: SharedAccumulator,
}

impl OpenRound {
    /// Refuses an update header unless it is for this round, from a selected client that has
    /// not delivered yet, and matches the plan's shape.
    pub fn admit(
        &self,
        client_id: &str,
        fence: &Fence,
        payload_len: u64,
        counts_len: usize,
    ) -> Result<()> {
        if *fence != self.fence {
            return Err(CoordinatorError::StaleFence {
                got: fence.to_string(),
                open: self.fence.to_string(),
            });
        }
        if !self.selected.contains(client_id) {
            return Err(CoordinatorError::NotSelected(client_id.to_owned()));
        }
        if self.delivered.contains(client_id) {
            return Err(CoordinatorError::Duplicate(client_id.to_owned()));
        }
        if self.in_flight.contains(client_id) {
            return Err(CoordinatorError::InFlight(client_id.to_owned()));
        }
        if payload_len != self.plan.update_len as u64 {
            return Err(CoordinatorError::InvalidUpdate(
                crate::aggregate::AggregateError::WrongLength {
                    got: usize::try_from(payload_len).unwrap_or(usize::MAX),
                    expected: self.plan.update_len,
                },
            ));
        }
        if counts_len != self.plan.counts_len {
            return Err(CoordinatorError::InvalidUpdate(
                crate::aggregate::AggregateError::WrongCounts {
                    got: counts_len,
                    expected: self.plan.counts_len,
                },
            ));
        }
        Ok(())
    }

    /// Refuses an upload's header unless it is for this round and every client it delivers
    /// for (one for an update, several for a partial sum) passes [`OpenRound::admit`].
    pub fn admit_clients(
        &self,
        clients: &[String],
        fence: &Fence,
        len: u64,
        counts_len: usize,
    ) -> Result<()> {
        if clients.is_empty() {
            return Err(crate::aggregate::AggregateError::NoContributors.into());
        }
        for client in clients {
            self.admit(client, fence, len, counts_len)?;
        }
        Ok(())
    }

    /// True once the round can close before its deadline: enough updates arrived, or every
    /// selected client has either delivered or dropped out, so nothing more can come.
    pub fn complete(&self) -> bool {
        self.delivered.len() >= self.wanted || self.outstanding().next().is_none()
    }

    /// Selected clients that may still deliver, in id order.
    pub fn outstanding(&self) -> impl Iterator<Item = &String> {
        self.selected
            .iter()
            .filter(|id| !self.delivered.contains(*id) && !self.dropped.contains(*id))
    }

    /// True if `client_id` is selected and its update is neither accepted nor arriving: the
    /// clients whose task, restart or departure still matters to the round.
    fn awaits(&self, client_id: &str) -> bool {
        self.selected.contains(client_id)
            && !self.delivered.contains(client_id)
            && !self.in_flight.contains(client_id)
    }

    /// True if `client_id` should be handed the round's task on its next pull: selected, not
    /// handed it yet (or joined again since), and not done with the round.
    pub fn owes_task(&self, client_id: &str) -> bool {
        self.awaits(client_id)
            && !self.tasked.contains(client_id)
            && !self.dropped.contains(client_id)
    }

    /// A selected client joined again (it restarted, or lost its connection): unless its update
    /// is delivered or arriving, it gets the same task again on its next pull, so a restart
    /// inside the deadline changes nothing. True if the task will be handed out again.
    pub fn rejoined(&mut self, client_id: &str) -> bool {
        if !self.awaits(client_id) {
            return false;
        }
        self.dropped.remove(client_id);
        self.tasked.remove(client_id)
    }

    /// A selected client will not deliver (it left, or its task failed); true if that changed
    /// anything.
    pub fn drop_out(&mut self, client_id: &str) -> bool {
        self.awaits(client_id) && self.dropped.insert(client_id.to_owned())
    }
}

/// Folds one admitted update or partial sum into a round's accumulator (blocking: call off
/// the runtime). Fails with a stale-fence error if the round closed meanwhile.
pub fn fold(accumulator: &SharedAccumulator, delivery: Delivery, fence: &Fence) -> Result<usize> {
    // The scan of an update's values needs no accumulator: made before waiting for the lock,
    // deliveries scan side by side and only the fold itself takes turns.
    let scan = match &delivery {
        Delivery::Update(update) => Some(Finite::scan(&update.payload)?),
        Delivery::Partial(_) => None,
    };
    let mut guard = lock(accumulator);
    let sink = guard.as_mut().ok_or_else(|| CoordinatorError::StaleFence {
        got: fence.to_string(),
        open: "none (round closed)".into(),
    })?;
    // Once per client and round, whatever the admission bookkeeping says: a stream left over
    // from an earlier attempt of this round, or a partial sum overlapping one already folded,
    // must never get a client counted twice.
    if let Some(id) = delivery
        .clients()
        .into_iter()
        .find(|id| sink.accumulator.has(id))
    {
        return Err(CoordinatorError::Duplicate(id.to_owned()));
    }
    // Validate, then make it durable, then fold: a logged delivery always folds cleanly.
    sink.accumulator.check_delivery(&delivery, scan)?;
    if let Some(log) = &mut sink.log {
        log.append_delivery(&delivery)?;
    }
    sink.accumulator.accept_delivery(delivery, scan)?;
    Ok(sink.accumulator.accepted())
}

/// Closes the accumulator: waits for folds in progress, then takes the results.
pub fn close(accumulator: &SharedAccumulator) -> Option<RoundResults> {
    lock(accumulator)
        .take()
        .map(|sink| sink.accumulator.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::results::ClientUpdate;
    use crate::strategy::{FoldMode, TaskPlan};

    fn update(client: &str, value: f32) -> Delivery {
        Delivery::Update(ClientUpdate {
            client_id: client.into(),
            weight: 2,
            payload: vec![value; 3],
            counts: Vec::new(),
            metrics: Default::default(),
        })
    }

    #[test]
    fn a_client_is_folded_once_per_round() {
        let plan = TaskPlan {
            kind: shoal_proto::v1::TaskKind::Fit,
            work: crate::strategy::Work::Fit(Default::default()),
            update_len: 3,
            counts_len: 0,
            fold: FoldMode::WeightedSum,
            counts_sum_to_weight: vec![],
        };
        let sink = RoundSink {
            accumulator: RoundAccumulator::new(&plan),
            log: None,
        };
        let acc: SharedAccumulator = Arc::new(Mutex::new(Some(sink)));
        let fence = Fence::default();
        assert_eq!(fold(&acc, update("a", 1.0), &fence).unwrap(), 1);
        assert!(matches!(
            fold(&acc, update("a", 100.0), &fence),
            Err(CoordinatorError::Duplicate(id)) if id == "a"
        ));
        assert_eq!(fold(&acc, update("b", 3.0), &fence).unwrap(), 2);
        let results = close(&acc).unwrap();
        assert_eq!(results.sum.unwrap().mean().unwrap(), vec![2.0; 3]);
    }
}
