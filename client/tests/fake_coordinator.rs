//! One edge client against a scripted fake coordinator on 127.0.0.1:0: store-and-forward after
//! a broken push, and the simulated faults, checked from the order and timing of the requests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use futures::Stream;
use shoal_client::cache::GlobalCache;
use shoal_client::connection::{self, BearerAuth, channel, fleet_client, grpc_client};
use shoal_client::shared_pull::SharedPulls;
use shoal_client::{ClientOptions, ClientStats, EdgeClient, Faults};
use shoal_datasets::Dataset;
use shoal_proto::v1::fleet_server::{Fleet, FleetServer};
use shoal_proto::v1::{
    AbandonReply, AbandonRequest, Chunk, Fence, FetchRequest, Finished, JoinReply, JoinRequest,
    KMeansConfig, LeaveReply, LeaveRequest, PartialPart, PullReply, PullRequest, PushReply,
    SharedPullReply, SharedPullRequest, Task, TaskKind, UpdatePart, pull_reply::Reply,
};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, Streaming};

/// A coordinator that hands out one task, answers pushes from a script, and logs every call.
#[derive(Clone, Default)]
struct Fake {
    log: Arc<Mutex<Vec<(&'static str, Instant)>>>,
    tasks: Arc<Mutex<VecDeque<Task>>>,
    verdicts: Arc<Mutex<VecDeque<Code>>>,
}

impl Fake {
    fn record(&self, call: &'static str) {
        self.log.lock().unwrap().push((call, Instant::now()));
    }

    fn calls(&self) -> Vec<&'static str> {
        self.log.lock().unwrap().iter().map(|(c, _)| *c).collect()
    }

    /// Time between the first `a` and the first `b` after it.
    fn gap(&self, a: &str, b: &str) -> Duration {
        let log = self.log.lock().unwrap();
        let i = log.iter().position(|(c, _)| *c == a).unwrap();
        let j = i + 1 + log[i + 1..].iter().position(|(c, _)| *c == b).unwrap();
        log[j].1 - log[i].1
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl Fleet for Fake {
    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        self.record("join");
        Ok(Response::new(JoinReply {
            run_id: "fake".into(),
            epoch: 1,
            poll_timeout_ms: 1000,
            max_chunk_bytes: 1 << 20,
        }))
    }

    async fn pull(&self, _: Request<PullRequest>) -> Result<Response<PullReply>, Status> {
        self.record("pull");
        let reply = match self.tasks.lock().unwrap().pop_front() {
            Some(task) => Reply::Task(task),
            None => Reply::Finished(Finished {
                reason: "done".into(),
            }),
        };
        Ok(Response::new(PullReply { reply: Some(reply) }))
    }

    /// An older coordinator: it has no shared pulls.
    async fn pull_shared(
        &self,
        _: Request<SharedPullRequest>,
    ) -> Result<Response<SharedPullReply>, Status> {
        self.record("pull_shared");
        Err(Status::unimplemented("no shared pulls here"))
    }

    type FetchGlobalStream = ChunkStream;

    async fn fetch_global(
        &self,
        _: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchGlobalStream>, Status> {
        Err(Status::unimplemented("k-means init needs no global state"))
    }

    async fn push_update(
        &self,
        request: Request<Streaming<UpdatePart>>,
    ) -> Result<Response<PushReply>, Status> {
        let mut parts = request.into_inner();
        while parts.message().await?.is_some() {}
        self.record("push");
        match self
            .verdicts
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Code::Ok)
        {
            Code::Ok => Ok(Response::new(PushReply {
                accepted_in_round: 1,
            })),
            // The real coordinator marks its verdicts with a reason; a bare Unavailable stands
            // for a transport failure.
            Code::Unavailable => Err(Status::new(Code::Unavailable, "scripted outage")),
            code => {
                let mut status = Status::new(code, "scripted verdict");
                status.metadata_mut().insert(
                    shoal_proto::REASON_HEADER,
                    tonic::metadata::MetadataValue::from_static("scripted"),
                );
                Err(status)
            }
        }
    }

    async fn abandon(&self, _: Request<AbandonRequest>) -> Result<Response<AbandonReply>, Status> {
        self.record("abandon");
        Ok(Response::new(AbandonReply {}))
    }

    async fn leave(&self, _: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        self.record("leave");
        Ok(Response::new(LeaveReply {}))
    }

    async fn push_partial(
        &self,
        _: Request<Streaming<PartialPart>>,
    ) -> Result<Response<PushReply>, Status> {
        self.record("push_partial");
        Err(Status::unimplemented("clients never send partial sums"))
    }
}

/// A k-FED seeding task (no global state to fetch) for round 1.
fn task() -> Task {
    Task {
        fence: Some(Fence::at("fake", 1, 1)),
        kind: TaskKind::KmeansInit as i32,
        kmeans: Some(KMeansConfig {
            k: 2,
            local_k: 2,
            dim: 2,
        }),
        update_len: 4,
        counts_len: 2,
        ..Task::default()
    }
}

fn data() -> Dataset {
    let features = vec![0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 5.0, 5.0, 5.1, 5.0, 5.0, 5.1];
    Dataset::new(features, vec![0, 0, 0, 1, 1, 1], 2, 2, None).unwrap()
}

/// Serves `fake` with one task and the push `verdicts`, runs one client with `faults` to the
/// end, and returns its statistics.
async fn run_client(fake: &Fake, verdicts: &[Code], faults: Faults) -> ClientStats {
    run_task(fake, task(), verdicts, faults).await
}

/// The same with `task` as the one task.
async fn run_task(fake: &Fake, task: Task, verdicts: &[Code], faults: Faults) -> ClientStats {
    run_with(fake, task, verdicts, faults, false).await
}

/// The same, the client set up to share its pulls (as a fleet's) if `shared`.
async fn run_with(
    fake: &Fake,
    task: Task,
    verdicts: &[Code],
    faults: Faults,
    shared: bool,
) -> ClientStats {
    fake.tasks.lock().unwrap().push_back(task);
    fake.verdicts.lock().unwrap().extend(verdicts);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FleetServer::new(fake.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let options = ClientOptions {
        seed: 7,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        ..ClientOptions::default()
    };
    let dialled = channel(&url, None).unwrap();
    let fleet = if shared {
        let pulls = SharedPulls::new(vec![grpc_client(dialled.clone(), BearerAuth::none())]);
        connection::Fleet::Shared(grpc_client(dialled, BearerAuth::none()), pulls)
    } else {
        fleet_client(dialled, BearerAuth::none())
    };
    let client = EdgeClient::new(
        "client-00000".into(),
        Arc::new(data()),
        fleet,
        GlobalCache::default(),
        Arc::new(Semaphore::new(1)),
        options,
    )
    .with_faults(faults);
    let stats = tokio::time::timeout(Duration::from_secs(20), client.run(std::future::pending()))
        .await
        .expect("client finished in time")
        .expect("client ran without error");
    server.abort();
    stats
}

#[tokio::test]
async fn a_broken_push_is_delivered_after_rejoining_and_before_pulling() {
    let fake = Fake::default();
    let stats = run_client(&fake, &[Code::Unavailable], Faults::default()).await;
    assert_eq!(
        fake.calls(),
        ["join", "pull", "push", "join", "push", "pull", "leave"]
    );
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.redelivered, 1);
    assert_eq!(stats.reconnects, 1);
    assert_eq!((stats.refused, stats.dropped_stale), (0, 0));
}

#[tokio::test]
async fn a_kept_update_is_tried_again_after_every_broken_redelivery() {
    let fake = Fake::default();
    let stats = run_client(
        &fake,
        &[Code::Unavailable, Code::Unavailable],
        Faults::default(),
    )
    .await;
    assert_eq!(
        fake.calls(),
        [
            "join", "pull", "push", "join", "push", "join", "push", "pull", "leave"
        ]
    );
    assert_eq!(
        (stats.accepted, stats.redelivered, stats.reconnects),
        (1, 1, 2)
    );
}

#[tokio::test]
async fn a_kept_update_refused_as_stale_is_dropped_and_work_goes_on() {
    for refusal in [
        Code::FailedPrecondition,
        Code::AlreadyExists,
        Code::PermissionDenied,
    ] {
        let fake = Fake::default();
        let stats = run_client(&fake, &[Code::Unavailable, refusal], Faults::default()).await;
        assert_eq!(
            fake.calls(),
            ["join", "pull", "push", "join", "push", "pull", "leave"],
            "{refusal:?}"
        );
        assert_eq!(stats.dropped_stale, 1, "{refusal:?}");
        assert_eq!((stats.accepted, stats.redelivered), (0, 0), "{refusal:?}");
    }
}

#[tokio::test]
async fn a_coordinator_without_shared_pulls_is_pulled_alone() {
    let fake = Fake::default();
    let stats = run_with(&fake, task(), &[], Faults::default(), true).await;
    // Asked once; every pull after that is the client's own.
    assert_eq!(
        fake.calls(),
        ["join", "pull_shared", "pull", "push", "pull", "leave"]
    );
    assert_eq!((stats.accepted, stats.reconnects), (1, 0));
}

#[tokio::test]
async fn a_refused_first_push_is_not_kept() {
    let fake = Fake::default();
    let stats = run_client(&fake, &[Code::FailedPrecondition], Faults::default()).await;
    assert_eq!(fake.calls(), ["join", "pull", "push", "pull", "leave"]);
    assert_eq!(
        (stats.refused, stats.reconnects, stats.dropped_stale),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn a_dropout_takes_the_task_and_never_pushes() {
    let fake = Fake::default();
    let faults = Faults {
        dropout: 1.0,
        ..Faults::default()
    };
    let stats = run_client(&fake, &[], faults).await;
    assert_eq!(fake.calls(), ["join", "pull", "pull", "leave"]);
    assert_eq!((stats.dropouts, stats.accepted), (1, 0));
}

#[tokio::test]
async fn a_straggler_pushes_late() {
    let fake = Fake::default();
    let delay = Duration::from_millis(300);
    let faults = Faults {
        straggle: Some((1.0, delay)),
        ..Faults::default()
    };
    let stats = run_client(&fake, &[], faults).await;
    assert_eq!(fake.calls(), ["join", "pull", "push", "pull", "leave"]);
    assert!(fake.gap("pull", "push") >= delay);
    assert_eq!((stats.straggles, stats.accepted), (1, 1));
}

#[tokio::test]
async fn a_crashed_client_goes_silent_then_joins_again() {
    let fake = Fake::default();
    let downtime = Duration::from_millis(300);
    let faults = Faults {
        crash: Some((1.0, downtime)),
        ..Faults::default()
    };
    let stats = run_client(&fake, &[], faults).await;
    assert_eq!(fake.calls(), ["join", "pull", "join", "pull", "leave"]);
    assert!(fake.gap("pull", "join") >= downtime);
    assert_eq!((stats.crashes, stats.accepted), (1, 0));
}

#[tokio::test]
async fn a_task_that_fails_locally_is_abandoned_at_once() {
    let fake = Fake::default();
    let mut impossible = task();
    // No local centres: the local k-means cannot run.
    impossible.kmeans = Some(KMeansConfig {
        k: 2,
        local_k: 0,
        dim: 2,
    });
    let stats = run_task(&fake, impossible, &[], Faults::default()).await;
    assert_eq!(fake.calls(), ["join", "pull", "abandon", "pull", "leave"]);
    assert_eq!((stats.failed_tasks, stats.accepted), (1, 0));
}
