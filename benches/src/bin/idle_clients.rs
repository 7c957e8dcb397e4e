//! What an idle simulated client costs: the resident memory of a `shoal simulate` process
//! whose clients have all joined and wait, each with its pull open, for a round that does not
//! start (the coordinator waits for one client more than there are).
//!
//! `cargo run --release -p shoal-benches --bin idle_clients -- --binary target/release/shoal
//! [--clients 2000,20000]`
//!
//! A second table does the same for one `shoal run` process, whose fleet calls its coordinator
//! in place: a run of one client a round, so all but one wait with their pull open, measured
//! after its 50th round (fleet and coordinator together).
//!
//! For each fleet size the table gives both processes' resident memory once every client has
//! joined (the coordinator says so in its "waiting for clients" line) and settled; the cost of
//! one idle client is the growth between two sizes divided by the clients added, which takes
//! out what every process holds whatever its fleet (runtime, dataset, channels).

use anyhow::{Context, Result, bail};
use shoal_benches::flags::Flags;
use shoal_benches::process::Proc;
use std::process::Command;
use std::time::{Duration, Instant};

/// Resident KiB of the fleet and of the coordinator once `n` clients wait.
fn idle(binary: &str, n: usize) -> Result<(u64, u64)> {
    let started = Instant::now();
    let dataset = format!("blobs:samples={},features=2,centers=4", (n + 1) * 5);
    let mut coordinator = Proc::spawn(Command::new(binary).args([
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--log",
        "info",
        "--model",
        "logreg",
        "--dataset",
        &dataset,
        "--clients",
        &(n + 1).to_string(),
    ]))?;
    let url = coordinator.wait_for_url(Duration::from_secs(30))?;
    let mut fleet = Proc::spawn(Command::new(binary).args([
        "simulate",
        "--coordinator",
        &url,
        "--dataset",
        &dataset,
        "--clients",
        &(n + 1).to_string(),
        "--indices",
        &format!("0..{n}"),
    ]))?;
    let joined = format!("joined={n} ");
    let deadline = started + Duration::from_secs(600);
    while coordinator.arrived(&joined, started).is_none() {
        if Instant::now() > deadline {
            bail!("{n} clients did not all join within 600 s");
        }
        if let Some(status) = fleet.child.try_wait()? {
            bail!("the fleet exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every client has joined; let the last pulls reach the coordinator, then take the
    // largest of a few samples.
    std::thread::sleep(Duration::from_secs(2));
    let (mut fleet_kib, mut coordinator_kib) = (0, 0);
    for _ in 0..5 {
        fleet_kib = fleet_kib.max(fleet.rss_kib());
        coordinator_kib = coordinator_kib.max(coordinator.rss_kib());
        std::thread::sleep(Duration::from_millis(200));
    }
    fleet.kill();
    coordinator.kill();
    Ok((fleet_kib, coordinator_kib))
}

/// Resident KiB of a `shoal run` process of `n` clients, one asked a round, after its 50th
/// round.
fn idle_in_process(binary: &str, n: usize) -> Result<u64> {
    let dataset = format!("blobs:samples={},features=2,centers=4", (n + 1) * 5);
    let mut run = Proc::spawn(Command::new(binary).args([
        "run",
        "--quiet",
        "--log",
        "info",
        "--model",
        "logreg",
        "--dataset",
        &dataset,
        "--clients",
        &n.to_string(),
        "--clients-per-round",
        "1",
        "--rounds",
        "1000000",
    ]))?;
    run.wait_for("round aggregated round=50 ", Duration::from_secs(600))?;
    let mut kib = 0;
    for _ in 0..5 {
        kib = kib.max(run.rss_kib());
        std::thread::sleep(Duration::from_millis(100));
    }
    run.kill();
    Ok(kib)
}

/// KiB a client added: the growth from `before` to `now` over `added` clients.
fn slope(now: u64, before: u64, added: usize) -> String {
    format!("{:.1}", (now as f64 - before as f64) / added as f64)
}

fn main() -> Result<()> {
    let flags = Flags::from_env();
    let binary: String = flags.get("binary", "target/release/shoal".to_string())?;
    let clients: String = flags.get("clients", "2000,20000".to_string())?;
    let sizes: Vec<usize> = clients
        .split(',')
        .map(|n| n.trim().parse().context("--clients takes numbers"))
        .collect::<Result<_>>()?;
    println!("idle simulated clients: every client joined and pulling, no round running");
    println!(
        "{:>8} {:>12} {:>16} {:>18} {:>22}",
        "clients", "fleet MiB", "coordinator MiB", "fleet KiB/client", "coordinator KiB/client"
    );
    let mut previous: Option<(usize, u64, u64)> = None;
    for &n in &sizes {
        let (fleet, coordinator) = idle(&binary, n)?;
        let (per_fleet, per_coordinator) = match previous {
            Some((m, f, c)) if n > m => (slope(fleet, f, n - m), slope(coordinator, c, n - m)),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{n:>8} {:>12.1} {:>16.1} {per_fleet:>18} {per_coordinator:>22}",
            fleet as f64 / 1024.0,
            coordinator as f64 / 1024.0
        );
        previous = Some((n, fleet, coordinator));
    }
    println!();
    println!("idle clients of one shoal run process (in-process fleet), one client a round");
    println!(
        "{:>8} {:>12} {:>18}",
        "clients", "process MiB", "KiB/client"
    );
    let mut previous: Option<(usize, u64)> = None;
    for &n in &sizes {
        let kib = idle_in_process(&binary, n)?;
        let per = match previous {
            Some((m, before)) if n > m => slope(kib, before, n - m),
            _ => "-".into(),
        };
        println!("{n:>8} {:>12.1} {per:>18}", kib as f64 / 1024.0);
        previous = Some((n, kib));
    }
    Ok(())
}
