//! Writes the valid seed inputs of every fuzz target into `corpus/TARGET/seed-*`, using the
//! crates' own encoders so the seeds are exactly what the system writes.
//!
//! Run from `fuzz/`: `cargo +nightly run --example seeds` (then `cargo +nightly fuzz cmin`).
//! The input layouts (mode bytes and so on) are described in each target's `//!` header.

use shoal_coordinator::store::checkpoint::{self, Checkpoint, CheckpointStore};
use shoal_coordinator::store::metrics::RoundRecord;
use shoal_coordinator::strategy::results::ClientUpdate;
use shoal_coordinator::store::round_log::{LogRecord, RoundLog, RoundOpened};
use shoal_coordinator::strategy::{self, ServerOptimizer};
use shoal_coordinator::{RunConfig, StrategyConfig};
use shoal_models::{ModelKind, ModelSpec};
use std::collections::BTreeMap;
use std::path::Path;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn write(target: &str, name: &str, bytes: &[u8]) -> Res<()> {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(bytes);
    out
}

fn configs() -> Vec<(&'static str, RunConfig)> {
    let fedsgd = RunConfig {
        strategy: StrategyConfig::FedSgd {
            optimizer: ServerOptimizer::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        },
        model: "mlp:32,16".into(),
        dataset: "blobs:samples=500,features=4,centers=3,std=0.5,box=5,seed=2".into(),
        partition: "dirichlet:0.3".into(),
        ..RunConfig::default()
    };
    let mut kmeans = RunConfig {
        strategy: StrategyConfig::FedKMeans {
            k: 3,
            local_k: 5,
            tol: 1e-4,
        },
        dataset: "csv:train.csv,test.csv".into(),
        partition: "shards:2".into(),
        ..RunConfig::default()
    };
    kmeans.selection.clients_per_round = Some(4);
    vec![
        ("fedavg", RunConfig::default()),
        ("fedsgd", fedsgd),
        ("kmeans", kmeans),
    ]
}

fn checkpoint_seeds() -> Res<()> {
    let spec = ModelSpec {
        kind: ModelKind::LogReg,
        num_features: 2,
        num_classes: 2,
        image_shape: None,
    };
    for (name, config) in configs() {
        let strategy = strategy::build(&config, &spec)?;
        let state = strategy.snapshot()?;
        write(
            "checkpoint",
            &format!("restore-{name}"),
            &with_mode(4, &state),
        )?;
        let ckpt = Checkpoint {
            config_hash: config.hash(),
            config_json: serde_json::to_string(&config)?,
            round: 3,
            epoch: 2,
            strategy: strategy.name().into(),
            strategy_state: state,
            records: vec![RoundRecord {
                round: 1,
                clients: 4,
                selected: 5,
                attempts: 1,
                examples: 1200,
                values: BTreeMap::from([("loss".into(), 0.7), ("accuracy".into(), 0.61)]),
                seconds: 0.25,
            }],
            written_unix_ms: 1_700_000_000_000,
        };
        let file = checkpoint::encode(&ckpt)?;
        write("checkpoint", &format!("file-{name}"), &with_mode(0, &file))?;
        // Mode 1 wraps the payload itself: strip the 20-byte header and 32-byte digest.
        write(
            "checkpoint",
            &format!("payload-{name}"),
            &with_mode(1, &file[20..file.len() - 32]),
        )?;
    }

    let opened = RoundOpened {
        round: 4,
        attempt: 1,
        epoch: 9,
        selected: vec!["client-0".into(), "client-1".into()],
        wanted: 2,
    };
    let update = ClientUpdate {
        client_id: "client-0".into(),
        weight: 30,
        payload: vec![1.5, -2.0, 0.25].into(),
        counts: vec![10, 20],
        metrics: BTreeMap::from([("loss".into(), 0.5)]),
    };
    let dir = std::env::temp_dir().join(format!("shoal-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = CheckpointStore::open(&dir)?;
    let mut log = RoundLog::create(&store, opened.clone())?;
    log.append(&LogRecord::Update(update.clone()))?;
    drop(log);
    // The log file of the coordinator of epoch 9.
    let wal = std::fs::read(dir.join(format!("round-{:016x}.wal", opened.epoch)))?;
    write("checkpoint", "wal", &with_mode(2, &wal))?;
    std::fs::remove_dir_all(&dir)?;

    let mut framed = vec![3u8];
    for record in [LogRecord::Open(opened), LogRecord::Update(update)] {
        let bytes = bincode::serde::encode_to_vec(&record, bincode::config::standard())?;
        framed.extend_from_slice(&u16::try_from(bytes.len())?.to_le_bytes());
        framed.extend_from_slice(&bytes);
    }
    write("checkpoint", "wal-records", &framed)?;
    Ok(())
}

fn idx_seeds() -> Res<()> {
    let mut images = Vec::new();
    for word in [0x0803u32, 2, 2, 3] {
        images.extend_from_slice(&word.to_be_bytes());
    }
    images.extend_from_slice(&[0, 32, 64, 128, 200, 255, 1, 2, 3, 4, 5, 6]);
    write("idx", "images", &images)?;
    let mut labels = Vec::new();
    for word in [0x0801u32, 3] {
        labels.extend_from_slice(&word.to_be_bytes());
    }
    labels.extend_from_slice(&[9, 0, 4]);
    write("idx", "labels", &labels)?;
    Ok(())
}

fn csv_seeds() -> Res<()> {
    let seeds: [(&str, &str); 4] = [
        ("header", "x,y,label\n0.5,1,2\n-1e3, 2 ,0\n"),
        ("plain", "0.5,1.25,3\n2,3,0\n4,5,1.0\n"),
        ("quoted", "\"a\",\"b\"\n\"1\",\"0\"\n\r\n  \n3,2\n"),
        ("bad", "1,2,0\n1,NaN,0\n3,4,99999999\n"),
    ];
    for (name, text) in seeds {
        write("csv", name, text.as_bytes())?;
    }
    Ok(())
}

fn config_seeds() -> Res<()> {
    for (name, config) in configs() {
        write(
            "config",
            &format!("toml-{name}"),
            &with_mode(0, toml::to_string(&config)?.as_bytes()),
        )?;
        write(
            "config",
            &format!("json-{name}"),
            &with_mode(1, serde_json::to_string(&config)?.as_bytes()),
        )?;
    }
    let sources = [
        "digits",
        "fashion-mnist",
        "fashion-mnist:/data/fm",
        "csv:train.csv",
        "csv:train.csv,test.csv",
        "blobs",
        "blobs:7",
        "blobs:samples=500,features=4,centers=3,std=0.5,box=5,seed=2",
    ];
    for (i, source) in sources.iter().enumerate() {
        write(
            "config",
            &format!("source-{i}"),
            &with_mode(2, source.as_bytes()),
        )?;
    }
    let labels: Vec<u8> = (0..40u8).map(|i| i % 10).collect();
    for (i, scheme) in ["iid", "dirichlet:0.3", "shards:2"].iter().enumerate() {
        let mut input = with_mode(3, scheme.as_bytes());
        input.push(b'\n');
        input.push(3); // four clients
        input.extend_from_slice(&labels);
        write("config", &format!("partition-{i}"), &input)?;
    }
    for (i, kind) in ["logreg", "mlp", "mlp:8,4", "cnn"].iter().enumerate() {
        let mut input = with_mode(4, kind.as_bytes());
        input.push(b'\n');
        let (features, classes, image) = if *kind == "cnn" {
            (784u32, 10u32, 1u8)
        } else {
            (16, 3, 0)
        };
        input.extend_from_slice(&features.to_le_bytes());
        input.extend_from_slice(&classes.to_le_bytes());
        input.push(image);
        input.extend_from_slice(&28u32.to_le_bytes());
        input.extend_from_slice(&28u32.to_le_bytes());
        write("config", &format!("model-{i}"), &input)?;
    }
    Ok(())
}

fn main() -> Res<()> {
    checkpoint_seeds()?;
    idx_seeds()?;
    csv_seeds()?;
    config_seeds()?;
    println!("seeds written under corpus/");
    Ok(())
}
