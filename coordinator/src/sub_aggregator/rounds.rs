//! What a sub-aggregator knows of the rounds passing through it: which of its clients (or its
//! child aggregators' clients) were handed each round's task, the global state it fetched once
//! for them, and the exact sum of the updates that came back and are not yet sent upstream.

use crate::aggregate::AggregateError;
use crate::error::{CoordinatorError, Result};
use crate::strategy::results::{Delivery, PartialSum, RoundAccumulator};
use crate::sync::lock;
use shoal_proto::v1::{Chunk, Fence, Task};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Rounds kept at once: the open one and the one before it (whose last partial sum may still
/// be on its way up).
const ROUNDS_KEPT: usize = 2;

/// Partial sums of a round kept apart for a resend; later ones are added into the last, so a
/// long round of a big model keeps a few sums (16 bytes a value each), not one per flush.
const SENT_KEPT: usize = 4;

/// One round as seen from a sub-aggregator.
#[derive(Debug)]
pub struct RoundState {
    /// The round.
    pub fence: Fence,
    /// The task as the round's first client received it (seed aside, the same for all).
    pub task: Task,
    /// The global state, fetched upstream once for every client of the round.
    pub global: OnceCell<Arc<[Chunk]>>,
    /// The round's update-norm rule, made once from the global state.
    pub norm: OnceCell<Option<Arc<crate::aggregate::norm::NormBound>>>,
    folding: Mutex<Folding>,
    /// Partial sums sent upstream (at most [`SENT_KEPT`]): should the upstream they went to
    /// die, the next one gets them again (and refuses them whole if they had arrived after
    /// all, see [`RoundState::forget`]).
    sent: Mutex<Vec<Arc<PartialSum>>>,
}

/// The round's running sum and who is in it.
#[derive(Debug)]
struct Folding {
    /// `None` when the round's updates are not summed: they are relayed whole.
    accumulator: Option<RoundAccumulator>,
    /// Clients handed the task through this aggregator.
    tasked: HashSet<String>,
    /// Clients whose update is in a sum (sent upstream or waiting to be).
    folded: HashSet<String>,
    /// Clients handed the task here that may still deliver here: kept as they change, so
    /// whether the round is done here is known without a pass over its clients.
    outstanding: HashSet<String>,
    /// When the oldest update not yet sent upstream was folded.
    oldest_unsent: Option<Instant>,
}

impl RoundState {
    fn new(fence: Fence, task: Task) -> Self {
        let accumulator = RoundAccumulator::for_task(&task);
        Self {
            fence,
            task,
            global: OnceCell::new(),
            norm: OnceCell::new(),
            folding: Mutex::new(Folding {
                accumulator,
                tasked: HashSet::new(),
                folded: HashSet::new(),
                outstanding: HashSet::new(),
                oldest_unsent: None,
            }),
            sent: Mutex::new(Vec::new()),
        }
    }

    /// True when updates are summed here rather than relayed whole.
    pub fn sums(&self) -> bool {
        lock(&self.folding).accumulator.is_some()
    }

    /// Folds an update, or a child aggregator's partial sum, of clients handed this round's
    /// task through here (blocking: call off the runtime for large models). On error nothing
    /// changes.
    pub fn fold(&self, delivery: Delivery) -> Result<usize> {
        let mut f = lock(&self.folding);
        let clients: Vec<String> = delivery.clients().into_iter().map(str::to_owned).collect();
        for client in &clients {
            if !f.tasked.contains(client) {
                return Err(CoordinatorError::NotSelected(client.clone()));
            }
            if f.folded.contains(client) {
                return Err(CoordinatorError::Duplicate(client.clone()));
            }
        }
        f.accumulator
            .as_mut()
            .ok_or(CoordinatorError::InvalidUpdate(AggregateError::NotSummed))?
            .accept_delivery(delivery)?;
        for client in clients {
            f.outstanding.remove(&client);
            f.folded.insert(client);
        }
        f.oldest_unsent.get_or_insert_with(Instant::now);
        Ok(f.folded.len())
    }

    /// A client handed the task through here will not deliver through here.
    pub fn gone(&self, client: &str) {
        lock(&self.folding).outstanding.remove(client);
    }

    /// The partial sum to send upstream now, if any: when every client handed the task here
    /// has delivered or is gone (nothing more can come), or when the oldest update has waited
    /// `hold` (stragglers must not hold back the rest). It is kept for a resend.
    pub fn take_due(&self, hold: Duration) -> Option<Arc<PartialSum>> {
        let mut f = lock(&self.folding);
        let oldest = f.oldest_unsent?;
        if !f.outstanding.is_empty() && oldest.elapsed() < hold {
            return None;
        }
        f.oldest_unsent = None;
        let partial = Arc::new(f.accumulator.as_mut()?.take_partial()?);
        let mut sent = lock(&self.sent);
        let full = sent.len() >= SENT_KEPT;
        match sent.last_mut() {
            Some(last) if full => Arc::make_mut(last).absorb(&partial),
            _ => sent.push(partial.clone()),
        }
        Some(partial)
    }

    /// The upstream refused `partial` (a resend that overlaps sums it already has, a round
    /// over there): its clients may deliver here again, so those the upstream never counted,
    /// and hands their task again, are not stuck behind this aggregator.
    pub fn forget(&self, partial: &PartialSum) {
        let mut f = lock(&self.folding);
        for client in partial.reports.keys() {
            if f.folded.remove(client) && f.tasked.contains(client) {
                f.outstanding.insert(client.clone());
            }
        }
    }

    /// The partial sums sent upstream so far.
    pub fn sent(&self) -> Vec<Arc<PartialSum>> {
        lock(&self.sent).clone()
    }
}

/// The rounds passing through, by fence.
#[derive(Debug, Default)]
pub struct Rounds {
    rounds: Mutex<BTreeMap<(u64, u32, u32), Arc<RoundState>>>,
}

fn key(fence: &Fence) -> (u64, u32, u32) {
    (fence.epoch, fence.round, fence.stage)
}

impl Rounds {
    /// Records that `client` was handed `task`; the first task of a round opens its state and
    /// retires rounds older than the last [`ROUNDS_KEPT`].
    pub fn tasked(&self, client: &str, task: &Task) {
        let Some(fence) = &task.fence else {
            return;
        };
        let mut rounds = lock(&self.rounds);
        let state = rounds
            .entry(key(fence))
            .or_insert_with(|| Arc::new(RoundState::new(fence.clone(), task.clone())))
            .clone();
        while rounds.len() > ROUNDS_KEPT {
            rounds.pop_first();
        }
        drop(rounds);
        let mut f = lock(&state.folding);
        f.tasked.insert(client.to_owned());
        // Handed the task again (it rejoined), it may deliver again, unless it did.
        if !f.folded.contains(client) {
            f.outstanding.insert(client.to_owned());
        }
    }

    /// The state of the round `fence` names, if it passes through here.
    pub fn get(&self, fence: &Fence) -> Result<Arc<RoundState>> {
        lock(&self.rounds)
            .get(&key(fence))
            .cloned()
            .ok_or_else(|| CoordinatorError::StaleFence {
                got: fence.to_string(),
                open: "none passing through this aggregator".into(),
            })
    }

    /// Every round, newest last.
    pub fn all(&self) -> Vec<Arc<RoundState>> {
        lock(&self.rounds).values().cloned().collect()
    }

    /// A client left: it delivers nothing more through here.
    pub fn left(&self, client: &str) {
        for state in lock(&self.rounds).values() {
            state.gone(client);
        }
    }
}
