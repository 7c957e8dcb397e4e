//! Sub-aggregators between clients and the coordinator, as real processes: a root coordinator,
//! an aggregator under it and one under that, and three `shoal simulate` processes (one per
//! level). The tree computes the bits of `shoal run` with the same options, for every
//! strategy, and survives aggregators killed with SIGKILL mid-run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{one_process_run, start_coordinator, summary};
use common::{DEADLINE, Running, arg, shoal_with};
use std::time::Duration;

/// The run every tree here computes (30 clients, 10 per simulate process).
const RUN: [&str; 6] = ["--clients", "30", "--rounds", "10", "--seed", "7"];

/// `shoal aggregator` under `upstream` (comma-separated URLs) on `listen`; its URL.
fn start_aggregator(upstream: &str, listen: &str) -> (Running, String) {
    start_aggregator_with(upstream, listen, &[])
}

/// An aggregator that holds its clients' updates up to 20 s for the rest of its clients, so
/// that each round's partial sum holds them all however slow the machine (the tests count
/// them in its log).
fn start_whole_aggregator(upstream: &str, listen: &str) -> (Running, String) {
    start_aggregator_with(upstream, listen, &["--hold", "20"])
}

fn start_aggregator_with(upstream: &str, listen: &str, extra: &[&str]) -> (Running, String) {
    let mut cmd = shoal_with(&["aggregator", "--upstream", upstream, "--listen", listen]);
    cmd.args(extra);
    let mut aggregator = Running::spawn(&mut cmd);
    let line = aggregator.wait_for_stderr("listening on ", Duration::from_secs(30));
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap();
    let scheme = if extra.contains(&"--tls-cert") {
        "https"
    } else {
        "http"
    };
    (aggregator, format!("{scheme}://{addr}"))
}

/// `shoal simulate` of partitions `indices` against `urls`.
fn fleet(urls: &str, indices: &str, run: &[&str]) -> Running {
    fleet_with(urls, indices, run, &[])
}

fn fleet_with(urls: &str, indices: &str, run: &[&str], extra: &[&str]) -> Running {
    let mut cmd = shoal_with(&["simulate", "--coordinator", urls, "--indices", indices]);
    cmd.args(common::runs::data_args(run)).args(extra);
    Running::spawn(&mut cmd)
}

/// The extra flags of each process of a tree (transport security and credentials).
#[derive(Default)]
struct TreeFlags {
    root: Vec<String>,
    a: Vec<String>,
    b: Vec<String>,
    fleets: Vec<String>,
}

/// Root, aggregator A under it, B under A; a simulate process at each level. Returns the
/// root's model hash and what each aggregator printed.
fn tree(dir: &std::path::Path, run: &[&str]) -> (String, Vec<String>) {
    tree_with(dir, run, &TreeFlags::default())
}

fn strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// `extra` and a hold long enough that each round's partial sum holds every client.
fn whole(mut extra: Vec<&str>) -> Vec<&str> {
    extra.extend(["--hold", "20"]);
    extra
}

fn tree_with(dir: &std::path::Path, run: &[&str], flags: &TreeFlags) -> (String, Vec<String>) {
    let out = dir.join("tree.json");
    let mut args = run.to_vec();
    args.extend(["--quiet", "--summary-out", arg(&out)]);
    args.extend(strs(&flags.root));
    let (root, mut root_url) = start_coordinator(&args);
    if flags.root.iter().any(|f| f == "--tls-cert") {
        root_url = root_url.replacen("http://", "https://", 1);
    }
    let (a, a_url) = start_aggregator_with(&root_url, "127.0.0.1:0", &whole(strs(&flags.a)));
    let (b, b_url) = start_aggregator_with(&a_url, "127.0.0.1:0", &whole(strs(&flags.b)));
    let fleet_flags = strs(&flags.fleets);
    let fleets = [
        fleet_with(&a_url, "0..10", run, &fleet_flags),
        fleet_with(&b_url, "10..20", run, &fleet_flags),
        fleet_with(&root_url, "20..30", run, &fleet_flags),
    ];
    root.finish(DEADLINE).assert_success();
    for fleet in fleets {
        fleet.finish(DEADLINE).assert_success();
    }
    // Each aggregator stops by itself once the run is over.
    let logs = [a, b]
        .map(|agg| {
            let done = agg.finish(Duration::from_secs(30));
            done.assert_success();
            done.stderr
        })
        .to_vec();
    (summary(&out)["model_sha256"].to_string(), logs)
}

fn same_bits_as_one_process(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut run = RUN.to_vec();
    run.extend(extra);
    let reference = one_process_run(dir.path(), "flat.json", &run);
    let (sha, logs) = tree(dir.path(), &run);
    assert_eq!(sha, reference["model_sha256"].to_string());
    for log in &logs {
        assert!(log.contains("partial sum sent upstream"), "{log}");
    }
    // A's sums hold B's clients too: 20 clients a round.
    assert!(logs[0].contains("clients=20"), "{}", logs[0]);
}

#[test]
fn a_tree_of_aggregators_gives_the_bits_of_a_flat_fedavg_run() {
    same_bits_as_one_process(&[]);
}

/// Every hop over mutual TLS with bearer tokens: clients prove themselves to the aggregator
/// they reach, each aggregator proves its own id upstream, and each upstream lets only the
/// aggregators it lists relay for clients and send partial sums.
#[test]
fn a_tree_over_mutual_tls_and_tokens_gives_the_bits_of_a_flat_run() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    for who in [&["--num-clients", "30"][..], &["--clients", "agg-a,agg-b"]] {
        let mut cmd = shoal_with(&["certs", "--out", arg(&certs), "--tokens"]);
        common::finish(cmd.args(who)).assert_success();
    }
    let file = |name: &str| arg(&certs.join(name)).to_owned();
    let serving = |aggregators: &str| {
        let mut flags = vec![
            "--tls-cert".into(),
            file("server.pem"),
            "--tls-key".into(),
            file("server.key"),
            "--client-ca".into(),
            file("ca.pem"),
            "--tokens".into(),
            file("tokens.sha256"),
        ];
        if !aggregators.is_empty() {
            flags.extend(["--aggregators".into(), aggregators.into()]);
        }
        flags
    };
    let upstream_as = |id: &str| {
        vec![
            "--id".into(),
            id.into(),
            "--ca".into(),
            file("ca.pem"),
            "--cert".into(),
            file(&format!("client-{id}.pem")),
            "--key".into(),
            file(&format!("client-{id}.key")),
            "--token".into(),
            file("tokens.txt"),
        ]
    };
    let flags = TreeFlags {
        root: serving("agg-a"),
        a: [serving("agg-b"), upstream_as("agg-a")].concat(),
        b: [serving(""), upstream_as("agg-b")].concat(),
        fleets: vec![
            "--certs-dir".into(),
            arg(&certs).into(),
            "--tokens-file".into(),
            file("tokens.txt"),
        ],
    };
    let reference = one_process_run(dir.path(), "flat.json", &RUN);
    let (sha, logs) = tree_with(dir.path(), &RUN, &flags);
    assert_eq!(sha, reference["model_sha256"].to_string());
    assert!(
        logs[0].contains("mutual tls + tokens, aggregators agg-b"),
        "{}",
        logs[0]
    );
    assert!(logs[0].contains("clients=20"), "{}", logs[0]);
    assert!(logs[1].contains("partial sum sent upstream"), "{}", logs[1]);
}

#[test]
fn a_tree_of_aggregators_gives_the_bits_of_a_flat_fedsgd_run() {
    same_bits_as_one_process(&["--strategy", "fedsgd", "--server-optimizer", "adam"]);
}

/// Aggregators decode compressed updates onto the round's global state before they fold them.
#[test]
fn a_tree_of_aggregators_decodes_compressed_updates_to_the_bits_of_a_flat_run() {
    same_bits_as_one_process(&["--compress", "int8"]);
}

/// SCAFFOLD's updates carry the clients' variate changes beside their models; aggregators sum
/// them like any other values.
#[test]
fn a_tree_of_aggregators_gives_the_bits_of_a_flat_scaffold_run() {
    same_bits_as_one_process(&["--strategy", "scaffold"]);
}

/// A robust rule needs every update at the root: aggregators relay them whole.
#[test]
fn a_tree_relays_the_updates_of_a_robust_rule_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = RUN.to_vec();
    run.extend(["--aggregator", "median", "--min-clients", "30"]);
    let reference = one_process_run(dir.path(), "flat.json", &run);
    let (sha, logs) = tree(dir.path(), &run);
    assert_eq!(sha, reference["model_sha256"].to_string());
    for log in &logs {
        assert!(!log.contains("partial sum sent upstream"), "{log}");
    }
}

#[test]
fn a_tree_of_aggregators_gives_the_bits_of_a_flat_kmeans_run() {
    // k-FED's seeding round keeps every update whole: it is relayed, the Lloyd rounds summed.
    same_bits_as_one_process(&["--strategy", "fedkmeans", "--tol", "0"]);
}

#[test]
fn one_fleet_spread_over_two_aggregators_gives_the_bits_of_a_flat_run() {
    let dir = tempfile::tempdir().unwrap();
    let reference = one_process_run(dir.path(), "flat.json", &RUN);
    let out = dir.path().join("spread.json");
    let mut args = RUN.to_vec();
    args.extend(["--quiet", "--summary-out", arg(&out)]);
    let (root, root_url) = start_coordinator(&args);
    let (a, a_url) = start_whole_aggregator(&root_url, "127.0.0.1:0");
    let (b, b_url) = start_whole_aggregator(&root_url, "127.0.0.1:0");
    let mut cmd = shoal_with(&["simulate", "--coordinator", &format!("{a_url},{b_url}")]);
    cmd.arg("--spread").args(common::runs::data_args(&RUN));
    let fleet = Running::spawn(&mut cmd);
    root.finish(DEADLINE).assert_success();
    fleet.finish(DEADLINE).assert_success();
    for agg in [a, b] {
        let done = agg.finish(Duration::from_secs(30));
        done.assert_success();
        // Half of the fleet started here, and stayed.
        assert!(done.stderr.contains("clients=15"), "{}", done.stderr);
    }
    assert_eq!(summary(&out)["model_sha256"], reference["model_sha256"]);
}

#[test]
fn aggregators_apply_the_coordinators_norm_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = RUN.to_vec();
    // Well below the norms of these updates: every one is clipped.
    run.extend(["--max-update-norm", "0.05", "--norm-policy", "clip"]);
    // The same coordinator with all its clients connected directly.
    let out = dir.path().join("flat.json");
    let mut args = run.clone();
    args.extend(["--quiet", "--summary-out", arg(&out)]);
    let (root, root_url) = start_coordinator(&args);
    let fleet = fleet(&root_url, "0..30", &run);
    root.finish(DEADLINE).assert_success();
    fleet.finish(DEADLINE).assert_success();
    let flat = summary(&out)["model_sha256"].to_string();
    let (sha, _) = tree(dir.path(), &run);
    assert_eq!(sha, flat, "the tree clipped otherwise than the coordinator");
    let unclipped = one_process_run(dir.path(), "unclipped.json", &RUN);
    assert_ne!(
        flat,
        unclipped["model_sha256"].to_string(),
        "nothing was clipped"
    );
}

#[test]
fn killed_aggregators_lose_nothing_that_cannot_be_redone() {
    let dir = tempfile::tempdir().unwrap();
    let run = ["--clients", "30", "--rounds", "16", "--seed", "7"];
    let reference = one_process_run(dir.path(), "flat.json", &run);
    let out = dir.path().join("tree.json");
    let mut args = run.to_vec();
    args.extend(["--summary-out", arg(&out)]);
    let (mut root, root_url) = start_coordinator(&args);
    // A is restarted where it was: a port below the ephemeral range (see `common::ports`).
    let a_listen = format!("127.0.0.1:{}", common::ports::stable_ports(1)[0]);
    let (a, a_url) = start_aggregator(&root_url, &a_listen);
    let b_upstream = format!("{a_url},{root_url}");
    let (b, b_url) = start_aggregator(&b_upstream, "127.0.0.1:0");
    let fleets = [
        fleet(&format!("{a_url},{root_url}"), "0..10", &run),
        fleet(&format!("{b_url},{a_url},{root_url}"), "10..20", &run),
        fleet(&root_url, "20..30", &run),
    ];
    // Kill A while a round is open (its clients and B's partial sums are in flight), start
    // it again, then kill B for good.
    root.wait_for_stderr_count("round aggregated", 3, DEADLINE);
    a.kill();
    root.wait_for_stderr_count("round aggregated", 6, DEADLINE);
    let (a, _) = start_aggregator(&root_url, &a_listen);
    root.wait_for_stderr_count("round aggregated", 9, DEADLINE);
    b.kill();
    let done = root.finish(DEADLINE);
    done.assert_success();
    let reconnects: Vec<u64> = fleets
        .map(|fleet| {
            let done = fleet.finish(DEADLINE);
            done.assert_success();
            let line = done
                .stderr
                .lines()
                .find(|l| l.contains("simulated clients:"))
                .unwrap()
                .to_owned();
            line.split(", ")
                .find_map(|part| part.strip_suffix(" reconnects"))
                .unwrap()
                .parse()
                .unwrap()
        })
        .to_vec();
    // The clients behind A and behind B had to find another way up; those of the root did not.
    assert!(reconnects[0] > 0 && reconnects[1] > 0, "{reconnects:?}");
    assert_eq!(reconnects[2], 0, "{reconnects:?}");
    a.kill();
    let s = summary(&out);
    assert_eq!(s["rounds_completed"], 16, "{s}");
    assert_eq!(s["model_sha256"], reference["model_sha256"]);
    // No round waited for its deadline (60 s): nothing was lost that had to be waited for.
    assert!(
        s["wall_seconds"].as_f64().unwrap() < 50.0,
        "the run waited out a deadline: {s}"
    );
}

/// An aggregator takes no declared length on trust: a compressed update whose header claims
/// more values than the round's model is refused before anything is received or decoded.
#[test]
fn an_aggregator_refuses_an_update_of_the_wrong_length_before_receiving_it() {
    use shoal_proto::v1::fleet_client::FleetClient;
    use shoal_proto::v1::{
        Compression, JoinRequest, PullRequest, UpdateHeader, UpdatePart, pull_reply::Reply,
        update_part::Part,
    };
    let (_root, url) = start_coordinator(&[
        "--clients",
        "1",
        "--rounds",
        "1",
        "--compress",
        "topk:0.01",
        "--quiet",
    ]);
    let (_aggregator, agg) = start_aggregator(&url, "127.0.0.1:0");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let mut c = FleetClient::connect(agg).await.unwrap();
        c.join(JoinRequest {
            client_id: "raw".into(),
            num_examples: 5,
        })
        .await
        .unwrap();
        let task = tokio::time::timeout(DEADLINE, async {
            loop {
                let reply = c
                    .pull(PullRequest {
                        client_id: "raw".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if let Some(Reply::Task(task)) = reply.reply {
                    return task;
                }
            }
        })
        .await
        .unwrap();
        let header = UpdateHeader {
            client_id: "raw".into(),
            fence: task.fence.clone(),
            num_examples: 5,
            // A billion values claimed, 12 bytes sent.
            payload_len: 1 << 30,
            compression: Compression::Topk as i32,
            encoded_len: 12,
            ..Default::default()
        };
        let parts = vec![UpdatePart {
            part: Some(Part::Header(header)),
        }];
        c.push_update(futures::stream::iter(parts))
            .await
            .unwrap_err()
    });
    let reason = status
        .metadata()
        .get(shoal_proto::REASON_HEADER)
        .and_then(|v| v.to_str().ok());
    assert_eq!(reason, Some("wrong_length"), "{status:?}");
}
