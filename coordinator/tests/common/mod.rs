//! Shared helpers: a real coordinator on 127.0.0.1:0 and its data.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod ports;
pub mod s3;

use shoal_coordinator::config::{FitSettings, SelectionConfig};
use shoal_coordinator::{Coordinator, HostedRun, Limits, RunConfig, RunStart, Security, strategy};
use shoal_datasets::{Dataset, DatasetSource, Partition, Split, load, partition};
use shoal_models::{ModelKind, ModelSpec};
use std::sync::Arc;
use tokio::net::TcpListener;

/// A coordinator serving on loopback with its round driver running.
pub type Running = HostedRun;

/// Digits split 80/20 with seed 0.
pub fn digits() -> Split {
    load(&DatasetSource::Digits, 0.2, 0).unwrap()
}

/// The training set split among `n` clients, with ids client-00000...
pub fn clients(train: &Dataset, n: usize, scheme: &Partition, seed: u64) -> Vec<(String, Dataset)> {
    partition(&train.labels, train.num_classes, n, scheme, seed)
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, idx)| (format!("client-{i:05}"), train.subset(idx).unwrap()))
        .collect()
}

/// A run config for `clients` clients, everyone every round, one local epoch at lr 0.05 (light
/// enough that tests spend their time in the protocol, not in training).
pub fn config(clients: usize, rounds: u32) -> RunConfig {
    RunConfig {
        rounds,
        fit: FitSettings {
            epochs: 1,
            batch_size: 32,
            lr: 0.05,
        },
        selection: SelectionConfig {
            clients_per_round: None,
            fraction: 1.0,
            min_clients: 1,
            over_select: 1.0,
            min_available: clients,
        },
        ..RunConfig::default()
    }
}

/// The model spec for `kind` on `data`.
pub fn spec(kind: &str, data: &Dataset) -> ModelSpec {
    ModelSpec::for_dataset(kind.parse::<ModelKind>().unwrap(), data)
}

/// Starts a coordinator for `config` on 127.0.0.1:0.
pub async fn start(config: RunConfig, spec: ModelSpec, test: Dataset, limits: Limits) -> Running {
    start_with(config, spec, test, limits, Security::plaintext()).await
}

/// Starts a coordinator for `config` on 127.0.0.1:0 serving with `security`; its URL is
/// https:// when it serves TLS.
pub async fn start_with(
    config: RunConfig,
    spec: ModelSpec,
    test: Dataset,
    limits: Limits,
    security: Security,
) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let strategy = strategy::build(&config, &spec).unwrap();
    let coordinator = Coordinator::new(config, limits, spec);
    let start = RunStart::new(strategy, Arc::new(test))
        .security(security)
        .drain_limit(std::time::Duration::from_secs(5));
    coordinator
        .host(listener, start, std::future::pending())
        .unwrap()
}

use shoal_proto::v1::fleet_client::FleetClient;
use shoal_proto::v1::{
    Fence, FetchRequest, JoinRequest, PullRequest, PushReply, Task, UpdateHeader, UpdatePart,
    pull_reply::Reply, update_part::Part,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The coordinator's reason for a refusal (its `shoal-reason` metadata), if it wrote one.
pub fn reason_of(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(shoal_proto::REASON_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// What a refusal is checked on: a status, or the result of a request that must have failed.
pub trait Refusal {
    /// The status; panics if the request succeeded.
    fn into_status(self) -> Status;
}

impl Refusal for Status {
    fn into_status(self) -> Status {
        self
    }
}

impl<T: std::fmt::Debug> Refusal for Result<T, Status> {
    #[track_caller]
    fn into_status(self) -> Status {
        match self {
            Ok(answer) => panic!("the request must be refused, but it was answered: {answer:?}"),
            Err(status) => status,
        }
    }
}

/// Asserts that the coordinator refused with exactly `code` and the reason `reason` in the
/// `shoal-reason` metadata; returns the status, for a test that also checks its message.
#[track_caller]
pub fn assert_refused(refusal: impl Refusal, code: Code, reason: &str) -> Status {
    let status = refusal.into_status();
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status), Some(reason), "{status:?}");
    status
}

/// Asserts that the request was refused with exactly `code` by the gRPC layer, before any of
/// the coordinator's handlers ran: such a status carries no `shoal-reason` (the coordinator
/// still counts it, see `Coordinator::refusals`).
#[track_caller]
pub fn assert_refused_by_grpc(refusal: impl Refusal, code: Code) -> Status {
    let status = refusal.into_status();
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status), None, "{status:?}");
    status
}

/// A raw protocol client, to send exactly what a test wants.
pub async fn raw(url: &str) -> FleetClient<Channel> {
    FleetClient::connect(url.to_string())
        .await
        .unwrap()
        .max_decoding_message_size(2 << 20)
        .max_encoding_message_size(2 << 20)
}

pub async fn join(c: &mut FleetClient<Channel>, id: &str, examples: u64) {
    c.join(JoinRequest {
        client_id: id.into(),
        num_examples: examples,
    })
    .await
    .unwrap();
}

/// Pulls until a task arrives.
pub async fn task(c: &mut FleetClient<Channel>, id: &str) -> Task {
    loop {
        let reply = c
            .pull(PullRequest {
                client_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        match reply.reply.unwrap() {
            Reply::Task(t) => return t,
            Reply::Wait(_) => continue,
            Reply::Finished(f) => panic!("run finished: {}", f.reason),
        }
    }
}

pub async fn fetch(
    c: &mut FleetClient<Channel>,
    id: &str,
    fence: &Fence,
    len: u64,
) -> Result<Vec<f32>, tonic::Status> {
    let mut stream = c
        .fetch_global(FetchRequest {
            client_id: id.into(),
            fence: Some(fence.clone()),
        })
        .await?
        .into_inner();
    let mut asm =
        shoal_proto::ChunkAssembler::new(len, usize::MAX, shoal_proto::MAX_CHUNK_BYTES).unwrap();
    while let Some(chunk) = stream.message().await? {
        asm.push(&chunk).unwrap();
    }
    Ok(asm.finish().unwrap())
}

/// Fences of the next round, another run and an earlier incarnation than `fence`: what a
/// replayed update, or one meant for another coordinator, carries.
pub fn wrong_fences(fence: &Fence) -> [Fence; 3] {
    [
        Fence {
            round: fence.round + 1,
            ..fence.clone()
        },
        Fence {
            run_id: "other".into(),
            ..fence.clone()
        },
        Fence {
            epoch: fence.epoch - 1,
            ..fence.clone()
        },
    ]
}

pub fn header(id: &str, fence: &Fence, examples: u64, len: usize) -> UpdateHeader {
    UpdateHeader {
        client_id: id.into(),
        fence: Some(fence.clone()),
        num_examples: examples,
        payload_len: len as u64,
        counts: vec![],
        metrics: Default::default(),
        ..Default::default()
    }
}

/// Pushes `header` then `values` in 1 MiB chunks.
pub async fn push(
    c: &mut FleetClient<Channel>,
    header: UpdateHeader,
    values: &[f32],
) -> Result<PushReply, tonic::Status> {
    let mut parts = vec![UpdatePart {
        part: Some(Part::Header(header)),
    }];
    parts.extend(
        shoal_proto::encode_chunks(values, shoal_proto::MAX_CHUNK_BYTES).map(|c| UpdatePart {
            part: Some(Part::Chunk(c)),
        }),
    );
    push_parts(c, parts).await
}

pub async fn push_parts(
    c: &mut FleetClient<Channel>,
    parts: Vec<UpdatePart>,
) -> Result<PushReply, tonic::Status> {
    c.push_update(futures::stream::iter(parts))
        .await
        .map(|r| r.into_inner())
}

/// A loopback address where nothing listens (bound, then released).
pub fn unused_addr() -> std::net::SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

/// Starts a coordinator on `store` (resuming what it holds) for `config` on digits with
/// logreg; returns the hosted run (abort it to "crash") and how many logged updates it
/// replays.
pub async fn start_checkpointed(
    config: RunConfig,
    store: shoal_coordinator::CheckpointStore,
) -> (HostedRun, usize) {
    let split = digits();
    let spec = spec("logreg", &split.train);
    let mut strategy = strategy::build(&config, &spec).unwrap();
    let resume =
        shoal_coordinator::recover(&store, &config, strategy.as_mut(), false, false).unwrap();
    let replayed = resume.replay.as_ref().map_or(0, |r| r.updates.len());
    // Short polls, so a test's idle pull answers Wait quickly.
    let limits = Limits {
        poll_timeout: std::time::Duration::from_millis(300),
        ..Limits::default()
    };
    let coordinator = Coordinator::with_checkpoints(config, limits, spec, store);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let start = RunStart::new(strategy, Arc::new(split.test)).resume(resume);
    let hosted = coordinator
        .host(listener, start, std::future::pending())
        .unwrap();
    (hosted, replayed)
}
