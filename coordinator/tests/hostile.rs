//! A hostile client in the middle of a real run: ten honest fleet clients train an MLP on digits
//! with FedAvg while a raw client throws everything it can at the coordinator. Everything is
//! refused with a clear status and counted, the coordinator keeps serving, the run completes,
//! and its final model is bit-identical to the same run (same seed, config and limits) without
//! the hostile client.
//!
//! How the hostile client takes part without changing the result:
//! - `fraction = 1.0`: every available client is selected, so every honest client is asked in
//!   every attempt of every round, with the same task (task seeds come from the run seed, the
//!   round and the client id, never from the selection or the attempt).
//! - Rounds here take milliseconds, so "hostile" joins *before* the fleet starts (joining
//!   later races the whole run). It is then selected in round 1. That round wants eleven updates
//!   and "hostile" never delivers a valid one, so each attempt stays open until its deadline:
//!   every attack that needs an open round meets one, deterministically.
//! - `min_available = 10` counts "hostile", so round 1's first attempt may open with only nine
//!   honest clients. The quorum is 10, so such an attempt fails at its deadline and is retried
//!   with everyone, from the same global state with the same task seeds: the round still
//!   aggregates exactly the ten honest updates (it costs one more deadline). The hostile client
//!   attacks only in an attempt where all ten honest clients are selected.
//! - After the attacks it stays joined until round 2 has asked it too (round 2 waits for it,
//!   so every honest client is still there when round 1's updates are replayed), then
//!   leaves, so round 2 closes with the ten honest updates and round 3 does not ask it.
//! - Requests under *another* client's id never take that client's place: no pulls or
//!   fetches, and updates only once the real one was delivered in the same attempt (checked by
//!   a header-only probe that cannot hold a slot), or with a stale fence. Without
//!   authentication an impersonated pull would steal an honest client's task; stopping that is
//!   the job of TLS and tokens, tested with them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use bytes::{Buf, BufMut, Bytes};
use common::{
    assert_refused, assert_refused_by_grpc, fetch, header, join, push, push_parts, raw, reason_of,
    task,
};
use futures::StreamExt;
use shoal_client::{FleetConfig, run_fleet};
use shoal_coordinator::{Limits, NormPolicy, RunOutcome};
use shoal_datasets::Partition;
use shoal_proto::v1::fleet_client::FleetClient;
use shoal_proto::v1::{
    Chunk, Fence, LeaveRequest, PullRequest, UpdateHeader, UpdatePart, pull_reply::Reply,
    update_part::Part,
};
use std::time::Duration;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Status};

const HONEST: usize = 10;
const ROUNDS: u32 = 3;
const MAX_NORM: f64 = 1_000.0;

fn config() -> shoal_coordinator::RunConfig {
    let mut config = common::config(HONEST, ROUNDS);
    config.seed = 7;
    config.selection.min_clients = HONEST;
    config.round_timeout_ms = 8_000;
    config
}

fn limits() -> Limits {
    Limits {
        poll_timeout: Duration::from_secs(1),
        max_update_norm: Some(MAX_NORM),
        norm_policy: NormPolicy::Reject,
        pull_rate: Some(shoal_coordinator::config::PullRate {
            per_second: 20.0,
            burst: 40,
        }),
        ..Limits::default()
    }
}

/// One run of the honest fleet, with or without the hostile client beside it; returns the
/// outcome and every refusal counted (also after the summary was written).
async fn run(hostile: bool) -> (RunOutcome, std::collections::BTreeMap<String, u64>) {
    let split = common::digits();
    let spec = common::spec("mlp", &split.train);
    let clients = common::clients(&split.train, HONEST, &Partition::Iid, 0);
    let running = common::start(config(), spec, split.test, limits()).await;
    let mut c = raw(&running.url).await;
    if hostile {
        unknown(&mut c).await;
        join(&mut c, "hostile", 100).await;
    }
    let fleet = tokio::spawn(run_fleet(
        FleetConfig::new(running.url.clone()),
        clients,
        std::future::pending(),
    ));
    if hostile {
        attack(&running.url, &mut c).await;
    }
    let coordinator = running.coordinator.clone();
    let outcome = running.finish().await.unwrap();
    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.finished, HONEST);
    assert_eq!(report.failed, 0);
    // A retried first attempt (see the module comment) means a few more deliveries.
    assert!(
        report.totals.accepted >= HONEST as u32 * ROUNDS,
        "{report:?}"
    );
    assert_eq!(report.totals.refused, 0, "honest clients are never refused");
    (outcome, coordinator.refusals())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_mid_run_changes_nothing() {
    let limit = Duration::from_secs(180);
    let (clean, clean_refusals) = tokio::time::timeout(limit, run(false)).await.unwrap();
    let (attacked, refusals) = tokio::time::timeout(limit, run(true)).await.unwrap();

    assert_eq!(clean.summary.rounds_completed, ROUNDS);
    assert_eq!(attacked.summary.rounds_completed, ROUNDS);
    assert_eq!(
        clean.summary.model_sha256, attacked.summary.model_sha256,
        "the hostile client changed the model"
    );
    assert!(attacked.records.iter().all(|r| r.clients == HONEST));
    assert_eq!(
        attacked
            .records
            .iter()
            .map(|r| r.selected)
            .collect::<Vec<_>>(),
        [HONEST + 1, HONEST + 1, HONEST],
        "the hostile client was asked in rounds 1 and 2, not after it left: {:?}",
        attacked.records
    );
    assert!(clean_refusals.is_empty(), "{clean_refusals:?}");
    assert!(clean.summary.refusals.is_empty());

    // Every refusal was counted under its reason, and the summary carries them.
    eprintln!("refusals: {refusals:?}");
    for reason in [
        "bad_client_id",
        "bad_weight",
        "chunk_misaligned",
        "chunk_out_of_order",
        "chunk_too_large",
        "duplicate",
        "malformed",
        "malformed_message",
        "message_too_large",
        "non_finite",
        "norm_too_large",
        "payload_overflow",
        "payload_too_large",
        "payload_truncated",
        "rate_limited",
        "stale_fence",
        "stream_error",
        "unknown_client",
        "wrong_length",
    ] {
        assert!(
            refusals.get(reason).is_some_and(|n| *n > 0),
            "{reason}: {refusals:?}"
        );
    }
    let summary = &attacked.summary.refusals;
    for reason in ["non_finite", "norm_too_large", "rate_limited", "duplicate"] {
        assert!(
            summary.get(reason).is_some_and(|n| *n > 0),
            "{reason}: {summary:?}"
        );
    }
    assert!(refusals["rate_limited"] >= 200, "{refusals:?}");
}

/// Everything the joined hostile client does once the fleet runs, in order.
async fn attack(url: &str, c: &mut FleetClient<Channel>) {
    // Attack in an attempt of round 1 where every honest client was selected.
    let (fence, global) = loop {
        let t = task(c, "hostile").await;
        let fence = t.fence.clone().unwrap();
        assert_eq!(fence.round, 1);
        let global = fetch(c, "hostile", &fence, t.global_len).await.unwrap();
        if all_honest_selected(c, &fence, global.len()).await {
            break (fence, global);
        }
    };
    let n = global.len();
    assert_eq!(n, 9610, "mlp on digits");

    garbage(url).await;
    payloads(url, c, &fence, &global).await;
    impersonation(c, &fence, &global).await;
    flood(url).await;
    // Still open, still refusing: the round waited for the hostile client all along.
    assert_refused(
        push(c, header("hostile", &fence, 100, n), &nan_at(&global, 1)).await,
        Code::InvalidArgument,
        "non_finite",
    );
    // Round 1 closes at its deadline and round 2 asks everyone, the hostile client too; until
    // it leaves, round 2 waits for it, so the run goes on and every honest client is there.
    let next = next_task(c).await;
    assert_eq!(next.fence.as_ref().map(|f| f.round), Some(2), "{next:?}");
    replays(c, &fence, &global).await;
}

/// The hostile client's next task, pulling again while its pulls are paced or refused after
/// the flood.
async fn next_task(c: &mut FleetClient<Channel>) -> shoal_proto::v1::Task {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no task for the hostile client within 30 s"
        );
        let pulled = c
            .pull(PullRequest {
                client_id: "hostile".into(),
            })
            .await;
        match pulled.map(|r| r.into_inner().reply) {
            Ok(Some(Reply::Task(task))) => return task,
            Ok(Some(Reply::Wait(_))) => {}
            Err(status) => {
                assert_refused(status, Code::ResourceExhausted, "rate_limited");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("the run must still wait for the hostile client: {other:?}"),
        }
    }
}

/// A header for `id` with a wrong length: refused without ever holding `id`'s slot, with a
/// code and reason that tell where `id` stands in the open attempt (see [`Probe`]).
async fn probe(c: &mut FleetClient<Channel>, id: &str, fence: &Fence, n: usize) -> Status {
    push_parts(
        c,
        vec![UpdatePart {
            part: Some(Part::Header(header(id, fence, 10, n + 1))),
        }],
    )
    .await
    .unwrap_err()
}

/// Where a client stands in the open attempt, as a probe's refusal tells it.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Not joined (yet): NotFound, unknown_client.
    Unknown,
    /// Not selected in this attempt: PermissionDenied, not_selected.
    NotSelected,
    /// Selected, nothing delivered yet (the probe's length is wrong): InvalidArgument,
    /// wrong_length.
    Awaited,
    /// Its update is arriving: Unavailable (try again), duplicate.
    Delivering,
    /// Its update was accepted: AlreadyExists, duplicate.
    Delivered,
}

impl Probe {
    #[track_caller]
    fn of(status: Status) -> Self {
        let (probe, reason) = match status.code() {
            Code::NotFound => (Self::Unknown, "unknown_client"),
            Code::PermissionDenied => (Self::NotSelected, "not_selected"),
            Code::InvalidArgument => (Self::Awaited, "wrong_length"),
            Code::Unavailable => (Self::Delivering, "in_flight"),
            Code::AlreadyExists => (Self::Delivered, "duplicate"),
            _ => panic!("unexpected probe answer {status:?}"),
        };
        assert_eq!(reason_of(&status), Some(reason), "{status:?}");
        probe
    }
}

async fn all_honest_selected(c: &mut FleetClient<Channel>, fence: &Fence, n: usize) -> bool {
    for i in 0..HONEST {
        match Probe::of(probe(c, &format!("client-{i:05}"), fence, n).await) {
            // Not selected in this attempt (or not even joined yet).
            Probe::NotSelected | Probe::Unknown => return false,
            Probe::Awaited | Probe::Delivering | Probe::Delivered => {}
        }
    }
    true
}

/// Bytes that are not protobuf at all, and a message far over the size limit.
async fn garbage(url: &str) {
    let cases: [&[u8]; 5] = [
        &[0x0f],                         // field 1 with wire type 7
        &[0x0a, 0x05, b'a'],             // a string field longer than the message
        &[0x0a, 0x02, 0xff, 0xfe],       // a client id that is not UTF-8
        &[0xff; 11],                     // a varint that never ends
        &[0x00, 0x00, 0x00, 0x00, 0x00], // field number 0
    ];
    // tonic cannot decode them: refused before any handler runs (unary), or ended by the
    // update handler with tonic's status (the stream); counted as malformed_message and
    // stream_error.
    for bytes in cases {
        for method in ["Join", "Pull", "PullShared", "Leave", "FetchGlobal"] {
            let status = assert_refused_by_grpc(
                raw_unary(url, method, bytes.to_vec()).await,
                Code::Internal,
            );
            assert!(
                status.message().starts_with("failed to decode"),
                "{method}: {status:?}"
            );
        }
        let status = assert_refused_by_grpc(
            raw_stream(url, "PushUpdate", vec![bytes.to_vec()]).await,
            Code::Internal,
        );
        assert!(
            status.message().starts_with("failed to decode"),
            "{status:?}"
        );
    }
    // Over the message limit: refused by gRPC before it is decoded (message_too_large).
    assert_refused_by_grpc(
        raw_unary(url, "Join", vec![0x0a; 5 << 20]).await,
        Code::OutOfRange,
    );
}

/// Requests from a client that never joined, and ids that are not ids.
async fn unknown(c: &mut FleetClient<Channel>) {
    let pulled = c
        .pull(PullRequest {
            client_id: "hostile".into(),
        })
        .await;
    assert_refused(pulled, Code::NotFound, "unknown_client");
    let fence = Fence::at("whatever", 1, 1);
    assert_refused(
        push(c, header("hostile", &fence, 1, 4), &[0.0; 4]).await,
        Code::NotFound,
        "unknown_client",
    );
    for id in ["", "has space", &"x".repeat(200)] {
        let joined = c
            .join(shoal_proto::v1::JoinRequest {
                client_id: id.into(),
                num_examples: 1,
            })
            .await;
        assert_refused(joined, Code::InvalidArgument, "bad_client_id");
    }
}

/// Every kind of broken update from a selected client, in the open round.
async fn payloads(url: &str, c: &mut FleetClient<Channel>, fence: &Fence, global: &[f32]) {
    let n = global.len();
    let head = |h: UpdateHeader| UpdatePart {
        part: Some(Part::Header(h)),
    };
    let hostile = |len: usize| header("hostile", fence, 100, len);
    let chunk = |offset: usize, values: &[f32]| UpdatePart {
        part: Some(Part::Chunk(Chunk {
            offset: offset as u64,
            data: Bytes::from(
                values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
        })),
    };

    // Oversize: declared beyond max_update_values, a chunk over 1 MiB, a message over gRPC's.
    let mut over = hostile(n);
    over.payload_len = limits().max_update_values as u64 + 1;
    assert_refused(
        push_parts(c, vec![head(over)]).await,
        Code::ResourceExhausted,
        "payload_too_large",
    );
    let mut over = hostile(n);
    over.payload_len = u64::MAX;
    assert_refused(
        push_parts(c, vec![head(over)]).await,
        Code::ResourceExhausted,
        "payload_too_large",
    );
    let big = UpdatePart {
        part: Some(Part::Chunk(Chunk {
            offset: 0,
            data: Bytes::from(vec![0u8; (1 << 20) + 4]),
        })),
    };
    assert_refused(
        push_parts(c, vec![head(hostile(n)), big]).await,
        Code::ResourceExhausted,
        "chunk_too_large",
    );
    let mut wide = raw(url).await.max_encoding_message_size(8 << 20);
    let giant = UpdatePart {
        part: Some(Part::Chunk(Chunk {
            offset: 0,
            data: Bytes::from(vec![0u8; 3 << 20]),
        })),
    };
    // Refused by tonic inside the stream; the update handler passes its status on.
    assert_refused_by_grpc(
        push_parts(&mut wide, vec![head(hostile(n)), giant]).await,
        Code::OutOfRange,
    );

    // Fences of another round, run or incarnation (a replay, or an update from elsewhere).
    for wrong in common::wrong_fences(fence) {
        assert_refused(
            push(c, header("hostile", &wrong, 100, n), global).await,
            Code::FailedPrecondition,
            "stale_fence",
        );
    }

    // Wrong lengths: declared, actual (a truncated stream), and counts.
    assert_refused(
        push(c, hostile(n + 1), &vec![0.0; n + 1]).await,
        Code::InvalidArgument,
        "wrong_length",
    );
    assert_refused(
        push(c, hostile(n - 1), &global[1..]).await,
        Code::InvalidArgument,
        "wrong_length",
    );
    assert_refused(
        push(c, hostile(n), &global[..n / 2]).await,
        Code::InvalidArgument,
        "payload_truncated",
    );
    let mut counted = hostile(n);
    counted.counts = vec![1];
    assert_refused(
        push(c, counted, global).await,
        Code::InvalidArgument,
        "wrong_length",
    );

    // Chunks out of order, missing, duplicated, overflowing, misaligned.
    let cases = [
        (vec![chunk(10, &global[10..20])], "chunk_out_of_order"),
        (
            vec![chunk(0, &global[..10]), chunk(20, &global[20..])],
            "chunk_out_of_order",
        ),
        (
            vec![chunk(0, &global[..10]), chunk(0, &global[..10])],
            "chunk_out_of_order",
        ),
        (vec![chunk(0, global), chunk(n, &[1.0])], "payload_overflow"),
    ];
    for (chunks, reason) in cases {
        let mut parts = vec![head(hostile(n))];
        parts.extend(chunks);
        assert_refused(push_parts(c, parts).await, Code::InvalidArgument, reason);
    }
    let misaligned = UpdatePart {
        part: Some(Part::Chunk(Chunk {
            offset: 0,
            data: Bytes::from_static(&[0, 0, 0]),
        })),
    };
    assert_refused(
        push_parts(c, vec![head(hostile(n)), misaligned]).await,
        Code::InvalidArgument,
        "chunk_misaligned",
    );

    // Streams without a header, with two, or with nothing at all.
    assert_refused(
        push_parts(c, vec![chunk(0, global)]).await,
        Code::InvalidArgument,
        "malformed",
    );
    assert_refused(
        push_parts(c, vec![head(hostile(n)), head(hostile(n))]).await,
        Code::InvalidArgument,
        "malformed",
    );
    assert_refused(
        push_parts(c, vec![]).await,
        Code::InvalidArgument,
        "malformed",
    );

    // Values: NaN, infinities, a huge norm.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = global.to_vec();
        v[n - 1] = bad;
        assert_refused(
            push(c, hostile(n), &v).await,
            Code::InvalidArgument,
            "non_finite",
        );
    }
    let far: Vec<f32> = global.iter().map(|g| g + 100.0).collect();
    assert_refused(
        push(c, hostile(n), &far).await,
        Code::InvalidArgument,
        "norm_too_large",
    );

    // Weights and metrics.
    for examples in [0, u64::MAX] {
        assert_refused(
            push(c, header("hostile", fence, examples, n), global).await,
            Code::InvalidArgument,
            "bad_weight",
        );
    }
    let mut poisoned = hostile(n);
    poisoned.metrics.insert("loss".into(), f64::NAN);
    assert_refused(
        push(c, poisoned, global).await,
        Code::InvalidArgument,
        "malformed",
    );

    // A stream abandoned half way: its slot in the round is released, not held forever.
    let parts = futures::stream::iter(vec![head(hostile(n)), chunk(0, &global[..10])])
        .chain(futures::stream::pending());
    let abandoned = tokio::time::timeout(Duration::from_millis(300), c.push_update(parts)).await;
    assert!(
        abandoned.is_err(),
        "the coordinator waits for the rest of the stream"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = push(c, hostile(n), &nan_at(global, 0)).await.unwrap_err();
        if r.code() != Code::Unavailable {
            // Admitted again, and refused for its values.
            assert_refused(r, Code::InvalidArgument, "non_finite");
            break;
        }
        // The abandoned upload still holds the slot.
        assert_refused(r, Code::Unavailable, "in_flight");
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Updates claiming honest clients' ids, once their real update is in.
async fn impersonation(c: &mut FleetClient<Channel>, fence: &Fence, global: &[f32]) {
    let n = global.len();
    for i in 0..HONEST {
        let id = format!("client-{i:05}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Probe::of(probe(c, &id, fence, n).await) {
                Probe::Delivered => break,
                Probe::Awaited | Probe::Delivering => {}
                other => panic!("{id}: {other:?}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never delivered"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_refused(
            push(c, header(&id, fence, 10, n), global).await,
            Code::AlreadyExists,
            "duplicate",
        );
    }
}

/// Many pulls at once from one client: its burst is served, about a second's worth is paced,
/// the rest is refused at once; the honest clients never notice.
async fn flood(url: &str) {
    let c = raw(url).await;
    let pulls = (0..300).map(|_| {
        let mut c = c.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                c.pull(PullRequest {
                    client_id: "hostile".into(),
                }),
            )
            .await
            .expect("every pull is answered")
        }
    });
    let results = futures::future::join_all(pulls).await;
    let mut refused = 0;
    for r in results {
        match r {
            Ok(_) => {}
            Err(status) => {
                assert_refused(status, Code::ResourceExhausted, "rate_limited");
                refused += 1;
            }
        }
    }
    // 41 at once (burst 40), 20 paced over a second, the rest refused.
    assert!(refused >= 200, "only {refused} of 300 pulls refused");
}

/// Round 1's updates replayed while round 2 is open: an honest client's is refused as stale;
/// once the hostile client has left (which lets round 2 close), its own is refused as unknown.
async fn replays(c: &mut FleetClient<Channel>, fence: &Fence, global: &[f32]) {
    let n = global.len();
    assert_refused(
        push(c, header("client-00000", fence, 10, n), global).await,
        Code::FailedPrecondition,
        "stale_fence",
    );
    c.leave(LeaveRequest {
        client_id: "hostile".into(),
    })
    .await
    .unwrap();
    assert_refused(
        push(c, header("hostile", fence, 100, n), global).await,
        Code::NotFound,
        "unknown_client",
    );
}

fn nan_at(global: &[f32], index: usize) -> Vec<f32> {
    let mut v = global.to_vec();
    v[index] = f32::NAN;
    v
}

/// A gRPC codec that sends bytes as they are: how to put garbage on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawBytes;

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

async fn raw_grpc(url: &str) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(16 << 20);
    grpc.ready().await.unwrap();
    grpc
}

fn path(method: &str) -> PathAndQuery {
    format!("/shoal.v1.Fleet/{method}").parse().unwrap()
}

async fn raw_unary(url: &str, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    raw_grpc(url)
        .await
        .unary(Request::new(body), path(method), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

async fn raw_stream(url: &str, method: &str, bodies: Vec<Vec<u8>>) -> Result<Vec<u8>, Status> {
    raw_grpc(url)
        .await
        .client_streaming(
            Request::new(futures::stream::iter(bodies)),
            path(method),
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
}
