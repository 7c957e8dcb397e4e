#![no_main]
//! Fuzz target `checkpoint`: everything the coordinator reads back from its checkpoint
//! directory after a crash.
//!
//! The first input byte picks a mode (taken modulo 5); the rest is the data:
//!
//! | mode | what is fuzzed |
//! |------|----------------|
//! | 0 | `checkpoint::decode` on the raw bytes (magic, version, length, SHA-256 checks) |
//! | 1 | `checkpoint::decode` on the bytes wrapped in a *valid* envelope (header and digest computed here), so the bincode payload decoder is reached |
//! | 2 | `RoundLog::read` of the raw bytes written as `round.wal` |
//! | 3 | `RoundLog::read` of records framed here with correct lengths and CRC-32s: the data is a list of `[u16 LE length][record bytes]`, so the bincode record decoder is reached |
//! | 4 | `Strategy::restore` of the bytes on a FedAvg, a FedSGD (Adam) and a k-means strategy |
//!
//! A decoded checkpoint must also yield its config or a clean error, and must re-encode to a
//! file that decodes again.

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use shoal_coordinator::store::checkpoint::{self, CheckpointStore, FORMAT_VERSION};
use shoal_coordinator::store::round_log::RoundLog;
use shoal_coordinator::strategy::{self, ServerOptimizer, Strategy};
use shoal_coordinator::{RunConfig, StrategyConfig};
use shoal_models::{ModelKind, ModelSpec};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// A private directory for this fuzzing process's `round.wal` (reused by every execution).
fn wal_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("shoal-fuzz-wal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz temp dir");
        dir
    })
}

/// One small instance of every strategy, built once per process (FedAvg initialises a model).
fn strategies() -> &'static Mutex<Vec<Box<dyn Strategy>>> {
    static ALL: OnceLock<Mutex<Vec<Box<dyn Strategy>>>> = OnceLock::new();
    ALL.get_or_init(|| {
        let spec = ModelSpec {
            kind: ModelKind::LogReg,
            num_features: 2,
            num_classes: 2,
            image_shape: None,
        };
        let configs = [
            StrategyConfig::FedAvg,
            StrategyConfig::FedSgd {
                optimizer: ServerOptimizer::Adam {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                },
            },
            StrategyConfig::FedKMeans {
                k: 2,
                local_k: 2,
                tol: 1e-4,
            },
        ];
        let built = configs
            .into_iter()
            .map(|strategy| {
                let config = RunConfig {
                    strategy,
                    ..RunConfig::default()
                };
                strategy::build(&config, &spec).expect("build a tiny strategy")
            })
            .collect();
        Mutex::new(built)
    })
}

/// `data` as the payload of an otherwise valid checkpoint file.
fn envelope(data: &[u8]) -> Vec<u8> {
    let mut out = b"SHOALCK\0".to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Frames `[u16 length][bytes]` records the way `RoundLog::append` does: u32 length, CRC-32.
fn frame_records(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
        let record = &data[2..2 + len];
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
        out.extend_from_slice(record);
        data = &data[2 + len..];
    }
    out.extend_from_slice(data);
    out
}

fn decode_checkpoint(file: &[u8]) {
    let Ok(ckpt) = checkpoint::decode(file) else {
        return;
    };
    if let Ok(config) = ckpt.config() {
        assert_eq!(config.run_id().len(), 16);
    }
    let bytes = checkpoint::encode(&ckpt).expect("a decoded checkpoint must encode");
    assert!(
        checkpoint::decode(&bytes).is_ok(),
        "re-encoded checkpoint does not decode"
    );
}

fn read_wal(file: &[u8]) {
    let dir = wal_dir();
    std::fs::write(dir.join("round.wal"), file).expect("write round.wal");
    let store = CheckpointStore::open(dir).expect("open the directory");
    match RoundLog::read(&store) {
        Ok(Some(logged)) => {
            let _ = (logged.opened.selected.len(), logged.updates.len());
        }
        Ok(None) => {}
        Err(e) => panic!("reading an existing round.wal failed: {e}"),
    }
}

fn restore(state: &[u8]) {
    let mut all = strategies().lock().unwrap_or_else(|e| e.into_inner());
    for strategy in all.iter_mut() {
        if strategy.restore(state).is_ok() {
            let _ = strategy
                .snapshot()
                .expect("a restored strategy must snapshot");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => decode_checkpoint(rest),
        1 => decode_checkpoint(&envelope(rest)),
        2 => read_wal(rest),
        3 => read_wal(&frame_records(rest)),
        _ => restore(rest),
    }
});
