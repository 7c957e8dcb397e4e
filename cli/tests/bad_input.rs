//! Bad flags and bad files: every one must end the real `shoal` binary with a non-zero exit
//! and a message that says what is wrong, never a panic. All of these fail before training.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Running, arg, finish, shoal_with};
use std::path::Path;
use std::time::Duration;

/// Runs `shoal ARGS`, checks it failed cleanly (exit 1 for our errors, 2 for clap's usage
/// errors; 101 would be a panic), and returns its stderr.
fn rejects(args: &[&str]) -> String {
    let done = finish(&mut shoal_with(args));
    let code = done.status.code();
    assert!(
        matches!(code, Some(1 | 2)),
        "{args:?}: want exit 1 or 2, got {:?}\nstdout:\n{}\nstderr:\n{}",
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
    let err = rejects(&["run", "--no-such-flag"]);
    mentions(&err, &["unexpected argument", "--no-such-flag", "Usage"]);
}

#[test]
fn non_numeric_rounds() {
    let err = rejects(&["run", "--rounds", "abc"]);
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
    let err = rejects(&["run", "--config", arg(&path)]);
    mentions(
        &err,
        &["run.toml", "unknown field `nosuch_key`", "line 2", "rounds"],
    );
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
fn zero_rounds_ends_instead_of_hanging() {
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
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    if done.status.success() {
        let text = std::fs::read_to_string(&summary).unwrap();
        assert!(text.contains("\"rounds_completed\": 0"), "{text}");
    } else {
        mentions(&done.stderr, &["--rounds"]);
    }
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
        let err = rejects(&["coordinator", flag, value]);
        mentions(&err, words);
    }
}
