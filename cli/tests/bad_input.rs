//! Bad flags and bad files: every one must end the real `shoal` binary with a non-zero exit
//! and a message that says what is wrong, never a panic. All of these fail before training.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Running, arg, finish, shoal_with};
use std::path::Path;
use std::time::Duration;

/// Exit code of an error `shoal` reports itself (a panic would be 101).
const ERROR: i32 = 1;

/// Exit code of a command line clap refuses to parse (a usage error).
const USAGE: i32 = 2;

/// Runs `shoal ARGS`, checks it failed cleanly with exit 1 (an error `shoal` reports itself),
/// and returns its stderr.
fn rejects(args: &[&str]) -> String {
    rejects_with(ERROR, args)
}

/// Runs `shoal ARGS`, checks it failed cleanly with exit `code` ([`ERROR`] or [`USAGE`]), and
/// returns its stderr.
fn rejects_with(code: i32, args: &[&str]) -> String {
    let done = finish(&mut shoal_with(args));
    assert_eq!(
        done.status.code(),
        Some(code),
        "{args:?}: want exit {code}, got {:?}\nstdout:\n{}\nstderr:\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    assert!(
        !done.stderr.contains("panicked"),
        "{args:?} panicked:\n{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("error"),
        "{args:?}: stderr has no error message:\n{}",
        done.stderr
    );
    done.stderr
}

/// Asserts `stderr` contains every one of `words`.
fn mentions(stderr: &str, words: &[&str]) {
    for word in words {
        assert!(stderr.contains(word), "message lacks {word:?}:\n{stderr}");
    }
}

#[test]
fn unknown_flag() {
    let err = rejects_with(USAGE, &["run", "--no-such-flag"]);
    mentions(&err, &["unexpected argument", "--no-such-flag", "Usage"]);
}

#[test]
fn non_numeric_rounds() {
    let err = rejects_with(USAGE, &["run", "--rounds", "abc"]);
    mentions(&err, &["invalid value", "'abc'", "--rounds"]);
}

#[test]
fn negative_dirichlet_alpha() {
    let err = rejects(&["run", "--partition", "dirichlet:-1"]);
    mentions(&err, &["dirichlet:-1", "alpha", "valid forms"]);
}

#[test]
fn unknown_dataset_in_every_subcommand() {
    for sub in ["run", "coordinator", "simulate", "client"] {
        let err = rejects(&[sub, "--dataset", "nosuch"]);
        mentions(&err, &["\"nosuch\"", "unknown dataset", "valid forms"]);
    }
}

#[test]
fn zero_width_hidden_layer() {
    let err = rejects(&["run", "--model", "mlp:0"]);
    mentions(&err, &["mlp:0", "positive"]);
}

#[test]
fn fraction_above_one() {
    let err = rejects(&["run", "--fraction", "2"]);
    mentions(&err, &["--fraction", "(0, 1]", "2"]);
}

#[test]
fn negative_learning_rate() {
    let err = rejects(&["run", "--lr=-1"]);
    mentions(&err, &["--lr must be positive", "-1"]);
}

#[test]
fn negative_learning_rate_after_a_space_names_the_flag() {
    let err = rejects(&["run", "--lr", "-1"]);
    mentions(&err, &["--lr", "positive"]);
}

#[test]
fn missing_csv_file() {
    let err = rejects(&["run", "--dataset", "csv:/nonexistent.csv"]);
    mentions(&err, &["cannot read /nonexistent.csv", "loading dataset"]);
}

#[test]
fn csv_with_a_short_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.csv");
    std::fs::write(&path, "a,b,label\n1,2,0\n3,0\n4,5,1\n").unwrap();
    let err = rejects(&["run", "--dataset", &format!("csv:{}", arg(&path))]);
    mentions(&err, &["short.csv:3:", "expected 3 columns, found 2"]);
}

#[test]
fn csv_with_nan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.csv");
    std::fs::write(&path, "1,2,0\n1,NaN,1\n").unwrap();
    let err = rejects(&["run", "--dataset", &format!("csv:{}", arg(&path))]);
    mentions(&err, &["nan.csv:2:", "column 2", "\"NaN\"", "finite"]);
}

#[test]
fn fashion_mnist_directory_without_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = rejects(&[
        "run",
        "--dataset",
        &format!("fashion-mnist:{}", arg(dir.path())),
    ]);
    mentions(
        &err,
        &[
            "train-images-idx3-ubyte.gz",
            "not found",
            "apt-get install dataset-fashion-mnist",
        ],
    );
}

const FASHION_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

#[test]
fn fashion_mnist_file_that_is_not_gzip() {
    let dir = tempfile::tempdir().unwrap();
    for name in FASHION_FILES {
        // A gzip magic number followed by garbage.
        std::fs::write(dir.path().join(name), b"\x1f\x8b\x08\x00garbage").unwrap();
    }
    let err = rejects(&[
        "run",
        "--dataset",
        &format!("fashion-mnist:{}", arg(dir.path())),
    ]);
    mentions(&err, &["malformed", "train-images-idx3-ubyte.gz", "gzip"]);
}

/// Gzips `bytes` into `path`.
fn write_gz(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

#[test]
fn fashion_mnist_idx_header_that_lies_about_its_size() {
    let dir = tempfile::tempdir().unwrap();
    // Announces 1,000 images of 28x28 but holds 10 pixel bytes.
    let mut images = 0x803u32.to_be_bytes().to_vec();
    for d in [1_000u32, 28, 28] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    images.extend_from_slice(&[0; 10]);
    for name in FASHION_FILES {
        write_gz(&dir.path().join(name), &images);
    }
    let err = rejects(&[
        "run",
        "--dataset",
        &format!("fashion-mnist:{}", arg(dir.path())),
    ]);
    mentions(
        &err,
        &[
            "malformed",
            "train-images-idx3-ubyte.gz",
            "1000 images",
            "10 pixel bytes",
        ],
    );
}

#[test]
fn config_file_with_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, "rounds = 2\nnosuch_key = 3\n").unwrap();
    // Clients read the run's file for its data keys; a typo there is still a typo.
    for sub in ["run", "coordinator", "simulate", "client"] {
        let err = rejects(&[sub, "--config", arg(&path)]);
        mentions(
            &err,
            &[
                "run.toml",
                "unknown option \"nosuch_key\"",
                "rounds",
                "dataset",
            ],
        );
    }
}

#[test]
fn config_file_with_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, "rounds = = 2\n").unwrap();
    let err = rejects(&["run", "--config", arg(&path)]);
    mentions(&err, &["parsing config file", "run.toml", "line 1"]);
}

#[test]
fn config_file_with_a_wrong_type_or_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, "rounds = \"two\"\n").unwrap();
    let err = rejects(&["run", "--config", arg(&path)]);
    mentions(&err, &["run.toml", "invalid type", "u32"]);
    let missing = dir.path().join("absent.toml");
    let err = rejects(&["run", "--config", arg(&missing)]);
    mentions(&err, &["reading config file", "absent.toml"]);
}

#[test]
fn coordinator_address_that_is_not_a_uri() {
    let err = rejects(&["simulate", "--coordinator", "http://a b", "--clients", "2"]);
    mentions(&err, &["bad coordinator address", "\"http://a b\""]);
}

#[test]
fn coordinator_address_without_a_scheme() {
    for sub in ["simulate", "client"] {
        let mut cmd = shoal_with(&[sub, "--coordinator", "not-a-url", "--clients", "2"]);
        let done = Running::spawn(&mut cmd).finish(Duration::from_secs(15));
        assert_eq!(done.status.code(), Some(1), "{sub}: {}", done.stderr);
        mentions(&done.stderr, &["not-a-url"]);
    }
}

#[test]
fn client_index_out_of_range() {
    let err = rejects(&["client", "--index", "99", "--clients", "3"]);
    mentions(&err, &["--index 99", "out of range", "--clients 3"]);
}

#[test]
fn coordinator_cannot_bind() {
    let err = rejects(&["coordinator", "--listen", "nonsense"]);
    mentions(&err, &["binding nonsense", "invalid socket address"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = rejects(&["coordinator", "--listen", &addr]);
    mentions(&err, &[&format!("binding {addr}")]);
}

#[test]
fn zero_rounds_is_refused_before_the_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("s.json");
    let mut cmd = shoal_with(&[
        "run",
        "--rounds",
        "0",
        "--clients",
        "2",
        "--quiet",
        "--summary-out",
        arg(&summary),
    ]);
    let done = Running::spawn(&mut cmd).finish(Duration::from_secs(20));
    assert_eq!(done.status.code(), Some(ERROR), "{}", done.stderr);
    assert_eq!(
        done.stderr.trim_end(),
        "error: invalid configuration: --rounds must be at least 1, got 0"
    );
    assert!(!summary.exists(), "a refused run writes no summary");
}

#[test]
fn coordinator_limit_flags_out_of_range() {
    for (flag, value, words) in [
        (
            "--poll-timeout",
            "1e20",
            &["--poll-timeout", "positive number of seconds"][..],
        ),
        (
            "--liveness",
            "0",
            &["--liveness", "positive number of seconds"][..],
        ),
        (
            "--max-update-norm",
            "nan",
            &["--max-update-norm", "positive number or `off`"][..],
        ),
        ("--max-chunk-bytes", "2000000", &["max chunk bytes"][..]),
        ("--max-clients", "0", &["clients", "positive"][..]),
        (
            "--max-examples",
            "9999999999",
            &["max examples must be at most"][..],
        ),
        ("--norm-policy", "drop", &["--norm-policy", "drop"][..]),
    ] {
        // Values clap parses itself are usage errors; the others are checked by shoal.
        let code = if matches!(flag, "--max-update-norm" | "--norm-policy") {
            USAGE
        } else {
            ERROR
        };
        let err = rejects_with(code, &["coordinator", flag, value]);
        mentions(&err, words);
    }
}

/// How long a refused option may take to end the process: it is checked before any data is
/// loaded or any connection made, so well under a second; the margin is for a loaded machine.
const PROMPT: Duration = Duration::from_secs(20);

/// Runs `shoal ARGS`, checks it ended within [`PROMPT`] with exit 1 and one line of error
/// naming every one of `words`, and returns that line.
fn refused(args: &[&str], words: &[&str]) -> String {
    let done = Running::spawn(&mut shoal_with(args)).finish(PROMPT);
    assert_eq!(
        done.status.code(),
        Some(1),
        "{args:?}: want exit 1\nstderr:\n{}",
        done.stderr
    );
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line:\n{}", done.stderr);
    assert!(lines[0].starts_with("error: "), "{args:?}: {}", lines[0]);
    mentions(lines[0], words);
    lines[0].to_owned()
}

#[test]
fn min_clients_above_clients_in_every_subcommand() {
    for sub in ["run", "coordinator"] {
        refused(
            &[sub, "--min-clients", "5", "--clients", "3"],
            &["--min-clients", "1..=3", "at most --clients", "got 5"],
        );
    }
}

#[test]
fn min_clients_zero() {
    refused(
        &["run", "--min-clients", "0"],
        &["--min-clients", "1..=10", "got 0"],
    );
}

#[test]
fn min_clients_above_clients_per_round() {
    refused(
        &["run", "--min-clients", "5", "--clients-per-round", "4"],
        &["--min-clients", "1..=4", "--clients-per-round", "got 5"],
    );
}

#[test]
fn clients_per_round_zero_or_above_clients() {
    refused(
        &["run", "--clients-per-round", "0"],
        &["--clients-per-round", "1..=10", "got 0"],
    );
    refused(
        &["run", "--clients-per-round", "11"],
        &["--clients-per-round", "1..=10", "got 11"],
    );
}

#[test]
fn zero_clients() {
    refused(&["run", "--clients", "0"], &["--clients", "at least 1"]);
}

#[test]
fn channels_zero_or_too_many_on_run() {
    refused(
        &["run", "--channels", "0"],
        &["--channels", "1..=65535", "got 0"],
    );
    refused(
        &["run", "--channels", "100000"],
        &["--channels", "1..=65535", "got 100000"],
    );
}

#[test]
fn simulate_with_zero_channels_ends_instead_of_hanging() {
    // No coordinator listens there: were the flag accepted, the fleet would retry forever.
    let url = common::dead_url();
    refused(
        &["simulate", "--coordinator", &url, "--channels", "0"],
        &["--channels", "1..=65535", "got 0"],
    );
}

#[test]
fn negative_or_non_finite_server_lr() {
    refused(
        &["run", "--strategy", "fedsgd", "--server-lr", "-0.5"],
        &["--server-lr", "above 0", "got -0.5"],
    );
    refused(
        &[
            "run",
            "--strategy",
            "fedsgd",
            "--server-optimizer",
            "adam",
            "--server-lr",
            "inf",
        ],
        &["--server-lr", "finite", "got inf"],
    );
}

#[test]
fn server_momentum_of_two() {
    refused(
        &["run", "--strategy", "fedsgd", "--server-momentum", "2"],
        &["--server-momentum", "[0, 1)", "got 2"],
    );
}

#[test]
fn options_of_another_strategy_are_checked_too() {
    refused(
        &["run", "--server-momentum", "2"],
        &["--server-momentum", "[0, 1)"],
    );
    refused(
        &[
            "run",
            "--strategy",
            "fedsgd",
            "--server-optimizer",
            "adam",
            "--server-momentum",
            "-1",
        ],
        &["--server-momentum", "[0, 1)"],
    );
    refused(&["run", "--tol", "-1"], &["--tol", "≥ 0", "got -1"]);
}

#[test]
fn scaffold_with_a_server_optimizer_or_a_robust_rule() {
    for sub in ["run", "coordinator"] {
        refused(
            &[sub, "--strategy", "scaffold", "--server-optimizer", "adam"],
            &["--server-optimizer", "SCAFFOLD"],
        );
        refused(
            &[
                sub,
                "--strategy",
                "scaffold",
                "--aggregator",
                "median",
                "--min-clients",
                "3",
            ],
            &["--aggregator median", "SCAFFOLD", "mean only"],
        );
    }
}

#[test]
fn k_zero_or_above_the_training_examples() {
    refused(
        &["run", "--strategy", "fedkmeans", "--k", "0"],
        &["--k must be at least 1", "got 0"],
    );
    refused(
        &["run", "--strategy", "fedkmeans", "--k", "5000"],
        &["--k 5000 is above the", "training examples"],
    );
}

#[test]
fn local_k_zero() {
    refused(
        &["run", "--strategy", "fedkmeans", "--local-k", "0"],
        &["--local-k must be at least 1", "got 0"],
    );
}

#[test]
fn local_k_above_the_smallest_client() {
    // Digits: 1,437 training examples split among 10 clients, about 143 each.
    for sub in ["run", "coordinator"] {
        let line = refused(
            &[sub, "--strategy", "fedkmeans", "--local-k", "500"],
            &[
                "--local-k 500 is above the smallest client's",
                "examples (client-000",
            ],
        );
        // The seeded IID split's smallest share: 143 examples, client-00008's.
        assert!(
            line.ends_with(
                "--local-k 500 is above the smallest client's 143 examples (client-00008); give at most 143"
            ),
            "{sub}: {line}"
        );
    }
}

#[test]
fn clients_refuse_options_only_the_coordinator_uses() {
    for sub in ["simulate", "client"] {
        for flag in [
            ["--rounds", "3"],
            ["--server-lr", "0.1"],
            ["--strategy", "fedkmeans"],
            ["--local-k", "5"],
            ["--eval", "federated"],
        ] {
            let mut args = vec![sub];
            args.extend(flag);
            let err = rejects_with(USAGE, &args);
            mentions(&err, &["unexpected argument", flag[0]]);
        }
    }
}

#[test]
fn a_dataset_with_only_a_shape_trains_no_client() {
    for sub in ["run", "simulate", "client"] {
        refused(
            &[sub, "--dataset", "shape:64,10"],
            &["shape:64,10", "names only the data's shape"],
        );
    }
    refused(
        &["client", "--data", "shape:64,10"],
        &["shape:64,10 holds no examples"],
    );
    refused(
        &["coordinator", "--dataset", "shape:64,10", "--eval", "both"],
        &["holds no examples to score on", "--eval"],
    );
    refused(
        &[
            "coordinator",
            "--dataset",
            "shape:2,3",
            "--strategy",
            "fedkmeans",
        ],
        &["federated k-means", "give it a dataset"],
    );
    let err = rejects(&["coordinator", "--dataset", "shape:8x0,10"]);
    mentions(
        &err,
        &["shape:8x0,10", "columns must be a positive whole number"],
    );
}

#[test]
fn tol_negative_or_not_a_number() {
    for tol in ["-0.001", "nan"] {
        refused(
            &["run", "--strategy", "fedkmeans", "--tol", tol],
            &["--tol", "finite number ≥ 0"],
        );
    }
}

#[test]
fn max_retries_beyond_reason() {
    refused(
        &["run", "--max-retries", "4294967295"],
        &["--max-retries", "0..=1000", "got 4294967295"],
    );
}

#[test]
fn round_timeout_out_of_range() {
    for timeout in ["1e20", "0", "0.0001", "-1", "nan", "inf"] {
        refused(
            &["run", "--round-timeout", timeout],
            &["--round-timeout", "between 0.001 and 604800 seconds"],
        );
    }
}

#[test]
fn gradients_claiming_more_examples_than_an_update_may_carry() {
    refused(
        &[
            "run",
            "--strategy",
            "fedsgd",
            "--grad-batches",
            "100000000",
            "--batch-size",
            "256",
        ],
        &["--grad-batches", "--batch-size", "at most 2147483648"],
    );
}

#[test]
fn zero_epochs_train_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.csv");
    let args = ["run", "--quiet", "--epochs", "0", "--rounds", "3"];
    finish(shoal_with(&args).args(["--metrics-out", arg(&metrics)])).assert_success();
    let text = std::fs::read_to_string(&metrics).unwrap();
    let mut rows = text.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let at = header.iter().position(|h| *h == "accuracy").unwrap();
    let accuracies: Vec<&str> = rows.map(|r| r.split(',').nth(at).unwrap()).collect();
    assert_eq!(accuracies.len(), 3, "{text}");
    // The model never moves: every round scores the initial model.
    assert!(accuracies.iter().all(|a| *a == accuracies[0]), "{text}");
}

#[test]
fn zero_batch_size() {
    refused(
        &["run", "--batch-size", "0"],
        &["--batch-size", "at least 1"],
    );
}

#[test]
fn fractions_and_over_selection_out_of_range() {
    for fraction in ["0", "1", "-0.2", "nan"] {
        refused(
            &["run", "--test-fraction", fraction],
            &["--test-fraction", "(0, 1)"],
        );
    }
    for fraction in ["0", "nan"] {
        refused(&["run", "--fraction", fraction], &["--fraction", "(0, 1]"]);
    }
    refused(
        &["run", "--over-select", "0.5"],
        &["--over-select", "at least 1.0"],
    );
}

#[test]
fn bad_values_in_the_config_file_name_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, "clients = 3\nmin_clients = 4\n").unwrap();
    refused(
        &["run", "--config", arg(&path)],
        &["--min-clients", "1..=3", "got 4"],
    );
}

#[test]
fn the_edges_of_the_ranges_are_accepted() {
    for args in [
        &[
            "--clients",
            "3",
            "--min-clients",
            "3",
            "--clients-per-round",
            "3",
            "--channels",
            "1",
            "--round-timeout",
            "604800",
            "--max-retries",
            "1000",
        ][..],
        &[
            "--strategy",
            "fedsgd",
            "--server-momentum",
            "0.99",
            "--clients",
            "3",
        ][..],
        &[
            "--strategy",
            "fedkmeans",
            "--clients",
            "3",
            "--local-k",
            "400",
            "--tol",
            "0",
        ][..],
    ] {
        let mut all = vec!["run", "--rounds", "1", "--quiet"];
        all.extend_from_slice(args);
        finish(&mut shoal_with(&all)).assert_success();
    }
}

#[test]
fn an_external_model_needs_its_layout_federated_scores_and_its_own_clients() {
    refused(
        &["coordinator", "--model", "external"],
        &["--model external", "--eval federated"],
    );
    refused(
        &["coordinator", "--model", "external", "--eval", "federated"],
        &["--model external needs --init FILE"],
    );
    refused(
        &["run", "--model", "external", "--eval", "federated"],
        &["simulated clients run the built-in models", "LocalTrainer"],
    );
}
