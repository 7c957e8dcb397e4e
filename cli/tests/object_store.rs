//! A run whose state is in a real S3-compatible store (s3s-fs on a loopback port): the
//! coordinator is killed with SIGKILL twice mid-run and a fresh one, with no local state at
//! all, carries the run on from the store each time. The run must end bit-identical to one
//! that never crashed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{newest_checkpoint, sha};
use common::s3::{BUCKET, S3Server};
use common::{Running, arg, finish, shoal_with};
use std::path::Path;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(180);

fn start_coordinator(
    server: &S3Server,
    listen: &str,
    summary: &Path,
    run: &[&str],
) -> (Running, String) {
    let location = format!("s3://{BUCKET}/run");
    let mut args = vec![
        "coordinator",
        "--listen",
        listen,
        "--checkpoint-dir",
        &location,
        "--summary-out",
        arg(summary),
        "--quiet",
    ];
    args.extend_from_slice(run);
    let mut cmd = shoal_with(&args);
    cmd.envs(server.env());
    let mut coordinator = Running::spawn(&mut cmd);
    let line = coordinator.wait_for_stderr("listening on", Duration::from_secs(60));
    let addr = line.split_whitespace().nth(3).unwrap().to_string();
    (coordinator, addr)
}

#[test]
fn a_run_kept_in_the_object_store_survives_sigkill_bit_identical() {
    let run = [
        "--rounds",
        "40",
        "--epochs",
        "5",
        "--clients",
        "4",
        "--seed",
        "7",
    ];
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.json");
    let mut args = vec!["run", "--quiet", "--summary-out", arg(&reference)];
    args.extend_from_slice(&run);
    finish(&mut shoal_with(&args)).assert_success();
    let (expected, rounds) = sha(&reference);

    let server = S3Server::start();
    let objects = server.root.path().join(BUCKET).join("run");
    let summary = dir.path().join("summary.json");
    // Restarted coordinators listen where the first did (see `common::ports`).
    let listen = format!("127.0.0.1:{}", common::ports::stable_ports(1)[0]);
    let (mut coordinator, addr) = start_coordinator(&server, &listen, &summary, &run);
    let url = format!("http://{addr}");
    let mut sim_args = vec!["simulate", "--coordinator", &url];
    sim_args.extend(common::runs::data_args(&run));
    let fleet = Running::spawn(&mut shoal_with(&sim_args));
    let mut last = 0;
    for delay_ms in [7, 23] {
        // Let the current coordinator commit at least one more round, then kill it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while newest_checkpoint(&objects) <= last {
            assert!(
                Instant::now() < deadline,
                "no checkpoint after round {last}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay_ms)); // the crash moment itself
        coordinator.kill();
        last = newest_checkpoint(&objects);
        assert!(last < rounds, "the kill after round {last} came too late");
        coordinator = start_coordinator(&server, &addr, &summary, &run).0;
    }
    let done = coordinator.finish(LIMIT);
    done.assert_success();
    fleet.finish(LIMIT).assert_success();
    let (got, got_rounds) = sha(&summary);
    assert_eq!(got_rounds, rounds);
    assert_eq!(
        got, expected,
        "a run resumed from the store ends bit-identical"
    );
}
