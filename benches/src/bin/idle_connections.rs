//! Rounds per second and the coordinator's CPU time for a small in-process run, alone and
//! beside a crowd of idle TCP connections held open against the same coordinator.
//!
//! `cargo run --release -p shoal-benches --bin idle_connections [-- --clients 100 --rounds 100 --idle 1000 --repeats 3]`
//!
//! The coordinator runs on its own runtime whose threads are named `coordinator`, so its CPU
//! time is read per thread from `/proc/self/task/*/stat` (Linux) apart from the fleet's and the
//! crowd's. The crowd's connections connect and send nothing; one closed by the server is
//! opened again 100 ms later, as a peer that insists would. The run starts once the server has
//! accepted the whole crowd (the listener's accept queue in `/proc/net/tcp` is empty). Three scenarios, interleaved
//! `--repeats` times: no crowd; the crowd under the default limits (all held: the run is
//! shorter than the first-bytes deadline); and the crowd against `--max-connections` half its
//! size, where every reconnect sheds another silent connection.

use anyhow::{Context, Result, anyhow};
use shoal_benches::cpu::{CpuSample, print_since};
use shoal_benches::flags::Flags;
use shoal_benches::stats::Summary;
use shoal_client::{FleetConfig, run_fleet};
use shoal_coordinator::config::SelectionConfig;
use shoal_coordinator::{Coordinator, Limits, RunConfig, RunStart, strategy};
use shoal_datasets::{Dataset, DatasetSource, Partition, load, partition};
use shoal_models::{ModelKind, ModelSpec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::watch;

/// Name of the coordinator's threads, as `/proc` shows it.
const COORDINATOR_THREADS: &str = "coordinator";
/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One way to run.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    idle: usize,
    max_connections: Option<usize>,
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    rounds_per_second: f64,
    coordinator_cpu_seconds: f64,
    rounds: usize,
    /// Crowd connections the server closed (each was opened again).
    reopened: u64,
    /// Connections shed or refused at the cap, and closed silent, by the coordinator's count.
    connection_limit: u64,
    connection_silent: u64,
}

fn main() -> Result<()> {
    let flags = Flags::from_env();
    let get = |name: &str, default: usize| flags.get(name, default);
    let clients = get("clients", 100)?;
    let rounds = get("rounds", 100)? as u32;
    let idle = get("idle", 1000)?;
    let repeats = get("repeats", 3)?;

    let split = load(&DatasetSource::Digits, 0.2, 0)?;
    let spec = ModelSpec::for_dataset("mlp".parse::<ModelKind>()?, &split.train);
    let parts = partition(
        &split.train.labels,
        split.train.num_classes,
        clients,
        &Partition::Iid,
        0,
    )?;
    let fleet: Vec<(String, Dataset)> = parts
        .iter()
        .enumerate()
        .map(|(i, idx)| Ok((format!("client-{i:05}"), split.train.subset(idx)?)))
        .collect::<Result<_>>()?;
    let test = Arc::new(split.test);
    let mlp = RunConfig {
        model: "mlp".into(),
        ..RunConfig::default()
    };
    let params = strategy::build(&mlp, &spec)?.global().len();

    let scenarios = [
        Scenario {
            name: "no crowd",
            idle: 0,
            max_connections: None,
        },
        Scenario {
            name: "idle crowd held",
            idle,
            max_connections: None,
        },
        Scenario {
            name: "crowd over the cap",
            idle,
            max_connections: Some((idle / 2).max(1)),
        },
    ];
    let cpu_start = CpuSample::now().ok();
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); scenarios.len()];
    for repeat in 0..repeats {
        for (i, scenario) in scenarios.iter().enumerate() {
            let measured = run_once(*scenario, rounds, &spec, &fleet, &test)
                .with_context(|| format!("{} (repeat {})", scenario.name, repeat + 1))?;
            results[i].push(measured);
        }
    }

    println!(
        "idle connections: {clients} clients, mlp ({} params), epochs 0, {rounds} rounds, 4 channels, \
         real gRPC on loopback; crowd {idle} connections; {repeats} runs each, interleaved",
        params
    );
    println!(
        "{:<20} {:>10} {:>8} {:>15} {:>13} {:>9} {:>9} {:>9}",
        "scenario",
        "rounds/s",
        "vs none",
        "coord CPU s",
        "CPU ms/round",
        "reopened",
        "limit",
        "silent"
    );
    let base = median(&results[0], |m| m.rounds_per_second);
    for (scenario, runs) in scenarios.iter().zip(&results) {
        let rps = median(runs, |m| m.rounds_per_second);
        let cpu = median(runs, |m| m.coordinator_cpu_seconds);
        let per_round = median(runs, |m| {
            1000.0 * m.coordinator_cpu_seconds / m.rounds.max(1) as f64
        });
        println!(
            "{:<20} {:>10.1} {:>7.1}% {:>15.3} {:>13.2} {:>9} {:>9} {:>9}",
            scenario.name,
            rps,
            100.0 * (rps / base - 1.0),
            cpu,
            per_round,
            runs.iter().map(|m| m.reopened).max().unwrap_or(0),
            runs.iter().map(|m| m.connection_limit).max().unwrap_or(0),
            runs.iter().map(|m| m.connection_silent).max().unwrap_or(0),
        );
    }
    println!("(medians of the runs; reopened, limit and silent: the largest of the runs)");
    for (scenario, runs) in scenarios.iter().zip(&results) {
        let rps: Vec<f64> = runs.iter().map(|m| m.rounds_per_second).collect();
        if let Some(s) = Summary::of(&rps) {
            println!(
                "  {:<20} rounds/s min {:.1} max {:.1}",
                scenario.name, s.min, s.max
            );
        }
    }
    print_since(cpu_start);
    Ok(())
}

fn median(runs: &[Measured], value: impl Fn(&Measured) -> f64) -> f64 {
    let values: Vec<f64> = runs.iter().map(value).collect();
    Summary::of(&values).map_or(f64::NAN, |s| s.median)
}

/// One run: a coordinator on its own runtime, the crowd and the fleet on another.
fn run_once(
    scenario: Scenario,
    rounds: u32,
    spec: &ModelSpec,
    fleet: &[(String, Dataset)],
    test: &Arc<Dataset>,
) -> Result<Measured> {
    let coordinator_rt = Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(COORDINATOR_THREADS)
        // Blocking threads that exit take their CPU time out of /proc/self/task.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()?;
    let clients_rt = Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("clients")
        .enable_all()
        .build()?;

    let mut run = RunConfig {
        rounds,
        model: "mlp".into(),
        dataset: "digits".into(),
        partition: "iid".into(),
        selection: SelectionConfig {
            clients_per_round: None,
            fraction: 1.0,
            min_clients: 1,
            over_select: 1.0,
            min_available: fleet.len(),
        },
        ..RunConfig::default()
    };
    run.fit.epochs = 0;
    let mut limits = Limits::default();
    if let Some(max) = scenario.max_connections {
        limits.max_connections = max;
    }
    let strategy = strategy::build(&run, spec)?;
    let coordinator = Coordinator::new(run.clone(), limits, spec.clone());
    let listener = coordinator_rt.block_on(listen())?;
    let addr = listener.local_addr()?;
    // The run waits for the fleet (`min_available`), which starts once the crowd is in.
    let start = RunStart::new(strategy, test.clone()).drain_limit(Duration::from_secs(5));
    let hosted = {
        let _entered = coordinator_rt.enter();
        coordinator.host(listener, start, std::future::pending())?
    };

    // The crowd connects first, and is all connected before the run starts.
    let (stop_crowd, crowd_stop) = watch::channel(false);
    let connected = Arc::new(AtomicUsize::new(0));
    let reopened = Arc::new(AtomicU64::new(0));
    let crowd: Vec<_> = (0..scenario.idle)
        .map(|_| {
            clients_rt.spawn(hold(
                addr,
                crowd_stop.clone(),
                connected.clone(),
                reopened.clone(),
            ))
        })
        .collect();
    // Connected, and taken from the listener's queue by the server (which writes nothing to a
    // connection before it speaks).
    let deadline = Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::Relaxed) < scenario.idle || accept_queue(addr)? > 0 {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "only {} of {} idle connections opened, {} not accepted",
                connected.load(Ordering::Relaxed),
                scenario.idle,
                accept_queue(addr)?
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let reopened_before = reopened.load(Ordering::Relaxed);

    let cpu_before = coordinator_cpu_seconds()?;
    let started = Instant::now();
    let mut config = FleetConfig::new(format!("http://{addr}"));
    config.channels = 4;
    config.options.seed = run.seed;
    let fleet_task = clients_rt.spawn(run_fleet(config, fleet.to_vec(), std::future::pending()));
    // The run's time ends when its last round is recorded, not when the server has drained.
    while !coordinator.has_ended() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let wall = started.elapsed();
    let cpu = coordinator_cpu_seconds()? - cpu_before;
    let reopened = reopened.load(Ordering::Relaxed) - reopened_before;

    let _ = stop_crowd.send(true);
    for holder in crowd {
        clients_rt.block_on(holder)?;
    }
    clients_rt.block_on(fleet_task)??;
    let outcome = coordinator_rt.block_on(hosted.finish())?;
    let refusals = coordinator.refusals();
    let count = |reason: &str| refusals.get(reason).copied().unwrap_or(0);
    shutdown(coordinator_rt);
    shutdown(clients_rt);
    Ok(Measured {
        rounds_per_second: outcome.summary.rounds_completed as f64 / wall.as_secs_f64(),
        coordinator_cpu_seconds: cpu,
        rounds: outcome.summary.rounds_completed as usize,
        reopened,
        connection_limit: count("connection_limit"),
        connection_silent: count("connection_silent"),
    })
}

/// A listener on 127.0.0.1:0 whose accept queue holds the whole crowd at once: with the
/// standard library's 128, the kernel drops the handshakes of a burst of connections past it,
/// and some never reach the server.
async fn listen() -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(4096)
}

fn shutdown(runtime: Runtime) {
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// Holds one connection open and silent until `stop`; opens another 100 ms after the server
/// closes it.
async fn hold(
    addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
    connected: Arc<AtomicUsize>,
    reopened: Arc<AtomicU64>,
) {
    let mut first = true;
    loop {
        let stream = tokio::select! {
            stream = TcpStream::connect(addr) => stream,
            _ = stop.changed() => return,
        };
        if let Ok(mut stream) = stream {
            if first {
                first = false;
                connected.fetch_add(1, Ordering::Relaxed);
            }
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    },
                    _ = stop.changed() => return,
                }
            }
            reopened.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Connections waiting in the accept queue of the IPv4 listener on `addr`, from
/// `/proc/net/tcp` (Linux), where a listening socket's `rx_queue` is that queue's length.
fn accept_queue(addr: SocketAddr) -> Result<u64> {
    let local = match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => return Err(anyhow!("an IPv4 listener was expected")),
    };
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue ...; state 0A is LISTEN.
        if fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A") {
            let queue = fields.get(4).and_then(|q| q.split_once(':'));
            let waiting = queue.and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok());
            return waiting.ok_or_else(|| anyhow!("unexpected /proc/net/tcp line: {line}"));
        }
    }
    Err(anyhow!("listener {addr} not found in /proc/net/tcp"))
}

/// CPU time (user + system) of the coordinator's threads so far, in seconds.
fn coordinator_cpu_seconds() -> Result<f64> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, name)| name);
        if !name.starts_with(COORDINATOR_THREADS) {
            continue;
        }
        // After the name: state is field 3, utime field 14, stime field 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        ticks += field(11).unwrap_or(0) + field(12).unwrap_or(0);
    }
    Ok(ticks as f64 / TICKS_PER_SECOND)
}
