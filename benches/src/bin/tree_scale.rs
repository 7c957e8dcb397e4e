//! A round of 100,000 clients, flat and through sub-aggregators: seconds a round and the peak
//! memory of every process, all real processes of the `shoal` binary on this machine.
//!
//! `cargo run --release -p shoal-benches --bin tree_scale -- --binary target/release/shoal
//! [--clients 100000 --rounds 4 --levels 0,1,2 --fleets 2 --per-client 2 --hold 0.2
//! --model mlp --memory-budget-gib 20]`
//!
//! The model is the MLP 64-128-10 (9,610 parameters; `--model mlp:13500` has 1,012,510) on
//! `blobs` (64 features, 10 centres,
//! `per-client` training examples a client, so every client holds examples), FedAvg with no
//! local work (`--epochs 0`: a client's update is the global model it fetched), every client in
//! every round. The clients run in `--fleets` `shoal simulate` processes. Levels: 0, every
//! fleet talks to the coordinator; 1, fleet `f` talks to aggregator `f` under the coordinator;
//! 2, fleet `f` talks to aggregator `f'` under aggregator `f` under the coordinator. Seconds a
//! round come from the coordinator's metrics (round 1, which includes every client joining, is
//! reported apart); peak memory (`VmHWM`) of each process is sampled while it runs.

use anyhow::{Context, Result, bail};
use shoal_benches::flags::Flags;
use shoal_benches::process::Proc;
use shoal_benches::stats::{Summary, round_seconds};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How one run is laid out.
struct Layout<'a> {
    binary: &'a str,
    clients: usize,
    rounds: u32,
    fleets: usize,
    per_client: usize,
    hold: &'a str,
    model: &'a str,
    /// All processes together may hold this much resident memory; past it the run is
    /// stopped and reported as not fitting (instead of the machine running out).
    budget_kib: u64,
}

/// What one run measured.
struct Measured {
    first: f64,
    later: Option<Summary>,
    /// (process, peak MiB), in start order.
    peaks: Vec<(String, f64)>,
}

impl Layout<'_> {
    fn data_args(&self) -> Vec<String> {
        // Training examples are 80% of the samples.
        let samples = (self.clients * self.per_client * 5).div_ceil(4);
        [
            "--dataset".to_string(),
            format!("blobs:samples={samples},features=64,centers=10"),
            "--clients".into(),
            self.clients.to_string(),
        ]
        .into()
    }

    fn aggregator(&self, upstream: &str) -> Result<(Proc, String)> {
        let mut agg = Proc::spawn(Command::new(self.binary).args([
            "aggregator",
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--hold",
            self.hold,
            "--max-streams",
            "1000000",
        ]))?;
        let url = agg.wait_for_url(Duration::from_secs(30))?;
        Ok((agg, url))
    }

    fn run(&self, levels: usize, dir: &Path) -> Result<Measured> {
        let metrics = dir.join(format!("levels{levels}.csv"));
        let mut procs: Vec<(String, Proc)> = Vec::new();
        let mut coordinator = Proc::spawn(
            Command::new(self.binary)
                .args(["coordinator", "--listen", "127.0.0.1:0", "--quiet"])
                .args(["--model", self.model, "--epochs", "0"])
                .args(["--rounds", &self.rounds.to_string()])
                .args(["--round-timeout", "600", "--max-streams", "1000000"])
                .args(self.data_args())
                .arg("--metrics-out")
                .arg(&metrics),
        )?;
        let root = coordinator.wait_for_url(Duration::from_secs(60))?;
        procs.push(("coordinator".into(), coordinator));
        let mut entry = vec![root.clone(); self.fleets];
        for level in 1..=levels {
            for (f, up) in entry.iter_mut().enumerate() {
                let (agg, url) = self.aggregator(up)?;
                procs.push((format!("aggregator L{level}.{f}"), agg));
                *up = url;
            }
        }
        let per_fleet = self.clients.div_ceil(self.fleets);
        for (f, url) in entry.iter().enumerate() {
            let start = f * per_fleet;
            let end = ((f + 1) * per_fleet).min(self.clients);
            let fleet = Proc::spawn(
                Command::new(self.binary)
                    .args(["simulate", "--coordinator", url])
                    .args(["--indices", &format!("{start}..{end}")])
                    .args(self.data_args()),
            )?;
            procs.push((format!("simulate {start}..{end}"), fleet));
        }
        let mut peaks = vec![0u64; procs.len()];
        let limit = Duration::from_secs(600 * u64::from(self.rounds));
        let started = Instant::now();
        loop {
            for (peak, (_, p)) in peaks.iter_mut().zip(&procs) {
                *peak = (*peak).max(p.peak_kib());
            }
            let resident: u64 = procs.iter().map(|(_, p)| p.rss_kib()).sum();
            if resident > self.budget_kib {
                bail!(
                    "does not fit: {} MiB resident across the processes, over the budget of {} MiB",
                    resident / 1024,
                    self.budget_kib / 1024
                );
            }
            if let Some(status) = procs[0].1.child.try_wait()? {
                if !status.success() {
                    let tail: Vec<String> = procs[0]
                        .1
                        .lines()
                        .iter()
                        .rev()
                        .take(5)
                        .map(|(_, l)| l.clone())
                        .collect();
                    bail!("coordinator exited with {status}: {tail:?}");
                }
                break;
            }
            if started.elapsed() > limit {
                bail!("no end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for (name, p) in procs.iter_mut().skip(1) {
            p.wait(Duration::from_secs(60))
                .with_context(|| name.clone())?;
        }
        let seconds = round_seconds(&metrics)?;
        let Some((first, later)) = seconds.split_first() else {
            bail!("no rounds recorded");
        };
        Ok(Measured {
            first: *first,
            later: Summary::of(later),
            peaks: procs
                .iter()
                .zip(peaks)
                .map(|((name, _), kib)| (name.clone(), kib as f64 / 1024.0))
                .collect(),
        })
    }
}

fn main() -> Result<()> {
    let flags = Flags::from_env();
    let get =
        |name: &str, default: &str| -> Result<String> { Ok(flags.get(name, default.to_string())?) };
    let binary = get("binary", "target/release/shoal")?;
    let hold = get("hold", "0.2")?;
    let model = get("model", "mlp")?;
    let budget_gib: u64 = get("memory-budget-gib", "20")?
        .parse()
        .context("--memory-budget-gib")?;
    let layout = Layout {
        binary: &binary,
        clients: get("clients", "100000")?.parse().context("--clients")?,
        rounds: get("rounds", "4")?.parse().context("--rounds")?,
        fleets: get("fleets", "2")?.parse().context("--fleets")?,
        per_client: get("per-client", "2")?.parse().context("--per-client")?,
        hold: &hold,
        model: &model,
        budget_kib: budget_gib << 20,
    };
    if layout.fleets == 0 || layout.rounds < 2 {
        bail!("--fleets must be at least 1 and --rounds at least 2");
    }
    let dir = tempfile::tempdir()?;
    println!(
        "tree scale: {} clients in {} `shoal simulate` processes, MLP 64-128-10 (9,610 parameters) on blobs ({} train examples a client), FedAvg, no local work, all clients every round, {} rounds",
        layout.clients, layout.fleets, layout.per_client, layout.rounds
    );
    println!(
        "{:>7} {:>10} {:>16}  peak MiB per process",
        "levels", "round 1 s", "later rounds s"
    );
    for levels in get("levels", "0,1,2")?.split(',') {
        let levels: usize = levels.trim().parse().context("--levels takes numbers")?;
        match layout.run(levels, dir.path()) {
            Ok(m) => {
                let later = m.later.map_or_else(
                    || "-".into(),
                    |s| format!("{:.2} ({:.2}-{:.2})", s.median, s.min, s.max),
                );
                let peaks: Vec<String> = m
                    .peaks
                    .iter()
                    .map(|(name, mib)| format!("{name} {mib:.0}"))
                    .collect();
                println!(
                    "{levels:>7} {:>10.2} {later:>16}  {}",
                    m.first,
                    peaks.join(", ")
                );
            }
            Err(err) => println!("{levels:>7} failed: {err:#}"),
        }
    }
    Ok(())
}
