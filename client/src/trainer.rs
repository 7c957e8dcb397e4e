//! The model code a client runs. A [`LocalTrainer`] trains, differentiates and evaluates a
//! model given as a flat parameter vector, laid out as the coordinator's model says (names
//! and shapes, see [`shoal_models::Manifest`]); the coordinator never runs it.
//!
//! The built-in models are one implementation, [`BuiltinTrainer`]; a team's own model is
//! another, passed to [`crate::EdgeClient::with_trainer`] or [`crate::FleetConfig::trainer`].
//! Everything else (joining, pulling tasks, fetching the global model, uploading, retries,
//! held-out splits for federated evaluation) stays the client's.

use crate::error::{ClientError, Result};
use shoal_datasets::Dataset;
use shoal_models::{
    EvalReport, Evaluator, GradReport, ModelKind, ModelSpec, TrainConfig, TrainReport, evaluate,
    gradient, train_local, train_local_corrected,
};
use shoal_proto::v1::ModelSpec as TaskModel;
use std::sync::{Arc, Mutex};

/// Training, gradients and evaluation of one family of models on flat parameters. Called on
/// a blocking thread, one task at a time per client; implementations must be deterministic
/// for a given seed if runs are to be replayable.
pub trait LocalTrainer: Send + Sync + std::fmt::Debug {
    /// Trains from `global` on `data` as `config` says (epochs, batch size, learning rate,
    /// shuffle seed, FedProx's `proximal_mu`, and `max_steps`, a cap a simulated slow device
    /// sets); returns the new parameters, same layout, and a report whose `examples` is the
    /// update's weight and `steps` the steps taken. A task of zero epochs does not come
    /// here: it trains nothing, so [`LocalTrainer::score`] scores the global model and the
    /// client sends it back unchanged.
    fn fit(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
        config: &TrainConfig,
    ) -> Result<(Vec<f32>, TrainReport)>;

    /// SCAFFOLD's local training: [`LocalTrainer::fit`] with every step's gradient corrected
    /// by `correction` (the server's control variate minus the client's, laid out like
    /// `global`); the report's `steps` must count the steps taken. Trainers that do not
    /// implement it refuse SCAFFOLD runs.
    fn fit_corrected(
        &self,
        model: &TaskModel,
        global: &[f32],
        correction: &[f32],
        data: &Dataset,
        config: &TrainConfig,
    ) -> Result<(Vec<f32>, TrainReport)> {
        let _ = (model, global, correction, data, config);
        Err(ClientError::BadTask(
            "this client's trainer has no drift-corrected training (LocalTrainer::fit_corrected), \
             which SCAFFOLD needs"
                .into(),
        ))
    }

    /// The gradient of the local loss at `global`: over all of `data` when `batches` is 0,
    /// else the mean over `batches` mini-batches of `batch_size` drawn with `seed`.
    fn gradient(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
        batches: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<(Vec<f32>, GradReport)>;

    /// Loss and accuracy of `global` on `data` (a held-out split).
    fn evaluate(&self, model: &TaskModel, global: &[f32], data: &Dataset) -> Result<EvalReport>;

    /// Loss and accuracy of the round's global model on `data`, for a task that trains
    /// nothing: an evaluation task, or a fit task of zero epochs (which sends the global back
    /// unchanged and never calls [`LocalTrainer::fit`]). Every client of a process scores the
    /// same `global` in a round (fetched once, shared), so an implementation may build its
    /// model from it once and let the others use it, as the built-in models do. By default
    /// [`LocalTrainer::evaluate`].
    fn score(
        &self,
        model: &TaskModel,
        global: &Arc<Vec<f32>>,
        data: &Dataset,
    ) -> Result<EvalReport> {
        self.evaluate(model, global, data)
    }
}

/// The built-in models (logistic regression, MLPs, the CNN), chosen by the task's model kind.
///
/// Clones share one scoring model ([`LocalTrainer::score`]): the last global model scored,
/// built once. It is kept until another global is scored, so a fleet holds one model beside
/// the global it shares, however many clients it runs.
#[derive(Debug, Clone, Default)]
pub struct BuiltinTrainer {
    scoring: Arc<Mutex<Option<Scoring>>>,
}

/// The model built from one global state, and that state (held, so that no other can take
/// its address while the model stands for it).
#[derive(Debug)]
struct Scoring {
    global: Arc<Vec<f32>>,
    evaluator: Arc<Evaluator>,
}

impl BuiltinTrainer {
    /// The built-in model a task names, checked against the local data.
    pub fn spec(model: &TaskModel, data: &Dataset) -> Result<ModelSpec> {
        let kind: ModelKind = model
            .kind
            .parse()
            .map_err(|e| ClientError::BadTask(format!("{e}")))?;
        if model.num_features as usize != data.num_features {
            return Err(ClientError::BadTask(format!(
                "task expects {} features, local data has {}",
                model.num_features, data.num_features
            )));
        }
        let image_shape = (model.image_rows > 0 && model.image_cols > 0)
            .then_some((model.image_rows as usize, model.image_cols as usize));
        Ok(ModelSpec {
            kind,
            num_features: model.num_features as usize,
            num_classes: model.num_classes as usize,
            image_shape,
        })
    }
}

impl LocalTrainer for BuiltinTrainer {
    fn fit(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
        config: &TrainConfig,
    ) -> Result<(Vec<f32>, TrainReport)> {
        Ok(train_local(
            &Self::spec(model, data)?,
            global,
            data,
            config,
        )?)
    }

    fn fit_corrected(
        &self,
        model: &TaskModel,
        global: &[f32],
        correction: &[f32],
        data: &Dataset,
        config: &TrainConfig,
    ) -> Result<(Vec<f32>, TrainReport)> {
        let spec = Self::spec(model, data)?;
        Ok(train_local_corrected(
            &spec, global, correction, data, config,
        )?)
    }

    fn gradient(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
        batches: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<(Vec<f32>, GradReport)> {
        let spec = Self::spec(model, data)?;
        Ok(gradient(&spec, global, data, batches, batch_size, seed)?)
    }

    fn evaluate(&self, model: &TaskModel, global: &[f32], data: &Dataset) -> Result<EvalReport> {
        Ok(evaluate(&Self::spec(model, data)?, global, data)?)
    }

    fn score(
        &self,
        model: &TaskModel,
        global: &Arc<Vec<f32>>,
        data: &Dataset,
    ) -> Result<EvalReport> {
        let spec = Self::spec(model, data)?;
        let evaluator = {
            // Held while a new global's model is built: the others would build the same.
            let mut scoring = self.scoring.lock().unwrap_or_else(|p| p.into_inner());
            match scoring.as_ref() {
                Some(s) if Arc::ptr_eq(&s.global, global) && *s.evaluator.spec() == spec => {
                    s.evaluator.clone()
                }
                _ => {
                    let evaluator = Arc::new(Evaluator::new(&spec, global)?);
                    *scoring = Some(Scoring {
                        global: global.clone(),
                        evaluator: evaluator.clone(),
                    });
                    evaluator
                }
            }
        };
        Ok(evaluator.evaluate(data)?)
    }
}
