//! Runs of the real binary as a test sets them up: a coordinator on a loopback port, a
//! one-process run, and what their summaries say.

use super::{Running, arg, finish, shoal_with};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How long a coordinator may take to load its data and start listening.
pub const STARTUP: Duration = Duration::from_secs(30);

/// The options a client takes (`shoal client`/`shoal simulate`): which data and how it is
/// split. The rest of a run's options are the coordinator's alone.
const DATA_FLAGS: [&str; 5] = [
    "--dataset",
    "--partition",
    "--clients",
    "--seed",
    "--test-fraction",
];

/// The data options among a run's `FLAG VALUE` pairs: what its clients are given.
pub fn data_args<'a>(run: &[&'a str]) -> Vec<&'a str> {
    run.chunks(2)
        .filter(|pair| DATA_FLAGS.contains(&pair[0]))
        .flatten()
        .copied()
        .collect()
}

/// Reads a `--summary-out` file.
pub fn summary(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{text}", path.display()))
}

/// The layout and flat parameters of a safetensors model file (`--model-out`, export).
pub fn read_model(path: &Path) -> (shoal_models::Manifest, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    shoal_models::read_safetensors(&bytes)
        .unwrap_or_else(|e| panic!("{} is not a model file: {e}", path.display()))
}

pub fn rounds_completed(s: &Value) -> u64 {
    s["rounds_completed"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rounds_completed in {s}"))
}

/// The summary's model hash, checked to be a SHA-256 in hex.
pub fn model_sha256(s: &Value) -> String {
    let sha = s["model_sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no model_sha256 in {s}"));
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "model_sha256 {sha:?} is not 64 hex digits"
    );
    sha.to_owned()
}

/// Starts `shoal coordinator --listen 127.0.0.1:0 ARGS` and returns it with the URL clients
/// should dial, taken from the address it prints on stderr.
pub fn start_coordinator(args: &[&str]) -> (Running, String) {
    let mut cmd = shoal_with(&["coordinator", "--listen", "127.0.0.1:0"]);
    cmd.args(args);
    let mut coordinator = Running::spawn(&mut cmd);
    let line = coordinator.wait_for_stderr("coordinator listening on ", STARTUP);
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"));
    assert_ne!(
        addr.port(),
        0,
        "the coordinator must print the port it actually bound: {line:?}"
    );
    (coordinator, format!("http://{addr}"))
}

/// `shoal run ARGS --summary-out DIR/NAME --quiet`, which must succeed; returns the summary.
pub fn one_process_run(dir: &Path, name: &str, args: &[&str]) -> Value {
    let out = dir.join(name);
    let mut cmd = shoal_with(&["run", "--quiet", "--summary-out", arg(&out)]);
    cmd.args(args);
    finish(&mut cmd).assert_success();
    summary(&out)
}

/// The model hash and rounds completed of a `--summary-out` file.
pub fn sha(summary: &Path) -> (String, u64) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    (
        json["model_sha256"].as_str().unwrap().to_string(),
        json["rounds_completed"].as_u64().unwrap(),
    )
}

/// Newest round with a checkpoint object in `dir` (a checkpoint directory, or the directory
/// an s3s-fs server keeps a prefix in), committed or not; 0 if none.
pub fn newest_checkpoint(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                // `ckpt-ROUND-EPOCH.bin`
                .filter_map(|n| {
                    let round = n
                        .strip_prefix("ckpt-")?
                        .strip_suffix(".bin")?
                        .split('-')
                        .next()?;
                    round.parse().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}
