//! Partial sums from a sub-aggregator, sent by hand to a real coordinator over gRPC: a sum
//! that names a client already counted, a client not selected, another round, the wrong
//! length or totals out of range is refused with its reason, counted, and changes nothing; a
//! good one counts its clients, and the round's model is the bits of their updates folded
//! one by one.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{assert_refused, config, digits, fetch, header, join, push, raw, spec, start, task};
use shoal_coordinator::Limits;
use shoal_coordinator::aggregate::ExactSum;
use shoal_proto::v1::fleet_client::FleetClient;
use shoal_proto::v1::{
    Contribution, Contributions, Fence, PartialHeader, PartialPart, PushReply, partial_part,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends a partial sum of `totals` for `clients` (each with `examples`) under `fence`, all
/// named in its header.
async fn send(
    c: &mut FleetClient<Channel>,
    fence: &Fence,
    clients: &[&str],
    examples: u64,
    totals: &[i128],
) -> Result<PushReply, Status> {
    let all = clients.len();
    send_split(c, fence, clients, examples, totals, all, all as u64).await
}

/// Sends a partial sum whose header names the first `in_header` of `clients` and declares
/// `declared` in all; each further client follows in a message of its own.
async fn send_split(
    c: &mut FleetClient<Channel>,
    fence: &Fence,
    clients: &[&str],
    examples: u64,
    totals: &[i128],
    in_header: usize,
    declared: u64,
) -> Result<PushReply, Status> {
    let mut contributions = clients.iter().map(|id| Contribution {
        client_id: (*id).into(),
        num_examples: examples,
        metrics: Default::default(),
    });
    let header = PartialHeader {
        aggregator_id: "aggregator-test".into(),
        fence: Some(fence.clone()),
        contributions: contributions.by_ref().take(in_header).collect(),
        sum_len: totals.len() as u64,
        counts: vec![],
        contribution_count: declared,
    };
    let parts: Vec<PartialPart> = std::iter::once(partial_part::Part::Header(header))
        .chain(contributions.map(|one| {
            partial_part::Part::More(Contributions {
                contributions: vec![one],
            })
        }))
        .chain(
            shoal_proto::encode_chunks(totals, shoal_proto::MAX_CHUNK_BYTES)
                .map(partial_part::Part::Chunk),
        )
        .map(|part| PartialPart { part: Some(part) })
        .collect();
    c.push_partial(futures::stream::iter(parts))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_partial_sums_are_refused_and_a_good_one_counts_its_clients() {
    let split = digits();
    let spec = spec("logreg", &split.train);
    let running = start(config(3, 1), spec, split.test, Limits::default()).await;
    let mut c = raw(&running.url).await;
    for id in ["a", "b", "c"] {
        join(&mut c, id, 10).await;
    }
    let t = task(&mut c, "a").await;
    let fence = t.fence.clone().unwrap();
    for id in ["b", "c"] {
        assert_eq!(task(&mut c, id).await.fence, t.fence);
    }
    // Joined after the round was opened: not selected.
    join(&mut c, "late", 10).await;
    let global = fetch(&mut c, "a", &fence, t.global_len).await.unwrap();
    let n = global.len();
    let update = |shift: f32| -> Vec<f32> { global.iter().map(|g| g + shift).collect() };
    let (ua, ub, uc) = (update(0.25), update(-0.5), update(0.125));

    push(&mut c, header("a", &fence, 10, n), &ua).await.unwrap();
    let mut bc = ExactSum::new(n);
    bc.fold(10, &ub).unwrap();
    bc.fold(10, &uc).unwrap();
    let good = bc.totals();

    let refused = [
        // "a" is counted already: the whole sum goes, "b" and "c" with it.
        (
            send(&mut c, &fence, &["a", "b"], 10, &good).await,
            Code::AlreadyExists,
            "duplicate",
        ),
        (
            send(&mut c, &fence, &["b", "late"], 10, &good).await,
            Code::PermissionDenied,
            "not_selected",
        ),
        (
            send(&mut c, &fence, &["b", "nobody"], 10, &good).await,
            Code::NotFound,
            "unknown_client",
        ),
        (
            send(&mut c, &fence, &["b", "b"], 10, &good).await,
            Code::AlreadyExists,
            "duplicate",
        ),
        (
            send(&mut c, &fence, &[], 10, &good).await,
            Code::InvalidArgument,
            "malformed",
        ),
        (
            send(
                &mut c,
                &Fence {
                    round: fence.round + 1,
                    ..fence.clone()
                },
                &["b", "c"],
                10,
                &good,
            )
            .await,
            Code::FailedPrecondition,
            "stale_fence",
        ),
        (
            send(&mut c, &fence, &["b", "c"], 10, &good[1..]).await,
            Code::InvalidArgument,
            "wrong_length",
        ),
        // Declares more contributions than come before the sum.
        (
            send_split(&mut c, &fence, &["b", "c"], 10, &good, 1, 3).await,
            Code::InvalidArgument,
            "malformed",
        ),
        // Its header alone holds more than it declares.
        (
            send_split(&mut c, &fence, &["b", "c"], 10, &good, 2, 1).await,
            Code::InvalidArgument,
            "malformed",
        ),
        (
            send(&mut c, &fence, &["b", "c"], 0, &good).await,
            Code::InvalidArgument,
            "bad_weight",
        ),
        (
            send(&mut c, &fence, &["b", "c"], 10, &vec![i128::MAX; n]).await,
            Code::InvalidArgument,
            "out_of_range",
        ),
    ];
    for (result, code, reason) in refused {
        assert_refused(result, code, reason);
    }
    // Nothing above counted "b" or "c": the good sum is accepted whole, "c" named after the
    // header.
    let reply = send_split(&mut c, &fence, &["b", "c"], 10, &good, 1, 2)
        .await
        .unwrap();
    assert_eq!(reply.accepted_in_round, 3);

    let outcome = running.finish().await.unwrap();
    let mut flat = ExactSum::new(n);
    for u in [&ua, &ub, &uc] {
        flat.fold(10, u).unwrap();
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&outcome.global), bits(&flat.mean().unwrap()));
    let refusals = &outcome.summary.refusals;
    for (reason, at_least) in [
        ("duplicate", 2),
        ("not_selected", 1),
        ("unknown_client", 1),
        ("malformed", 3),
        ("stale_fence", 1),
        ("wrong_length", 1),
        ("bad_weight", 1),
        ("out_of_range", 1),
    ] {
        assert!(
            refusals.get(reason).copied().unwrap_or(0) >= at_least,
            "{reason}: {refusals:?}"
        );
    }
}
