//! Seconds per round for 1,000 simulated clients doing no local work on the 9,610-parameter MLP
//! (64-128-10), over real gRPC on loopback: the coordinator's own per-round overhead.
//!
//! `cargo run --release -p shoal-benches --bin round_latency [-- --clients 1000 --rounds 10]`
//!
//! `epochs: 0` makes local training return the global parameters after one evaluation pass
//! over the client's one or two examples, so a round is: open, 1,000 long-polls answered with
//! a task, 1,000 downloads of the global model (shared by the fleet's cache), 1,000 uploads of
//! 38 KB folded exactly, aggregation and a test-set evaluation. Round 1 also waits for the
//! 1,000 clients to join, so it is reported apart.

use anyhow::Result;
use shoal_benches::cpu::{CpuSample, print_since};
use shoal_benches::flags::Flags;
use shoal_benches::simulation::Simulation;
use shoal_benches::stats::Summary;
use shoal_coordinator::RunConfig;

#[tokio::main]
async fn main() -> Result<()> {
    let flags = Flags::from_env();
    let clients = flags.get("clients", 1000usize)?;
    let rounds = flags.get("rounds", 10u32)?;
    let mut run = RunConfig {
        rounds,
        model: "mlp".into(),
        ..RunConfig::default()
    };
    run.fit.epochs = 0;
    let cpu_start = CpuSample::now().ok();
    let report = Simulation::digits(run, clients).run(|_| false).await?;

    println!(
        "round latency: {clients} clients, model mlp ({} params), epochs 0, real gRPC on loopback, 4 channels",
        report.num_params
    );
    println!("data setup {:.3} s", report.setup.as_secs_f64());
    println!(
        "{:>6} {:>8} {:>10} {:>14}",
        "round", "clients", "seconds", "since start s"
    );
    for r in &report.rounds {
        println!(
            "{:>6} {:>8} {:>10.4} {:>14.3}",
            r.record.round,
            r.record.clients,
            r.record.seconds,
            r.since_start.as_secs_f64()
        );
    }
    let seconds: Vec<f64> = report.rounds.iter().map(|r| r.record.seconds).collect();
    let line = |label: &str, values: &[f64]| {
        if let Some(s) = Summary::of(values) {
            println!(
                "{label:<22} n={:<3} mean {:.4} s  median {:.4} s  min {:.4} s  max {:.4} s",
                s.count, s.mean, s.median, s.min, s.max
            );
        }
    };
    println!();
    line("all rounds", &seconds);
    line("rounds 2.. (no joins)", seconds.get(1..).unwrap_or(&[]));
    println!(
        "fleet: {} finished, {} failed, {} updates accepted; wall {:.2} s",
        report.fleet.finished,
        report.fleet.failed,
        report.fleet.totals.accepted,
        report.wall.as_secs_f64()
    );
    print_since(cpu_start);
    Ok(())
}
