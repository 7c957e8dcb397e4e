//! The whole admission path of one update, not only its fold: what the coordinator spends on
//! one client's update between its header and "accepted".
//!
//! `cargo run --release -p shoal-benches --bin admission [-- --updates 200 --big-updates 40 --quick]`
//!
//! For each model (FedAvg on digits), one round of N clients, everyone asked and N updates
//! wanted, each update delivered once, one after another, timed one by one:
//!
//! * `fold`: `RoundAccumulator::check` + `accept` alone (the exact sum), the floor;
//! * `admit`: `Coordinator::admit(header)` then `Admission::deliver(update)` on a coordinator
//!   without a checkpoint directory: header checks, the round's bookkeeping, the norm check,
//!   validation and the fold, on a blocking thread as the gRPC handler runs it;
//! * `admit + log`: the same with a checkpoint directory, so every update is also appended to
//!   the round's write-ahead log and synced to disk before it is accepted;
//! * `gRPC + log`: the same update pushed by one client over real gRPC on loopback (header,
//!   then 1 MiB chunks) to the coordinator with the log: encoding, HTTP/2, decoding and
//!   reassembly on top of `admit + log`.
//!
//! Updates are the round's global parameters plus a small offset, so the norm check passes
//! (and is computed in full); the payload is built before each timed call, never inside it.

use anyhow::{Context, Result, anyhow, bail};
use shoal_benches::cpu::{CpuSample, print_since};
use shoal_benches::flags::Flags;
use shoal_benches::stats::Summary;
use shoal_client::connection::{BearerAuth, channel, fleet_client};
use shoal_coordinator::config::SelectionConfig;
use shoal_coordinator::strategy::results::{ClientUpdate, RoundAccumulator};
use shoal_coordinator::{
    CheckpointStore, Coordinator, HostedRun, Limits, RunConfig, RunStart, strategy,
};
use shoal_datasets::{DatasetSource, Split, load};
use shoal_models::{ModelKind, ModelSpec};
use shoal_proto::v1::{
    Fence, Task, UpdateHeader, UpdatePart, pull_reply::Reply, update_part::Part,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Models measured: FedAvg updates of 650, 9,610, 76,810 and 1,228,810 values.
const MODELS: [&str; 4] = ["logreg", "mlp", "mlp:1024", "mlp:16384"];

/// Updates of more values than this use `--big-updates` (a round holds one update at a time,
/// but building and pushing 40 of 4.8 MB already takes a while).
const BIG: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fold,
    Admit,
    AdmitLogged,
    GrpcLogged,
}

impl Path {
    const ALL: [Path; 4] = [Path::Fold, Path::Admit, Path::AdmitLogged, Path::GrpcLogged];

    fn label(self) -> &'static str {
        match self {
            Path::Fold => "fold",
            Path::Admit => "admit",
            Path::AdmitLogged => "admit + log",
            Path::GrpcLogged => "gRPC + log",
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let flags = Flags::from_env();
    let updates = flags.get("updates", 200usize)?;
    let big_updates = flags.get("big-updates", 40usize)?;
    let quick = flags.has("quick");
    if updates == 0 || big_updates == 0 {
        bail!("--updates and --big-updates must be at least 1");
    }
    let split = load(&DatasetSource::Digits, 0.2, 0).context("loading digits")?;
    let dir = tempfile::tempdir().context("a directory for the round logs")?;
    let cpu_start = CpuSample::now().ok();

    println!(
        "admission of one update: FedAvg on digits, one round, one update at a time; round log in {}",
        dir.path().display()
    );
    println!(
        "{:<10} {:>10} {:>8} {:<12} {:>12} {:>12} {:>12} {:>10} {:>8}",
        "model", "params", "updates", "path", "median µs", "mean µs", "max µs", "MB/s", "× fold"
    );
    let models = if quick { &MODELS[..2] } else { &MODELS[..] };
    for (i, model) in models.iter().enumerate() {
        let spec = ModelSpec::for_dataset(
            model.parse::<ModelKind>().map_err(|e| anyhow!("{e}"))?,
            &split.train,
        );
        let mut fold_median = None;
        for path in Path::ALL {
            let logs = dir
                .path()
                .join(format!("{i}-{}", path.label().replace(' ', "")));
            let (params, times) = measure(path, &spec, &split, updates, big_updates, &logs).await?;
            let s = Summary::of(&times).ok_or_else(|| anyhow!("no updates timed"))?;
            let median = *fold_median.get_or_insert(s.median);
            println!(
                "{:<10} {:>10} {:>8} {:<12} {:>12.1} {:>12.1} {:>12.1} {:>10.0} {:>8.1}",
                model,
                params,
                s.count,
                path.label(),
                s.median * 1e6,
                s.mean * 1e6,
                s.max * 1e6,
                params as f64 * 4.0 / s.median / 1e6,
                s.median / median
            );
        }
    }
    print_since(cpu_start);
    Ok(())
}

/// Times `updates` deliveries of `spec`'s updates along `path`; returns the number of values
/// per update and the seconds each delivery took.
async fn measure(
    path: Path,
    spec: &ModelSpec,
    split: &Split,
    updates: usize,
    big_updates: usize,
    logs: &std::path::Path,
) -> Result<(usize, Vec<f64>)> {
    let config = round_config(spec, 1);
    let strategy = strategy::build(&config, spec)?;
    let len = strategy.configure(1).update_len;
    let n = if len > BIG { big_updates } else { updates };
    if path == Path::Fold {
        let global = strategy.global().to_vec();
        let mut accumulator = RoundAccumulator::new(&strategy.configure(1));
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            let update = client_update(i, &global);
            let started = Instant::now();
            accumulator.check(&update)?;
            accumulator.accept(update)?;
            times.push(started.elapsed().as_secs_f64());
        }
        if accumulator.accepted() != n {
            bail!("{} of {n} updates folded", accumulator.accepted());
        }
        return Ok((len, times));
    }

    let config = round_config(spec, n);
    let coordinator = match path {
        Path::Admit => Coordinator::new(config.clone(), Limits::default(), spec.clone()),
        _ => Coordinator::with_checkpoints(
            config.clone(),
            Limits::default(),
            spec.clone(),
            CheckpointStore::open(logs)?,
        ),
    };
    let hosted = host(&coordinator, &config, spec, split).await?;
    let ids: Vec<String> = (0..n).map(client_id).collect();
    for id in &ids {
        coordinator.join(id, 10)?;
    }
    let task = first_task(&coordinator, &ids[0]).await?;
    let fence = task.fence.clone().context("a task without a fence")?;
    let global = global(&coordinator, &ids[0], &fence, task.global_len).await?;
    if global.len() != len {
        bail!("global of {} values, updates of {len}", global.len());
    }

    let mut times = Vec::with_capacity(n);
    match path {
        Path::Admit | Path::AdmitLogged => {
            for i in 0..n {
                let update = client_update(i, &global);
                let header = header(&update, &fence);
                let started = Instant::now();
                let admission = coordinator.admit(&header)?;
                let accepted = admission.deliver(update).await?;
                times.push(started.elapsed().as_secs_f64());
                if accepted as usize != i + 1 {
                    bail!("update {i} accepted as number {accepted}");
                }
            }
        }
        Path::GrpcLogged => {
            let mut client = fleet_client(channel(&hosted.url, None)?, BearerAuth::none());
            for i in 0..n {
                let update = client_update(i, &global);
                let mut parts = vec![UpdatePart {
                    part: Some(Part::Header(header(&update, &fence))),
                }];
                parts.extend(
                    shoal_proto::encode_chunks(&update.payload, shoal_proto::MAX_CHUNK_BYTES).map(
                        |c| UpdatePart {
                            part: Some(Part::Chunk(c)),
                        },
                    ),
                );
                let started = Instant::now();
                let reply = client
                    .push_update(parts)
                    .await
                    .with_context(|| format!("pushing update {i}"))?;
                times.push(started.elapsed().as_secs_f64());
                if reply.into_inner().accepted_in_round as usize != i + 1 {
                    bail!("update {i} accepted out of order");
                }
            }
        }
        Path::Fold => unreachable!("measured above"),
    }
    for id in &ids {
        coordinator.leave(id)?;
    }
    let outcome = hosted.finish().await?;
    if outcome.records.first().map(|r| r.clients) != Some(n) {
        bail!(
            "the round did not aggregate the {n} updates: {:?}",
            outcome.records
        );
    }
    Ok((len, times))
}

/// One round of `clients` clients, everyone asked, every update wanted, with a deadline the
/// benchmark never reaches.
fn round_config(spec: &ModelSpec, clients: usize) -> RunConfig {
    RunConfig {
        rounds: 1,
        model: spec.kind.to_string(),
        selection: SelectionConfig {
            clients_per_round: None,
            fraction: 1.0,
            min_clients: 1,
            over_select: 1.0,
            min_available: clients,
        },
        round_timeout_ms: 3_600_000,
        ..RunConfig::default()
    }
}

/// Serves `coordinator` on a loopback port and drives its run.
async fn host(
    coordinator: &Coordinator,
    config: &RunConfig,
    spec: &ModelSpec,
    split: &Split,
) -> Result<HostedRun> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let start = RunStart::new(strategy::build(config, spec)?, Arc::new(split.test.clone()))
        .drain_limit(Duration::from_secs(5));
    Ok(coordinator.host(listener, start, std::future::pending())?)
}

/// Pulls for `id` until the round's task arrives.
async fn first_task(coordinator: &Coordinator, id: &str) -> Result<Task> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match coordinator.pull(id).await?.reply {
            Some(Reply::Task(task)) => return Ok(task),
            Some(Reply::Wait(_)) => {}
            other => bail!("no task for {id}: {other:?}"),
        }
    }
    bail!("no task for {id} within a minute")
}

/// The round's global parameters, as a client downloads them.
async fn global(coordinator: &Coordinator, id: &str, fence: &Fence, len: u64) -> Result<Vec<f32>> {
    let chunks = coordinator.global_for(id, fence).await?;
    let mut assembler =
        shoal_proto::ChunkAssembler::new(len, usize::MAX, shoal_proto::MAX_CHUNK_BYTES)?;
    for chunk in chunks.iter() {
        assembler.push(chunk)?;
    }
    Ok(assembler.finish()?)
}

fn client_id(i: usize) -> String {
    format!("client-{i:05}")
}

/// Client `i`'s update: the global parameters, each moved by a small amount that depends on
/// `i` and the index (far inside the norm bound).
fn client_update(i: usize, global: &[f32]) -> ClientUpdate {
    let payload: Vec<f32> = global
        .iter()
        .enumerate()
        .map(|(j, g)| g + ((i * 31 + j) % 17) as f32 * 1e-4)
        .collect();
    ClientUpdate {
        client_id: client_id(i),
        weight: 10 + (i % 7) as u64,
        payload: payload.into(),
        counts: Vec::new(),
        metrics: Default::default(),
    }
}

fn header(update: &ClientUpdate, fence: &Fence) -> UpdateHeader {
    UpdateHeader {
        client_id: update.client_id.clone(),
        fence: Some(fence.clone()),
        num_examples: update.weight,
        payload_len: update.payload.len() as u64,
        counts: update.counts.clone(),
        metrics: Default::default(),
        ..Default::default()
    }
}
