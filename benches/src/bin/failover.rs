//! Standby coordinators, measured with the real binary, a real etcd cluster and a real S3
//! server (s3s-fs), all on loopback:
//!
//! 1. failover time: the leader is killed with SIGKILL; the time until another coordinator
//!    has accepted the first update of the resumed round (its log line "first update accepted
//!    by this coordinator", read as it is printed), `--kills` times;
//! 2. the steady-state cost of high availability: seconds a round (median, from the run's
//!    metrics) of one coordinator without checkpoints, one keeping its state in S3, and three
//!    coordinators campaigning in etcd with the state in S3.
//!
//! `cargo run --release -p shoal-benches --bin failover -- --binary target/release/shoal
//! [--kills 10 --lease-ttl 2 --clients 100 --rounds 30]`
//!
//! Needs `etcd` (Debian's etcd-server) and `s3s-fs` (`cargo install s3s-fs --features binary`)
//! on the PATH.

use anyhow::{Context, Result, bail};
use shoal_benches::flags::Flags;
use shoal_benches::process::Proc;
use shoal_benches::stats::{Summary, round_seconds};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A 3-member etcd cluster; returns the members and their client URLs.
fn start_etcd(dir: &Path) -> Result<(Vec<Proc>, String)> {
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_>>()?;
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let client = format!("http://127.0.0.1:{client}");
        let peer = format!("http://127.0.0.1:{peer}");
        members.push(Proc::spawn(
            Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-{i}")))
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args([
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                ]),
        )?);
    }
    for m in &mut members {
        m.wait_for("ready to serve client requests", Duration::from_secs(30))
            .context("etcd (apt-get install etcd-server)")?;
    }
    let urls = ports
        .iter()
        .map(|(c, _)| format!("http://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok((members, urls))
}

/// s3s-fs serving `dir` with one bucket, `shoal`; returns it and the environment that reaches it.
fn start_s3(dir: &Path) -> Result<(Child, Vec<(&'static str, String)>)> {
    std::fs::create_dir_all(dir.join("shoal"))?;
    let mut child = Command::new("s3s-fs")
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--access-key",
            "bench",
        ])
        .args(["--secret-key", "bench-secret"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("s3s-fs (cargo install s3s-fs --features binary)")?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(at) = line.find("server is running at ") {
                let _ = tx.send(line[at + 21..].trim().to_string());
            }
        }
    });
    let endpoint = rx
        .recv_timeout(Duration::from_secs(30))
        .context("s3s-fs did not start")?;
    let env = vec![
        ("AWS_ENDPOINT", endpoint),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench-secret".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ];
    Ok((child, env))
}

/// How a coordinator of the run is started.
struct Launch<'a> {
    binary: &'a str,
    run: &'a [String],
    env: &'a [(&'static str, String)],
    /// `--etcd` URLs and lease TTL, for a candidate.
    etcd: Option<(&'a str, &'a str)>,
    /// `--checkpoint-dir`.
    state: Option<&'a str>,
}

impl Launch<'_> {
    fn coordinator(&self, port: u16, metrics: &Path) -> Result<Proc> {
        let mut cmd = Command::new(self.binary);
        cmd.args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
            .args(self.run)
            .args(["--quiet", "--log", "info", "--metrics-out"])
            .arg(metrics)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some(state) = self.state {
            cmd.args(["--checkpoint-dir", state]);
        }
        if let Some((etcd, ttl)) = self.etcd {
            cmd.args(["--etcd", etcd, "--election", "bench", "--lease-ttl", ttl]);
        }
        let mut proc = Proc::spawn(&mut cmd)?;
        let ready = if self.etcd.is_some() {
            "standby for election"
        } else {
            "listening on"
        };
        proc.wait_for(ready, Duration::from_secs(60))?;
        Ok(proc)
    }

    fn fleet(&self, urls: &str) -> Result<Proc> {
        Proc::spawn(
            Command::new(self.binary)
                .args(["simulate", "--coordinator", urls])
                .args(data_args(self.run)),
        )
    }
}

/// The options of a run its clients take (the data and its split): `FLAG VALUE` pairs.
fn data_args(run: &[String]) -> Vec<&String> {
    const DATA_FLAGS: [&str; 5] = [
        "--dataset",
        "--partition",
        "--clients",
        "--seed",
        "--test-fraction",
    ];
    run.chunks(2)
        .filter(|pair| DATA_FLAGS.contains(&pair[0].as_str()))
        .flatten()
        .collect()
}

fn urls(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Kills the leader `kills` times; returns the failover times in seconds.
fn failovers(binary: &str, dir: &Path, kills: usize, ttl: &str) -> Result<Vec<f64>> {
    let (_etcd, etcd_urls) = start_etcd(&dir.join("failover"))?;
    let (mut s3, env) = start_s3(&dir.join("failover-s3"))?;
    let run: Vec<String> = ["--rounds", "1000", "--clients", "20", "--seed", "7"]
        .map(String::from)
        .to_vec();
    let launch = Launch {
        binary,
        run: &run,
        env: &env,
        etcd: Some((&etcd_urls, ttl)),
        state: Some("s3://shoal/failover"),
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
    let metrics = dir.join("failover.csv");
    let mut coordinators = ports
        .iter()
        .map(|p| launch.coordinator(*p, &metrics))
        .collect::<Result<Vec<_>>>()?;
    let mut fleet = launch.fleet(&urls(&ports))?;
    let mut times = Vec::new();
    let mut since = Instant::now();
    for kill in 0..kills {
        // Wait until the current leader has served two rounds since the last takeover.
        let deadline = Instant::now() + Duration::from_secs(120);
        let leader = loop {
            let found = coordinators.iter_mut().position(|c| {
                c.lines()
                    .iter()
                    .filter(|(at, l)| *at > since && l.contains("round aggregated"))
                    .count()
                    >= 2
            });
            if let Some(i) = found {
                break i;
            }
            if Instant::now() > deadline {
                bail!("no leader served two rounds within 120 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        coordinators[leader].kill();
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(60);
        let (resumed, by) = loop {
            let at = coordinators
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| *i != leader)
                .find_map(|(i, c)| Some((c.arrived("first update accepted", killed)?, i)));
            if let Some(at) = at {
                break at;
            }
            if Instant::now() > deadline {
                bail!("no coordinator took over within 60 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let seconds = resumed.duration_since(killed).as_secs_f64();
        // Where the time went, from the new leader's own lines.
        let steps: Vec<String> = [
            ("elected leader", "elected"),
            ("resumed from checkpoint", "checkpoint read"),
            ("replaying the round log", "log read"),
            ("first update accepted", "first update"),
        ]
        .iter()
        .filter_map(|(needle, label)| {
            let at = coordinators[by].arrived(needle, killed)?;
            Some(format!(
                "{label} +{:.3}",
                at.duration_since(killed).as_secs_f64()
            ))
        })
        .collect();
        println!("  kill {}: {seconds:.3} s ({})", kill + 1, steps.join(", "));
        times.push(seconds);
        since = resumed;
        coordinators[leader] = launch.coordinator(ports[leader], &metrics)?;
    }
    fleet.kill();
    let _ = s3.kill();
    Ok(times)
}

/// Seconds a round (median of rounds 2..) in one of the three set-ups.
fn steady(binary: &str, dir: &Path, mode: &str, clients: usize, rounds: u32) -> Result<Summary> {
    let run: Vec<String> = vec![
        "--rounds".into(),
        rounds.to_string(),
        "--clients".into(),
        clients.to_string(),
        "--seed".into(),
        "7".into(),
    ];
    let (s3, env) = match mode {
        "plain" => (None, Vec::new()),
        _ => {
            let (child, env) = start_s3(&dir.join(format!("{mode}-s3")))?;
            (Some(child), env)
        }
    };
    let etcd = match mode {
        "ha" => Some(start_etcd(&dir.join(mode))?),
        _ => None,
    };
    let state = format!("s3://shoal/{mode}");
    let launch = Launch {
        binary,
        run: &run,
        env: &env,
        etcd: etcd.as_ref().map(|(_, urls)| (urls.as_str(), "5")),
        state: (mode != "plain").then_some(state.as_str()),
    };
    let count = if mode == "ha" { 3 } else { 1 };
    let ports: Vec<u16> = (0..count).map(|_| free_port()).collect::<Result<_>>()?;
    let metrics: Vec<PathBuf> = (0..count)
        .map(|i| dir.join(format!("{mode}-{i}.csv")))
        .collect();
    let mut coordinators = ports
        .iter()
        .zip(&metrics)
        .map(|(p, m)| launch.coordinator(*p, m))
        .collect::<Result<Vec<_>>>()?;
    let mut fleet = launch.fleet(&urls(&ports))?;
    fleet.wait(Duration::from_secs(600)).context("fleet")?;
    for c in &mut coordinators {
        c.wait(Duration::from_secs(120)).context("coordinator")?;
    }
    if let Some(mut s3) = s3 {
        let _ = s3.kill();
    }
    let seconds = metrics
        .iter()
        .find_map(|m| round_seconds(m).ok())
        .context("no coordinator wrote metrics")?;
    Summary::of(&seconds[1..]).context("no rounds")
}

fn main() -> Result<()> {
    let flags = Flags::from_env();
    let binary: String = flags.get("binary", "target/release/shoal".to_string())?;
    let kills = flags.get("kills", 10usize)?;
    let ttl: String = flags.get("lease-ttl", "2".to_string())?;
    let clients = flags.get("clients", 100usize)?;
    let rounds = flags.get("rounds", 30u32)?;
    let dir = tempfile::tempdir()?;
    let cpu = shoal_benches::cpu::CpuSample::now().ok();

    println!(
        "failover: 3 coordinators, 3-member etcd, s3s-fs, 20 clients on digits, lease {ttl} s; SIGKILL the leader {kills} times"
    );
    let times = failovers(&binary, dir.path(), kills, &ttl)?;
    let summary = Summary::of(&times).context("no failovers")?;
    println!(
        "failover (kill -9 -> first update accepted by the new leader): median {:.3} s, max {:.3} s, min {:.3} s over {}",
        summary.median,
        summary.max,
        summary.min,
        times.len()
    );

    println!();
    println!(
        "steady-state cost of HA: digits, {clients} clients, {rounds} rounds, seconds a round (median of rounds 2..)"
    );
    println!("| set-up | s/round median | min | max |");
    println!("| --- | --- | --- | --- |");
    for (mode, label) in [
        ("plain", "one coordinator, no checkpoints"),
        ("s3", "one coordinator, state in S3"),
        ("ha", "3 coordinators in etcd, state in S3"),
    ] {
        let s = steady(&binary, dir.path(), mode, clients, rounds)?;
        println!(
            "| {label} | {:.3} | {:.3} | {:.3} |",
            s.median, s.min, s.max
        );
    }
    shoal_benches::cpu::print_since(cpu);
    Ok(())
}
