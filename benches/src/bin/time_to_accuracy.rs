//! Rounds and seconds until FedAvg first reaches 95% test accuracy on digits: MLP 64-128-10,
//! SGD lr 0.05, batch 32, one local epoch, 10 IID clients, every client every round.
//!
//! `cargo run --release -p shoal-benches --bin time_to_accuracy [-- --seeds 3 --target 0.95 --max-rounds 200]`
//!
//! `--unpaced` turns off the coordinator's per-client pull pacing (`Limits::pull_rate`, by
//! default 20 pulls/s with bursts of 40). Each client pulls about once per round, so once the
//! burst is spent pacing holds rounds to about 20 a second, and this run's rounds are faster.
//!
//! The run stops at the first round whose test accuracy reaches the target (or at the cap).
//! "rounds s" sums the coordinator's per-round times up to that round; "wall s" runs from the
//! start (data loading, server start, clients joining) to that round's record; "total s" adds
//! the shutdown. The Flower reference (1.42 + PyTorch, same setup, this machine) is the
//! figure given in the benchmark's brief: about 170 rounds and 45 s.

use anyhow::Result;
use shoal_benches::cpu::{CpuSample, print_since};
use shoal_benches::flags::Flags;
use shoal_benches::simulation::Simulation;
use shoal_benches::stats::Summary;
use shoal_coordinator::RunConfig;
use shoal_coordinator::config::FitSettings;

/// Flower 1.42 + PyTorch on this machine, same setup: rounds and seconds to 95%.
const FLOWER_ROUNDS: f64 = 170.0;
const FLOWER_SECONDS: f64 = 45.0;

#[tokio::main]
async fn main() -> Result<()> {
    let flags = Flags::from_env();
    let seeds = flags.get("seeds", 1u64)?;
    let target = flags.get("target", 0.95f64)?;
    let max_rounds = flags.get("max-rounds", 200u32)?;
    let clients = flags.get("clients", 10usize)?;
    let unpaced = flags.has("unpaced");
    println!(
        "time to {:.0}% test accuracy: digits, mlp, SGD lr 0.05, batch 32, 1 epoch, {clients} IID clients, cap {max_rounds} rounds",
        target * 100.0
    );
    println!(
        "pull pacing: {}",
        if unpaced {
            "off (--unpaced)"
        } else {
            "coordinator default (Limits::default().pull_rate)"
        }
    );
    println!(
        "{:>5} {:>7} {:>9} {:>10} {:>9} {:>9} {:>10}",
        "seed", "round", "accuracy", "rounds s", "wall s", "total s", "s/round"
    );
    let cpu_start = CpuSample::now().ok();
    let (mut reached_rounds, mut reached_wall) = (Vec::new(), Vec::new());
    for seed in 0..seeds {
        let run = RunConfig {
            seed,
            rounds: max_rounds,
            model: "mlp".into(),
            fit: FitSettings {
                epochs: 1,
                batch_size: 32,
                lr: 0.05,
            },
            ..RunConfig::default()
        };
        let mut simulation = Simulation::digits(run, clients);
        if unpaced {
            simulation.limits.pull_rate = None;
        }
        let report = simulation
            .run(move |r| r.get("accuracy").is_some_and(|a| a >= target))
            .await?;
        let hit = report
            .rounds
            .iter()
            .position(|r| r.record.get("accuracy").is_some_and(|a| a >= target));
        let upto = hit.map_or(report.rounds.len(), |i| i + 1);
        let rounds_s: f64 = report.rounds[..upto].iter().map(|r| r.record.seconds).sum();
        let last = &report.rounds[upto.saturating_sub(1)];
        let wall = last.since_start.as_secs_f64();
        println!(
            "{seed:>5} {:>7} {:>9.4} {rounds_s:>10.2} {wall:>9.2} {:>9.2} {:>10.4}{}",
            last.record.round,
            last.record.get("accuracy").unwrap_or(f64::NAN),
            report.wall.as_secs_f64(),
            rounds_s / upto.max(1) as f64,
            if hit.is_some() {
                ""
            } else {
                "  (target not reached)"
            }
        );
        if hit.is_some() {
            reached_rounds.push(f64::from(last.record.round));
            reached_wall.push(wall);
        }
    }
    if let (Some(r), Some(w)) = (Summary::of(&reached_rounds), Summary::of(&reached_wall)) {
        println!();
        println!(
            "shoal:  median {:.0} rounds, {:.2} s wall ({} of {seeds} seeds reached the target)",
            r.median, w.median, r.count
        );
        println!(
            "flower: about {FLOWER_ROUNDS:.0} rounds, {FLOWER_SECONDS:.0} s (1.42 + PyTorch, same setup, this machine)"
        );
        println!(
            "ratio:  {:.2}x the rounds, {:.2}x the wall time of flower",
            r.median / FLOWER_ROUNDS,
            w.median / FLOWER_SECONDS
        );
    }
    print_since(cpu_start);
    Ok(())
}
