//! A large fleet in one `shoal run`: 20,000 simulated clients on a synthetic dataset all join
//! and take part in every round. It runs alone in its own test binary, so its load does not
//! disturb the timing of other process tests.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{rounds_completed, summary};
use common::{Running, arg, shoal_with};
use std::time::Duration;

/// Twenty thousand clients take about 20 s here; the margin is for a loaded machine.
const LIMIT: Duration = Duration::from_secs(400);

#[test]
fn twenty_thousand_clients_in_one_run_all_take_part() {
    let dir = tempfile::tempdir().unwrap();
    let (summary_path, metrics_path) = (dir.path().join("s.json"), dir.path().join("m.csv"));
    let mut cmd = shoal_with(&[
        "run",
        "--quiet",
        "--model",
        "logreg",
        "--dataset",
        "blobs:samples=100000,features=2,centers=4",
        "--clients",
        "20000",
        "--rounds",
        "2",
        "--epochs",
        "1",
        "--summary-out",
        arg(&summary_path),
        "--metrics-out",
        arg(&metrics_path),
    ]);
    Running::spawn(&mut cmd).finish(LIMIT).assert_success();
    let s = summary(&summary_path);
    assert_eq!(rounds_completed(&s), 2, "{s}");
    let metrics = std::fs::read_to_string(&metrics_path).unwrap();
    for row in metrics.lines().skip(1) {
        let clients: u64 = row.split(',').nth(1).unwrap().parse().unwrap();
        assert_eq!(clients, 20_000, "every client delivered: {row}");
    }
}
