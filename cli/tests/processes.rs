//! Process-level tests of the real `shoal` binary: a coordinator and a fleet in separate
//! processes finish a run, runs are reproducible from their seed, flags override the config
//! file, and the spread-out run computes exactly the model of the one-process demo.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{
    data_args, model_sha256, one_process_run, rounds_completed, start_coordinator, summary,
};
use common::{DEADLINE, Finished, Running, arg, finish, shoal, shoal_with};
use std::path::Path;

/// Examples in the held-out fifth of the embedded digits (seed 0): accuracies are counts of
/// them.
const TEST_EXAMPLES: f64 = 359.0;

/// Asserts that `accuracy` is `right` of the [`TEST_EXAMPLES`] test digits. The summary's JSON
/// is read back within an ulp or so (serde_json's default float parsing), hence the 1e-12.
#[track_caller]
fn assert_right_of_test_digits(accuracy: Option<f64>, right: u32) {
    let accuracy = accuracy.unwrap_or_else(|| panic!("no accuracy, want {right} right"));
    let want = f64::from(right) / TEST_EXAMPLES;
    assert!(
        (accuracy - want).abs() < 1e-12,
        "accuracy {accuracy}, want {right} of {TEST_EXAMPLES} = {want}"
    );
}

#[test]
fn coordinator_and_simulate_processes_finish_a_two_round_run() {
    let dir = tempfile::tempdir().unwrap();
    let (summary_path, metrics_path) = (
        dir.path().join("summary.json"),
        dir.path().join("metrics.csv"),
    );
    let (coordinator, url) = start_coordinator(&[
        "--rounds",
        "2",
        "--clients",
        "3",
        "--summary-out",
        arg(&summary_path),
        "--metrics-out",
        arg(&metrics_path),
    ]);

    let fleet = finish(&mut shoal_with(&[
        "simulate",
        "--coordinator",
        &url,
        "--clients",
        "3",
    ]));
    fleet.assert_success();
    assert!(
        fleet
            .stderr
            .contains("3 simulated clients: 6 updates accepted"),
        "3 clients x 2 rounds should give 6 accepted updates:\n{}",
        fleet.stderr
    );
    let hosted: Finished = coordinator.finish(DEADLINE);
    hosted.assert_success();

    let s = summary(&summary_path);
    assert_eq!(rounds_completed(&s), 2, "{s}");
    // The seeded run is deterministic: 324 of the 359 test digits right after two rounds,
    // the same model as `shoal run --rounds 2 --clients 3`.
    assert_right_of_test_digits(s["final_accuracy"].as_f64(), 324);
    let sha = model_sha256(&s);
    assert_eq!(
        sha,
        "d7b7544104594670700cc50f6c652eefda5d950b2f350c41f07518b184ac5f8b"
    );
    assert!(
        hosted.stdout.contains(&format!("model sha256 {sha}")),
        "stdout lacks the model hash:\n{}",
        hosted.stdout
    );

    let metrics = std::fs::read_to_string(&metrics_path).unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    assert_eq!(lines.len(), 3, "want a header and 2 rows:\n{metrics}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header.first(), Some(&"round"), "{metrics}");
    let accuracy_col = header
        .iter()
        .position(|c| *c == "accuracy")
        .expect("accuracy column");
    // 270 of 359 after round 1, 324 after round 2.
    let expected = [270.0 / TEST_EXAMPLES, 324.0 / TEST_EXAMPLES];
    for ((i, row), want) in lines[1..].iter().enumerate().zip(expected) {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(
            cells.len(),
            header.len(),
            "row {row:?} does not match the header"
        );
        assert_eq!(
            cells[0],
            (i + 1).to_string(),
            "rounds are numbered from 1: {metrics}"
        );
        assert_eq!(
            cells[accuracy_col],
            format!("{want:.6}"),
            "round {}: {metrics}",
            i + 1
        );
    }
}

#[test]
fn the_default_run_reaches_its_known_accuracy_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let s = one_process_run(dir.path(), "defaults.json", &[]);
    assert_eq!(rounds_completed(&s), 20, "{s}");
    // 345 of the 359 test digits: 96.10%.
    assert_right_of_test_digits(s["final_accuracy"].as_f64(), 345);
    assert_eq!(
        model_sha256(&s),
        "1e372b09b0ed0fc65b5e569875319f501b73d1614728c4b3d672e1859e8f1e29"
    );
}

/// `shoal run`'s fleet calls its coordinator in place; over gRPC on the loopback port it
/// computes the same models, with faults, compression and carried client state alike.
#[test]
fn the_in_process_fleet_computes_what_a_fleet_over_grpc_does() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &[][..],
        &["--dropout", "0.2", "--round-timeout", "5", "--rounds", "4"][..],
        &["--compress", "topk:0.1", "--rounds", "8"][..],
        &[
            "--strategy",
            "scaffold",
            "--partition",
            "shards:2",
            "--rounds",
            "8",
        ][..],
        &["--strategy", "fedkmeans", "--rounds", "5"][..],
    ] {
        let direct = one_process_run(dir.path(), "direct.json", args);
        let over_grpc = [args, &["--over-grpc"]].concat();
        let grpc = one_process_run(dir.path(), "grpc.json", &over_grpc);
        assert_eq!(model_sha256(&direct), model_sha256(&grpc), "{args:?}");
        assert_eq!(
            rounds_completed(&direct),
            rounds_completed(&grpc),
            "{args:?}"
        );
    }
}

#[test]
fn compressed_runs_are_deterministic_and_keep_their_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let plain = one_process_run(dir.path(), "plain.json", &[]);
    let mut models = vec![model_sha256(&plain)];
    for (codec, at_least) in [("fp16", 345), ("int8", 340), ("topk:0.1", 330)] {
        let a = one_process_run(dir.path(), "a.json", &["--compress", codec]);
        let b = one_process_run(dir.path(), "b.json", &["--compress", codec]);
        assert_eq!(model_sha256(&a), model_sha256(&b), "{codec}");
        assert_eq!(rounds_completed(&a), 20, "{a}");
        let accuracy = a["final_accuracy"].as_f64().unwrap();
        assert!(
            accuracy * 359.0 >= f64::from(at_least) - 0.5,
            "{codec}: {accuracy}"
        );
        models.push(model_sha256(&a));
    }
    models.sort();
    models.dedup();
    assert_eq!(
        models.len(),
        4,
        "every encoding changes the model: {models:?}"
    );
}

#[test]
fn fedprox_with_mu_zero_is_fedavg_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let fedavg = one_process_run(dir.path(), "fedavg.json", &["--rounds", "5"]);
    let prox = |mu: &str| {
        let args = [
            "--rounds",
            "5",
            "--strategy",
            "fedprox",
            "--proximal-mu",
            mu,
        ];
        model_sha256(&one_process_run(dir.path(), "prox.json", &args))
    };
    assert_eq!(prox("0"), model_sha256(&fedavg));
    assert_ne!(prox("0.1"), model_sha256(&fedavg));
    assert_eq!(prox("0.1"), prox("0.1"));
}

/// FedProx's stragglers: slow devices send the share of their local steps they managed, and
/// every round aggregates them all (none is dropped); the seeded run replays exactly and
/// differs from the run without partial work.
#[test]
fn fedprox_aggregates_the_partial_work_of_slow_devices() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.csv");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--strategy",
            "fedprox",
            "--proximal-mu",
            "0.1",
            "--partition",
            "dirichlet:0.3",
            "--rounds",
            "10",
            "--metrics-out",
            arg(&metrics),
        ];
        args.extend_from_slice(extra);
        let s = one_process_run(dir.path(), "run.json", &args);
        (s["final_accuracy"].as_f64().unwrap(), model_sha256(&s))
    };
    let (_, full) = run(&[]);
    let (accuracy, partial) = run(&["--partial-work", "0.5"]);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 10);
    for row in rows {
        assert_eq!(
            row.split(',').nth(1),
            Some("10"),
            "every client counts: {row}"
        );
    }
    assert_ne!(partial, full);
    assert!(accuracy > 0.85, "accuracy {accuracy}");
    assert_eq!(run(&["--partial-work", "0.5"]).1, partial, "replays");
}

/// The first round whose test accuracy reached `target`, from a `--metrics-out` CSV.
fn first_round_reaching(metrics: &Path, target: f64) -> Option<u64> {
    let text = std::fs::read_to_string(metrics).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (round, accuracy) = (col("round"), col("accuracy"));
    lines.find_map(|line| {
        let cells: Vec<&str> = line.split(',').collect();
        let reached = cells[accuracy].parse::<f64>().unwrap() >= target;
        reached.then(|| cells[round].parse().unwrap())
    })
}

/// Two classes per client: local steps drift apart, and SCAFFOLD's control variates pull them
/// back. It reaches 85% on digits in 14 rounds; FedAvg has not after 30.
#[test]
fn scaffold_beats_fedavg_on_a_two_shard_split() {
    let dir = tempfile::tempdir().unwrap();
    let reach = |strategy: &str| {
        let metrics = dir.path().join(format!("{strategy}.csv"));
        let args = [
            "--strategy",
            strategy,
            "--partition",
            "shards:2",
            "--rounds",
            "30",
            "--metrics-out",
            arg(&metrics),
        ];
        let s = one_process_run(dir.path(), &format!("{strategy}.json"), &args);
        (first_round_reaching(&metrics, 0.85), model_sha256(&s))
    };
    let (fedavg, _) = reach("fedavg");
    let (scaffold, sha) = reach("scaffold");
    let scaffold = scaffold.expect("SCAFFOLD reaches 85% within 30 rounds");
    assert!(
        fedavg.is_none_or(|f| scaffold + 5 <= f),
        "SCAFFOLD reached 85% in round {scaffold}, FedAvg in {fedavg:?}"
    );
    assert_eq!(
        reach("scaffold").1,
        sha,
        "a seeded SCAFFOLD run replays exactly"
    );
}

#[test]
fn fedopt_with_sgd_at_learning_rate_one_is_fedavg_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let fedavg = one_process_run(dir.path(), "fedavg.json", &["--rounds", "5"]);
    let sgd = one_process_run(
        dir.path(),
        "sgd.json",
        &[
            "--rounds",
            "5",
            "--server-optimizer",
            "sgd",
            "--server-lr",
            "1",
        ],
    );
    assert_eq!(model_sha256(&sgd), model_sha256(&fedavg));
    let mut models = vec![model_sha256(&fedavg)];
    for optimizer in ["momentum", "adam", "adagrad", "yogi"] {
        let args = ["--rounds", "5", "--server-optimizer", optimizer];
        let a = one_process_run(dir.path(), "a.json", &args);
        let b = one_process_run(dir.path(), "b.json", &args);
        assert_eq!(model_sha256(&a), model_sha256(&b), "{optimizer}");
        assert_eq!(rounds_completed(&a), 5, "{a}");
        models.push(model_sha256(&a));
    }
    models.sort();
    models.dedup();
    assert_eq!(
        models.len(),
        5,
        "each optimiser takes its own steps: {models:?}"
    );
}

/// Two of ten clients send their change negated: the mean loses more than two points, each
/// robust rule stays within two points of its own clean run, and attacked runs replay exactly.
#[test]
fn robust_aggregators_hold_under_sign_flip_attackers() {
    let dir = tempfile::tempdir().unwrap();
    let run = |rule: &str, attacked: bool| {
        let mut args = vec!["--min-clients", "10", "--aggregator", rule];
        if attacked {
            args.extend(["--byzantine", "0.2:sign-flip"]);
        }
        let s = one_process_run(dir.path(), "run.json", &args);
        (s["final_accuracy"].as_f64().unwrap(), model_sha256(&s))
    };
    let (clean, _) = run("mean", false);
    let (hurt, _) = run("mean", true);
    assert!(
        hurt < clean - 0.02,
        "the attack must hurt the mean: {hurt} vs {clean}"
    );
    for rule in [
        "median",
        "trimmed-mean:0.3",
        "krum:2",
        "multi-krum:2:6",
        "bulyan:1",
    ] {
        let (clean, _) = run(rule, false);
        let (attacked, model) = run(rule, true);
        assert!(
            attacked >= clean - 0.02,
            "{rule}: {attacked} vs clean {clean}"
        );
        assert_eq!(run(rule, true).1, model, "{rule} replays");
    }
}

/// "A little is enough": the colluders' forgery sits inside the spread of honest updates, so
/// it is small, but it is seeded like everything else (the same model twice) and it is not
/// nothing (a higher test loss than the clean run's).
#[test]
fn colluding_attackers_replay_exactly_and_cost_the_mean_something() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--min-clients", "10"];
        args.extend_from_slice(extra);
        let s = one_process_run(dir.path(), "run.json", &args);
        (s["final_loss"].as_f64().unwrap(), model_sha256(&s))
    };
    let (clean, clean_model) = run(&[]);
    let (attacked, model) = run(&["--byzantine", "0.2:alie:4"]);
    assert_ne!(model, clean_model);
    assert!(
        attacked > clean,
        "loss {attacked} under attack, {clean} clean"
    );
    assert_eq!(run(&["--byzantine", "0.2:alie:4"]).1, model, "replays");
}

#[test]
fn same_seed_gives_the_same_model_and_another_seed_another() {
    let dir = tempfile::tempdir().unwrap();
    let first = one_process_run(dir.path(), "a.json", &["--rounds", "3"]);
    let again = one_process_run(dir.path(), "b.json", &["--rounds", "3"]);
    let other = one_process_run(dir.path(), "c.json", &["--rounds", "3", "--seed", "1"]);
    for s in [&first, &again, &other] {
        assert_eq!(rounds_completed(s), 3, "{s}");
    }
    assert_eq!(
        model_sha256(&first),
        model_sha256(&again),
        "same seed, different models"
    );
    assert_ne!(
        model_sha256(&first),
        model_sha256(&other),
        "seeds 0 and 1 gave the same model"
    );
}

#[test]
fn a_flag_overrides_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(&config, "rounds = 2\nclients = 4\nseed = 7\n").unwrap();
    let from_file = one_process_run(dir.path(), "file.json", &["--config", arg(&config)]);
    assert_eq!(
        rounds_completed(&from_file),
        2,
        "the file's rounds = 2 was not used: {from_file}"
    );
    let overridden = one_process_run(
        dir.path(),
        "flag.json",
        &["--config", arg(&config), "--rounds", "3"],
    );
    assert_eq!(
        rounds_completed(&overridden),
        3,
        "--rounds 3 must win over rounds = 2: {overridden}"
    );
}

#[test]
fn coordinator_and_simulate_compute_the_model_of_the_one_process_run() {
    let dir = tempfile::tempdir().unwrap();
    let common = ["--rounds", "3", "--clients", "4", "--seed", "5"];
    let demo = one_process_run(dir.path(), "run.json", &common);

    let spread_path = dir.path().join("spread.json");
    let mut args = common.to_vec();
    args.extend(["--quiet", "--summary-out", arg(&spread_path)]);
    let (coordinator, url) = start_coordinator(&args);
    finish(&mut shoal_with(&[
        "simulate",
        "--coordinator",
        &url,
        "--clients",
        "4",
        "--seed",
        "5",
    ]))
    .assert_success();
    coordinator.finish(DEADLINE).assert_success();
    let spread = summary(&spread_path);

    assert_eq!(rounds_completed(&spread), 3, "{spread}");
    assert_eq!(
        demo["run_id"], spread["run_id"],
        "same options must give the same run id"
    );
    assert_eq!(
        model_sha256(&demo),
        model_sha256(&spread),
        "one-process and spread-out runs differ"
    );
    assert_eq!(demo["final_accuracy"], spread["final_accuracy"]);
}

#[test]
fn separate_client_processes_compute_the_model_of_the_one_process_run() {
    let dir = tempfile::tempdir().unwrap();
    let common = ["--rounds", "2", "--clients", "2", "--seed", "3"];
    let demo = one_process_run(dir.path(), "run.json", &common);

    let spread_path = dir.path().join("spread.json");
    let mut args = common.to_vec();
    args.extend(["--quiet", "--summary-out", arg(&spread_path)]);
    let (coordinator, url) = start_coordinator(&args);
    let clients: Vec<Running> = (0..2)
        .map(|i| {
            let index = i.to_string();
            let mut cmd = shoal_with(&["client", "--coordinator", &url, "--index", &index]);
            cmd.args(data_args(&common));
            Running::spawn(&mut cmd)
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let done = client.finish(DEADLINE);
        done.assert_success();
        let expected = format!("client client-{i:05}: 2 updates accepted");
        assert!(
            done.stderr.contains(&expected),
            "{expected:?} not in:\n{}",
            done.stderr
        );
    }
    coordinator.finish(DEADLINE).assert_success();
    let spread = summary(&spread_path);
    assert_eq!(rounds_completed(&spread), 2, "{spread}");
    assert_eq!(
        model_sha256(&demo),
        model_sha256(&spread),
        "one-process run and client processes differ"
    );
}

/// Writes a gzipped IDX file: `dims` big-endian sizes after the magic, then `body`.
fn write_idx_gz(path: &Path, magic: u32, dims: &[u32], body: &[u8]) {
    use std::io::Write;
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(body);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

#[test]
fn a_small_fashion_mnist_copy_in_a_directory_trains() {
    let dir = tempfile::tempdir().unwrap();
    for (prefix, count) in [("train", 40u32), ("t10k", 10)] {
        let pixels: Vec<u8> = (0..count * 784)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        write_idx_gz(
            &dir.path().join(format!("{prefix}-images-idx3-ubyte.gz")),
            0x803,
            &[count, 28, 28],
            &pixels,
        );
        write_idx_gz(
            &dir.path().join(format!("{prefix}-labels-idx1-ubyte.gz")),
            0x801,
            &[count],
            &labels,
        );
    }
    let dataset = format!("fashion-mnist:{}", arg(dir.path()));
    let s = one_process_run(
        dir.path(),
        "s.json",
        &[
            "--dataset",
            &dataset,
            "--model",
            "logreg",
            "--clients",
            "2",
            "--rounds",
            "1",
        ],
    );
    assert_eq!(rounds_completed(&s), 1, "{s}");
    assert_eq!(
        s["num_params"].as_u64(),
        Some(784 * 10 + 10),
        "logreg on 28x28 images, 10 classes: {s}"
    );
}

#[test]
fn help_lists_every_subcommand() {
    let help = finish(shoal().arg("--help"));
    help.assert_success();
    for sub in ["run", "coordinator", "client", "simulate"] {
        assert!(
            help.stdout.contains(sub),
            "--help lacks {sub}:\n{}",
            help.stdout
        );
    }
}
