//! SCAFFOLD's client side (Karimireddy et al. 2020, option II): the client's control variate
//! `c_i`, the corrected local training, and the update `[y; c + Δc_i]` the coordinator folds.
//!
//! The variate is client state that outlives a round: a simulated fleet keeps it in memory,
//! `shoal client` in a file (`--state-dir`), so a restarted client resumes with it. Like
//! top-k's error feedback, two are kept: what entered the newest round worked on and what it
//! produced. A round asked again (a retry, a coordinator that resumed the run) starts from the
//! first, so its update is the same bytes as before; a later round from the second.

use crate::error::{ClientError, Result};
use crate::trainer::LocalTrainer;
use crate::work::{ClientState, LocalUpdate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_datasets::Dataset;
use shoal_models::TrainConfig;
use shoal_proto::v1::Task;
use std::path::PathBuf;
use tracing::warn;

/// First bytes of a variate file, naming its format.
const MAGIC: &[u8; 8] = b"SHOALCV1";

/// A client's control variate, in memory or backed by a file.
#[derive(Debug, Default)]
pub struct ControlVariate {
    /// The newest round worked on: what entered it and what it produced.
    newest: Option<Saved>,
    /// Where it is kept between runs of the process, if anywhere.
    file: Option<PathBuf>,
    /// Whether `file` has been read (it is read at the first SCAFFOLD task).
    loaded: bool,
}

/// The variate of one round, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Saved {
    /// The client it belongs to (a file copied to another client is not used).
    client_id: String,
    /// The run it belongs to: another run starts from zero.
    run_id: String,
    round: u32,
    /// `c_i` as the round started.
    entering: Vec<f32>,
    /// `c_i⁺`, the round's result.
    left: Vec<f32>,
}

impl ControlVariate {
    /// A variate kept in `file`, read at the first SCAFFOLD task and written after each.
    pub fn in_file(file: PathBuf) -> Self {
        Self {
            file: Some(file),
            ..Self::default()
        }
    }

    /// `c_i` for round `round` of run `run_id`, `n` values: zeros for a new run.
    fn entering(&mut self, client_id: &str, run_id: &str, round: u32, n: usize) -> Vec<f32> {
        self.load();
        match &self.newest {
            Some(s) if s.client_id == client_id && s.run_id == run_id && s.left.len() == n => {
                if round > s.round {
                    s.left.clone()
                } else {
                    s.entering.clone()
                }
            }
            _ => vec![0.0; n],
        }
    }

    /// Records what round `round` started from and produced, in the file too if there is one.
    fn record(&mut self, saved: Saved) -> Result<()> {
        if let Some(path) = &self.file {
            write(path, &saved)?;
        }
        self.newest = Some(saved);
        Ok(())
    }

    /// Reads the file once. A file that cannot be read as a variate is set aside (renamed
    /// `.corrupt`, never deleted) and the variate starts from zero, as SCAFFOLD's does.
    fn load(&mut self) {
        if std::mem::replace(&mut self.loaded, true) {
            return;
        }
        let Some(path) = &self.file else { return };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot read the control variate; starting from zero");
                return;
            }
        };
        match parse(&bytes) {
            Ok(saved) => self.newest = Some(saved),
            Err(why) => {
                let aside = path.with_extension("corrupt");
                let moved = std::fs::rename(path, &aside);
                warn!(
                    file = %path.display(),
                    aside = %aside.display(),
                    moved = moved.is_ok(),
                    %why,
                    "the control variate file is damaged; set aside, starting from zero"
                );
            }
        }
    }
}

/// A variate file's bytes: magic, SHA-256 of the body, body (bincode).
fn encode(saved: &Saved) -> Result<Vec<u8>> {
    let body = bincode::serde::encode_to_vec(saved, bincode::config::standard())
        .map_err(|e| ClientError::State(format!("encoding the control variate: {e}")))?;
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&Sha256::digest(&body));
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Inverse of [`encode`], refusing anything it did not write.
fn parse(bytes: &[u8]) -> std::result::Result<Saved, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a control variate file")?;
    if rest.len() < 32 {
        return Err("truncated".into());
    }
    let (digest, body) = rest.split_at(32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch".into());
    }
    let config = bincode::config::standard().with_limit::<{ 1 << 32 }>();
    let (saved, used): (Saved, usize) =
        bincode::serde::decode_from_slice(body, config).map_err(|e| e.to_string())?;
    if used != body.len() || saved.entering.len() != saved.left.len() {
        return Err("inconsistent contents".into());
    }
    if saved
        .left
        .iter()
        .chain(&saved.entering)
        .any(|v| !v.is_finite())
    {
        return Err("non-finite values".into());
    }
    Ok(saved)
}

/// Writes `saved` to `path` atomically: a temporary file beside it, synced, renamed over it.
fn write(path: &std::path::Path, saved: &Saved) -> Result<()> {
    let fail = |e: std::io::Error| {
        ClientError::State(format!(
            "keeping the control variate in {}: {e}",
            path.display()
        ))
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    std::io::Write::write_all(&mut file, &encode(saved)?).map_err(fail)?;
    file.as_file().sync_all().map_err(fail)?;
    file.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// `c_i⁺ = c_i − c + (x − y) / (K·lr)`: the mean corrected gradient of the `steps` local
/// steps from `x` to `y`, which is the client's mean plain gradient along the way. With no
/// step taken (or a zero learning rate) nothing was learnt and `c_i` stays.
pub fn next_variate(
    x: &[f32],
    y: &[f32],
    c: &[f32],
    ci: &[f32],
    steps: usize,
    lr: f64,
) -> Vec<f32> {
    if steps == 0 || lr <= 0.0 {
        return ci.to_vec();
    }
    let scale = 1.0 / (steps as f64 * lr);
    x.iter()
        .zip(y)
        .zip(c.iter().zip(ci))
        .map(|((&x, &y), (&c, &ci))| {
            (f64::from(ci) - f64::from(c) + (f64::from(x) - f64::from(y)) * scale) as f32
        })
        .collect()
}

/// A SCAFFOLD FIT task: `global` is `[x; c]`; trains from `x` with steps corrected by
/// `c − c_i` and returns `[y; c + c_i⁺ − c_i]`, recording `c_i⁺` in `variate`.
pub(crate) fn fit(
    trainer: &dyn LocalTrainer,
    task: &Task,
    model: &shoal_proto::v1::ModelSpec,
    global: &[f32],
    data: &Dataset,
    train: &TrainConfig,
    state: &mut ClientState,
) -> Result<LocalUpdate> {
    let (client_id, variate) = (state.client_id.as_str(), &mut state.variate);
    if !global.len().is_multiple_of(2) || task.update_len != global.len() as u64 {
        return Err(ClientError::BadTask(format!(
            "a SCAFFOLD task needs a global state of model and variate, two equal halves, \
             and an update of the same length: got {} and {}",
            global.len(),
            task.update_len
        )));
    }
    let (x, c) = global.split_at(global.len() / 2);
    let fence = task.fence.clone().unwrap_or_default();
    let ci = variate.entering(client_id, &fence.run_id, fence.round, x.len());
    let correction: Vec<f32> = c.iter().zip(&ci).map(|(c, ci)| c - ci).collect();
    let (y, report) = trainer.fit_corrected(model, x, &correction, data, train)?;
    let ci_next = next_variate(x, &y, c, &ci, report.steps, train.lr);
    if ci_next.iter().any(|v| !v.is_finite()) {
        return Err(ClientError::Model(shoal_models::ModelError::Diverged {
            epoch: train.epochs.saturating_sub(1),
        }));
    }
    let mut payload = y;
    payload.extend(
        c.iter()
            .zip(ci_next.iter().zip(&ci))
            .map(|(&c, (&next, &ci))| (f64::from(c) + f64::from(next) - f64::from(ci)) as f32),
    );
    variate.record(Saved {
        client_id: client_id.to_owned(),
        run_id: fence.run_id,
        round: fence.round,
        entering: ci,
        left: ci_next,
    })?;
    let mut update = LocalUpdate::plain(report.examples as u64, payload);
    update.metrics = crate::work::loss_and_accuracy(report.loss, report.accuracy);
    Ok(update)
}

/// The file holding client `id`'s variate in `dir`: the id with anything but letters,
/// digits, `-`, `_` and `.` replaced (the file names its client inside, too).
pub fn variate_file(dir: &std::path::Path, id: &str) -> PathBuf {
    let safe: String = id
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "-_.".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.scaffold"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(round: u32) -> Saved {
        Saved {
            client_id: "c1".into(),
            run_id: "run".into(),
            round,
            entering: vec![1.0, 2.0],
            left: vec![3.0, 4.0],
        }
    }

    #[test]
    fn the_variate_is_the_mean_gradient_of_the_local_steps() {
        // Two steps of lr 0.5 from x = [1, 1] to y = [0, 2] with c = [0.25, 0], c_i = [0, 1]:
        // (x − y) / (K·lr) = [1, −1]; c_i⁺ = c_i − c + [1, −1] = [0.75, 0].
        let next = next_variate(&[1.0, 1.0], &[0.0, 2.0], &[0.25, 0.0], &[0.0, 1.0], 2, 0.5);
        assert_eq!(next, vec![0.75, 0.0]);
        assert_eq!(
            next_variate(&[1.0], &[1.0], &[3.0], &[2.0], 0, 0.5),
            vec![2.0]
        );
    }

    #[test]
    fn a_round_asked_again_starts_from_what_entered_it() {
        let mut v = ControlVariate::default();
        assert_eq!(v.entering("c1", "run", 3, 2), vec![0.0, 0.0]);
        v.record(saved(3)).unwrap();
        assert_eq!(v.entering("c1", "run", 3, 2), vec![1.0, 2.0]);
        assert_eq!(v.entering("c1", "run", 4, 2), vec![3.0, 4.0]);
        // Another run, another client or another model starts from zero.
        assert_eq!(v.entering("c1", "other", 4, 2), vec![0.0, 0.0]);
        assert_eq!(v.entering("c2", "run", 4, 2), vec![0.0, 0.0]);
        assert_eq!(v.entering("c1", "run", 4, 3), vec![0.0; 3]);
    }

    #[test]
    fn the_file_survives_a_restart_and_damage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = variate_file(dir.path(), "edge/7");
        assert_eq!(path.file_name().unwrap(), "edge_7.scaffold");
        let mut first = ControlVariate::in_file(path.clone());
        first.entering("c1", "run", 3, 2);
        first.record(saved(3)).unwrap();
        let mut restarted = ControlVariate::in_file(path.clone());
        assert_eq!(restarted.entering("c1", "run", 4, 2), vec![3.0, 4.0]);

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(parse(&bytes).unwrap_err().contains("checksum"));
        let mut damaged = ControlVariate::in_file(path.clone());
        assert_eq!(damaged.entering("c1", "run", 4, 2), vec![0.0, 0.0]);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read(path.with_extension("corrupt")).unwrap(),
            bytes
        );
        assert!(parse(b"SHOALCV1short").is_err());
        assert!(parse(b"something else entirely, long enough to hold a digest").is_err());
    }
}
