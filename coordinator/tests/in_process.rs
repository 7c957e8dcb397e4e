//! The fleet protocol called in the coordinator's own process (`Coordinator::in_process`, what
//! `shoal run`'s fleet uses): the same rounds as over gRPC, and every bad upload refused with
//! the same status and reason, whether it comes as chunks or as values handed over.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{assert_refused, header};
use futures::StreamExt;
use shoal_coordinator::Limits;
use shoal_proto::v1::{
    Chunk, Compression, Fence, FetchRequest, JoinRequest, PullRequest, Task, UpdateHeader,
    UpdatePart, pull_reply::Reply, update_part::Part,
};
use shoal_proto::{ChunkAssembler, DirectFleet, MAX_CHUNK_BYTES, encode_chunks};
use std::sync::Arc;
use tonic::Code;

async fn join(fleet: &dyn DirectFleet, id: &str, examples: u64) {
    fleet
        .join(JoinRequest {
            client_id: id.into(),
            num_examples: examples,
        })
        .await
        .unwrap();
}

async fn task(fleet: &dyn DirectFleet, id: &str) -> Task {
    loop {
        let pulled = fleet
            .pull(PullRequest {
                client_id: id.into(),
            })
            .await
            .unwrap();
        match pulled.reply.unwrap() {
            Reply::Task(task) => return task,
            Reply::Wait(_) => continue,
            other => panic!("expected a task, got {other:?}"),
        }
    }
}

async fn fetch(fleet: &dyn DirectFleet, id: &str, fence: &Fence, len: u64) -> Vec<f32> {
    let mut stream = fleet
        .fetch_global(FetchRequest {
            client_id: id.into(),
            fence: Some(fence.clone()),
        })
        .await
        .unwrap();
    let mut global = ChunkAssembler::new(len, len as usize, MAX_CHUNK_BYTES).unwrap();
    while let Some(chunk) = stream.next().await {
        global.push(&chunk.unwrap()).unwrap();
    }
    global.finish().unwrap()
}

fn parts(header: UpdateHeader, chunks: impl IntoIterator<Item = Chunk>) -> Vec<UpdatePart> {
    let mut parts = vec![UpdatePart {
        part: Some(Part::Header(header)),
    }];
    parts.extend(chunks.into_iter().map(|c| UpdatePart {
        part: Some(Part::Chunk(c)),
    }));
    parts
}

fn update(header: UpdateHeader, values: &[f32]) -> Vec<UpdatePart> {
    parts(header, encode_chunks(values, 1000))
}

/// A coordinator of logistic regression on digits whose first round asks clients "a" (10
/// examples) and "b" (30), both joined in process; "a"'s task.
async fn first_round() -> (common::Running, Task) {
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    let running = common::start(common::config(2, 2), spec, split.test, Limits::default()).await;
    let fleet = running.coordinator.in_process();
    join(fleet.as_ref(), "a", 10).await;
    join(fleet.as_ref(), "b", 30).await;
    let t = task(fleet.as_ref(), "a").await;
    (running, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_clients_run_rounds_and_bad_uploads_are_refused_as_over_grpc() {
    let (running, t) = first_round().await;
    let fleet = running.coordinator.in_process();
    let fleet = fleet.as_ref();
    let fence = t.fence.clone().unwrap();
    let n = t.update_len as usize;
    let global = fetch(fleet, "a", &fence, t.global_len).await;
    assert_eq!(global.len(), n);

    // Someone who never joined; chunks before the header; a short payload; a NaN; a wrong
    // length; an empty upload.
    let good_a = vec![1.0f32; n];
    assert_refused(
        fleet
            .push_update(update(header("zz", &fence, 10, n), &good_a))
            .await,
        Code::NotFound,
        "unknown_client",
    );
    let mut headless = update(header("a", &fence, 10, n), &good_a);
    headless.remove(0);
    assert_refused(
        fleet.push_update(headless).await,
        Code::InvalidArgument,
        "malformed",
    );
    assert!(
        fleet
            .push_update(update(header("a", &fence, 10, n), &good_a[..n - 1]))
            .await
            .is_err()
    );
    let mut nan = good_a.clone();
    nan[7] = f32::NAN;
    assert_refused(
        fleet
            .push_update(update(header("a", &fence, 10, n), &nan))
            .await,
        Code::InvalidArgument,
        "non_finite",
    );
    assert_refused(
        fleet
            .push_update(update(
                header("a", &fence, 10, n + 1),
                &[good_a.clone(), vec![1.0]].concat(),
            ))
            .await,
        Code::InvalidArgument,
        "wrong_length",
    );
    assert_refused(
        fleet.push_update(Vec::new()).await,
        Code::InvalidArgument,
        "malformed",
    );

    // The good updates still make the round: its global is their weighted mean, exactly.
    fleet
        .push_update(update(header("a", &fence, 10, n), &good_a))
        .await
        .unwrap();
    let t_b = task(fleet, "b").await;
    assert_eq!(t_b.fence.as_ref(), Some(&fence));
    fleet
        .push_update(update(header("b", &fence, 30, n), &vec![3.0f32; n]))
        .await
        .unwrap();
    let t2 = task(fleet, "a").await;
    let fence2 = t2.fence.clone().unwrap();
    assert_eq!(fence2.round, 2);
    let global = fetch(fleet, "a", &fence2, t2.global_len).await;
    assert!(global.iter().all(|v| *v == 2.5), "{:?}", &global[..4]);
    // The late round-1 update is stale now.
    assert_refused(
        fleet
            .push_update(update(header("b", &fence, 30, n), &vec![3.0f32; n]))
            .await,
        Code::FailedPrecondition,
        "stale_fence",
    );
    running.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_updates_handed_over_as_values_pass_the_same_checks() {
    let (running, t) = first_round().await;
    let fleet = running.coordinator.in_process();
    let fleet = fleet.as_ref();
    let fence = t.fence.clone().unwrap();
    let n = t.update_len as usize;
    let shared = |values: Vec<f32>| Arc::new(values);

    // Someone who never joined; fewer or more values than the header says; a NaN; a header
    // of the wrong length; a header that claims an encoding the round does not ask for.
    let good_a = shared(vec![1.0f32; n]);
    assert_refused(
        fleet
            .push_values(header("zz", &fence, 10, n), good_a.clone())
            .await,
        Code::NotFound,
        "unknown_client",
    );
    assert_refused(
        fleet
            .push_values(header("a", &fence, 10, n), shared(vec![1.0; n - 1]))
            .await,
        Code::InvalidArgument,
        "payload_truncated",
    );
    assert_refused(
        fleet
            .push_values(header("a", &fence, 10, n), shared(vec![1.0; n + 1]))
            .await,
        Code::InvalidArgument,
        "payload_overflow",
    );
    let mut nan = vec![1.0f32; n];
    nan[7] = f32::NAN;
    assert_refused(
        fleet
            .push_values(header("a", &fence, 10, n), shared(nan))
            .await,
        Code::InvalidArgument,
        "non_finite",
    );
    assert_refused(
        fleet
            .push_values(header("a", &fence, 10, n + 1), shared(vec![1.0; n + 1]))
            .await,
        Code::InvalidArgument,
        "wrong_length",
    );
    let int8 = UpdateHeader {
        compression: Compression::Int8 as i32,
        ..header("a", &fence, 10, n)
    };
    assert_refused(
        fleet.push_values(int8, good_a.clone()).await,
        Code::InvalidArgument,
        "malformed",
    );

    // One client's values, the other's chunks: the round's global is their weighted mean,
    // and the values handed over are the client's, unchanged.
    fleet
        .push_values(header("a", &fence, 10, n), good_a.clone())
        .await
        .unwrap();
    assert!(good_a.iter().all(|v| *v == 1.0));
    task(fleet, "b").await;
    fleet
        .push_update(update(header("b", &fence, 30, n), &vec![3.0f32; n]))
        .await
        .unwrap();
    let t2 = task(fleet, "a").await;
    let fence2 = t2.fence.clone().unwrap();
    let global = fetch(fleet, "a", &fence2, t2.global_len).await;
    assert!(global.iter().all(|v| *v == 2.5), "{:?}", &global[..4]);
    assert_refused(
        fleet
            .push_values(header("b", &fence, 30, n), shared(vec![3.0; n]))
            .await,
        Code::FailedPrecondition,
        "stale_fence",
    );
    running.abort();
}
