//! Times `shoal run` with its defaults: the library equivalent (digits, mlp, FedAvg, 10 IID
//! clients, 20 rounds, 5 local epochs, lr 0.1, batch 32, seed 0; its fleet over gRPC with 4
//! channels, as `shoal run --over-grpc`), and optionally the real binary (whose fleet calls the
//! coordinator in process).
//!
//! `cargo run --release -p shoal-benches --bin run_defaults [-- --repeat 3 --binary target/release/shoal]`
//!
//! With `--binary PATH` it also runs `PATH run --quiet` `--repeat` times and times each
//! process from spawn to exit (what `time ./target/release/shoal run --quiet` reports as real).

use anyhow::{Context, Result, anyhow};
use shoal_benches::cpu::{CpuSample, print_since};
use shoal_benches::flags::Flags;
use shoal_benches::simulation::Simulation;
use shoal_benches::stats::Summary;
use shoal_coordinator::RunConfig;
use std::process::{Command, Stdio};
use std::time::Instant;

fn print_summary(label: &str, values: &[f64]) {
    if let Some(s) = Summary::of(values) {
        println!(
            "{label:<28} n={}  mean {:.2} s  median {:.2} s  min {:.2} s  max {:.2} s",
            s.count, s.mean, s.median, s.min, s.max
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let flags = Flags::from_env();
    let repeat = flags.get("repeat", 1usize)?;
    let binary = flags.get("binary", String::new())?;
    println!(
        "`shoal run` defaults: digits, mlp, fedavg, 10 iid clients, 20 rounds, 5 epochs, lr 0.1, batch 32"
    );
    let cpu_start = CpuSample::now().ok();
    let mut walls = Vec::new();
    for i in 0..repeat.max(1) {
        let report = Simulation::digits(RunConfig::default(), 10)
            .run(|_| false)
            .await?;
        let summary = report.summary.context("run stopped early")?;
        let rounds: f64 = report.rounds.iter().map(|r| r.record.seconds).sum();
        println!(
            "in-process #{i}: wall {:.2} s (rounds {rounds:.2} s), {} rounds, accuracy {:.4}, model {}",
            report.wall.as_secs_f64(),
            summary.rounds_completed,
            summary.final_accuracy.unwrap_or(f64::NAN),
            &summary.model_sha256[..16],
        );
        walls.push(report.wall.as_secs_f64());
    }
    print_summary("in-process equivalent", &walls);
    print_since(cpu_start);
    if binary.is_empty() {
        println!("(add --binary target/release/shoal to time the real binary too)");
        return Ok(());
    }
    let mut process = Vec::new();
    for i in 0..repeat.max(1) {
        let started = Instant::now();
        let out = Command::new(&binary)
            .args(["run", "--quiet"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {binary}"))?;
        let seconds = started.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(anyhow!(
                "{binary} run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{binary} run --quiet #{i}: {seconds:.2} s");
        if i == 0 {
            for line in text.lines() {
                println!("    {line}");
            }
        }
        process.push(seconds);
    }
    print_summary("shoal run (process)", &process);
    Ok(())
}
