//! Standby coordinators, for real: three `shoal coordinator` processes campaign in a real
//! 3-member etcd cluster and keep the run's state in a real S3 server (s3s-fs), `shoal
//! simulate` follows whichever leads. Leaders are killed with SIGKILL, paused past their lease,
//! etcd members and the object store go away mid-run; every run must end bit-identical to
//! `shoal run` with the same options.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::etcd::EtcdCluster;
use common::runs::{newest_checkpoint, sha};
use common::s3::{BUCKET, S3Server};
use common::{Running, arg, finish, shoal_with};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The run every test here serves: 20 clients, 30 rounds, seed 7.
const RUN: [&str; 6] = ["--rounds", "30", "--clients", "20", "--seed", "7"];
/// Longest a whole run may take here, takeovers included.
const LIMIT: Duration = Duration::from_secs(300);

/// The model hash of `shoal run` with [`RUN`].
fn reference(dir: &Path) -> String {
    let out = dir.join("reference.json");
    let mut args = vec!["run", "--quiet", "--summary-out", arg(&out)];
    args.extend_from_slice(&RUN);
    finish(&mut shoal_with(&args)).assert_success();
    sha(&out).0
}

/// Three coordinators of one run, the etcd cluster they campaign in and the store they share.
struct Ha {
    etcd: EtcdCluster,
    s3: S3Server,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    lease_ttl: &'static str,
    /// The coordinator on each port (`None` once killed and not replaced).
    coordinators: Vec<Option<Running>>,
    /// Processes started so far, naming summaries and scratch directories.
    started: usize,
    /// Summary files of every coordinator started.
    summaries: Vec<PathBuf>,
    /// The scratch directory of the coordinator on each port.
    scratch: Vec<PathBuf>,
}

impl Ha {
    fn start(lease_ttl: &'static str) -> Self {
        let etcd = EtcdCluster::start(3);
        let s3 = S3Server::start();
        // Killed coordinators start again on their port: one below the ephemeral range.
        let ports = common::ports::stable_ports(3);
        let mut ha = Self {
            etcd,
            s3,
            dir: tempfile::tempdir().unwrap(),
            ports,
            lease_ttl,
            coordinators: vec![None, None, None],
            started: 0,
            summaries: Vec::new(),
            scratch: vec![PathBuf::new(); 3],
        };
        for i in 0..3 {
            ha.spawn(i);
        }
        ha
    }

    /// Starts a coordinator on port `i`, in a scratch directory of its own.
    fn spawn(&mut self, i: usize) {
        self.started += 1;
        let scratch = self.dir.path().join(format!("scratch-{}", self.started));
        std::fs::create_dir_all(&scratch).unwrap();
        let summary = self
            .dir
            .path()
            .join(format!("summary-{}.json", self.started));
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        let location = format!("s3://{BUCKET}/run");
        let endpoints = self.etcd.endpoints();
        let mut args = vec![
            "coordinator",
            "--listen",
            &listen,
            "--etcd",
            &endpoints,
            "--election",
            "failover-test",
            "--lease-ttl",
            self.lease_ttl,
            "--checkpoint-dir",
            &location,
            "--summary-out",
            arg(&summary),
            "--quiet",
            "--log",
            "info",
        ];
        args.extend_from_slice(&RUN);
        let mut cmd = shoal_with(&args);
        cmd.envs(self.s3.env()).current_dir(&scratch);
        let mut coordinator = Running::spawn(&mut cmd);
        coordinator.wait_for_stderr("standby for election", Duration::from_secs(60));
        self.coordinators[i] = Some(coordinator);
        self.summaries.push(summary);
        self.scratch[i] = scratch;
    }

    fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where the S3 server keeps the run's objects.
    fn objects(&self) -> PathBuf {
        self.s3.root.path().join(BUCKET).join("run")
    }

    /// The simulated fleet, following the leader across the three URLs.
    fn fleet(&self) -> Running {
        let urls = self.urls();
        let mut args = vec!["simulate", "--coordinator", &urls];
        args.extend(common::runs::data_args(&RUN));
        Running::spawn(&mut shoal_with(&args))
    }

    /// The epoch that owns the run's state now, from the manifest in the store.
    fn owner_epoch(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.objects().join("manifest.json")).ok()?;
        let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
        manifest["epoch"].as_u64()
    }

    /// The coordinator that owns the state (claimed it as elected leader).
    fn leader(&mut self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(epoch) = self.owner_epoch() {
                let said = format!("(epoch {epoch:#x})");
                for (i, c) in self.coordinators.iter_mut().enumerate() {
                    if let Some(c) = c
                        && c.pump().iter().any(|l| l.contains(&said))
                    {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader owns the state");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a checkpoint past round `round` is in the store; returns the newest round.
    fn wait_past(&self, round: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let newest = newest_checkpoint(&self.objects());
            if newest > round {
                return newest;
            }
            assert!(
                Instant::now() < deadline,
                "no checkpoint after round {round} within 120 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets the fleet and every coordinator finish, and checks each coordinator's summary
    /// against `expected`. Returns the coordinators' stderr, by port.
    fn finish(mut self, fleet: Running, expected: &str) -> Vec<String> {
        let done = fleet.finish(LIMIT);
        done.assert_success();
        let mut stderr = Vec::new();
        for c in self.coordinators.iter_mut() {
            let finished = c.take().unwrap().finish(LIMIT);
            finished.assert_success();
            stderr.push(finished.stderr.clone());
        }
        let written: Vec<_> = self.summaries.iter().filter(|s| s.exists()).collect();
        assert!(!written.is_empty(), "no coordinator wrote a summary");
        for summary in written {
            let (got, rounds) = sha(summary);
            assert_eq!(rounds, 30, "{}", summary.display());
            assert_eq!(
                got,
                expected,
                "{} differs from the run that never failed over",
                summary.display()
            );
        }
        drop(self.etcd);
        stderr
    }
}

#[test]
fn five_leader_kills_end_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let expected = reference(dir.path());
    let mut ha = Ha::start("2");
    let fleet = ha.fleet();
    // Seeded "random" moments: 0-600 ms after a new round was committed.
    let mut state: u64 = 7;
    let mut last = 0;
    let mut killed_epochs = Vec::new();
    for _ in 0..5 {
        last = ha.wait_past(last);
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis((state >> 33) % 600));
        let leader = ha.leader();
        killed_epochs.push(ha.owner_epoch().unwrap());
        ha.coordinators[leader].take().unwrap().kill();
        // Its machine is gone: nothing it kept locally survives.
        std::fs::remove_dir_all(&ha.scratch[leader]).unwrap();
        ha.spawn(leader);
    }
    // Five different leaders were killed, each having taken the run over from the one before.
    assert!(
        killed_epochs.windows(2).all(|w| w[0] < w[1]),
        "each kill must hit a newer leader: {killed_epochs:x?}"
    );
    ha.finish(fleet, &expected);
}

#[test]
fn a_paused_leader_steps_down_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let expected = reference(dir.path());
    let mut ha = Ha::start("2");
    let fleet = ha.fleet();
    let committed = ha.wait_past(3);
    let paused = ha.leader();
    let paused_epoch = ha.owner_epoch().unwrap();
    ha.coordinators[paused].as_ref().unwrap().signal("STOP");
    // Well past its lease: another coordinator takes over and completes rounds.
    let after = ha.wait_past(committed + 2);
    assert_ne!(ha.owner_epoch(), Some(paused_epoch));
    ha.coordinators[paused].as_ref().unwrap().signal("CONT");
    let woken = ha.coordinators[paused].as_mut().unwrap();
    woken.wait_for_stderr("standing by again", Duration::from_secs(30));
    // Whatever it still held in memory, it aggregated no round the others had not: at most
    // the one open when it was paused, whose checkpoint the store refused.
    let aggregated: Vec<u64> = woken
        .pump()
        .iter()
        .filter_map(|l| {
            let at = l.find("round aggregated round=")?;
            l[at + "round aggregated round=".len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        aggregated.iter().all(|r| *r <= committed + 1),
        "the paused leader aggregated rounds {aggregated:?} after round {committed} (the others reached {after})"
    );
    // `finish` checks each summary: 30 rounds recorded, the reference model.
    let stderr = ha.finish(fleet, &expected);
    assert!(
        stderr[paused].contains("elected leader") && stderr[paused].contains("standing by again"),
        "the paused coordinator must have led, then stood by"
    );
}

#[test]
fn an_etcd_member_lost_and_back_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let expected = reference(dir.path());
    // A lease long enough to ride out etcd electing a new raft leader.
    let mut ha = Ha::start("5");
    let fleet = ha.fleet();
    let committed = ha.wait_past(3);
    let leader = ha.leader();
    ha.etcd.kill(0);
    let later = ha.wait_past(committed + 3);
    ha.etcd.restart(0);
    ha.wait_past(later + 2);
    let stderr = ha.finish(fleet, &expected);
    assert!(
        !stderr[leader].contains("standing by again"),
        "the leader lost its lease when one etcd member of three went away:\n{}",
        stderr[leader]
    );
    assert!(
        stderr[leader].contains("round aggregated round=30 "),
        "the first leader should have served the whole run"
    );
}

#[test]
fn an_object_store_outage_is_ridden_out() {
    let dir = tempfile::tempdir().unwrap();
    let expected = reference(dir.path());
    let mut ha = Ha::start("5");
    let fleet = ha.fleet();
    ha.wait_past(3);
    let leader = ha.leader();
    ha.s3.stop();
    std::thread::sleep(Duration::from_secs(10));
    ha.s3.restart();
    let stderr = ha.finish(fleet, &expected);
    assert!(
        stderr[leader].contains("the object store has not answered"),
        "the leader should say it waits for the store:\n{}",
        stderr[leader]
    );
    assert!(
        !stderr[leader].contains("standing by again"),
        "the leader kept its lease through the outage"
    );
}

#[test]
fn bad_leadership_settings_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // etcd unreachable at start.
    let dead = common::dead_url();
    let mut args = vec![
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        &dead,
        "--election",
        "e",
        "--checkpoint-dir",
        arg(&state),
    ];
    args.extend_from_slice(&RUN);
    let started = Instant::now();
    let out = finish(&mut shoal_with(&args));
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("etcd at") && out.stderr.contains("cannot be reached"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // --etcd without --election or a shared state location.
    let out = finish(&mut shoal_with(&["coordinator", "--etcd", &dead]));
    assert!(!out.status.success());
    assert!(out.stderr.contains("--election"), "{}", out.stderr);
    let out = finish(&mut shoal_with(&[
        "coordinator",
        "--etcd",
        &dead,
        "--election",
        "e",
        "--checkpoint-dir",
        arg(&state),
        "--lease-ttl",
        "1",
    ]));
    assert!(
        out.stderr.contains("--lease-ttl 1 is out of range"),
        "{}",
        out.stderr
    );

    // Two runs with different configs on one election name.
    let etcd = EtcdCluster::start(1);
    let endpoints = etcd.endpoints();
    let first_state = dir.path().join("first");
    let mut args = vec![
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        &endpoints,
        "--election",
        "shared",
        "--checkpoint-dir",
        arg(&first_state),
    ];
    args.extend_from_slice(&RUN);
    let mut first = Running::spawn(&mut shoal_with(&args));
    first.wait_for_stderr("elected leader", Duration::from_secs(60));
    let other_state = dir.path().join("other");
    let other = finish(&mut shoal_with(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        &endpoints,
        "--election",
        "shared",
        "--checkpoint-dir",
        arg(&other_state),
        "--rounds",
        "31",
    ]));
    assert!(!other.status.success());
    assert!(
        other
            .stderr
            .contains("is held by a coordinator of another run"),
        "{}",
        other.stderr
    );
    assert!(first.is_running(), "the first run must not be disturbed");
}
