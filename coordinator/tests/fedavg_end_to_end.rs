//! FedAvg over real gRPC: a coordinator on 127.0.0.1:0 and real clients.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use shoal_client::{FleetConfig, run_fleet};
use shoal_coordinator::Limits;
use shoal_datasets::Partition;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_selection_closes_a_round_once_enough_have_answered() {
    let split = common::digits();
    let mut config = common::config(10, 3);
    config.selection.clients_per_round = Some(4);
    config.selection.over_select = 2.0;
    config.round_timeout_ms = 30_000;
    let spec = common::spec("logreg", &split.train);
    let clients = common::clients(&split.train, 10, &Partition::Iid, 0);
    let running = common::start(config, spec, split.test, Limits::default()).await;
    let fleet = tokio::spawn(run_fleet(
        FleetConfig::new(running.url.clone()),
        clients,
        std::future::pending(),
    ));
    let outcome = running.finish().await.unwrap();
    fleet.await.unwrap().unwrap();
    assert_eq!(outcome.records.len(), 3);
    for r in &outcome.records {
        assert_eq!(r.selected, 8, "4 wanted, over-selected by 2");
        assert!((4..=8).contains(&r.clients), "{r:?}");
        assert!(
            r.seconds < 10.0,
            "closed early, not at the 30 s deadline: {r:?}"
        );
    }
}
