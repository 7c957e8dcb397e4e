//! SCAFFOLD's client side (Karimireddy et al. 2020, option II): the client's control variate
//! `c_i`, the corrected local training, and the update `[y; c + Δc_i]` the coordinator folds.
//!
//! The variate is client state that outlives a round: a simulated fleet keeps it in memory,
//! `shoal client` in a file (`--state-dir`), so a restarted client resumes with it; a round
//! asked again starts from the variate that entered it ([`crate::carried`]).

use crate::carried::{At, Carried, Kind};
use crate::error::{ClientError, Result};
use crate::trainer::LocalTrainer;
use shoal_datasets::Dataset;
use shoal_models::{TrainConfig, TrainReport};
use shoal_proto::v1::Task;

/// SCAFFOLD's control variates, as carried values.
#[derive(Debug)]
pub enum Variate {}

impl Kind for Variate {
    const MAGIC: &'static [u8; 8] = b"SHOALCV1";
    const EXTENSION: &'static str = "scaffold";
}

/// A client's control variate `c_i`, in memory or backed by a file.
pub type ControlVariate = Carried<Variate>;

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
/// `c − c_i` and returns `[y; c + c_i⁺ − c_i]` with the training's report, recording `c_i⁺`
/// in `variate`, the variate of client `client_id`.
pub(crate) fn fit(
    trainer: &dyn LocalTrainer,
    task: &Task,
    global: &[f32],
    data: &Dataset,
    train: &TrainConfig,
    client_id: &str,
    variate: &mut ControlVariate,
) -> Result<(Vec<f32>, TrainReport)> {
    let model = crate::work::task_model(task)?;
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
    let at = At {
        client_id,
        run_id: &fence.run_id,
        round: fence.round,
    };
    // A client's first round starts from zero, as SCAFFOLD's do.
    let ci = variate
        .entering(at, x.len())
        .map_or_else(|| vec![0.0; x.len()], <[f32]>::to_vec);
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
    variate.record(at, ci, ci_next)?;
    Ok((payload, report))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
