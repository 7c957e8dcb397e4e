//! One edge client: join, then pull tasks (the pull loop is the heartbeat), work on local data
//! off the runtime, push the update; leave when the run ends. Lost connections are retried with
//! jittered backoff under the same client id.

use crate::backoff::Backoff;
use crate::cache::GlobalCache;
use crate::connection::Fleet;
use crate::error::{ClientError, Result};
use crate::work::{LocalUpdate, run_task};
use shoal_datasets::Dataset;
use shoal_datasets::rng::{client_key, rng_for};
use shoal_proto::v1::{
    Fence, JoinRequest, LeaveRequest, PullRequest, Task, UpdateHeader, UpdatePart,
    pull_reply::Reply, update_part::Part,
};
use shoal_proto::{DEFAULT_CHUNK_BYTES, encode_chunks};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::Code;
use tracing::{debug, info, warn};

/// Stream tag for backoff jitter in the RNG tree.
const BACKOFF_STREAM: u64 = 0xbac0;

/// How a client behaves towards the coordinator.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Seed for the client's own random choices (backoff jitter).
    pub seed: u64,
    /// Give up after the coordinator has been unreachable this long.
    pub give_up_after: Duration,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            give_up_after: Duration::from_secs(120),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(5),
        }
    }
}

/// What a client did over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Updates the coordinator accepted.
    pub accepted: u32,
    /// Updates it refused (late, stale round...).
    pub refused: u32,
    /// Times the client reconnected.
    pub reconnects: u32,
}

/// An edge client holding its local partition.
#[derive(Debug)]
pub struct EdgeClient {
    id: String,
    data: Arc<Dataset>,
    fleet: Fleet,
    cache: GlobalCache,
    cpu: Arc<Semaphore>,
    options: ClientOptions,
    chunk_bytes: usize,
}

impl EdgeClient {
    /// A client `id` with local `data`, talking over `fleet`; `cache` and `cpu` may be shared
    /// with other clients in the same process.
    pub fn new(
        id: String,
        data: Arc<Dataset>,
        fleet: Fleet,
        cache: GlobalCache,
        cpu: Arc<Semaphore>,
        options: ClientOptions,
    ) -> Self {
        Self {
            id,
            data,
            fleet,
            cache,
            cpu,
            options,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        }
    }

    /// The client's stable id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until the coordinator says the run finished, `shutdown` resolves, or the
    /// coordinator stays unreachable past `give_up_after`.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<ClientStats> {
        tokio::pin!(shutdown);
        let mut stats = ClientStats::default();
        let rng = rng_for(self.options.seed, &[BACKOFF_STREAM, client_key(&self.id)]);
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_cap, rng);
        let mut joined = false;
        let mut unreachable_since: Option<Instant> = None;
        loop {
            let step = async {
                if !joined {
                    self.join().await?;
                }
                self.pull().await.map(Some)
            };
            let outcome = tokio::select! {
                r = step => r,
                () = &mut shutdown => {
                    let _ = self.fleet.leave(LeaveRequest { client_id: self.id.clone() }).await;
                    return Ok(stats);
                }
            };
            match outcome {
                Ok(Some(reply)) => {
                    joined = true;
                    unreachable_since = None;
                    backoff.reset();
                    match reply {
                        Reply::Task(task) => self.handle(task, &mut stats).await,
                        Reply::Wait(_) => {}
                        Reply::Finished(f) => {
                            info!(client = %self.id, reason = %f.reason, "run finished");
                            let _ = self
                                .fleet
                                .leave(LeaveRequest {
                                    client_id: self.id.clone(),
                                })
                                .await;
                            return Ok(stats);
                        }
                    }
                }
                Ok(None) => {}
                Err(ClientError::Refused(status)) if status.code() == Code::NotFound => {
                    // The coordinator does not know us (it restarted): join again.
                    joined = false;
                }
                Err(err) if retryable(&err) => {
                    joined = false;
                    stats.reconnects += 1;
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.options.give_up_after {
                        return Err(err);
                    }
                    let delay = backoff.next_delay();
                    debug!(client = %self.id, error = %err, ?delay, "coordinator unreachable; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut shutdown => return Ok(stats),
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn join(&mut self) -> Result<()> {
        let reply = self
            .fleet
            .join(JoinRequest {
                client_id: self.id.clone(),
                num_examples: self.data.len() as u64,
            })
            .await?
            .into_inner();
        if reply.max_chunk_bytes > 0 {
            self.chunk_bytes = (reply.max_chunk_bytes as usize).min(DEFAULT_CHUNK_BYTES);
        }
        Ok(())
    }

    async fn pull(&mut self) -> Result<Reply> {
        let reply = self
            .fleet
            .pull(PullRequest {
                client_id: self.id.clone(),
            })
            .await?
            .into_inner();
        reply
            .reply
            .ok_or_else(|| ClientError::BadTask("empty pull reply".into()))
    }

    /// Fetches, works, pushes. Failures are logged and counted; the loop goes on.
    async fn handle(&mut self, task: Task, stats: &mut ClientStats) {
        let Some(fence) = task.fence.clone() else {
            warn!(client = %self.id, "task without fence ignored");
            return;
        };
        match self.work(task, &fence).await {
            Ok(update) => match self.push(&fence, update).await {
                Ok(()) => stats.accepted += 1,
                Err(err) => {
                    stats.refused += 1;
                    debug!(client = %self.id, %fence, error = %err, "update not accepted");
                }
            },
            Err(err) => warn!(client = %self.id, %fence, error = %err, "task failed"),
        }
    }

    async fn work(&mut self, task: Task, fence: &Fence) -> Result<LocalUpdate> {
        let global = self
            .cache
            .get(&mut self.fleet, &self.id, fence, task.global_len)
            .await?;
        let _permit = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ClientError::Worker(e.to_string()))?;
        let data = self.data.clone();
        tokio::task::spawn_blocking(move || run_task(&task, &global, &data))
            .await
            .map_err(|e| ClientError::Worker(e.to_string()))?
    }

    async fn push(&mut self, fence: &Fence, update: LocalUpdate) -> Result<()> {
        let header = UpdateHeader {
            client_id: self.id.clone(),
            fence: Some(fence.clone()),
            num_examples: update.num_examples,
            payload_len: update.payload.len() as u64,
            counts: update.counts,
            metrics: update.metrics.into_iter().collect(),
        };
        let mut parts = vec![UpdatePart {
            part: Some(Part::Header(header)),
        }];
        parts.extend(
            encode_chunks(&update.payload, self.chunk_bytes).map(|c| UpdatePart {
                part: Some(Part::Chunk(c)),
            }),
        );
        self.fleet.push_update(futures::stream::iter(parts)).await?;
        Ok(())
    }
}

/// Errors worth reconnecting for: the transport broke or the coordinator is restarting.
fn retryable(err: &ClientError) -> bool {
    match err {
        ClientError::Transport(_) => true,
        ClientError::Refused(s) => matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        ),
        _ => false,
    }
}
