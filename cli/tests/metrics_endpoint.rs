//! A monitoring stack reads a running coordinator: a real Prometheus scrapes `--metrics-addr`
//! during a run over gRPC, and what it stored matches the run's own records (its checkpoints).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::ports::stable_ports;
use common::prometheus::{Prometheus, http_get};
use common::{Running, arg, shoal_with};
use shoal_coordinator::CheckpointStore;
use std::time::{Duration, Instant};

/// Parameters of the default model (digits, 64-128-10 MLP).
const PARAMS: f64 = 9_610.0;

#[test]
fn prometheus_scrapes_what_the_run_records() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let ports = stable_ports(2);
    let (grpc, metrics) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let mut coordinator = Running::spawn(&mut shoal_with(&[
        "coordinator",
        "--listen",
        &grpc,
        "--metrics-addr",
        &metrics,
        "--rounds",
        "100",
        "--clients",
        "4",
        "--min-clients",
        "4",
        "--round-timeout",
        "600",
        "--checkpoint-dir",
        arg(&ckpt),
        "--quiet",
    ]));
    coordinator.wait_for_stderr("metrics at http://", Duration::from_secs(60));
    // The endpoint speaks before any client comes; other paths are not found.
    let early = http_get(&metrics, "/metrics").expect("the endpoint answers");
    assert!(early.contains("shoal_rounds_completed_total 0"), "{early}");
    assert!(
        early.trim_end().ends_with("# EOF"),
        "not OpenMetrics: {early}"
    );
    assert!(http_get(&metrics, "/other").is_none());

    let prometheus = Prometheus::start(std::slice::from_ref(&metrics));
    let url = format!("http://{grpc}");
    let fleet = Running::spawn(&mut shoal_with(&[
        "simulate",
        "--coordinator",
        &url,
        "--clients",
        "4",
    ]));
    coordinator.wait_for_stderr_count("round aggregated", 3, Duration::from_secs(60));
    // Without its clients the run stalls in an open round: the numbers stop moving.
    fleet.kill();

    let store = CheckpointStore::open(&ckpt).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (records, scraped_round) = loop {
        let records = store
            .latest()
            .unwrap()
            .map(|c| c.records)
            .unwrap_or_default();
        let completed = prometheus.value("shoal_rounds_completed_total");
        let round = prometheus.value("shoal_round");
        if completed == Some(records.len() as f64) && round == Some(records.len() as f64 + 1.0) {
            break (records, round);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the stalled run: {completed:?} completed, round {round:?}, \
             {} checkpointed",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(100)); // Prometheus's own scrape pace
    };
    assert!(records.len() >= 3, "{} rounds", records.len());
    assert_eq!(scraped_round, Some(records.len() as f64 + 1.0));

    let aggregated: usize = records.iter().map(|r| r.clients).sum();
    assert_eq!(
        prometheus.value("shoal_updates_aggregated_total"),
        Some(aggregated as f64)
    );
    let accepted = prometheus.value("shoal_updates_accepted_total").unwrap();
    assert!(accepted >= aggregated as f64, "{accepted} < {aggregated}");
    assert_eq!(
        prometheus.value("shoal_received_bytes_total"),
        Some(accepted * 4.0 * PARAMS)
    );
    // A fleet fetches each round's global state once, whatever its size.
    let sent = prometheus.value("shoal_sent_bytes_total").unwrap();
    assert!(
        sent >= records.len() as f64 * 4.0 * PARAMS,
        "{sent} bytes sent"
    );
    let last = records.last().unwrap();
    let accuracy = prometheus.value("shoal_accuracy").unwrap();
    assert!((accuracy - last.get("accuracy").unwrap()).abs() < 1e-12);
    assert_eq!(
        prometheus.value("shoal_round_seconds_count"),
        Some(records.len() as f64)
    );
    assert_eq!(
        prometheus.value("shoal_checkpoint_seconds_count"),
        Some(records.len() as f64)
    );
    assert_eq!(prometheus.value("shoal_fold_seconds_count"), Some(accepted));
    assert_eq!(prometheus.value("shoal_clients_selected"), Some(4.0));
    coordinator.kill();
}
