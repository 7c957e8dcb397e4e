//! Dropout as real fleets bring it, with real processes: clients that leave for good (politely
//! or killed), a fleet restarted mid-round, clients whose local work fails, a disk that fills
//! up mid-round, unusable checkpoints, a coordinator that is not there. Every run must end, and
//! end the way the operator is told it will.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{model_sha256, one_process_run, rounds_completed, start_coordinator, summary};
use common::{DEADLINE, Running, arg, finish, shoal_with};
use std::time::Duration;

/// `shoal simulate` against `url` with `args`.
fn simulate(url: &str, args: &[&str]) -> Running {
    let mut cmd = shoal_with(&["simulate", "--coordinator", url]);
    cmd.args(args);
    Running::spawn(&mut cmd)
}

/// `shoal client` against `url` with `args`.
fn client(url: &str, args: &[&str]) -> Running {
    let mut cmd = shoal_with(&["client", "--coordinator", url]);
    cmd.args(args);
    Running::spawn(&mut cmd)
}

/// The rows of a `--metrics-out` CSV as (round, clients).
fn clients_per_round(path: &std::path::Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (round, clients) = (col("round"), col("clients"));
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            (
                cells[round].parse().unwrap(),
                cells[clients].parse().unwrap(),
            )
        })
        .collect()
}

/// A client that leaves for good after round 2 — with Ctrl-C (it says Leave) or killed — must
/// not stall the run: later rounds select from the clients still there.
fn a_client_that_departs_does_not_stall_the_run(kill: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (summary_path, metrics_path) = (dir.path().join("s.json"), dir.path().join("m.csv"));
    let (coordinator, url) = start_coordinator(&[
        "--clients",
        "3",
        "--rounds",
        "6",
        "--round-timeout",
        "3",
        "--liveness",
        "5",
        "--log",
        "info",
        "--summary-out",
        arg(&summary_path),
        "--metrics-out",
        arg(&metrics_path),
    ]);
    let mut coordinator = coordinator;
    // Stragglers make every round last at least 0.3 s, so the departure lands mid-run.
    let fleet = simulate(
        &url,
        &["--clients", "3", "--indices", "0..2", "--straggle", "1:0.3"],
    );
    let lone = client(&url, &["--clients", "3", "--index", "2"]);
    coordinator.wait_for_stderr_count("round aggregated", 2, DEADLINE);
    if kill {
        lone.kill();
    } else {
        lone.interrupt();
        lone.finish(DEADLINE).assert_success();
    }
    coordinator.finish(DEADLINE).assert_success();
    fleet.finish(DEADLINE).assert_success();
    let s = summary(&summary_path);
    assert_eq!(rounds_completed(&s), 6, "{s}");
    let rows = clients_per_round(&metrics_path);
    assert_eq!(rows.last().unwrap(), &(6, 2), "{rows:?}");
}

#[test]
fn a_client_that_leaves_does_not_stall_the_run() {
    a_client_that_departs_does_not_stall_the_run(false);
}

#[test]
fn a_client_killed_for_good_does_not_stall_the_run() {
    a_client_that_departs_does_not_stall_the_run(true);
}

/// A fleet killed mid-round (every client trained, none delivered) and started again gets the
/// same tasks back: the run ends with exactly the model of the run without the restart, long
/// before the round's deadline.
#[test]
fn a_fleet_restarted_mid_round_gets_its_tasks_again_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let common = ["--rounds", "3", "--clients", "4", "--seed", "11"];
    let reference = one_process_run(dir.path(), "run.json", &common);

    let summary_path = dir.path().join("spread.json");
    let mut args = common.to_vec();
    // The deadline is far beyond the test's: a round that waited for it would fail the test.
    args.extend([
        "--round-timeout",
        "600",
        "--summary-out",
        arg(&summary_path),
    ]);
    let (coordinator, url) = start_coordinator(&args);
    let mut first = simulate(
        &url,
        &[
            "--clients",
            "4",
            "--seed",
            "11",
            "--straggle",
            "1:600",
            "--log",
            "shoal_client=debug",
        ],
    );
    // Each client has trained on round 1's task and holds its update back.
    first.wait_for_stderr_count("simulated straggler", 4, DEADLINE);
    first.kill();
    simulate(&url, &["--clients", "4", "--seed", "11"])
        .finish(DEADLINE)
        .assert_success();
    coordinator.finish(DEADLINE).assert_success();
    let spread = summary(&summary_path);
    assert_eq!(rounds_completed(&spread), 3, "{spread}");
    assert_eq!(
        model_sha256(&spread),
        model_sha256(&reference),
        "a restart inside the deadline must change nothing"
    );
}

/// A client killed mid-run and started again keeps what it carries from round to round (its
/// `--state-dir` file, `client-00000.EXTENSION`): the run ends with the model of the run
/// without the restart. Started again with that state lost, it ends with another model, so the
/// file is what carried it.
fn a_restarted_client_keeps_its_state(run: &[&str], extension: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut common = vec![
        "--rounds",
        "40",
        "--epochs",
        "20",
        "--clients",
        "2",
        "--seed",
        "12",
        "--partition",
        "shards:2",
    ];
    common.extend_from_slice(run);
    let reference = model_sha256(&one_process_run(dir.path(), "run.json", &common));
    let restarted_with = |state: &str, fresh_state: &str| {
        let summary_path = dir.path().join(format!("{fresh_state}.json"));
        let mut args = common.clone();
        // A round waits for the killed client however long its restart takes.
        args.extend([
            "--round-timeout",
            "600",
            "--log",
            "info",
            "--summary-out",
            arg(&summary_path),
        ]);
        let (mut coordinator, url) = start_coordinator(&args);
        let data = ["--clients", "2", "--seed", "12", "--partition", "shards:2"];
        let start = |index: &str, state: &str| {
            let mut args = data.to_vec();
            args.extend(["--index", index, "--state-dir", state]);
            client(&url, &args)
        };
        let state_a = dir.path().join(state);
        let state_b = dir.path().join(format!("b-{state}"));
        let a = start("0", arg(&state_a));
        let b = start("1", arg(&state_b));
        coordinator.wait_for_stderr_count("round aggregated", 3, DEADLINE);
        a.kill();
        assert!(
            state_a.join(format!("client-00000.{extension}")).is_file(),
            "the client keeps its state on disk"
        );
        let again = start("0", arg(&dir.path().join(fresh_state)));
        let again = again.finish(DEADLINE);
        again.assert_success();
        assert!(
            !again.stderr.contains(": 0 updates accepted"),
            "the restarted client must have contributed: {}",
            again.stderr
        );
        coordinator.finish(DEADLINE).assert_success();
        b.finish(DEADLINE).assert_success();
        let s = summary(&summary_path);
        assert_eq!(rounds_completed(&s), 40, "{s}");
        model_sha256(&s)
    };
    assert_eq!(restarted_with("a", "a"), reference);
    assert_ne!(restarted_with("a2", "lost"), reference);
}

#[test]
fn a_restarted_scaffold_client_keeps_its_control_variate() {
    a_restarted_client_keeps_its_state(&["--strategy", "scaffold"], "scaffold");
}

#[test]
fn a_restarted_client_keeps_what_top_k_left_out() {
    a_restarted_client_keeps_its_state(&["--compress", "topk:0.1"], "topk");
}

/// Clients whose local work fails say so, and the round stops waiting for them: the run stops
/// on quorum loss right away, not after deadlines of ten minutes.
#[test]
fn failed_local_work_is_reported_and_the_round_stops_waiting() {
    let (coordinator, url) = start_coordinator(&[
        "--clients",
        "2",
        "--rounds",
        "3",
        "--round-timeout",
        "600",
        "--max-retries",
        "1",
        "--lr",
        "1e30",
        "--log",
        "info",
    ]);
    let fleet = simulate(&url, &["--clients", "2"]);
    let done = coordinator.finish(DEADLINE);
    assert!(!done.status.success(), "the run cannot succeed: {done:?}");
    assert!(
        done.stderr.contains("could not do its task"),
        "the coordinator names the failed clients:\n{}",
        done.stderr
    );
    assert!(
        done.stderr
            .contains("round 1: fewer than 1 updates after 2 attempts"),
        "{}",
        done.stderr
    );
    fleet.finish(DEADLINE);
}

/// A disk that fills up mid-round (here: a file-size limit on the coordinator) stops the run
/// with the disk's error and the file's name, not with a missed quorum after four deadlines.
#[test]
fn a_full_disk_mid_round_stops_the_run_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let shoal = env!("CARGO_BIN_EXE_shoal");
    // 60 KiB: the round log takes the round's opening and one update (about 38 KB), then
    // the second update fails with "File too large". SIGXFSZ is ignored so the write fails
    // instead of killing the process.
    let script = format!(
        "trap '' XFSZ; ulimit -f 60; exec '{shoal}' coordinator --listen 127.0.0.1:0 \
         --clients 3 --rounds 3 --round-timeout 600 --checkpoint-dir '{}'",
        ckpt.display()
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &script])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    let mut coordinator = Running::spawn(&mut cmd);
    let line = coordinator.wait_for_stderr("coordinator listening on ", DEADLINE);
    let addr = line.split("listening on ").nth(1).unwrap();
    let url = format!("http://{}", addr.split_whitespace().next().unwrap());
    let fleet = simulate(&url, &["--clients", "3"]);
    let done = coordinator.finish(DEADLINE);
    assert!(!done.status.success(), "{done:?}");
    assert!(
        done.stderr.contains(".wal") && done.stderr.contains("File too large"),
        "the error names the file and the disk's reason:\n{}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("fewer than"),
        "a storage failure is not a quorum failure:\n{}",
        done.stderr
    );
    fleet.finish(DEADLINE).assert_success();
}

/// When every checkpoint is unusable the coordinator refuses to start over silently; with
/// `--start-over` it sets them aside and runs from round 1.
#[test]
fn unusable_checkpoints_stop_the_start_unless_starting_over_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let base = ["--rounds", "2", "--checkpoint-dir", arg(&ckpt)];
    one_process_run(dir.path(), "first.json", &base);
    let mut corrupted = 0;
    for entry in std::fs::read_dir(&ckpt).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bin") {
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
            std::fs::write(&path, bytes).unwrap();
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 2);
    let refused = finish(&mut shoal_with(&[
        "run",
        "--quiet",
        "--rounds",
        "3",
        "--checkpoint-dir",
        arg(&ckpt),
    ]));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused.stderr.contains("none of the 2 checkpoints")
            && refused.stderr.contains("--start-over"),
        "{}",
        refused.stderr
    );
    let again = one_process_run(
        dir.path(),
        "again.json",
        &[
            "--rounds",
            "3",
            "--checkpoint-dir",
            arg(&ckpt),
            "--start-over",
        ],
    );
    assert_eq!(rounds_completed(&again), 3, "{again}");
    let set_aside: Vec<String> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".bin.unusable"))
        .collect();
    assert_eq!(set_aside.len(), 2, "{set_aside:?}");
    assert!(
        set_aside.iter().any(|n| n.starts_with("ckpt-000002-")),
        "{set_aside:?}"
    );
}

/// A client pointed at a port where nothing listens says so at once, in one readable line with
/// its retry plan, and gives up when told to with a one-line error.
#[test]
fn a_client_facing_a_dead_port_says_so_at_once() {
    let url = common::dead_url();
    let mut lone = client(&url, &["--give-up-after", "2"]);
    let line = lone.wait_for_stderr("cannot reach the coordinator", Duration::from_secs(5));
    assert!(line.contains(&url), "{line}");
    assert!(line.contains("retrying with backoff"), "{line}");
    assert!(line.to_lowercase().contains("refused"), "{line}");
    let done = lone.finish(DEADLINE);
    assert!(!done.status.success());
    let last = done.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: gave up after the coordinator was unreachable for"),
        "{}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("MetadataMap") && !done.stderr.contains("\u{1b}["),
        "no debug dumps, no colour codes in a pipe:\n{}",
        done.stderr
    );
}

/// Thirty rounds of churn: a client leaves politely (round 3), one is killed (round 6), a whole
/// fleet process is killed mid-round and started again (round 10), and new clients join that
/// were never there before (round 14). The run must finish every round, never below quorum,
/// and end with everyone who is still there: the restarted fleet (3), the untouched one (1)
/// and the newcomers (3).
#[test]
fn thirty_rounds_of_churn_finish_with_everyone_still_there() {
    let dir = tempfile::tempdir().unwrap();
    let (summary_path, metrics_path) = (dir.path().join("s.json"), dir.path().join("m.csv"));
    let (mut coordinator, url) = start_coordinator(&[
        "--clients",
        "6",
        "--rounds",
        "30",
        "--round-timeout",
        "4",
        "--liveness",
        "2",
        "--min-clients",
        "2",
        "--log",
        "info",
        "--summary-out",
        arg(&summary_path),
        "--metrics-out",
        arg(&metrics_path),
    ]);
    // Partitions of a 9-way split: 0..3 in one fleet, 3 and 4 alone, 5 in another fleet, and
    // 6..9 for the newcomers. The stragglers make each round last at least 0.15 s.
    let slow = [
        "--clients",
        "9",
        "--indices",
        "0..3",
        "--straggle",
        "1:0.15",
        "--log",
        "shoal_client=debug",
    ];
    let mut fleet = simulate(&url, &slow);
    let polite = client(&url, &["--clients", "9", "--index", "3"]);
    let doomed = client(&url, &["--clients", "9", "--index", "4"]);
    let steady = simulate(&url, &["--clients", "9", "--indices", "5..6"]);

    coordinator.wait_for_stderr_count("round aggregated", 3, DEADLINE);
    polite.interrupt();
    polite.finish(DEADLINE).assert_success();

    coordinator.wait_for_stderr_count("round aggregated", 6, DEADLINE);
    doomed.kill();

    coordinator.wait_for_stderr_count("round aggregated", 10, DEADLINE);
    // Mid-round: the fleet's three clients have trained on a new task and hold it back.
    let seen = fleet
        .seen_stderr()
        .iter()
        .filter(|l| l.contains("simulated straggler"))
        .count();
    fleet.wait_for_stderr_count("simulated straggler", seen + 3, DEADLINE);
    fleet.kill();
    let fleet = simulate(&url, &slow);

    coordinator.wait_for_stderr_count("round aggregated", 14, DEADLINE);
    let newcomers = simulate(&url, &["--clients", "9", "--indices", "6..9"]);

    coordinator.finish(DEADLINE).assert_success();
    for process in [fleet, steady, newcomers] {
        process.finish(DEADLINE).assert_success();
    }
    let s = summary(&summary_path);
    assert_eq!(rounds_completed(&s), 30, "{s}");
    assert_eq!(s["stop_reason"], "all rounds completed", "{s}");
    let rows = clients_per_round(&metrics_path);
    assert_eq!(rows.len(), 30);
    assert!(rows.iter().all(|&(_, n)| n >= 2), "quorum held: {rows:?}");
    assert_eq!(rows[0], (1, 6), "round 1 waits for --clients: {rows:?}");
    assert_eq!(rows[29], (30, 7), "{rows:?}");
}
