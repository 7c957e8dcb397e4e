//! SCAFFOLD: stochastic controlled averaging (Karimireddy et al., "SCAFFOLD: Stochastic
//! Controlled Averaging for Federated Learning", ICML 2020), option II.
//!
//! On skewed data each client's local steps drift toward its own optimum. SCAFFOLD keeps a
//! control variate beside the model: the server's `c` estimates the population's gradient,
//! each client's `c_i` its own, and local steps follow `grad + c − c_i`, the client's gradient
//! corrected toward the population's.
//!
//! On the wire the global state is `[x; c]` (model, then the server's variate) and a client's
//! update is `[y; c + Δc_i]`: its trained model, then `c` plus the change of its own variate.
//! So an update's change from the global state is `[y − x; Δc_i]` — what norm bounds,
//! compression and sub-aggregators already handle — and the exact weighted sum folds both
//! halves. The next model is the weighted mean of the `y` (FedAvg's, global step size 1); the
//! next variate `c + |S|/N · mean(Δc_i)`, with `N` the run's population (`--clients`).

use super::{
    Metrics, Strategy, TaskPlan, combine, eval_metrics, from_bytes, init_stream, to_bytes,
};
use crate::aggregate::robust::Rule;
use crate::config::FitSettings;
use crate::error::{CoordinatorError, Result};
use crate::strategy::FoldMode;
use crate::strategy::results::RoundResults;
use shoal_datasets::Dataset;
use shoal_models::{ModelSpec, init_params};

/// SCAFFOLD over locally trained parameters.
#[derive(Debug)]
pub struct Scaffold {
    spec: ModelSpec,
    /// `[x; c]`: the model's parameters, then the server's control variate (zeros at first).
    state: Vec<f32>,
    fit: FitSettings,
    /// The run's population `N`: a round of `m` clients moves `c` by `m / N` of their mean.
    population: usize,
}

impl Scaffold {
    /// Starts from parameters initialised by the run seed and a zero variate, for a run of
    /// `population` clients.
    pub fn new(spec: ModelSpec, seed: u64, fit: FitSettings, population: usize) -> Result<Self> {
        let params = init_params(&spec, init_stream(seed))?;
        Ok(Self::from_params(spec, params, fit, population))
    }

    /// Starts from `params`, a model made elsewhere (`--init`), and a zero variate.
    pub fn from_params(
        spec: ModelSpec,
        params: Vec<f32>,
        fit: FitSettings,
        population: usize,
    ) -> Self {
        let n = params.len();
        let mut state = params;
        state.resize(2 * n, 0.0);
        Self {
            spec,
            state,
            fit,
            population: population.max(1),
        }
    }

    /// The number of model parameters (half the global state).
    fn params_len(&self) -> usize {
        self.state.len() / 2
    }
}

/// The next `[x; c]` from the weighted mean `[ȳ; c + mean Δc]` of a round of `contributors`
/// clients out of `population`: the model is the mean, the variate moves by the participating
/// share of the mean change (all of it when everyone took part).
pub fn next_state(state: &[f32], mean: &[f32], contributors: usize, population: usize) -> Vec<f32> {
    let n = state.len() / 2;
    let share = (contributors as f64 / population.max(1) as f64).min(1.0);
    let mut next = mean[..n].to_vec();
    next.extend(state[n..].iter().zip(&mean[n..]).map(|(&c, &m)| {
        let c = f64::from(c);
        (c + share * (f64::from(m) - c)) as f32
    }));
    next
}

impl Strategy for Scaffold {
    fn name(&self) -> &'static str {
        "scaffold"
    }

    fn configure(&self, _round: u32) -> TaskPlan {
        TaskPlan::local_training(
            &self.fit,
            0.0,
            true,
            self.state.len(),
            FoldMode::WeightedSum,
        )
    }

    fn global(&self) -> &[f32] {
        &self.state
    }

    fn model(&self) -> &[f32] {
        &self.state[..self.params_len()]
    }

    fn aggregate(&mut self, _round: u32, results: RoundResults) -> Result<Metrics> {
        let contributors = results.contributors();
        let mean = combine(&Rule::Mean, results, self.name())?;
        if mean.len() != self.state.len() {
            return Err(CoordinatorError::Strategy(format!(
                "scaffold: {} values combined for a state of {}",
                mean.len(),
                self.state.len()
            )));
        }
        self.state = next_state(&self.state, &mean, contributors, self.population);
        let n = self.params_len();
        let norm = self.state[n..]
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            .sqrt();
        Ok(Metrics::from([("control_variate_norm".to_string(), norm)]))
    }

    fn evaluate(&self, test: &Dataset) -> Result<Metrics> {
        eval_metrics(&self.spec, self.model(), test)
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        to_bytes(&self.state)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let state: Vec<f32> = from_bytes(bytes)?;
        if state.len() != self.state.len() {
            return Err(CoordinatorError::Checkpoint(format!(
                "scaffold state has {} values, model and variate need {}",
                state.len(),
                self.state.len()
            )));
        }
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::Work;
    use shoal_proto::v1::FitConfig;

    #[test]
    fn the_model_is_the_mean_and_the_variate_moves_by_the_participating_share() {
        // x = [1, 2], c = [0.5, -1]; the mean update: y = [3, 4], c + mean Δc = [1.5, 1].
        let state = [1.0, 2.0, 0.5, -1.0];
        let mean = [3.0, 4.0, 1.5, 1.0];
        assert_eq!(next_state(&state, &mean, 4, 4), vec![3.0, 4.0, 1.5, 1.0]);
        // A quarter of the population took part: c moves a quarter of the way.
        assert_eq!(next_state(&state, &mean, 1, 4), vec![3.0, 4.0, 0.75, -0.5]);
        // More contributors than the population (late joiners) never overshoot.
        assert_eq!(next_state(&state, &mean, 9, 4), vec![3.0, 4.0, 1.5, 1.0]);
    }

    #[test]
    fn clients_download_the_variate_and_the_model_excludes_it() {
        let spec = ModelSpec {
            kind: shoal_models::ModelKind::LogReg,
            num_features: 3,
            num_classes: 2,
            image_shape: None,
        };
        let fit = FitSettings {
            epochs: 1,
            batch_size: 4,
            lr: 0.1,
        };
        let s = Scaffold::new(spec, 7, fit, 10).unwrap();
        let n = s.model().len();
        assert_eq!(n, 8);
        assert_eq!(s.global().len(), 2 * n);
        assert!(s.global()[n..].iter().all(|v| *v == 0.0));
        let plan = s.configure(1);
        assert_eq!(plan.update_len, 2 * n);
        assert!(matches!(
            plan.work,
            Work::Fit(FitConfig {
                control_variate: true,
                ..
            })
        ));
        let mut restored = Scaffold::new(s.spec.clone(), 8, s.fit.clone(), 10).unwrap();
        assert!(
            restored
                .restore(&to_bytes(&vec![0.0f32; n]).unwrap())
                .is_err()
        );
        restored.restore(&s.snapshot().unwrap()).unwrap();
        assert_eq!(restored.global(), s.global());
    }
}
