//! Simulated Byzantine clients, to measure robust aggregation: attackers follow the protocol to
//! the letter (join, pull, fetch, push on time, well-formed), only the content of their
//! updates lies.
//!
//! Which clients attack is seeded: the fleet ranks its clients by a key drawn from the run
//! seed and each client id, and the first `round(fraction × clients)` attack. Noise is drawn
//! from the task's own seed, so an attacked run replays exactly.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rand_distr::{Distribution, Normal};
use shoal_datasets::Dataset;
use shoal_datasets::rng::{client_key, derive_seed, rng_for};
use shoal_proto::v1::Task;

use crate::error::{ClientError, Result};
use crate::work::{LocalUpdate, change_base};

/// Stream tag for choosing attackers and drawing their noise.
const ATTACK_STREAM: u64 = u64::from_be_bytes(*b"byzantin");

/// What an attacker sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    /// Its honest change, negated: the model is pushed the other way.
    SignFlip,
    /// Its honest change times `λ`.
    Scale(f32),
    /// Gaussian noise of standard deviation `σ` in place of its change.
    Noise(f32),
    /// Trains honestly on its local data with every label `y` replaced by `classes − 1 − y`.
    LabelFlip,
    /// "A little is enough" (Baruch et al. 2019): the attackers collude, and all send the
    /// mean of their honest changes shifted by `z` standard deviations, coordinate by
    /// coordinate ([`crate::collusion`]); `None` takes the paper's `z` for the population.
    Alie(Option<f32>),
}

/// `--byzantine FRACTION:KIND`: the share of a fleet's clients that attack, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Byzantine {
    /// Share of the fleet's clients that attack, in [0, 1].
    pub fraction: f64,
    /// What they send.
    pub attack: Attack,
}

impl Byzantine {
    /// The attackers among `ids`: the first `round(fraction × n)` of them ranked by a key drawn
    /// from `seed` and each id.
    pub fn attackers<'a>(&self, seed: u64, ids: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut ranked: Vec<(u64, &str)> = ids
            .map(|id| (derive_seed(seed, &[ATTACK_STREAM, client_key(id)]), id))
            .collect();
        ranked.sort_unstable();
        let count = (self.fraction * ranked.len() as f64).round() as usize;
        ranked
            .into_iter()
            .take(count)
            .map(|(_, id)| id.to_owned())
            .collect()
    }
}

impl Attack {
    /// An attacker's local data: label flipping changes it once, the others leave it be.
    pub fn poison(&self, mut data: Dataset) -> Dataset {
        if *self == Attack::LabelFlip {
            let top = data.num_classes.saturating_sub(1) as u32;
            data.labels
                .iter_mut()
                .for_each(|y| *y = top.saturating_sub(*y));
        }
        data
    }

    /// `update` as the attacker sends it: its change from `global` (FedAvg) or its gradient
    /// (FedSGD) replaced; other tasks are left honest.
    pub fn corrupt(
        &self,
        task: &Task,
        global: &[f32],
        mut update: LocalUpdate,
    ) -> Result<LocalUpdate> {
        let Some(base) = change_base(task, global, update.payload.len())? else {
            return Ok(update);
        };
        let at = |i: usize| base.get(i).copied().unwrap_or(0.0);
        match *self {
            Attack::LabelFlip => {}
            Attack::Alie(_) => {
                return Err(ClientError::BadTask(
                    "a colluding attack is forged with its colluders (collusion::Collusion)".into(),
                ));
            }
            Attack::SignFlip | Attack::Scale(_) => {
                let factor = match *self {
                    Attack::Scale(lambda) => lambda,
                    _ => -1.0,
                };
                for (i, v) in Arc::make_mut(&mut update.payload).iter_mut().enumerate() {
                    *v = at(i) + factor * (*v - at(i));
                }
            }
            Attack::Noise(sigma) => {
                let normal = Normal::new(0.0f32, sigma)
                    .map_err(|e| ClientError::BadTask(format!("noise attack: {e}")))?;
                let mut rng = rng_for(task.seed, &[ATTACK_STREAM]);
                for (i, v) in Arc::make_mut(&mut update.payload).iter_mut().enumerate() {
                    *v = at(i) + normal.sample(&mut rng);
                }
            }
        }
        Ok(update)
    }
}

impl fmt::Display for Byzantine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.fraction)?;
        match self.attack {
            Attack::SignFlip => f.write_str("sign-flip"),
            Attack::Scale(l) => write!(f, "scale:{l}"),
            Attack::Noise(s) => write!(f, "noise:{s}"),
            Attack::LabelFlip => f.write_str("label-flip"),
            Attack::Alie(None) => f.write_str("alie"),
            Attack::Alie(Some(z)) => write!(f, "alie:{z}"),
        }
    }
}

impl FromStr for Byzantine {
    type Err = String;

    /// `FRACTION:sign-flip`, `FRACTION:scale:LAMBDA`, `FRACTION:noise:SIGMA`,
    /// `FRACTION:label-flip` or `FRACTION:alie[:Z]`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.trim().split(':').map(str::trim).collect();
        let number = |v: &str, what: &str| {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("--byzantine {s}: {v:?} is not a {what}"))
        };
        let fraction = parts
            .first()
            .and_then(|f| f.parse::<f64>().ok())
            .filter(|f| (0.0..=1.0).contains(f))
            .ok_or_else(|| format!("--byzantine {s}: expected a fraction in [0, 1] first"))?;
        let attack = match parts.get(1..).unwrap_or_default() {
            ["sign-flip"] => Attack::SignFlip,
            ["label-flip"] => Attack::LabelFlip,
            ["alie"] => Attack::Alie(None),
            ["alie", z] => Attack::Alie(Some(number(z, "number of standard deviations")?)),
            ["scale", lambda] => Attack::Scale(number(lambda, "factor")?),
            ["noise", sigma] => match number(sigma, "standard deviation")? {
                sigma if sigma > 0.0 => Attack::Noise(sigma),
                _ => return Err(format!("--byzantine {s}: the noise's σ must be above 0")),
            },
            _ => {
                return Err(format!(
                    "--byzantine {s}: expected FRACTION:sign-flip, FRACTION:scale:LAMBDA, \
                     FRACTION:noise:SIGMA, FRACTION:label-flip or FRACTION:alie[:Z]"
                ));
            }
        };
        Ok(Byzantine { fraction, attack })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::v1::TaskKind;

    fn update(payload: Vec<f32>) -> LocalUpdate {
        LocalUpdate::plain(1, payload)
    }

    fn fit(seed: u64) -> Task {
        Task {
            kind: TaskKind::Fit as i32,
            seed,
            ..Default::default()
        }
    }

    #[test]
    fn attacks_replace_the_change_from_the_global_model() {
        let global = [1.0f32, 2.0];
        let honest = || update(vec![1.5, 1.0]);
        let flip = Attack::SignFlip
            .corrupt(&fit(1), &global, honest())
            .unwrap();
        assert_eq!(*flip.payload, vec![0.5, 3.0]);
        let scaled = Attack::Scale(3.0)
            .corrupt(&fit(1), &global, honest())
            .unwrap();
        assert_eq!(*scaled.payload, vec![2.5, -1.0]);
        let noise = |seed| {
            Attack::Noise(0.5)
                .corrupt(&fit(seed), &global, honest())
                .unwrap()
        };
        assert_eq!(noise(7), noise(7));
        assert_ne!(noise(7), noise(8));
        let grad = Task {
            kind: TaskKind::Gradient as i32,
            ..Default::default()
        };
        assert_eq!(
            *Attack::SignFlip
                .corrupt(&grad, &[], honest())
                .unwrap()
                .payload,
            vec![-1.5, -1.0]
        );
    }

    #[test]
    fn label_flip_mirrors_the_labels() {
        let data = Dataset {
            features: vec![0.0; 3],
            labels: vec![0, 3, 9],
            num_features: 1,
            num_classes: 10,
            image_shape: None,
        };
        assert_eq!(Attack::LabelFlip.poison(data).labels, vec![9, 6, 0]);
    }

    #[test]
    fn the_attackers_are_a_seeded_share_of_the_fleet() {
        let ids: Vec<String> = (0..10).map(|i| format!("client-{i}")).collect();
        let b: Byzantine = "0.2:sign-flip".parse().unwrap();
        let pick = |seed| b.attackers(seed, ids.iter().map(String::as_str));
        assert_eq!(pick(1).len(), 2);
        assert_eq!(pick(1), pick(1));
        assert_ne!(pick(1), pick(2));
    }

    #[test]
    fn flags_parse_and_print() {
        for text in [
            "0.2:sign-flip",
            "0.1:scale:-4",
            "0.3:noise:0.5",
            "0:label-flip",
            "0.2:alie",
            "0.2:alie:1.5",
        ] {
            assert_eq!(text.parse::<Byzantine>().unwrap().to_string(), text);
        }
        for bad in [
            "1.5:sign-flip",
            "0.2",
            "0.2:flip",
            "0.2:noise:0",
            "0.2:scale:x",
            "x:sign-flip",
        ] {
            assert!(bad.parse::<Byzantine>().is_err(), "{bad}");
        }
    }
}
