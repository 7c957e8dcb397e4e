//! Checkpoints: the state a coordinator needs to carry a run on after a crash, written
//! atomically after every aggregated round.
//!
//! Object format (`ckpt-RRRRRR-EEEEEEEEEEEEEEEE.bin`: round, then the writer's epoch in hex):
//! the magic `SHOALCK\0`, a little-endian u32 format version, a u64 payload length, the payload
//! (serde + bincode of [`Checkpoint`]), and the SHA-256 of everything before it. A checkpoint
//! that is truncated, has a flipped byte, or does not decode is skipped with a warning and the
//! previous committed one is used. Each is written whole and atomically by the store, then
//! committed in the manifest ([`crate::store::manifest`]), so a crash at any instant leaves
//! either the old or the new checkpoint committed, never half of one.

use crate::config::RunConfig;
use crate::error::{CoordinatorError, Result};
use crate::store::manifest::{self, Claim};
use crate::store::metrics::RoundRecord;
use crate::store::object::S3Settings;
use crate::store::state::StateStore;
use crate::sync::lock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing::warn;

/// Version of the checkpoint file format; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"SHOALCK\0";
const HEADER: usize = 8 + 4 + 8;
const DIGEST: usize = 32;
/// Checkpoints kept; older ones are deleted after a successful write.
pub const KEEP: usize = 3;
/// How checkpoint object names start and end.
const PREFIX: &str = "ckpt-";
const SUFFIX: &str = ".bin";

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

/// One checkpoint found in the store.
#[derive(Debug)]
pub struct Listed {
    /// Its object name.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The checkpoint, or why it cannot be used.
    pub checkpoint: Result<Checkpoint>,
}

/// A run's checkpoints, in a directory or an object store (see [`crate::store::state`]), with
/// this coordinator's claim on them (see [`crate::store::manifest`]).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    state: Arc<dyn StateStore>,
    claim: Arc<Mutex<Option<Claim>>>,
}

impl CheckpointStore {
    /// Opens the checkpoints at `location`: a directory (created if needed) or
    /// `s3://BUCKET/PREFIX` (reached as the `AWS_*` environment variables say).
    pub fn open(location: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(location, &S3Settings::default())
    }

    /// [`CheckpointStore::open`], with `s3` settings on top of the environment's.
    pub fn open_with(location: impl AsRef<Path>, s3: &S3Settings) -> Result<Self> {
        let location = location.as_ref().to_string_lossy();
        Ok(Self::on(crate::store::state::open(&location, s3)?))
    }

    /// Checkpoints kept in `state`.
    pub fn on(state: Arc<dyn StateStore>) -> Self {
        Self {
            state,
            claim: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the checkpoints are, for messages.
    pub fn location(&self) -> &str {
        self.state.location()
    }

    /// The store underneath.
    pub fn state(&self) -> &dyn StateStore {
        self.state.as_ref()
    }

    /// Takes ownership of the run's state for `epoch` (see [`crate::store::manifest::claim`]);
    /// a coordinator claims before it resumes, and before its first write. Claiming again
    /// with the epoch already held changes nothing.
    pub fn claim(&self, epoch: u64) -> Result<Claim> {
        let mut held = lock(&self.claim);
        if let Some(claim) = held.as_ref().filter(|c| c.epoch == epoch) {
            return Ok(claim.clone());
        }
        // A directory written before manifests existed: what it holds counts as committed.
        let claim = manifest::claim(self.state.as_ref(), epoch, self.stored()?)?;
        *held = Some(claim.clone());
        Ok(claim)
    }

    /// The epoch this store is claimed for, if it is.
    pub fn epoch(&self) -> Option<u64> {
        lock(&self.claim).as_ref().map(|c| c.epoch)
    }

    /// This coordinator's claim, if it made one.
    pub fn claimed(&self) -> Option<Claim> {
        lock(&self.claim).clone()
    }

    /// Epoch to claim with when no election gives one: the clock in milliseconds, above the
    /// recorded owner's even if the clock went back.
    pub fn next_epoch(&self) -> Result<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        Ok(match manifest::read(self.state.as_ref())? {
            Some((recorded, _)) => now.max(recorded.epoch + 1),
            None => now,
        })
    }

    /// Writes `checkpoint` and commits it in the manifest, if this coordinator (its epoch is
    /// the checkpoint's) still owns the state; prunes old ones. Returns the bytes written.
    pub fn write(&self, checkpoint: &Checkpoint) -> Result<u64> {
        let mut claim = self.claim(checkpoint.epoch)?;
        let bytes = encode(checkpoint)?;
        let name = name_for(checkpoint.round, checkpoint.epoch);
        if !self.state.create(&name, &bytes)? {
            return Err(CoordinatorError::Checkpoint(format!(
                "{}/{name} exists already: another coordinator with this epoch wrote it",
                self.location()
            )));
        }
        let earlier = claim
            .manifest
            .committed
            .iter()
            .filter(|n| **n != name)
            .take(KEEP - 1)
            .cloned()
            .collect::<Vec<_>>();
        let committed = std::iter::once(name).chain(earlier).collect();
        manifest::commit(self.state.as_ref(), &mut claim, committed)?;
        *lock(&self.claim) = Some(claim.clone());
        // Whatever the manifest no longer names: older checkpoints, and any a deposed
        // coordinator wrote.
        for old in self.stored()? {
            if !claim.manifest.committed.contains(&old) {
                self.state.delete(&old)?;
            }
        }
        Ok(bytes.len() as u64)
    }

    /// Every checkpoint object in the store, newest first, committed or not.
    fn stored(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .state
            .list(PREFIX)?
            .into_iter()
            .filter(|n| n.ends_with(SUFFIX))
            .collect();
        names.reverse();
        Ok(names)
    }

    /// The committed checkpoints' names, newest first: the manifest's, or in a store without
    /// one, every checkpoint object found.
    fn committed(&self) -> Result<Vec<String>> {
        match manifest::read(self.state.as_ref())? {
            Some((manifest, _)) => Ok(manifest.committed),
            None => self.stored(),
        }
    }

    /// Reads and decodes the checkpoint `name`.
    fn read(&self, name: String) -> Listed {
        let read = self.state.get(&name).and_then(|found| {
            found.map(|(bytes, _)| bytes).ok_or_else(|| {
                CoordinatorError::Checkpoint(format!("{name} is named by the manifest but missing"))
            })
        });
        let bytes = read.as_ref().map_or(0, |b| b.len() as u64);
        let checkpoint = read.and_then(|b| decode(&b));
        Listed {
            name,
            bytes,
            checkpoint,
        }
    }

    /// The committed checkpoints, newest first, decoded or with the reason each is unusable.
    /// Before this coordinator's claim, or in a store without a manifest, every checkpoint
    /// object found.
    pub fn list(&self) -> Result<Vec<Listed>> {
        Ok(self
            .committed()?
            .into_iter()
            .map(|name| self.read(name))
            .collect())
    }

    /// The newest usable checkpoint, if any; unusable newer ones are reported with a warning.
    /// A store that holds checkpoints of which none is usable is an error
    /// ([`CoordinatorError::NoUsableCheckpoint`]): silently starting over would throw away the
    /// run's progress (see [`CheckpointStore::set_aside_unusable`]).
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        // Read one at a time: the newest is usually good, and each may be large.
        let names = self.committed()?;
        let files = names.len();
        let mut newest_error = None;
        for name in names {
            let listed = self.read(name);
            match listed.checkpoint {
                Ok(c) => return Ok(Some(c)),
                Err(e) => {
                    warn!(checkpoint = %listed.name, location = %self.location(), error = %e, "skipping unusable checkpoint; falling back to the previous one");
                    newest_error.get_or_insert_with(|| format!("{}: {e}", listed.name));
                }
            }
        }
        match newest_error {
            None => Ok(None),
            Some(newest) => Err(CoordinatorError::NoUsableCheckpoint {
                dir: self.location().into(),
                files,
                newest,
            }),
        }
    }

    /// Moves every unusable checkpoint to `NAME.unusable` and takes it out of the manifest, so
    /// a run that starts over on purpose neither resumes from them nor has its new checkpoints
    /// pruned in their favour; returns how many were set aside. Needs the claim.
    pub fn set_aside_unusable(&self) -> Result<usize> {
        let mut claim = lock(&self.claim).clone().ok_or(CoordinatorError::Internal(
            "set aside checkpoints before a claim",
        ))?;
        let mut moved = 0;
        let mut kept = Vec::new();
        for listed in self.list()? {
            if listed.checkpoint.is_ok() {
                kept.push(listed.name);
                continue;
            }
            if let Some((bytes, _)) = self.state.get(&listed.name)? {
                self.state
                    .create(&format!("{}.unusable", listed.name), &bytes)?;
            }
            self.state.delete(&listed.name)?;
            moved += 1;
        }
        manifest::commit(self.state.as_ref(), &mut claim, kept)?;
        *lock(&self.claim) = Some(claim);
        Ok(moved)
    }
}

/// Object name of the checkpoint of `round` written by the coordinator of `epoch`.
fn name_for(round: u32, epoch: u64) -> String {
    format!("{PREFIX}{round:06}-{epoch:016x}{SUFFIX}")
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
        // Only the committed ones stay in the store.
        let objects = store.state().list(PREFIX).unwrap();
        assert_eq!(objects.len(), KEEP, "{objects:?}");
        assert_eq!(store.latest().unwrap().unwrap(), sample(5));
        assert_eq!(sample(5).config().unwrap(), RunConfig::default());
    }

    #[test]
    fn truncation_and_flipped_bytes_fall_back_to_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        store.write(&sample(1)).unwrap();
        store.write(&sample(2)).unwrap();
        let newest = dir.path().join(name_for(2, 7));
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
            let path = dir.path().join(name_for(round, 7));
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
        assert!(err.to_string().contains(&name_for(2, 7)), "{err}");
        assert_eq!(store.set_aside_unusable().unwrap(), 2);
        assert!(store.latest().unwrap().is_none());
        assert!(
            dir.path()
                .join(format!("{}.unusable", name_for(2, 7)))
                .exists()
        );
    }

    #[test]
    fn a_deposed_coordinator_cannot_commit_and_its_checkpoint_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let old = CheckpointStore::open(dir.path()).unwrap();
        old.write(&sample(1)).unwrap();
        let new = CheckpointStore::open(dir.path()).unwrap();
        new.claim(8).unwrap();
        // The old owner wakes up and finishes round 2: refused, and invisible.
        let err = old.write(&sample(2)).unwrap_err();
        assert!(
            matches!(err, CoordinatorError::Deposed { ours: 7, owner: 8 }),
            "{err}"
        );
        assert_eq!(new.latest().unwrap().unwrap(), sample(1));
        let mut two = sample(2);
        two.epoch = 8;
        new.write(&two).unwrap();
        assert_eq!(new.latest().unwrap().unwrap(), two);
        let objects = new.state().list(PREFIX).unwrap();
        assert_eq!(objects, vec![name_for(1, 7), name_for(2, 8)]);
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
