//! Crash recovery with real processes and real signals: the coordinator is killed with SIGKILL
//! while a round it has accepted updates for is in flight, then at seeded random moments, and
//! restarted on the same checkpoint directory each time, while a simulated fleet in another
//! process keeps reconnecting. The restart after the first kill must take the logged updates
//! over, and the run must end bit-identical to one that never crashed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{newest_checkpoint, sha};
use common::{Running, arg, finish, shoal_with};
use shoal_coordinator::CheckpointStore;
use shoal_coordinator::store::round_log::RoundLog;
use std::path::Path;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(180);

/// Small deterministic pseudo-random delays (so a failing schedule can be replayed).
fn delays(seed: u64, n: usize, lo: u64, hi: u64) -> Vec<Duration> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Duration::from_millis(lo + (x >> 33) % (hi - lo))
        })
        .collect()
}

fn start_coordinator(
    listen: &str,
    ckpt: &std::path::Path,
    summary: &std::path::Path,
    run: &[&str],
) -> (Running, String) {
    let mut args = vec![
        "coordinator",
        "--listen",
        listen,
        "--checkpoint-dir",
        arg(ckpt),
        "--summary-out",
        arg(summary),
        "--quiet",
    ];
    args.extend_from_slice(run);
    let mut coordinator = Running::spawn(&mut shoal_with(&args));
    let line = coordinator.wait_for_stderr("listening on", Duration::from_secs(60));
    let addr = line.split_whitespace().nth(3).unwrap().to_string();
    (coordinator, addr)
}

/// Polls (every 2 ms, for at most a minute) until a checkpoint newer than round `after` exists.
fn wait_for_checkpoint_after(dir: &std::path::Path, after: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let newest = newest_checkpoint(dir);
        if newest > after {
            return newest;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint after round {after} within a minute"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// True if the freshly started coordinator kept updates from its round log. It prints that
/// line (if at all) before it starts listening, which `start_coordinator` waited for.
fn coordinator_kept_updates(coordinator: &mut Running) -> bool {
    coordinator
        .seen_stderr()
        .iter()
        .any(|l| l.contains("accepted updates in its log") && !l.contains(" 0 accepted"))
}

/// The round in the log in `ckpt` and how many accepted updates the log holds, if it holds
/// some and that round has no checkpoint yet: what a coordinator started now would replay.
fn replayable(ckpt: &Path) -> Option<(u32, usize)> {
    // Read-only: a store opened without a claim reads the log of the state's current owner.
    let store = CheckpointStore::open(ckpt).ok()?;
    let log = RoundLog::read(&store).ok()??;
    let round = log.opened.round;
    (!log.updates.is_empty() && newest_checkpoint(ckpt) < u64::from(round))
        .then_some((round, log.updates.len()))
}

/// Kills `coordinator` with SIGKILL while the round in flight has accepted updates in its log;
/// returns the round and how many. The log is polled; once it holds updates the process is
/// stopped (SIGSTOP, waiting until every thread is) and the log read again: a stopped process cannot change it, so what is
/// read then is exactly what the next incarnation finds. If the round closed in between, the
/// process continues (SIGCONT) and the polling goes on.
fn kill_mid_round(coordinator: Running, ckpt: &Path) -> (u32, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no round had accepted updates in its log within a minute"
        );
        if replayable(ckpt).is_some() {
            coordinator.freeze();
            if let Some(found) = replayable(ckpt) {
                coordinator.kill();
                return found;
            }
            coordinator.signal("CONT");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Asserts that the freshly started `coordinator` took over the `updates` accepted updates of
/// `round` in its log: it announced them before listening, and folded every one of them into
/// the round it reopened.
fn assert_took_over(coordinator: &mut Running, round: u32, updates: usize) {
    let announced =
        format!("round {round} had {updates} accepted updates in its log; they are kept");
    assert!(
        coordinator
            .seen_stderr()
            .iter()
            .any(|l| l.contains(&announced)),
        "no {announced:?} before listening:\n{}",
        coordinator.seen_stderr().join("\n")
    );
    let kept = coordinator.wait_for_stderr("kept updates from the round log", LIMIT);
    assert!(
        kept.contains(&format!("round={round} ")) && kept.ends_with(&format!("updates={updates}")),
        "want round={round} updates={updates}: {kept}"
    );
}

/// Runs `run` once without crashes and once with `kills` SIGKILLs of the coordinator; the
/// final parameters must be the same bits.
fn survives_kills(run: &[&str], kills: usize, seed: u64, lo_ms: u64, hi_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.json");
    let mut args = vec!["run", "--quiet", "--summary-out", arg(&reference)];
    args.extend_from_slice(run);
    finish(&mut shoal_with(&args)).assert_success();
    let (expected, rounds) = sha(&reference);

    let ckpt = dir.path().join("ckpt");
    let summary = dir.path().join("summary.json");
    // Each incarnation listens where the last did: a port below the ephemeral range, which
    // no client's outgoing connection can take while the coordinator is down.
    let listen = format!("127.0.0.1:{}", common::ports::stable_ports(1)[0]);
    let (mut coordinator, addr) = start_coordinator(&listen, &ckpt, &summary, run);
    let url = format!("http://{addr}");
    let mut sim_args = vec!["simulate", "--coordinator", &url];
    sim_args.extend(common::runs::data_args(run));
    let fleet = Running::spawn(&mut shoal_with(&sim_args));
    // First a crash with accepted updates in the round log, which the next incarnation must
    // take over.
    let (round, updates) = kill_mid_round(coordinator, &ckpt);
    let mut last = newest_checkpoint(&ckpt);
    assert_eq!(last + 1, u64::from(round));
    assert!(
        last + 1 < rounds,
        "the crash in round {round} of {rounds} came too late to test anything"
    );
    coordinator = start_coordinator(&addr, &ckpt, &summary, run).0;
    assert_took_over(&mut coordinator, round, updates);
    let mut kept_logs = 1;
    for delay in delays(seed, kills, lo_ms, hi_ms) {
        // Let the current incarnation complete at least one more round, then kill it a random
        // moment later: waiting for updates, aggregating, or writing the next checkpoint.
        wait_for_checkpoint_after(&ckpt, last);
        std::thread::sleep(delay); // the crash moment itself, not a synchronisation
        coordinator.kill();
        last = newest_checkpoint(&ckpt);
        assert!(
            last < rounds,
            "kill after round {last} of {rounds} came too late to test anything"
        );
        coordinator = start_coordinator(&addr, &ckpt, &summary, run).0;
        kept_logs += usize::from(coordinator_kept_updates(&mut coordinator));
    }
    eprintln!(
        "{kept_logs} of {} restarts replayed a non-empty round log",
        kills + 1
    );
    let done = coordinator.finish(LIMIT);
    done.assert_success();
    fleet.finish(LIMIT).assert_success();
    let (got, got_rounds) = sha(&summary);
    assert_eq!(got_rounds, rounds);
    assert_eq!(
        got, expected,
        "a crashed and resumed run must end bit-identical"
    );
}

#[test]
fn fedavg_survives_sigkill_at_random_moments() {
    let run = [
        "--rounds",
        "120",
        "--epochs",
        "20",
        "--clients",
        "5",
        "--seed",
        "3",
        "--partition",
        "dirichlet:0.5",
    ];
    survives_kills(&run, 6, 1, 0, 60);
}

/// Top-k keeps client state (what it left out) between rounds; a client asked for a round
/// again after the coordinator's restart must send the same bytes as before.
#[test]
fn compressed_fedavg_with_error_feedback_survives_sigkill() {
    let run = [
        "--rounds",
        "100",
        "--epochs",
        "20",
        "--clients",
        "5",
        "--seed",
        "4",
        "--compress",
        "topk:0.1",
    ];
    survives_kills(&run, 3, 5, 0, 60);
}

/// FedOpt's optimiser state is checkpointed, and a robust rule's collected updates come back
/// from the round log.
#[test]
fn fedopt_with_a_robust_aggregator_survives_sigkill() {
    let run = [
        "--rounds",
        "100",
        "--epochs",
        "20",
        "--clients",
        "5",
        "--min-clients",
        "5",
        "--seed",
        "6",
        "--server-optimizer",
        "yogi",
        "--aggregator",
        "median",
    ];
    survives_kills(&run, 3, 7, 0, 60);
}

#[test]
fn fedprox_survives_sigkill() {
    let run = [
        "--strategy",
        "fedprox",
        "--proximal-mu",
        "0.1",
        "--rounds",
        "100",
        "--epochs",
        "20",
        "--clients",
        "5",
        "--seed",
        "8",
        "--partition",
        "dirichlet:0.5",
    ];
    survives_kills(&run, 2, 9, 0, 60);
}

/// The server's control variate is in the checkpoint, the clients' stay with the fleet; a
/// round asked again after a crash starts from the variate that entered it.
#[test]
fn scaffold_survives_sigkill() {
    let run = [
        "--strategy",
        "scaffold",
        "--rounds",
        "100",
        "--epochs",
        "20",
        "--clients",
        "5",
        "--seed",
        "10",
        "--partition",
        "shards:2",
    ];
    survives_kills(&run, 2, 11, 0, 60);
}

#[test]
fn fedsgd_survives_sigkill_at_random_moments() {
    let run = [
        "--strategy",
        "fedsgd",
        "--server-optimizer",
        "adam",
        "--rounds",
        "150",
        "--clients",
        "4",
        "--seed",
        "7",
    ];
    survives_kills(&run, 5, 2, 0, 20);
}

#[test]
fn fedkmeans_survives_sigkill_at_random_moments() {
    let run = [
        "--strategy",
        "fedkmeans",
        "--tol",
        "0",
        "--rounds",
        "25",
        "--clients",
        "4",
        "--seed",
        "11",
        "--dataset",
        "digits",
    ];
    survives_kills(&run, 3, 3, 0, 5);
}
