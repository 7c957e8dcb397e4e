//! The round in flight: who was asked, who has a task, who delivered, and the running aggregate.
//!
//! Every check an update must pass before it touches the aggregate lives here, so the gRPC
//! handlers stay thin and the rules of DESIGN.md ("Round rules") read in one place.

use crate::aggregate::{AggregateError, Finite};
use crate::error::{CoordinatorError, Result};
use crate::store::round_log::RoundLog;
use crate::strategy::TaskPlan;
use crate::strategy::results::{Delivery, RoundAccumulator, RoundResults};
use crate::sync::lock;
use shoal_proto::v1::{Chunk, Fence, Task};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
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

/// The sink of a round, shared by concurrent folds.
pub type SharedAccumulator = Arc<RoundFolds>;

/// A round's sink and the deliveries waiting for it.
///
/// Adding an update to the exact sum is one pass over 16 bytes of accumulator per value, four
/// times the update itself, so a pass, not an update, is what a fold costs. Deliveries that
/// arrive while another is folding wait in a queue, and whoever holds the sink next takes the
/// whole queue: each delivery is checked, logged and counted in arrival order, as one at a time
/// would be, and their payloads are added in one pass ([`RoundAccumulator::flush`]). The sum
/// is exact, so it does not depend on how deliveries were grouped.
#[derive(Debug)]
pub struct RoundFolds {
    /// The sink; `None` once the round closed.
    sink: Mutex<Option<RoundSink>>,
    /// Deliveries waiting for the sink, and what became of those folded by another's turn.
    queue: Mutex<FoldQueue>,
}

#[derive(Debug, Default)]
struct FoldQueue {
    next_ticket: u64,
    waiting: Vec<Waiting>,
    done: HashMap<u64, Result<usize>>,
}

#[derive(Debug)]
struct Waiting {
    ticket: u64,
    delivery: Delivery,
    /// An update's scan, made before it queued.
    scan: Option<std::result::Result<Finite, AggregateError>>,
    fence: Fence,
}

impl RoundFolds {
    /// Shares `sink` among the round's folds.
    pub fn new(sink: RoundSink) -> Arc<Self> {
        Arc::new(Self {
            sink: Mutex::new(Some(sink)),
            queue: Mutex::new(FoldQueue::default()),
        })
    }

    /// The sink, held: `None` once the round closed.
    pub fn sink(&self) -> MutexGuard<'_, Option<RoundSink>> {
        lock(&self.sink)
    }
}

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
/// the runtime), with any others that queued meanwhile ([`RoundFolds`]); returns the updates
/// accepted in the round so far. Fails with a stale-fence error if the round closed meanwhile.
pub fn fold(folds: &RoundFolds, delivery: Delivery, fence: &Fence) -> Result<usize> {
    // The scan of an update's values needs no accumulator: made before waiting for the sink,
    // deliveries scan side by side and only the fold itself takes turns. Its verdict is given
    // in the delivery's turn, after the checks that come first (duplicate, closed round).
    let scan = match &delivery {
        Delivery::Update(update) => Some(Finite::scan(&update.payload)),
        Delivery::Partial(_) => None,
    };
    let ticket = {
        let mut queue = lock(&folds.queue);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push(Waiting {
            ticket,
            delivery,
            scan,
            fence: fence.clone(),
        });
        ticket
    };
    let mut sink = lock(&folds.sink);
    // Whoever held the sink before may have folded this delivery with theirs.
    let batch = {
        let mut queue = lock(&folds.queue);
        if let Some(result) = queue.done.remove(&ticket) {
            return result;
        }
        std::mem::take(&mut queue.waiting)
    };
    fold_batch(sink.as_mut(), batch, |t, result| {
        lock(&folds.queue).done.insert(t, result);
    });
    // A delivery is always in the batch of the first holder after it queued, and every
    // delivery of a batch has its result as soon as its turn is over; missing, it was lost
    // to a panic in another's turn.
    lock(&folds.queue)
        .done
        .remove(&ticket)
        .unwrap_or(Err(CoordinatorError::Internal("a queued fold was lost")))
}

/// Checks, logs and counts each delivery of `batch` in order, giving each its result
/// (`publish`, by ticket) as soon as its turn is over, then adds the accepted payloads in one
/// pass. Their senders read the results only once the sink is let go, after that pass.
fn fold_batch(
    sink: Option<&mut RoundSink>,
    batch: Vec<Waiting>,
    mut publish: impl FnMut(u64, Result<usize>),
) {
    let Some(sink) = sink else {
        for w in batch {
            let closed = CoordinatorError::StaleFence {
                got: w.fence.to_string(),
                open: "none (round closed)".into(),
            };
            publish(w.ticket, Err(closed));
        }
        return;
    };
    for w in batch {
        let outcome = accept_one(sink, w.delivery, w.scan);
        publish(w.ticket, outcome.map(|()| sink.accumulator.accepted()));
    }
    sink.accumulator.flush();
}

/// One delivery's turn: every check, then the log, then its place in the sum (its payload is
/// added by the batch's flush).
fn accept_one(
    sink: &mut RoundSink,
    delivery: Delivery,
    scan: Option<std::result::Result<Finite, AggregateError>>,
) -> Result<()> {
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
    let scan = scan.transpose()?;
    // Validate, then make it durable, then fold: a logged delivery always folds cleanly.
    sink.accumulator.check_delivery(&delivery, scan)?;
    if let Some(log) = &mut sink.log {
        log.append_delivery(&delivery)?;
    }
    sink.accumulator.accept_delivery_deferred(delivery, scan)?;
    Ok(())
}

/// Closes the accumulator: waits for folds in progress, then takes the results.
pub fn close(accumulator: &SharedAccumulator) -> Option<RoundResults> {
    accumulator
        .sink()
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
            payload: vec![value; 3].into(),
            counts: Vec::new(),
            metrics: Default::default(),
        })
    }

    fn open_sink(len: usize) -> SharedAccumulator {
        let plan = TaskPlan {
            kind: shoal_proto::v1::TaskKind::Fit,
            work: crate::strategy::Work::Fit(Default::default()),
            update_len: len,
            counts_len: 0,
            fold: FoldMode::WeightedSum,
            counts_sum_to_weight: vec![],
        };
        RoundFolds::new(RoundSink {
            accumulator: RoundAccumulator::new(&plan),
            log: None,
        })
    }

    fn long_update(client: usize, len: usize) -> Delivery {
        Delivery::Update(ClientUpdate {
            client_id: format!("c{client:03}"),
            weight: 1 + client as u64 % 7,
            payload: Arc::new(
                (0..len)
                    .map(|j| ((client * 31 + j) as f32 * 0.37).sin())
                    .collect(),
            ),
            counts: Vec::new(),
            metrics: Default::default(),
        })
    }

    #[test]
    fn deliveries_folded_together_give_the_bits_of_one_at_a_time() {
        const LEN: usize = 2_000;
        const CLIENTS: usize = 64;
        let alone = open_sink(LEN);
        for client in 0..CLIENTS {
            fold(&alone, long_update(client, LEN), &Fence::default()).unwrap();
        }
        let alone = close(&alone).unwrap().sum.unwrap().totals();

        // Eight threads at once, so that deliveries queue and are folded by another's turn;
        // each sends every client once, so every client but the first arrival is a duplicate,
        // and a NaN update from each thread is refused without touching the sum.
        let together = open_sink(LEN);
        let outcomes: Vec<(usize, usize, usize)> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let together = &together;
                    s.spawn(move || {
                        let (mut ok, mut duplicate, mut refused) = (0, 0, 0);
                        for i in 0..CLIENTS {
                            let client = (i + t * 8) % CLIENTS;
                            match fold(together, long_update(client, LEN), &Fence::default()) {
                                Ok(accepted) => {
                                    assert!((1..=CLIENTS).contains(&accepted));
                                    ok += 1;
                                }
                                Err(CoordinatorError::Duplicate(_)) => duplicate += 1,
                                Err(e) => panic!("{e}"),
                            }
                        }
                        let mut bad = long_update(100 + t, LEN);
                        if let Delivery::Update(u) = &mut bad {
                            Arc::make_mut(&mut u.payload)[LEN / 2] = f32::NAN;
                        }
                        match fold(together, bad, &Fence::default()) {
                            Err(CoordinatorError::InvalidUpdate(_)) => refused += 1,
                            other => panic!("a NaN update: {other:?}"),
                        }
                        (ok, duplicate, refused)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let ok: usize = outcomes.iter().map(|o| o.0).sum();
        let duplicate: usize = outcomes.iter().map(|o| o.1).sum();
        let refused: usize = outcomes.iter().map(|o| o.2).sum();
        assert_eq!((ok, duplicate, refused), (CLIENTS, 7 * CLIENTS, 8));
        let results = close(&together).unwrap();
        assert_eq!(results.contributors(), CLIENTS);
        assert_eq!(results.sum.unwrap().totals(), alone);
    }

    #[test]
    fn a_closed_round_refuses_every_delivery_waiting() {
        let acc = open_sink(3);
        assert!(close(&acc).is_some());
        for client in ["a", "b"] {
            assert!(matches!(
                fold(&acc, update(client, 1.0), &Fence::default()),
                Err(CoordinatorError::StaleFence { .. })
            ));
        }
        assert!(close(&acc).is_none());
    }

    #[test]
    fn a_client_is_folded_once_per_round() {
        let acc = open_sink(3);
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
