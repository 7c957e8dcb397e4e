//! Pulls shared by the simulated clients of one process: the idle clients wait in one long
//! poll (`PullShared`, at most [`MAX_SHARED_PULL`] clients each) instead of an HTTP/2 request
//! each, which is most of what an idle client over gRPC used to cost. The coordinator answers
//! a shared pull as soon as one of its clients has a task, with the answer each such client's
//! own pull would have given (a refusal included); the clients it did not answer are put back
//! into the next shared pull without their loops noticing. When the poll times out, each
//! client hears Wait, as from its own pull.
//!
//! Only clients without credentials of their own share pulls (a request proves one identity);
//! a coordinator that does not know `PullShared` is remembered, and its clients pull alone.
//!
//! The same clients also take turns to join ([`SharedPulls::join_turn`]): a fleet starting,
//! or meeting a restarted coordinator, would otherwise open a request per client at once, and
//! the memory of that burst stays with the process long after it.

use shoal_proto::v1::client_pull::Answer;
use shoal_proto::v1::pull_reply::Reply;
use shoal_proto::v1::{PullReply, SharedPullRequest, Wait};
use shoal_proto::{MAX_SHARED_PULL, MAX_SHARED_PULL_ID_BYTES};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{Semaphore, SemaphorePermit, oneshot};
use tonic::{Code, Status};

use crate::connection::GrpcFleet;

/// What a client waiting in a shared pull hears: its own pull's answer, or `None` when the
/// coordinator has no shared pulls and the client must pull alone.
type Heard = Option<Result<PullReply, Status>>;

/// The shared pulls of one coordinator's clients in this process. Cloning it shares it.
#[derive(Clone)]
pub struct SharedPulls {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedPulls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPulls")
            .field("waiting", &lock(&self.inner.gathering).waiting.len())
            .field("supported", &self.supported())
            .finish()
    }
}

/// Most joins of one coordinator's sharing clients in flight at once. A join is one short
/// request; hundreds at once keep a coordinator busy without queueing thousands.
const JOINS_AT_ONCE: usize = 256;

struct Inner {
    /// The connections shared pulls are made on, taken in turn: clients finishing their work
    /// at different moments make many small pulls, as many as the clients at worst, and one
    /// HTTP/2 connection carries only so many requests at once (the coordinator's stream cap
    /// per connection; past it requests queue in the client).
    grpc: Vec<GrpcFleet>,
    /// The connection the next shared pull is made on.
    next: AtomicUsize,
    /// Turns to join.
    joins: Semaphore,
    gathering: Mutex<Gathering>,
    /// Cleared once the coordinator answered that it has no shared pulls.
    supported: AtomicBool,
}

/// The clients waiting for the next shared pull.
#[derive(Default)]
struct Gathering {
    waiting: Vec<Waiter>,
    /// A task is about to send the waiting clients' pull: newcomers join it.
    sending: bool,
}

struct Waiter {
    client_id: String,
    heard: oneshot::Sender<Heard>,
}

impl SharedPulls {
    /// Shared pulls made on `grpc`, taken in turn (connections without a client's own
    /// credentials; the fleet's, to one coordinator).
    pub fn new(grpc: Vec<GrpcFleet>) -> Self {
        Self {
            inner: Arc::new(Inner {
                grpc,
                next: AtomicUsize::new(0),
                joins: Semaphore::new(JOINS_AT_ONCE),
                gathering: Mutex::new(Gathering::default()),
                supported: AtomicBool::new(true),
            }),
        }
    }

    /// False once the coordinator said it has no shared pulls.
    pub fn supported(&self) -> bool {
        self.inner.supported.load(Ordering::Relaxed)
    }

    /// Waits for a turn to join; the join goes out while the turn is held.
    pub async fn join_turn(&self) -> Option<SemaphorePermit<'_>> {
        // Never closed, so a failed acquire cannot happen; joining anyway would be harmless.
        self.inner.joins.acquire().await.ok()
    }

    /// Waits in the next shared pull until the coordinator answers for `client_id`: what its
    /// own pull would have answered, or `None` if the client must pull alone. A failure of the
    /// whole shared pull (a broken connection, a standby's redirect) is every client's failure.
    pub async fn pull(&self, client_id: &str) -> Heard {
        let (heard, hear) = oneshot::channel();
        self.inner.wait(vec![Waiter {
            client_id: client_id.to_owned(),
            heard,
        }]);
        hear.await.unwrap_or_else(|_| {
            // Its pull's task panicked; a status without a reason is treated as transient.
            Some(Err(Status::unavailable("a shared pull was lost")))
        })
    }
}

impl Inner {
    /// Puts `waiters` into the next shared pull, starting one unless one is being sent.
    fn wait(self: &Arc<Self>, waiters: Vec<Waiter>) {
        let mut gathering = lock(&self.gathering);
        gathering.waiting.extend(waiters);
        if !gathering.sending {
            gathering.sending = true;
            tokio::spawn(self.clone().send());
        }
    }

    /// Sends one shared pull for the clients waiting (a new one follows for any left over)
    /// and hands each answer to its client.
    /// (Boxed: it starts the next one, so its type cannot name itself.)
    fn send(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { self.send_one().await })
    }

    async fn send_one(self: Arc<Self>) {
        // Clients that become idle together (a fleet joining, a round's answers handed out)
        // run first and join this pull.
        tokio::task::yield_now().await;
        let batch: Vec<Waiter> = {
            let mut gathering = lock(&self.gathering);
            // A client that stopped waiting (it shuts down) is not pulled for.
            gathering.waiting.retain(|w| !w.heard.is_closed());
            // As many as one pull may name, and whose ids fit any coordinator's message limit.
            let mut bytes = 0;
            let n = gathering
                .waiting
                .iter()
                .take(MAX_SHARED_PULL)
                .take_while(|w| {
                    bytes += w.client_id.len() + 4;
                    bytes <= MAX_SHARED_PULL_ID_BYTES
                })
                .count()
                .max(1);
            let n = n.min(gathering.waiting.len());
            let batch = gathering.waiting.drain(..n).collect();
            if gathering.waiting.is_empty() {
                gathering.sending = false;
            } else {
                tokio::spawn(self.clone().send());
            }
            batch
        };
        if batch.is_empty() {
            return;
        }
        let request = SharedPullRequest {
            client_ids: batch.iter().map(|w| w.client_id.clone()).collect(),
        };
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(grpc) = self.grpc.get(turn % self.grpc.len().max(1)) else {
            // No connection to pull on: the clients pull alone.
            for waiter in batch {
                let _ = waiter.heard.send(None);
            }
            return;
        };
        let reply = match grpc.clone().pull_shared(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                let unsupported = status.code() == Code::Unimplemented
                    && status.metadata().get(shoal_proto::REASON_HEADER).is_none();
                if unsupported {
                    self.supported.store(false, Ordering::Relaxed);
                }
                for waiter in batch {
                    let heard = (!unsupported).then(|| Err(status.clone()));
                    let _ = waiter.heard.send(heard);
                }
                return;
            }
        };
        if reply.answers.is_empty() {
            // The poll timed out: each client hears the Wait its own pull would have, which
            // tells its loop the coordinator is there (an idle client that heard nothing for
            // long would otherwise give up at its next failure).
            for waiter in batch {
                let wait = PullReply {
                    reply: Some(Reply::Wait(Wait { retry_after_ms: 0 })),
                };
                let _ = waiter.heard.send(Some(Ok(wait)));
            }
            return;
        }
        let mut answers: HashMap<String, Answer> = reply
            .answers
            .into_iter()
            .filter_map(|a| Some((a.client_id, a.answer?)))
            .collect();
        let mut again = Vec::new();
        for waiter in batch {
            match answers.remove(&waiter.client_id) {
                Some(answer) => {
                    let _ = waiter.heard.send(Some(answer.into_result()));
                }
                None => again.push(waiter),
            }
        }
        if !again.is_empty() {
            self.wait(again);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
