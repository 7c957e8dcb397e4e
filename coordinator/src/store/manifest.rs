//! The run's manifest: which coordinator owns the run's state (its epoch) and which
//! checkpoints are committed. The one object every owner replaces with a swap, which is what
//! fences a deposed owner out.
//!
//! A coordinator *claims* the state before it reads it to resume: it swaps the manifest to its
//! own epoch, which must be above the recorded one. It *commits* a checkpoint by first creating
//! the checkpoint object (a name no one else writes: round and epoch), then swapping the
//! manifest from the version its claim or last commit left. A coordinator that was deposed
//! meanwhile finds the manifest changed: its swap fails in the store, its checkpoint is never
//! named by the manifest, and readers never see it. Checkpoints not named are garbage, deleted
//! by the next commit.

use crate::error::{CoordinatorError, Result};
use crate::store::state::{StateStore, Version};
use serde::{Deserialize, Serialize};

/// Object name of the manifest.
pub const MANIFEST: &str = "manifest.json";
/// Version of the manifest format.
const FORMAT: u32 = 1;

/// What the manifest records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Epoch of the coordinator that owns the run's state.
    pub epoch: u64,
    /// Committed checkpoints, newest first.
    pub committed: Vec<String>,
}

/// A coordinator's hold on the run's state, from its claim to its next commit.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The owner's epoch.
    pub epoch: u64,
    /// The epoch of the owner before it (`None`: no manifest yet, or one written before
    /// manifests existed); its round log is the one to replay.
    pub previous: Option<u64>,
    /// Whether there was a manifest at all (else checkpoints are found by listing).
    pub had_manifest: bool,
    /// The manifest as this owner last wrote it.
    pub manifest: Manifest,
    version: Version,
}

/// Reads the manifest, if there is one; a manifest that does not parse is an error (never
/// silently replaced: it names the run's committed state).
pub fn read(store: &dyn StateStore) -> Result<Option<(Manifest, Version)>> {
    let Some((bytes, version)) = store.get(MANIFEST)? else {
        return Ok(None);
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        CoordinatorError::Checkpoint(format!(
            "{}/{MANIFEST} is not a manifest ({e}); move it away to start over",
            store.location()
        ))
    })?;
    if manifest.format != FORMAT {
        return Err(CoordinatorError::Checkpoint(format!(
            "{}/{MANIFEST} has format {}, this build reads {FORMAT}",
            store.location(),
            manifest.format
        )));
    }
    Ok(Some((manifest, version)))
}

/// Takes ownership of the state for `epoch`, keeping what is committed. `epoch` must be above
/// the recorded owner's: a lower one is a coordinator that was deposed (or started from a stale
/// election), and is refused.
pub fn claim(store: &dyn StateStore, epoch: u64, committed_if_new: Vec<String>) -> Result<Claim> {
    let found = read(store)?;
    let (previous, committed, expected) = match &found {
        Some((manifest, version)) => {
            if manifest.epoch >= epoch {
                return Err(CoordinatorError::Deposed {
                    ours: epoch,
                    owner: manifest.epoch,
                });
            }
            (
                Some(manifest.epoch),
                manifest.committed.clone(),
                Some(version),
            )
        }
        None => (None, committed_if_new, None),
    };
    let manifest = Manifest {
        format: FORMAT,
        epoch,
        committed,
    };
    let version = swap(store, &manifest, expected)?.ok_or_else(|| {
        // Another coordinator claimed between our read and our swap.
        match read(store) {
            Ok(Some((now, _))) => CoordinatorError::Deposed {
                ours: epoch,
                owner: now.epoch,
            },
            _ => CoordinatorError::Internal("the manifest changed while it was claimed"),
        }
    })?;
    Ok(Claim {
        epoch,
        previous,
        had_manifest: found.is_some(),
        manifest,
        version,
    })
}

/// Records `committed` as the committed checkpoints, if this claim still owns the state.
pub fn commit(store: &dyn StateStore, claim: &mut Claim, committed: Vec<String>) -> Result<()> {
    let manifest = Manifest {
        committed,
        ..claim.manifest.clone()
    };
    match swap(store, &manifest, Some(&claim.version))? {
        Some(version) => {
            claim.manifest = manifest;
            claim.version = version;
            Ok(())
        }
        None => Err(match read(store) {
            Ok(Some((now, _))) => CoordinatorError::Deposed {
                ours: claim.epoch,
                owner: now.epoch,
            },
            _ => CoordinatorError::Deposed {
                ours: claim.epoch,
                owner: 0,
            },
        }),
    }
}

fn swap(
    store: &dyn StateStore,
    manifest: &Manifest,
    expected: Option<&Version>,
) -> Result<Option<Version>> {
    let bytes = serde_json::to_vec_pretty(manifest)
        .map_err(|e| CoordinatorError::codec("encode the manifest", e))?;
    store.swap(MANIFEST, &bytes, expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalDir;

    #[test]
    fn a_newer_claim_fences_the_older_owner_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::open(dir.path()).unwrap();
        let mut first = claim(&store, 10, Vec::new()).unwrap();
        assert_eq!(first.previous, None);
        commit(&store, &mut first, vec!["ckpt-a".into()]).unwrap();
        let second = claim(&store, 11, Vec::new()).unwrap();
        assert_eq!(second.previous, Some(10));
        assert_eq!(second.manifest.committed, vec!["ckpt-a".to_string()]);
        // The first owner wakes up: its commit fails, and the manifest is the second's.
        let err = commit(&store, &mut first, vec!["ckpt-b".into()]).unwrap_err();
        assert!(
            matches!(
                err,
                CoordinatorError::Deposed {
                    ours: 10,
                    owner: 11
                }
            ),
            "{err}"
        );
        assert_eq!(read(&store).unwrap().unwrap().0, second.manifest);
        // Nor can it claim again under its old epoch.
        assert!(matches!(
            claim(&store, 10, Vec::new()),
            Err(CoordinatorError::Deposed { .. })
        ));
    }
}
