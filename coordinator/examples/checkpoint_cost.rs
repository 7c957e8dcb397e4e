//! Cost of crash safety: checkpoint write and load time and size, and round-log append time
//! per update, for models of 10k, 1M and 10M parameters, in a temporary directory on the local
//! disk or, given a location, in an S3-compatible store (reached as the `AWS_*` variables say).
//! `cargo run --release -p shoal-coordinator --example checkpoint_cost [-- s3://BUCKET/PREFIX]`

use shoal_coordinator::store::checkpoint::{Checkpoint, CheckpointStore};
use shoal_coordinator::store::round_log::{LogRecord, RoundLog, RoundOpened};
use shoal_coordinator::strategy::results::ClientUpdate;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let remote = std::env::args().nth(1);
    println!(
        "state in {}",
        remote.as_deref().unwrap_or("a local temporary directory")
    );
    println!(
        "params      ckpt bytes   ckpt write ms   ckpt load ms   log append ms/update   (durable)"
    );
    for &n in &[10_000usize, 1_000_000, 10_000_000] {
        let params: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
        let state = bincode::serde::encode_to_vec(&params, bincode::config::standard())?;
        let store = match &remote {
            Some(location) => {
                CheckpointStore::open(format!("{location}/c{n}-{}", std::process::id()))?
            }
            None => CheckpointStore::open(dir.path().join(format!("c{n}")))?,
        };
        let reps = if n >= 10_000_000 { 3 } else { 10 };
        let mut bytes = 0;
        let started = Instant::now();
        for round in 1..=reps {
            let checkpoint = Checkpoint {
                config_hash: "0".repeat(64),
                config_json: "{}".into(),
                round,
                epoch: 1,
                strategy: "fedavg".into(),
                strategy_state: state.clone(),
                records: Vec::new(),
                written_unix_ms: 0,
            };
            bytes = store.write(&checkpoint)?;
        }
        let write_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(reps);
        let started = Instant::now();
        for _ in 0..reps {
            store.latest()?;
        }
        let load_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(reps);
        let opened = RoundOpened {
            round: 1,
            attempt: 0,
            epoch: 1,
            selected: vec!["a".into()],
            wanted: 1,
        };
        let mut log = RoundLog::create(&store, opened)?;
        let update = ClientUpdate {
            client_id: "client-00000".into(),
            weight: 100,
            payload: params.clone().into(),
            counts: Vec::new(),
            metrics: Default::default(),
        };
        let started = Instant::now();
        for _ in 0..reps {
            log.append(&LogRecord::Update(update.clone()))?;
        }
        let append_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(reps);
        println!("{n:>10}  {bytes:>11}  {write_ms:>14.2}  {load_ms:>13.2}  {append_ms:>21.2}");
    }
    Ok(())
}
