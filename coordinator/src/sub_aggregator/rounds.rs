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

/// Partial sums of a round kept apart for a resend; past it, sums the upstream acknowledged
/// are added together, so a long round of a big model keeps a few sums (16 bytes a value
/// each), not one per flush. Sums not acknowledged yet are never merged: a resend of those
/// must not be refused for the sake of sums the upstream already has.
const SENT_KEPT: usize = 4;

/// A partial sum sent upstream, kept for a resend.
#[derive(Debug)]
struct Sent {
    partial: Arc<PartialSum>,
    /// The upstream accepted it.
    acknowledged: bool,
}

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
    /// The global state as values, assembled once when a rule needs them (the norm bound,
    /// compressed FedAvg updates).
    pub values: OnceCell<Arc<Vec<f32>>>,
    folding: Mutex<Folding>,
    /// Partial sums sent upstream (at most [`SENT_KEPT`]): should the upstream they went to
    /// die, the next one gets them again (and refuses them whole if they had arrived after
    /// all, see [`RoundState::forget`]).
    sent: Mutex<Vec<Sent>>,
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
            values: OnceCell::new(),
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
        lock(&self.sent).push(Sent {
            partial: partial.clone(),
            acknowledged: false,
        });
        Some(partial)
    }

    /// The upstream accepted `partial`: it may now be merged with other acknowledged sums.
    pub fn acknowledged(&self, partial: &Arc<PartialSum>) {
        let mut sent = lock(&self.sent);
        if let Some(entry) = sent.iter_mut().find(|s| Arc::ptr_eq(&s.partial, partial)) {
            entry.acknowledged = true;
        }
        while sent.len() > SENT_KEPT {
            let mut acked = sent.iter().enumerate().filter(|(_, s)| s.acknowledged);
            let (Some((first, _)), Some((second, _))) = (acked.next(), acked.next()) else {
                break;
            };
            let merged = sent.remove(second).partial;
            Arc::make_mut(&mut sent[first].partial).absorb(&merged);
        }
    }

    /// The upstream refused `partial` (a resend that overlaps sums it already has, a round
    /// over there, a full server): it is not kept for a resend, and its clients may deliver
    /// here again, so those the upstream never counted, and hands their task again, are not
    /// stuck behind this aggregator. A client whose update waits in the sum not yet sent
    /// stays counted here: no update is ever in one sum twice.
    pub fn forget(&self, partial: &Arc<PartialSum>) {
        lock(&self.sent).retain(|s| !Arc::ptr_eq(&s.partial, partial));
        let mut f = lock(&self.folding);
        for client in partial.reports.keys() {
            let pending = f.accumulator.as_ref().is_some_and(|a| a.holds(client));
            if !pending && f.folded.remove(client) && f.tasked.contains(client) {
                f.outstanding.insert(client.clone());
            }
        }
    }

    /// True if `client` was handed this round's task through here.
    pub fn was_tasked(&self, client: &str) -> bool {
        lock(&self.folding).tasked.contains(client)
    }

    /// The partial sums sent upstream so far.
    pub fn sent(&self) -> Vec<Arc<PartialSum>> {
        lock(&self.sent).iter().map(|s| s.partial.clone()).collect()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::strategy::results::ClientUpdate;
    use shoal_proto::v1::FoldKind;

    /// A round of two-value updates summed by weight, its task handed to `clients`.
    fn round(clients: &[&str]) -> (Rounds, Arc<RoundState>) {
        let fence = Fence {
            epoch: 1,
            round: 1,
            ..Fence::default()
        };
        let task = Task {
            fence: Some(fence.clone()),
            update_len: 2,
            global_len: 2,
            fold: FoldKind::WeightedSum as i32,
            ..Task::default()
        };
        let rounds = Rounds::default();
        for client in clients {
            rounds.tasked(client, &task);
        }
        let state = rounds.get(&fence).unwrap();
        (rounds, state)
    }

    fn deliver(state: &RoundState, client: &str) -> Result<usize> {
        state.fold(Delivery::Update(ClientUpdate {
            client_id: client.into(),
            weight: 1,
            payload: vec![1.0, 2.0].into(),
            counts: vec![],
            metrics: BTreeMap::new(),
        }))
    }

    #[test]
    fn only_acknowledged_sums_are_merged_for_a_resend() {
        let ids: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = ids.iter().map(String::as_str).collect();
        let (_rounds, state) = round(&names);
        let mut sums = Vec::new();
        for id in &names {
            deliver(&state, id).unwrap();
            sums.push(state.take_due(Duration::ZERO).unwrap());
        }
        // Nothing acknowledged: all seven kept apart.
        assert_eq!(state.sent().len(), 7);
        for sum in &sums[..5] {
            state.acknowledged(sum);
        }
        // Five acknowledged sums merged down to the cap; the two in flight stay apart.
        let sent = state.sent();
        assert_eq!(sent.len(), SENT_KEPT);
        assert_eq!(sent[0].reports.len(), 4);
        assert!(sent.iter().any(|s| Arc::ptr_eq(s, &sums[6])));
        let clients: usize = sent.iter().map(|s| s.reports.len()).sum();
        assert_eq!(clients, 7);
    }

    #[test]
    fn a_refused_sum_frees_its_clients_but_never_one_waiting_in_the_next_sum() {
        let (_rounds, state) = round(&["a", "b"]);
        deliver(&state, "a").unwrap();
        let first = state.take_due(Duration::ZERO).unwrap();
        // Refused upstream: "a" may deliver again, once.
        state.forget(&first);
        assert!(state.sent().is_empty());
        deliver(&state, "a").unwrap();
        assert!(matches!(
            deliver(&state, "a"),
            Err(CoordinatorError::Duplicate(_))
        ));
        // Another refusal of the old sum while "a" waits in the next one: "a" stays counted.
        state.forget(&first);
        assert!(matches!(
            deliver(&state, "a"),
            Err(CoordinatorError::Duplicate(_))
        ));
        assert!(matches!(
            deliver(&state, "nobody"),
            Err(CoordinatorError::NotSelected(_))
        ));
        assert!(state.was_tasked("b") && !state.was_tasked("nobody"));
    }
}
