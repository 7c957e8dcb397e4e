//! What each strategy buys on Fashion-MNIST, and what each robust rule holds under attack.
//!
//! `cargo run --release -p shoal-benches --bin strategies -- --binary target/release/shoal
//! [--rounds 100 --target 0.85 --table strategies|robust|both --only NAME,NAME
//! --fractions 0.1,0.2,0.3 --kinds sign-flip,scale:-4,noise:1,label-flip,alie --clean false]`
//!
//! Every row is one `shoal run` of the 2NN (784-200-200-10) on Fashion-MNIST, 100 clients, 10 a
//! round, E=1, B=10, lr 0.05, seed 0, read back from its `--metrics-out` file. The first table
//! gives the round at which test accuracy first reaches `--target` (IID and two shards a
//! client); the second the final accuracy of the mean and each robust rule with a share of
//! attackers of each kind. There every round needs all 100 clients, and each rule is set to
//! tolerate the largest share asked (trimmed-mean cuts a little more; Krum f ≤ 48, Bulyan
//! f ≤ 24, as 100 clients allow).

use anyhow::{Context, Result, anyhow, bail};
use shoal_benches::cpu::{CpuSample, print_since};
use shoal_benches::flags::Flags;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// One run's test accuracy per round.
fn accuracies(binary: &str, args: &[String], dir: &Path) -> Result<Vec<f64>> {
    let metrics = dir.join("metrics.csv");
    let status = Command::new(binary)
        .arg("run")
        .arg("--quiet")
        .args([
            "--dataset",
            "fashion-mnist",
            "--model",
            "mlp:200,200",
            "--clients",
            "100",
            "--epochs",
            "1",
            "--batch-size",
            "10",
            "--lr",
            "0.05",
            "--metrics-out",
        ])
        .arg(&metrics)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {binary}"))?;
    if !status.success() {
        bail!("shoal run {args:?} failed: {status}");
    }
    shoal_benches::stats::metrics_column(&metrics, "accuracy")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn main() -> Result<()> {
    let flags = Flags::from_env();
    let binary: String = flags.get("binary", "target/release/shoal".to_string())?;
    let rounds: u32 = flags.get("rounds", 100)?;
    let target: f64 = flags.get("target", 0.85)?;
    let table: String = flags.get("table", "both".to_string())?;
    let fractions: String = flags.get("fractions", "0.1,0.2,0.3".to_string())?;
    let kinds: String = flags.get(
        "kinds",
        "sign-flip,scale:-4,noise:1,label-flip,alie".to_string(),
    )?;
    // Rows (strategies) or rules (robust) to run, by the first word of their name; all if empty.
    let only: String = flags.get("only", String::new())?;
    let wanted = |name: &str| {
        only.is_empty()
            || only
                .split(',')
                .any(|w| name.split_whitespace().next() == Some(w.trim()))
    };
    // The attack-free column of the robust table (the same for every kind: once is enough).
    let clean: bool = flags.get("clean", true)?;
    let dir = tempfile::tempdir()?;
    let cpu_start = CpuSample::now().ok();
    let rounds_arg = rounds.to_string();

    if table == "strategies" || table == "both" {
        println!(
            "rounds to {:.0}% test accuracy (of {rounds}); final accuracy",
            target * 100.0
        );
        println!("{:<34} {:>14} {:>14}", "strategy", "iid", "shards:2");
        let strategies: [(&str, &[&str]); 7] = [
            ("fedavg", &[]),
            (
                "fedprox mu 0.01",
                &["--strategy", "fedprox", "--proximal-mu", "0.01"],
            ),
            (
                "fedavgm (momentum 0.9, lr 1)",
                &["--server-optimizer", "momentum"],
            ),
            ("fedadam (lr 0.01)", &["--server-optimizer", "adam"]),
            ("fedyogi (lr 0.01)", &["--server-optimizer", "yogi"]),
            ("fedadagrad (lr 0.1)", &["--server-optimizer", "adagrad"]),
            ("scaffold", &["--strategy", "scaffold"]),
        ];
        for (name, extra) in strategies.into_iter().filter(|(name, _)| wanted(name)) {
            let mut cells = Vec::new();
            for partition in ["iid", "shards:2"] {
                let mut args = strings(&[
                    "--rounds",
                    &rounds_arg,
                    "--clients-per-round",
                    "10",
                    "--partition",
                    partition,
                ]);
                args.extend(strings(extra));
                let started = Instant::now();
                let acc = accuracies(&binary, &args, dir.path())?;
                let reached = acc.iter().position(|&a| a >= target).map(|r| r + 1);
                let last = acc.last().copied().unwrap_or(f64::NAN);
                cells.push(format!(
                    "{} {:.1}% {:.0}s",
                    reached.map_or("-".to_string(), |r| r.to_string()),
                    100.0 * last,
                    started.elapsed().as_secs_f64()
                ));
            }
            println!("{name:<34} {:>14} {:>14}", cells[0], cells[1]);
        }
    }

    if table == "robust" || table == "both" {
        println!();
        println!("final accuracy after {rounds} rounds, all 100 clients a round");
        let fractions: Vec<f64> = fractions
            .split(',')
            .map(|f| f.trim().parse().map_err(|_| anyhow!("bad fraction {f}")))
            .collect::<Result<_>>()?;
        for kind in kinds.split(',') {
            println!("attack {kind}:");
            print!("{:<22}", "rule");
            if clean {
                print!(" {:>8}", "0%");
            }
            for f in &fractions {
                print!(" {:>7.0}%", f * 100.0);
            }
            println!();
            for rule in [
                "mean",
                "median",
                "trimmed-mean",
                "krum",
                "multi-krum",
                "bulyan",
            ]
            .into_iter()
            .filter(|rule| wanted(rule))
            {
                print!("{rule:<22}");
                // Tolerate the share of the largest fraction asked, so one rule per row.
                let worst = fractions.iter().copied().fold(0.0, f64::max);
                let f = ((worst * 100.0).round() as usize).max(1);
                let spec = match rule {
                    "trimmed-mean" => format!("trimmed-mean:{}", (worst + 0.05).min(0.45)),
                    "krum" => format!("krum:{}", f.min(48)),
                    "multi-krum" => format!("multi-krum:{}:{}", f.min(48), 100 - f.min(48)),
                    "bulyan" => format!("bulyan:{}", f.min(24)),
                    other => other.to_string(),
                };
                let columns = clean.then_some(0.0).into_iter();
                for fraction in columns.chain(fractions.iter().copied()) {
                    let mut args = strings(&[
                        "--rounds",
                        &rounds_arg,
                        "--min-clients",
                        "100",
                        "--aggregator",
                        &spec,
                    ]);
                    if fraction > 0.0 {
                        args.extend(["--byzantine".to_string(), format!("{fraction}:{kind}")]);
                    }
                    let acc = accuracies(&binary, &args, dir.path())?;
                    print!(" {:>7.1}%", 100.0 * acc.last().copied().unwrap_or(f64::NAN));
                }
                println!();
            }
        }
    }
    print_since(cpu_start);
    Ok(())
}
