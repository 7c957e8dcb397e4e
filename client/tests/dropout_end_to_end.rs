//! A simulated fleet with seeded dropouts against a real coordinator on 127.0.0.1:0: every
//! round still closes, rounds that lost clients close at their deadline, and the model learns.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use shoal_client::faults::fault_for;
use shoal_client::{Faults, FleetConfig, run_fleet};
use shoal_coordinator::config::SelectionConfig;
use shoal_coordinator::{Coordinator, Limits, RunConfig, RunStart, strategy};
use shoal_datasets::{DatasetSource, Partition, load, partition};
use shoal_models::{ModelKind, ModelSpec};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_clients_dropping_out_slows_rounds_but_every_round_closes() {
    let split = load(&DatasetSource::Digits, 0.2, 0).unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("client-{i:05}")).collect();
    let clients: Vec<_> = partition(
        &split.train.labels,
        split.train.num_classes,
        10,
        &Partition::Iid,
        0,
    )
    .unwrap()
    .iter()
    .zip(&ids)
    .map(|(idx, id)| (id.clone(), split.train.subset(idx).unwrap()))
    .collect();
    let timeout = Duration::from_secs(2);
    let mut config = RunConfig {
        rounds: 10,
        selection: SelectionConfig {
            clients_per_round: None,
            fraction: 1.0,
            min_clients: 2,
            over_select: 1.0,
            min_available: 10,
        },
        round_timeout_ms: timeout.as_millis() as u64,
        ..RunConfig::default()
    };
    config.fit.epochs = 5;
    config.fit.lr = 0.1;
    let spec = ModelSpec::for_dataset("mlp".parse::<ModelKind>().unwrap(), &split.train);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let strategy = strategy::build(&config, &spec).unwrap();
    let coordinator = Coordinator::new(config.clone(), Limits::default(), spec);
    let start = RunStart::new(strategy, Arc::new(split.test)).drain_limit(Duration::from_secs(5));
    let hosted = coordinator
        .host(listener, start, std::future::pending())
        .unwrap();
    let url = hosted.url.clone();

    let faults = Faults {
        dropout: 0.5,
        ..Faults::default()
    };
    let mut fleet = FleetConfig::new(url);
    fleet.channels = 10;
    fleet.options.seed = config.seed;
    fleet.faults = faults.clone();
    let fleet = tokio::spawn(run_fleet(fleet, clients, std::future::pending()));

    let outcome = hosted.finish().await.unwrap();
    let report = fleet.await.unwrap().unwrap();

    assert_eq!(outcome.records.len(), 10, "every round closes");
    assert_eq!(report.finished, 10);
    // The same draws the clients make: who vanishes in which round is known in advance.
    let survivors: Vec<usize> = (1..=config.rounds)
        .map(|round| {
            ids.iter()
                .filter(|id| fault_for(&faults, config.seed, round, id, 0).is_none())
                .count()
        })
        .collect();
    assert!(
        survivors.iter().all(|&n| n >= 2) && survivors.iter().any(|&n| n < ids.len()),
        "this seed must keep a quorum in every round and lose clients in some: {survivors:?}"
    );
    for (record, &survivors) in outcome.records.iter().zip(&survivors) {
        // Everyone is asked, once: a quorum of survivors delivers in the first attempt.
        assert_eq!((record.selected, record.attempts), (10, 1), "{record:?}");
        assert!(
            (2..=survivors).contains(&record.clients),
            "{survivors} survivors: {record:?}"
        );
        if record.clients < record.selected {
            // Fewer than wanted: only the deadline could close it.
            assert!(
                record.seconds >= timeout.as_secs_f64(),
                "closed before its deadline: {record:?}"
            );
        }
    }
    // Every dropout happened as drawn, and every update of a survivor was either aggregated in
    // its round or, had it come after the deadline, refused: none is lost or counted twice.
    let dropped: usize = survivors.iter().map(|n| ids.len() - n).sum();
    assert_eq!(report.totals.dropouts as usize, dropped, "{report:?}");
    let aggregated: usize = outcome.records.iter().map(|r| r.clients).sum();
    assert_eq!(report.totals.accepted as usize, aggregated, "{report:?}");
    assert_eq!(
        aggregated + report.totals.refused as usize,
        survivors.iter().sum::<usize>(),
        "{report:?}"
    );
    let accuracy = outcome.summary.final_accuracy.unwrap();
    assert!(accuracy >= 0.90, "accuracy {accuracy} after 10 rounds");
}
