//! FedAvg over real gRPC: a coordinator on 127.0.0.1:0 and real clients.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use shoal_client::{FleetConfig, run_fleet};
use shoal_coordinator::Limits;
use shoal_coordinator::engine::selection::select;
use shoal_datasets::Partition;
use shoal_proto::v1::{LeaveRequest, PullRequest, pull_reply::Reply};
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_clients_reach_ninety_percent_on_digits_within_ten_rounds() {
    let split = common::digits();
    let mut config = common::config(10, 10);
    config.fit.epochs = 5;
    config.fit.lr = 0.1;
    let spec = common::spec("mlp", &split.train);
    let clients = common::clients(&split.train, 10, &Partition::Iid, 0);
    let running = common::start(config, spec, split.test, Limits::default()).await;
    let mut fleet = FleetConfig::new(running.url.clone());
    fleet.channels = 10; // one connection per client, as ten separate devices would have
    let fleet = tokio::spawn(run_fleet(fleet, clients, std::future::pending()));
    let outcome = running.finish().await.unwrap();
    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.finished, 10);
    assert_eq!(
        report.totals.accepted, 100,
        "every client delivers every round"
    );
    assert_eq!(outcome.summary.rounds_completed, 10);
    let accuracy = outcome.summary.final_accuracy.unwrap();
    assert!(accuracy >= 0.90, "accuracy {accuracy} after 10 rounds");
    assert!(outcome.records.iter().all(|r| r.clients == 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_a_thousand_clients_completes_rounds() {
    let split = common::digits();
    let mut config = common::config(1000, 2);
    config.round_timeout_ms = 5_000;
    config.max_retries = 0;
    config.fit.epochs = 1;
    let spec = common::spec("logreg", &split.train);
    let clients = common::clients(&split.train, 1000, &Partition::Iid, 0);
    let running = common::start(config, spec, split.test, Limits::default()).await;
    let report = run_fleet(
        FleetConfig::new(running.url.clone()),
        clients,
        std::future::pending(),
    )
    .await
    .unwrap();
    let outcome = running.finish().await.unwrap();
    assert_eq!(outcome.summary.rounds_completed, 2);
    assert!(
        outcome.records.iter().all(|r| r.clients == 1000),
        "{:?}",
        outcome.records
    );
    assert_eq!(report.finished, 1000);
    assert_eq!(report.totals.accepted, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_bits() {
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let split = common::digits();
        let config = common::config(5, 3);
        let spec = common::spec("mlp", &split.train);
        let clients = common::clients(&split.train, 5, &Partition::Dirichlet { alpha: 0.5 }, 0);
        let running = common::start(config, spec, split.test, Limits::default()).await;
        let fleet = tokio::spawn(run_fleet(
            FleetConfig::new(running.url.clone()),
            clients,
            std::future::pending(),
        ));
        let outcome = running.finish().await.unwrap();
        fleet.await.unwrap().unwrap();
        hashes.push(outcome.summary.model_sha256);
    }
    assert_eq!(hashes[0], hashes[1]);
}

/// Over-selection: 8 clients asked where 4 updates are wanted. Four deliver and the other four
/// never do, and the round closes with those four: its deadline is an hour away, so nothing
/// else could close it. A late update is then refused as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_selection_closes_a_round_once_enough_have_answered() {
    let split = common::digits();
    let mut config = common::config(10, 1);
    config.selection.clients_per_round = Some(4);
    config.selection.over_select = 2.0;
    config.round_timeout_ms = 3_600_000;
    let spec = common::spec("logreg", &split.train);
    let limits = Limits {
        poll_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let seed = config.seed;
    let running = common::start(config, spec, split.test, limits).await;
    let coordinator = running.coordinator.clone();
    let mut c = common::raw(&running.url).await;
    let ids: Vec<String> = (0..10).map(|i| format!("client-{i:05}")).collect();
    for id in &ids {
        common::join(&mut c, id, 10).await;
    }

    // Round 1, first attempt, among the ten: the seeded selection the driver makes.
    let asked = select(&ids, 8, seed, 1, 0);
    assert_eq!(asked.len(), 8);
    let mut tasks = Vec::new();
    for id in &asked {
        tasks.push(common::task(&mut c, id).await);
    }
    let fence = tasks[0].fence.clone().unwrap();
    assert!(tasks.iter().all(|t| t.fence.as_ref() == Some(&fence)));
    let n = tasks[0].update_len as usize;
    let idle = ids.iter().find(|id| !asked.contains(id)).unwrap();
    let reply = c
        .pull(PullRequest {
            client_id: idle.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(reply.reply, Some(Reply::Wait(_))),
        "{idle} was not asked: {reply:?}"
    );

    let (on_time, late) = asked.split_at(4);
    for (i, id) in on_time.iter().enumerate() {
        let accepted = common::push(&mut c, common::header(id, &fence, 10, n), &vec![1.0; n])
            .await
            .unwrap();
        assert_eq!(accepted.accepted_in_round, i as u32 + 1);
    }
    // The round closes, and with it the one-round run.
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        while !coordinator.has_ended() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the round did not close once 4 of the 8 asked had delivered"
    );
    common::assert_refused(
        common::push(
            &mut c,
            common::header(&late[0], &fence, 10, n),
            &vec![1.0; n],
        )
        .await,
        Code::FailedPrecondition,
        "stale_fence",
    );
    for id in &ids {
        c.leave(LeaveRequest {
            client_id: id.clone(),
        })
        .await
        .unwrap();
    }
    let outcome = running.finish().await.unwrap();
    assert_eq!(outcome.records.len(), 1);
    let record = &outcome.records[0];
    assert_eq!(
        (
            record.selected,
            record.clients,
            record.attempts,
            record.examples
        ),
        (8, 4, 1, 40),
        "{record:?}"
    );
}
