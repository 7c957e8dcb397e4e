//! The quorum-loss policies with real processes: ten clients in two fleets, a quorum of five,
//! and the fleet of six killed after round 2 (60% of the clients vanish). `stop` ends the run
//! with the round that lost its quorum; `shrink` goes on aggregating the four that are left and
//! says so; `wait` serves the last model until the six are back, then finishes, and says how
//! long it waited.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{rounds_completed, start_coordinator, summary};
use common::{DEADLINE, Running, arg, shoal_with};

/// `shoal simulate` against `url` for the partitions `indices` of a ten-way split.
fn fleet(url: &str, indices: &str) -> Running {
    let mut cmd = shoal_with(&["simulate", "--coordinator", url]);
    cmd.args(["--clients", "10", "--indices", indices]);
    Running::spawn(&mut cmd)
}

/// Starts the coordinator with `policy`, both fleets, and kills the big one after round 2;
/// returns the coordinator, the small fleet and the summary path.
fn lose_the_quorum(
    dir: &std::path::Path,
    policy: &str,
    rounds: &str,
) -> (Running, Running, String, std::path::PathBuf) {
    let summary_path = dir.join(format!("{policy}.json"));
    let (mut coordinator, url) = start_coordinator(&[
        "--clients",
        "10",
        "--min-clients",
        "5",
        "--rounds",
        rounds,
        "--round-timeout",
        "1",
        "--max-retries",
        "1",
        "--liveness",
        "1",
        "--on-quorum-loss",
        policy,
        "--log",
        "info",
        "--summary-out",
        arg(&summary_path),
    ]);
    let big = fleet(&url, "0..6");
    let small = fleet(&url, "6..10");
    coordinator.wait_for_stderr_count("round aggregated", 2, DEADLINE);
    big.kill();
    (coordinator, small, url, summary_path)
}

#[test]
fn stop_ends_the_run_naming_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, small, _, _) = lose_the_quorum(dir.path(), "stop", "8");
    let done = coordinator.finish(DEADLINE);
    assert!(!done.status.success(), "{done:?}");
    assert!(
        done.stderr
            .contains("fewer than 5 updates after 2 attempts"),
        "{}",
        done.stderr
    );
    small.finish(DEADLINE);
}

#[test]
fn shrink_aggregates_the_clients_that_are_left_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, small, _, summary_path) = lose_the_quorum(dir.path(), "shrink", "6");
    coordinator.finish(DEADLINE).assert_success();
    small.finish(DEADLINE).assert_success();
    let s = summary(&summary_path);
    assert_eq!(rounds_completed(&s), 6, "{s}");
    let reason = s["stop_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("all rounds completed; quorum lost in")
            && reason.ends_with("aggregated below quorum (policy shrink)"),
        "{reason}"
    );
}

#[test]
fn wait_serves_the_last_model_until_the_quorum_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut coordinator, small, url, summary_path) = lose_the_quorum(dir.path(), "wait", "5");
    // The quorum is lost, and the run waits instead of stopping: the fleet comes back only
    // once the coordinator says it is waiting.
    coordinator.wait_for_stderr("policy wait", DEADLINE);
    let back = fleet(&url, "0..6");
    coordinator.finish(DEADLINE).assert_success();
    small.finish(DEADLINE).assert_success();
    back.finish(DEADLINE).assert_success();
    let s = summary(&summary_path);
    assert_eq!(rounds_completed(&s), 5, "{s}");
    let reason = s["stop_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("all rounds completed; quorum lost in 1 rounds, reopened after waiting")
            && reason.ends_with("(policy wait)"),
        "{reason}"
    );
}
