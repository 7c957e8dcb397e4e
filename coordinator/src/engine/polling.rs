//! Long polls for work: a client's own pull, and a shared pull answering for many clients of
//! one process at once. Either way a client hears of its task as soon as it has one, of the
//! run's end once it ended, or nothing (Wait) when the poll timeout passes; every pull counts
//! as the client's heartbeat and is paced (see [`crate::engine::pacing`]).
//!
//! A shared pull exists for memory: a fleet's idle clients wait in one request instead of an
//! HTTP/2 request each. Each answer in it is the one the client's own pull would have given,
//! a refusal included. Where the two differ: a shared pull answers only some of its clients
//! (the others pull again); it is paced as its slowest client, and a refusal of one client's
//! pull returns the whole request at once, the others' pulls counted; and one reply carries
//! no more answers than fit well within the message limit (the rest stay owed to the next
//! pull).

use crate::engine::coordinator::{Coordinator, State};
use crate::engine::phase::Phase;
use crate::error::{CoordinatorError, Result};
use crate::sync::lock;
use prost::Message;
use shoal_datasets::rng::{client_key, derive_seed};
use shoal_proto::message_limit;
use shoal_proto::shared_pull::check_ids;
use shoal_proto::v1::pull_reply::Reply;
use shoal_proto::v1::{Finished, PullReply, Task, Wait};
use std::time::{Duration, Instant};

/// Stream tag for per-client task seeds in the run's RNG tree.
const TASK_STREAM: u64 = 0x7a5c;

/// One client's answer in a shared pull: its place in the request, and what its own pull
/// would have answered.
pub type SharedAnswer = (usize, Result<Reply>);

impl Coordinator {
    /// Long-poll for work: returns a task as soon as the client has one, Finished once the run
    /// ended, or Wait when the poll timeout passes. Every pull counts as a heartbeat. Pulls
    /// over the client's rate are first delayed, then refused (see [`crate::engine::pacing`]).
    pub async fn pull(&self, client_id: &str) -> Result<PullReply> {
        // A shared pull of one: the same pacing, poll and answer.
        let mut answers = self.poll_clients(&[client_id]).await?;
        let reply = match answers.pop() {
            Some((_, answer)) => answer?,
            None => Reply::Wait(Wait { retry_after_ms: 0 }),
        };
        Ok(PullReply { reply: Some(reply) })
    }

    /// One long poll for the clients `ids` (at most [`shoal_proto::MAX_SHARED_PULL`], no id
    /// twice): answers as soon as any of them has a task or the run ended, with those clients'
    /// answers (as many as fit a reply); a refusal is answered at once; none when the poll
    /// timeout passes. Each client is paced as by its own pull (the poll starts after the
    /// longest delay among them) and heard from.
    pub async fn pull_shared(&self, ids: &[String]) -> Result<Vec<SharedAnswer>> {
        check_ids(ids).map_err(CoordinatorError::Malformed)?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.poll_clients(&ids).await
    }

    /// [`Coordinator::pull_shared`] for ids already checked (a single pull's is).
    async fn poll_clients(&self, ids: &[&str]) -> Result<Vec<SharedAnswer>> {
        if ids.is_empty() {
            // Nobody to wait for.
            return Ok(Vec::new());
        }
        let mut refused = Vec::new();
        let mut waiting = Vec::with_capacity(ids.len());
        let mut delay = Duration::ZERO;
        if let Some(rate) = self.shared.limits.pull_rate {
            let mut state = lock(&self.shared.state);
            let now = Instant::now();
            for (at, id) in ids.iter().enumerate() {
                match state.registry.pace(id, now, rate) {
                    Ok(wait) => {
                        delay = delay.max(wait);
                        waiting.push((at, *id));
                    }
                    Err(err) => refused.push((at, Err(err))),
                }
            }
        } else {
            waiting.extend(ids.iter().copied().enumerate());
        }
        if !refused.is_empty() {
            // Those clients back off; the others are answered nothing and pull again.
            return Ok(refused);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.poll(Polling::start(self, waiting)).await
    }

    /// Waits until one of the polling clients has an answer, and gives every answer there is
    /// then; none once the poll timeout passed.
    async fn poll(&self, polling: Polling<'_>) -> Result<Vec<SharedAnswer>> {
        let deadline = tokio::time::Instant::now() + self.shared.limits.poll_timeout;
        let mut changed = self.shared.changed.subscribe();
        loop {
            if self.has_stepped_down() {
                return Err(CoordinatorError::ShuttingDown);
            }
            let answers = {
                let mut state = lock(&self.shared.state);
                let mut budget = AnswerBudget::new(self.shared.limits.max_chunk_bytes);
                let mut answers = Vec::new();
                for &(at, id, pull) in &polling.pulls {
                    if !budget.room_for(id) {
                        // The others stay owed; their next pull hears them.
                        break;
                    }
                    if let Some(answer) = self.answer(&mut state, id, pull).transpose() {
                        budget.spend(id, &answer);
                        answers.push((at, answer));
                    }
                }
                answers
            };
            if !answers.is_empty() {
                return Ok(answers);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(CoordinatorError::ShuttingDown),
                Err(_) => return Ok(Vec::new()),
            }
        }
    }

    /// What pull number `pull` of `client_id` answers now, if anything: its task, the run's
    /// end, or a refusal (a client that is not joined).
    fn answer(&self, state: &mut State, client_id: &str, pull: u64) -> Result<Option<Reply>> {
        state.registry.touch(client_id, Instant::now())?;
        let newest = state.registry.is_newest_pull(client_id, pull);
        match &mut state.phase {
            Phase::Finished(reason) => Ok(Some(Reply::Finished(Finished {
                reason: reason.clone(),
            }))),
            Phase::Open(round) if round.owes_task(client_id) => {
                if !newest {
                    // A later request of this client superseded this pull: the task is for
                    // that one.
                    return Ok(Some(Reply::Wait(Wait { retry_after_ms: 0 })));
                }
                round.tasked.insert(client_id.to_owned());
                let mut task: Task = round.task.clone();
                task.seed = derive_seed(
                    self.shared.config.seed,
                    &[
                        TASK_STREAM,
                        u64::from(round.fence.round),
                        client_key(client_id),
                    ],
                );
                Ok(Some(Reply::Task(task)))
            }
            _ => Ok(None),
        }
    }
}

/// The bytes one shared pull's answers may take: half the message limit, so a reply always
/// encodes (answers of one round are about the same size: a task differs only in its seed).
struct AnswerBudget {
    left: usize,
    /// The largest answer given so far, to judge whether the next one fits.
    largest: usize,
}

impl AnswerBudget {
    fn new(max_chunk_bytes: usize) -> Self {
        Self {
            left: message_limit(max_chunk_bytes) / 2,
            largest: 0,
        }
    }

    /// Whether an answer for `id`, as large as the largest so far, still fits.
    fn room_for(&self, id: &str) -> bool {
        Self::cost(id, self.largest) <= self.left
    }

    fn spend(&mut self, id: &str, answer: &Result<Reply>) {
        let len = match answer {
            Ok(Reply::Task(task)) => task.encoded_len(),
            Ok(_) => 16,
            Err(err) => 64 + err.to_string().len(),
        };
        self.largest = self.largest.max(len);
        self.left = self.left.saturating_sub(Self::cost(id, len));
    }

    /// An answer's bytes in the reply: its id, its body, and their framing.
    fn cost(id: &str, body: usize) -> usize {
        id.len() + body + 16
    }
}

/// Marks clients as waiting in a pull for as long as the pull lasts; the marks go when the
/// pull answers or its connection drops (the future is dropped then).
struct Polling<'a> {
    coordinator: &'a Coordinator,
    /// Each client's place in the request, its id, and the number of this pull among the
    /// client's requests ([`crate::engine::registry::ClientRecord::newest_pull`]).
    pulls: Vec<(usize, &'a str, u64)>,
}

impl<'a> Polling<'a> {
    fn start(
        coordinator: &'a Coordinator,
        clients: impl IntoIterator<Item = (usize, &'a str)>,
    ) -> Self {
        let mut state = lock(&coordinator.shared.state);
        let pulls = clients
            .into_iter()
            .map(|(at, id)| (at, id, state.registry.pull_started(id)))
            .collect();
        drop(state);
        Self { coordinator, pulls }
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.coordinator.shared.state);
        for (_, id, _) in &self.pulls {
            state.registry.pull_ended(id);
        }
    }
}
