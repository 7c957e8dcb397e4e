//! The largest fleet one `shoal run` carries: seconds a round and peak memory of the real
//! binary for growing numbers of simulated clients on a synthetic dataset large enough to give
//! each client a few examples.
//!
//! `cargo run --release -p shoal-benches --bin fleet_scale -- --binary target/release/shoal
//! [--clients 1000,20000,100000 --rounds 3 --per-client 4 --model logreg --features 2
//! --epochs 1 --over-grpc]`
//!
//! Each run is `--model` (logistic regression by default; `mlp` is 9,610 parameters on 64
//! features, `mlp:13500` 1,012,510) on `blobs` (`--features` features, 4 centres, `per-client`
//! training examples per client), FedAvg, `--epochs` local epochs (0: the clients only send
//! the model back, after scoring it on their data), every client in every round; the fleet
//! calls its coordinator in place, or over gRPC on loopback with `--over-grpc`. The process's
//! `VmHWM` (peak resident memory) is sampled from `/proc/PID/status` while it runs. Round 1
//! includes every client joining, so it is reported apart from the later rounds.

use anyhow::{Context, Result, bail};
use shoal_benches::flags::Flags;
use shoal_benches::process::peak_kib;
use shoal_benches::stats::{Summary, round_seconds};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let flags = Flags::from_env();
    let binary: String = flags.get("binary", "target/release/shoal".to_string())?;
    let clients: String = flags.get("clients", "1000,20000,100000".to_string())?;
    let rounds = flags.get("rounds", 3u32)?;
    let per_client = flags.get("per-client", 4usize)?;
    let model: String = flags.get("model", "logreg".to_string())?;
    let features = flags.get("features", 2usize)?;
    let epochs = flags.get("epochs", 1u32)?;
    let over_grpc = flags.has("over-grpc");
    let dir = std::env::temp_dir().join(format!("shoal-fleet-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "fleet scale: `shoal run`, {model} on blobs ({features} features, 4 centres, {per_client} train examples a client), FedAvg, E={epochs}, {rounds} rounds, all clients every round, {}",
        if over_grpc {
            "over gRPC on loopback"
        } else {
            "fleet in process"
        }
    );
    println!(
        "{:>8} {:>10} {:>14} {:>16} {:>12} {:>8}",
        "clients", "wall s", "round 1 s", "later rounds s", "peak MiB", "status"
    );
    for n in clients.split(',') {
        let n: usize = n.trim().parse().context("--clients takes numbers")?;
        // Training examples are 80% of the samples.
        let samples = (n * per_client * 5).div_ceil(4);
        let metrics = dir.join(format!("m{n}.csv"));
        let started = Instant::now();
        let mut child = Command::new(&binary)
            .args([
                "run",
                "--quiet",
                "--model",
                &model,
                "--dataset",
                &format!("blobs:samples={samples},features={features},centers=4"),
                "--clients",
                &n.to_string(),
                "--rounds",
                &rounds.to_string(),
                "--epochs",
                &epochs.to_string(),
                "--round-timeout",
                "600",
                "--metrics-out",
            ])
            .arg(&metrics)
            .args(over_grpc.then_some("--over-grpc"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let mut peak = 0;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if let Some(kib) = peak_kib(child.id()) {
                peak = peak.max(kib);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let wall = started.elapsed().as_secs_f64();
        if !status.success() {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                use std::io::Read;
                let _ = stderr.read_to_string(&mut err);
            }
            println!(
                "{n:>8} {wall:>10.2} {:>14} {:>16} {:>12.0} {:>8}",
                "-",
                "-",
                peak as f64 / 1024.0,
                "failed"
            );
            eprintln!("{n} clients: {}", err.lines().last().unwrap_or_default());
            continue;
        }
        let seconds = round_seconds(&metrics)?;
        let Some((first, later)) = seconds.split_first() else {
            bail!("{n} clients: no rounds recorded");
        };
        let later = Summary::of(later).map_or_else(|| "-".into(), |s| format!("{:.3}", s.median));
        println!(
            "{n:>8} {wall:>10.2} {first:>14.3} {later:>16} {:>12.0} {:>8}",
            peak as f64 / 1024.0,
            "ok"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
