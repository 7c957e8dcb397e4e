//! The wire protocol against a live coordinator: large models, and every kind of bad update
//! refused with a clear status while the aggregate stays exactly what the good updates make.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use bytes::Bytes;
use common::{assert_refused, fetch, header, join, push, push_parts, raw, task};
use shoal_coordinator::Limits;
use shoal_coordinator::strategy::init_stream;
use shoal_models::init_params;
use shoal_proto::v1::{Chunk, LeaveRequest, UpdatePart, update_part::Part};
use tonic::Code;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_over_16_mib_goes_down_and_up_intact() {
    let split = common::digits();
    let spec = common::spec("mlp:65536", &split.train);
    let config = common::config(1, 2);
    let expected = init_params(&spec, init_stream(config.seed)).unwrap();
    assert!(
        expected.len() * 4 > 16 << 20,
        "{} bytes",
        expected.len() * 4
    );
    // The upload is synthetic (values up to ±500): no norm bound, this test is about transport.
    let limits = Limits {
        max_update_norm: None,
        ..Limits::default()
    };
    let running = common::start(config, spec, split.test, limits).await;
    let mut c = raw(&running.url).await;
    join(&mut c, "big", 5).await;

    let t = task(&mut c, "big").await;
    let fence = t.fence.clone().unwrap();
    let down = fetch(&mut c, "big", &fence, t.global_len).await.unwrap();
    assert_eq!(bits(&down), bits(&expected), "download intact");

    let up: Vec<f32> = (0..expected.len())
        .map(|i| ((i % 4093) as f32 - 2000.0) * 0.25)
        .collect();
    push(&mut c, header("big", &fence, 7, up.len()), &up)
        .await
        .unwrap();

    let t2 = task(&mut c, "big").await;
    let fence2 = t2.fence.clone().unwrap();
    assert_eq!(fence2.round, 2);
    let back = fetch(&mut c, "big", &fence2, t2.global_len).await.unwrap();
    assert_eq!(
        bits(&back),
        bits(&up),
        "upload intact: the mean of one update is the update"
    );
    push(&mut c, header("big", &fence2, 7, up.len()), &up)
        .await
        .unwrap();
    assert_eq!(running.finish().await.unwrap().summary.rounds_completed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_and_change_nothing() {
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    let config = common::config(2, 2);
    let running = common::start(config, spec, split.test, Limits::default()).await;
    let url = running.url.clone();
    let mut a = raw(&url).await;
    let mut b = raw(&url).await;
    join(&mut a, "a", 10).await;
    join(&mut b, "b", 30).await;
    let t = task(&mut a, "a").await;
    let fence = t.fence.clone().unwrap();
    let n = t.update_len as usize;
    assert_eq!(n, 650);
    let good_a = vec![1.0f32; n];

    // Someone who never joined.
    assert_refused(
        push(&mut a, header("zz", &fence, 10, n), &good_a).await,
        Code::NotFound,
        "unknown_client",
    );
    // A client that joined after the round was opened was not selected.
    join(&mut a, "late", 10).await;
    assert_refused(
        push(&mut a, header("late", &fence, 10, n), &good_a).await,
        Code::PermissionDenied,
        "not_selected",
    );
    a.leave(LeaveRequest {
        client_id: "late".into(),
    })
    .await
    .unwrap();
    // A round that is not open, another run, another incarnation.
    for wrong in common::wrong_fences(&fence) {
        assert_refused(
            push(&mut a, header("a", &wrong, 10, n), &good_a).await,
            Code::FailedPrecondition,
            "stale_fence",
        );
        assert_refused(
            fetch(&mut a, "a", &wrong, t.global_len).await,
            Code::FailedPrecondition,
            "stale_fence",
        );
    }
    // Wrong parameter count, declared or actual.
    assert_refused(
        push(&mut a, header("a", &fence, 10, n - 1), &good_a[1..]).await,
        Code::InvalidArgument,
        "wrong_length",
    );
    assert_refused(
        push(&mut a, header("a", &fence, 10, n), &good_a[1..]).await,
        Code::InvalidArgument,
        "payload_truncated",
    );
    // Non-finite values.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = good_a.clone();
        v[5] = bad;
        assert_refused(
            push(&mut a, header("a", &fence, 10, n), &v).await,
            Code::InvalidArgument,
            "non_finite",
        );
    }
    // Zero weight, a stream without header, chunks out of order, an oversize chunk.
    assert_refused(
        push(&mut a, header("a", &fence, 0, n), &good_a).await,
        Code::InvalidArgument,
        "bad_weight",
    );
    let chunk = |offset: u64, len: usize| UpdatePart {
        part: Some(Part::Chunk(Chunk {
            offset,
            data: Bytes::from(vec![0u8; len * 4]),
        })),
    };
    assert_refused(
        push_parts(&mut a, vec![chunk(0, n)]).await,
        Code::InvalidArgument,
        "malformed",
    );
    let head = || UpdatePart {
        part: Some(Part::Header(header("a", &fence, 10, n))),
    };
    assert_refused(
        push_parts(&mut a, vec![head(), chunk(10, 10)]).await,
        Code::InvalidArgument,
        "chunk_out_of_order",
    );
    assert_refused(
        push_parts(&mut a, vec![head(), chunk(0, 10), chunk(0, 10)]).await,
        Code::InvalidArgument,
        "chunk_out_of_order",
    );
    assert_refused(
        push_parts(&mut a, vec![head(), chunk(0, n + 1)]).await,
        Code::InvalidArgument,
        "payload_overflow",
    );

    // The good updates, once each.
    push(&mut a, header("a", &fence, 10, n), &good_a)
        .await
        .unwrap();
    assert_refused(
        push(&mut a, header("a", &fence, 10, n), &good_a).await,
        Code::AlreadyExists,
        "duplicate",
    );
    let t_b = task(&mut b, "b").await;
    assert_eq!(t_b.fence.as_ref(), Some(&fence));
    push(&mut b, header("b", &fence, 30, n), &vec![3.0f32; n])
        .await
        .unwrap();

    // Round 2's global is exactly the weighted mean of the two good updates.
    let t2 = task(&mut a, "a").await;
    let fence2 = t2.fence.clone().unwrap();
    let global = fetch(&mut a, "a", &fence2, t2.global_len).await.unwrap();
    assert!(global.iter().all(|v| *v == 2.5), "{:?}", &global[..4]);
    // The late round-1 update is now refused as stale.
    assert_refused(
        push(&mut b, header("b", &fence, 30, n), &vec![3.0f32; n]).await,
        Code::FailedPrecondition,
        "stale_fence",
    );

    push(&mut a, header("a", &fence2, 10, n), &good_a)
        .await
        .unwrap();
    task(&mut b, "b").await;
    push(&mut b, header("b", &fence2, 30, n), &good_a)
        .await
        .unwrap();
    let outcome = running.finish().await.unwrap();
    assert_eq!(outcome.records[0].clients, 2);
    assert_eq!(outcome.records[0].examples, 40);
}

/// A pull whose connection died unnoticed is still open at the coordinator when the client,
/// reconnected, joins and pulls again: the round's task goes to the newest pull, and the old
/// one (whose answer would be lost) is told to wait.
#[tokio::test(flavor = "current_thread")]
async fn a_task_goes_to_the_newest_pull_of_a_client() {
    use shoal_proto::v1::pull_reply::Reply;
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    // The old pull, not handed the task, waits out its poll: a short one.
    let limits = Limits {
        poll_timeout: std::time::Duration::from_millis(500),
        ..Limits::default()
    };
    let running = common::start(common::config(2, 1), spec, split.test, limits).await;
    let c = running.coordinator.clone();
    c.join("a", 10).unwrap();
    let pull = |c: shoal_coordinator::Coordinator| {
        tokio::spawn(async move { c.pull("a").await.unwrap().reply.unwrap() })
    };
    let old = pull(c.clone());
    // One thread: the old pull runs until it waits for a round.
    tokio::task::yield_now().await;
    c.join("a", 10).unwrap();
    let new = pull(c.clone());
    tokio::task::yield_now().await;
    // The second client opens the round.
    c.join("b", 10).unwrap();
    assert!(matches!(new.await.unwrap(), Reply::Task(_)));
    assert!(matches!(old.await.unwrap(), Reply::Wait(_)));
    running.abort();
}

/// Pushes `bytes` as a compressed update of `len` values encoded as `compression`.
async fn push_encoded(
    c: &mut shoal_proto::v1::fleet_client::FleetClient<tonic::transport::Channel>,
    id: &str,
    fence: &shoal_proto::v1::Fence,
    compression: shoal_proto::v1::Compression,
    len: usize,
    bytes: &[u8],
) -> Result<shoal_proto::v1::PushReply, tonic::Status> {
    let mut h = header(id, fence, 5, len);
    h.compression = compression as i32;
    h.encoded_len = bytes.len() as u64;
    let mut parts = vec![UpdatePart {
        part: Some(Part::Header(h)),
    }];
    parts.extend(shoal_proto::encode_chunks(bytes, 1000).map(|c| UpdatePart {
        part: Some(Part::Chunk(c)),
    }));
    push_parts(c, parts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_updates_decode_onto_the_global_state_and_others_are_refused() {
    use shoal_proto::Codec;
    use shoal_proto::v1::Compression;
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    let mut config = common::config(1, 2);
    config.compress = Some("int8".into());
    let running = common::start(config, spec, split.test, Limits::default()).await;
    let mut c = raw(&running.url).await;
    join(&mut c, "a", 5).await;
    let t = task(&mut c, "a").await;
    assert_eq!(t.compression, Compression::Int8 as i32);
    let fence = t.fence.clone().unwrap();
    let global = fetch(&mut c, "a", &fence, t.global_len).await.unwrap();
    let n = global.len();
    let delta: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
    let bytes = Codec::Int8.encode(&delta);

    // Plain values where the round asks for int8, another encoding, and bytes that do not
    // decode (a NaN scale, a short payload) are refused; the round stays open.
    let plain = push(&mut c, header("a", &fence, 5, n), &global).await;
    assert_refused(plain.unwrap_err(), Code::InvalidArgument, "malformed");
    let fp16 = Codec::Fp16.encode(&delta);
    let other = push_encoded(&mut c, "a", &fence, Compression::Fp16, n, &fp16).await;
    assert!(
        other
            .unwrap_err()
            .message()
            .contains("asks for COMPRESSION_INT8"),
        "the refusal names the encoding asked for"
    );
    let mut nan = bytes.clone();
    nan[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let bad = push_encoded(&mut c, "a", &fence, Compression::Int8, n, &nan).await;
    assert_refused(bad.unwrap_err(), Code::InvalidArgument, "malformed");
    let short = push_encoded(&mut c, "a", &fence, Compression::Int8, n, &bytes[..100]).await;
    assert!(short.is_err());

    push_encoded(&mut c, "a", &fence, Compression::Int8, n, &bytes)
        .await
        .unwrap();
    let t2 = task(&mut c, "a").await;
    let fence2 = t2.fence.clone().unwrap();
    let next = fetch(&mut c, "a", &fence2, t2.global_len).await.unwrap();
    let decoded = Codec::Int8.decode(&bytes, n).unwrap();
    let expected: Vec<f32> = global.iter().zip(&decoded).map(|(g, d)| g + d).collect();
    assert_eq!(
        bits(&next),
        bits(&expected),
        "the mean of one update is the global state plus its decoded difference"
    );
}

/// A shared pull (one long poll for several clients) answers each client as its own pull
/// would: a refusal at once, a task when the round opens, nothing when the poll times out.
/// A request naming a client twice, or too many clients, is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pull_answers_each_client_as_its_own_pull_would() {
    use shoal_proto::MAX_SHARED_PULL;
    use shoal_proto::v1::pull_reply::Reply;
    use shoal_proto::v1::{SharedPullReply, SharedPullRequest, client_pull::Answer};
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    let limits = Limits {
        poll_timeout: std::time::Duration::from_millis(300),
        ..Limits::default()
    };
    let running = common::start(common::config(3, 1), spec, split.test, limits).await;
    let mut c = raw(&running.url).await;
    let ids = |names: &[&str]| SharedPullRequest {
        client_ids: names.iter().map(|n| n.to_string()).collect(),
    };
    let answers = |reply: SharedPullReply| {
        reply
            .answers
            .into_iter()
            .map(|a| (a.client_id, a.answer.unwrap()))
            .collect::<Vec<_>>()
    };

    assert_refused(
        c.pull_shared(ids(&["a", "b", "a"])).await,
        Code::InvalidArgument,
        "malformed",
    );
    let many: Vec<String> = (0..=MAX_SHARED_PULL).map(|i| format!("c{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_refused(
        c.pull_shared(ids(&many)).await,
        Code::InvalidArgument,
        "malformed",
    );

    join(&mut c, "a", 10).await;
    join(&mut c, "b", 10).await;
    // A client that never joined is refused inside the reply; the others are not answered
    // (they pull again).
    let reply = c.pull_shared(ids(&["a", "ghost", "b"])).await.unwrap();
    let answered = answers(reply.into_inner());
    assert_eq!(answered.len(), 1, "{answered:?}");
    let (id, Answer::Refused(refusal)) = &answered[0] else {
        panic!("{answered:?}");
    };
    assert_eq!(id, "ghost");
    assert_refused(
        Err::<(), _>(refusal.clone().into_status()),
        Code::NotFound,
        "unknown_client",
    );
    // No round yet (it waits for a third client): the poll times out answering nobody.
    let reply = c.pull_shared(ids(&["a", "b"])).await.unwrap();
    assert!(reply.into_inner().answers.is_empty());

    // The third client arrives while a and b wait in one shared pull: both get their tasks
    // from it, for the same round, with seeds of their own.
    let waiting = {
        let mut c = c.clone();
        tokio::spawn(async move { c.pull_shared(ids(&["a", "b"])).await })
    };
    let mut tasks = std::collections::BTreeMap::new();
    let mut c3 = raw(&running.url).await;
    join(&mut c3, "c", 10).await;
    let third = task(&mut c3, "c").await;
    // The shared pull may have been answered for one client before the other was handed its
    // task: pull again for whoever is left, as a fleet does.
    let mut reply = waiting.await.unwrap().unwrap().into_inner();
    loop {
        for (id, answer) in answers(reply) {
            let Answer::Reply(pulled) = answer else {
                panic!("{id} refused: {answer:?}");
            };
            match pulled.reply.unwrap() {
                Reply::Task(t) => tasks.insert(id, t),
                other => panic!("{id} answered {other:?}"),
            };
        }
        let left: Vec<&str> = ["a", "b"]
            .into_iter()
            .filter(|id| !tasks.contains_key(*id))
            .collect();
        if left.is_empty() {
            break;
        }
        reply = c.pull_shared(ids(&left)).await.unwrap().into_inner();
    }
    assert_eq!(tasks["a"].fence, third.fence);
    assert_eq!(tasks["b"].fence, third.fence);
    let seeds: std::collections::BTreeSet<u64> =
        [tasks["a"].seed, tasks["b"].seed, third.seed].into();
    assert_eq!(seeds.len(), 3, "each client has a seed of its own");
    assert!(
        running.coordinator.refusals()["unknown_client"] >= 1,
        "a client's refusal inside a shared pull is counted"
    );
    running.abort();
}

/// A fleet's shared pulls (`shoal_client::shared_pull`) against a live coordinator: each
/// client hears what its own pull would have told it — a refusal, Wait when the poll times
/// out, its task when the round opens — whichever clients share a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleets_shared_pulls_hear_what_their_own_pulls_would() {
    use shoal_client::connection::{BearerAuth, channel, grpc_client};
    use shoal_client::shared_pull::SharedPulls;
    use shoal_proto::v1::pull_reply::Reply;
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    let limits = Limits {
        poll_timeout: std::time::Duration::from_millis(200),
        ..Limits::default()
    };
    let running = common::start(common::config(3, 1), spec, split.test, limits).await;
    let connection = || grpc_client(channel(&running.url, None).unwrap(), BearerAuth::none());
    let pulls = SharedPulls::new(vec![connection(), connection()]);
    let mut c = raw(&running.url).await;
    join(&mut c, "a", 10).await;
    join(&mut c, "b", 10).await;
    let heard = |id: &'static str| {
        let pulls = pulls.clone();
        tokio::spawn(async move { pulls.pull(id).await.expect("the coordinator shares pulls") })
    };

    let ghost = heard("ghost").await.unwrap();
    assert_refused(ghost, Code::NotFound, "unknown_client");
    // No round yet (it waits for a third client): the poll times out and the client hears
    // Wait, as its own pull would.
    let a = heard("a").await.unwrap().unwrap();
    assert!(matches!(a.reply, Some(Reply::Wait(_))), "{a:?}");
    assert!(pulls.supported());

    // a and b wait together; c arrives and the round opens: both hear their tasks.
    let (a, b) = (heard("a"), heard("b"));
    join(&mut c, "c", 10).await;
    let third = task(&mut c, "c").await;
    for (id, waiting) in [("a", a), ("b", b)] {
        // A client may hear Wait first (its poll timed out before c arrived): it pulls again.
        let mut reply = waiting.await.unwrap().unwrap();
        while matches!(reply.reply, Some(Reply::Wait(_))) {
            reply = heard(id).await.unwrap().unwrap();
        }
        let Some(Reply::Task(t)) = reply.reply else {
            panic!("{id}: {reply:?}");
        };
        assert_eq!(t.fence, third.fence, "{id}");
    }
    running.abort();
}

/// A shared pull answers no more clients than fit one reply under the message limit (a
/// coordinator may set small chunks, and with them a small limit); the clients it could not
/// answer stay owed their tasks and hear them in the next pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pull_answers_no_more_than_fit_one_reply() {
    use shoal_proto::MAX_SHARED_PULL;
    use shoal_proto::v1::pull_reply::Reply;
    use shoal_proto::v1::{SharedPullRequest, client_pull::Answer};
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    // The message limit is 64 KiB plus a chunk: a thousand tasks (~130 bytes each with their
    // ids) do not fit one message.
    let limits = Limits {
        max_chunk_bytes: 1024,
        ..Limits::default()
    };
    let n = MAX_SHARED_PULL;
    let running = common::start(common::config(n, 1), spec, split.test, limits).await;
    let mut c = raw(&running.url).await;
    let ids: Vec<String> = (0..n).map(|i| format!("client-{i:05}")).collect();
    for id in &ids {
        join(&mut c, id, 10).await;
    }
    let mut tasked = std::collections::BTreeSet::new();
    let mut replies = Vec::new();
    while tasked.len() < n {
        let left: Vec<String> = ids
            .iter()
            .filter(|id| !tasked.contains(*id))
            .cloned()
            .collect();
        let reply = c
            .pull_shared(SharedPullRequest { client_ids: left })
            .await
            .expect("every reply fits the message limit")
            .into_inner();
        replies.push(reply.answers.len());
        for answer in reply.answers {
            match answer.answer {
                Some(Answer::Reply(r)) if matches!(r.reply, Some(Reply::Task(_))) => {
                    assert!(tasked.insert(answer.client_id));
                }
                // Waiting for the round to open.
                Some(Answer::Reply(r)) if matches!(r.reply, Some(Reply::Wait(_))) => {}
                other => panic!("{}: {other:?}", answer.client_id),
            }
        }
        assert!(replies.len() < 50, "pulls answered too few: {replies:?}");
    }
    let answered: Vec<usize> = replies.into_iter().filter(|&a| a > 0).collect();
    assert!(
        answered.len() > 1,
        "one reply cannot carry them all: {answered:?}"
    );
    assert!(
        answered[0] >= 100,
        "a reply carries what fits: {answered:?}"
    );
    running.abort();
}
