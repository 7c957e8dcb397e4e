//! Checkpoints: the state a coordinator needs to carry a run on after a crash, written
//! atomically after every aggregated round.
//!
//! File format (`ckpt-RRRRRR.bin`): the magic `SHOALCK\0`, a little-endian u32 format version,
//! a u64 payload length, the payload (serde + bincode of [`Checkpoint`]), and the SHA-256 of
//! everything before it. A file that is truncated, has a flipped byte, or does not decode is
//! skipped with a warning and the previous checkpoint is used. Writes go to a temporary file
//! that is fsynced, renamed into place, and followed by an fsync of the directory, so a crash
//! at any instant leaves either the old or the new checkpoint, never half of one.

use crate::config::RunConfig;
use crate::error::{CoordinatorError, Result};
use crate::store::metrics::RoundRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use tracing::warn;

/// Version of the checkpoint file format; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"SHOALCK\0";
const HEADER: usize = 8 + 4 + 8;
const DIGEST: usize = 32;
/// Checkpoints kept on disk; older ones are deleted after a successful write.
pub const KEEP: usize = 3;

/// Everything needed to resume a run after its last aggregated round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// SHA-256 of the run config it was written under.
    pub config_hash: String,
    /// That config, as JSON (kept readable, and bincode cannot encode tagged enums).
    pub config_json: String,
    /// Rounds completed.
    pub round: u32,
    /// Epoch of the coordinator that wrote it.
    pub epoch: u64,
    /// Strategy name.
    pub strategy: String,
    /// The strategy's own snapshot: global state and optimiser state.
    pub strategy_state: Vec<u8>,
    /// Metrics of every completed round.
    pub records: Vec<RoundRecord>,
    /// When it was written (Unix milliseconds).
    pub written_unix_ms: u64,
}

impl Checkpoint {
    /// The run config this checkpoint was written under.
    pub fn config(&self) -> Result<RunConfig> {
        serde_json::from_str(&self.config_json)
            .map_err(|e| CoordinatorError::codec("config in checkpoint", e))
    }
}

/// One file found in a checkpoint directory.
#[derive(Debug)]
pub struct Listed {
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The checkpoint, or why it cannot be used.
    pub checkpoint: Result<Checkpoint>,
}

/// A directory of checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    /// Opens (creating if needed) a checkpoint directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for(&self, round: u32) -> PathBuf {
        self.dir.join(format!("ckpt-{round:06}.bin"))
    }

    /// Writes `checkpoint` atomically and prunes old ones; returns the bytes written.
    pub fn write(&self, checkpoint: &Checkpoint) -> Result<u64> {
        let bytes = encode(checkpoint)?;
        let path = self.path_for(checkpoint.round);
        let tmp = self.dir.join(format!(".ckpt-{:06}.tmp", checkpoint.round));
        {
            let mut file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            file.write_all(&bytes).map_err(|e| io_err(&tmp, e))?;
            file.sync_all().map_err(|e| io_err(&tmp, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(bytes.len() as u64)
    }

    /// Every checkpoint file, newest first, decoded or with the reason it is unusable.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut paths: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(|e| io_err(&self.dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ckpt-") && n.ends_with(".bin"))
            })
            .collect();
        paths.sort();
        paths.reverse();
        Ok(paths
            .into_iter()
            .map(|path| {
                let read = fs::read(&path).map_err(|e| io_err(&path, e));
                let bytes = read.as_ref().map_or(0, |b| b.len() as u64);
                let checkpoint = read.and_then(|b| decode(&b));
                Listed {
                    path,
                    bytes,
                    checkpoint,
                }
            })
            .collect())
    }

    /// The newest usable checkpoint, if any; unusable newer ones are reported with a warning.
    /// A directory that holds checkpoints of which none is usable is an error
    /// ([`CoordinatorError::NoUsableCheckpoint`]): silently starting over would throw away the
    /// run's progress (see [`CheckpointStore::set_aside_unusable`]).
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        let listed = self.list()?;
        let files = listed.len();
        let mut newest_error = None;
        for listed in listed {
            match listed.checkpoint {
                Ok(c) => return Ok(Some(c)),
                Err(e) => {
                    warn!(path = %listed.path.display(), error = %e, "skipping unusable checkpoint; falling back to the previous one");
                    newest_error.get_or_insert_with(|| format!("{}: {e}", listed.path.display()));
                }
            }
        }
        match newest_error {
            None => Ok(None),
            Some(newest) => Err(CoordinatorError::NoUsableCheckpoint {
                dir: self.dir.clone(),
                files,
                newest,
            }),
        }
    }

    /// Renames every unusable checkpoint to `NAME.unusable`, so a run that starts over on
    /// purpose neither resumes from them nor has its new checkpoints pruned in their favour;
    /// returns how many were set aside.
    pub fn set_aside_unusable(&self) -> Result<usize> {
        let mut moved = 0;
        for listed in self.list()? {
            if listed.checkpoint.is_err() {
                let mut aside = listed.path.clone().into_os_string();
                aside.push(".unusable");
                fs::rename(&listed.path, &aside).map_err(|e| io_err(&listed.path, e))?;
                moved += 1;
            }
        }
        sync_dir(&self.dir)?;
        Ok(moved)
    }

    fn prune(&self) -> Result<()> {
        for old in self.list()?.into_iter().skip(KEEP) {
            fs::remove_file(&old.path).map_err(|e| io_err(&old.path, e))?;
        }
        Ok(())
    }
}

/// The file bytes of a checkpoint.
pub fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>> {
    let payload = bincode::serde::encode_to_vec(checkpoint, bincode::config::standard())
        .map_err(|e| CoordinatorError::codec("encode checkpoint", e))?;
    let mut out = Vec::with_capacity(HEADER + payload.len() + DIGEST);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// Parses and verifies checkpoint file bytes.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |why: String| CoordinatorError::Checkpoint(why);
    if bytes.len() < HEADER + DIGEST || &bytes[..8] != MAGIC {
        return Err(bad(format!(
            "not a checkpoint or truncated ({} bytes)",
            bytes.len()
        )));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        )));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len);
    let expected = len.saturating_add((HEADER + DIGEST) as u64);
    if bytes.len() as u64 != expected {
        return Err(bad(format!(
            "truncated: {} bytes, header says {expected}",
            bytes.len()
        )));
    }
    let (body, digest) = bytes.split_at(bytes.len() - DIGEST);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad("checksum mismatch: the file is corrupt".into()));
    }
    let (checkpoint, used) =
        crate::bounded::decode_bounded(&body[HEADER..]).map_err(|e| bad(format!("decode: {e}")))?;
    if used != body.len() - HEADER {
        return Err(bad("trailing bytes after the checkpoint".into()));
    }
    Ok(checkpoint)
}

fn io_err(path: &Path, e: std::io::Error) -> CoordinatorError {
    CoordinatorError::Storage {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Makes a rename durable: fsync the directory that holds it.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: u32) -> Checkpoint {
        Checkpoint {
            config_hash: "abc".into(),
            config_json: serde_json::to_string(&RunConfig::default()).unwrap(),
            round,
            epoch: 7,
            strategy: "fedavg".into(),
            strategy_state: vec![1, 2, 3, round as u8],
            records: vec![],
            written_unix_ms: 0,
        }
    }

    #[test]
    fn round_trips_and_keeps_the_last_few() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        for r in 1..=5 {
            store.write(&sample(r)).unwrap();
        }
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), KEEP);
        assert_eq!(store.latest().unwrap().unwrap(), sample(5));
        assert_eq!(sample(5).config().unwrap(), RunConfig::default());
    }

    #[test]
    fn truncation_and_flipped_bytes_fall_back_to_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        store.write(&sample(1)).unwrap();
        store.write(&sample(2)).unwrap();
        let newest = store.path_for(2);
        let good = fs::read(&newest).unwrap();

        fs::write(&newest, &good[..good.len() - 10]).unwrap();
        assert!(
            decode(&fs::read(&newest).unwrap())
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        assert_eq!(store.latest().unwrap().unwrap().round, 1);

        for at in [3, HEADER + 5, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[at] ^= 0x40;
            fs::write(&newest, &flipped).unwrap();
            assert!(decode(&flipped).is_err(), "flip at {at} undetected");
            assert_eq!(store.latest().unwrap().unwrap().round, 1);
        }
    }

    #[test]
    fn a_crafted_length_prefix_is_an_error_not_an_allocation() {
        // A valid envelope around a payload whose first string claims 2^62 bytes.
        let mut payload = vec![0xfd];
        payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn a_directory_of_only_unusable_checkpoints_is_an_error_until_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        store.write(&sample(1)).unwrap();
        store.write(&sample(2)).unwrap();
        for round in [1, 2] {
            let path = dir.path().join(format!("ckpt-{round:06}.bin"));
            let mut bytes = fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            fs::write(&path, bytes).unwrap();
        }
        let err = store.latest().unwrap_err();
        assert!(
            matches!(err, CoordinatorError::NoUsableCheckpoint { files: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("ckpt-000002.bin"), "{err}");
        assert_eq!(store.set_aside_unusable().unwrap(), 2);
        assert!(store.latest().unwrap().is_none());
        assert!(dir.path().join("ckpt-000002.bin.unusable").exists());
    }

    #[test]
    fn an_empty_directory_has_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            CheckpointStore::open(dir.path())
                .unwrap()
                .latest()
                .unwrap()
                .is_none()
        );
    }
}
