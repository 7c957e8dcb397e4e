//! Carrying out a task on local data: training, gradients and evaluation through the client's
//! [`LocalTrainer`], k-means steps directly. Pure and synchronous; callers run it on a
//! blocking thread so the pull loop (the heartbeat) never stalls.

use crate::compress::{Encoded, ErrorFeedback};
use crate::error::{ClientError, Result};
use crate::scaffold::ControlVariate;
use crate::trainer::LocalTrainer;
use shoal_datasets::Dataset;
use shoal_models::{TrainConfig, kmeans};
use shoal_proto::v1::{Task, TaskKind};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a client sends back for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalUpdate {
    /// Weight: examples the update was computed on.
    pub num_examples: u64,
    /// Parameters, gradient, centroid sums or local centres; shared where they are the
    /// round's global model sent back unchanged (`Arc::make_mut` to change them).
    pub payload: Arc<Vec<f32>>,
    /// Integer side data (k-means counts).
    pub counts: Vec<u64>,
    /// Metrics to report.
    pub metrics: BTreeMap<String, f64>,
    /// The payload as the task asks it sent, once encoded (`encode_update`: always, and then
    /// `payload` is empty).
    pub encoded: Option<Encoded>,
}

impl LocalUpdate {
    /// An update of plain values with weight `num_examples`, no counts and no metrics.
    pub fn plain(num_examples: u64, payload: Vec<f32>) -> Self {
        Self {
            num_examples,
            payload: Arc::new(payload),
            counts: Vec::new(),
            metrics: BTreeMap::new(),
            encoded: None,
        }
    }
}

/// What a task's update is a change from: the round's global state for FIT tasks (the change
/// is `update − global`), nothing for GRADIENT tasks (a gradient is its own change, `Some(&[])`),
/// and `None` for tasks whose updates are no change of the model (k-means, evaluation).
/// Compression and simulated attacks both work on the change.
pub(crate) fn change_base<'a>(
    task: &Task,
    global: &'a [f32],
    update_len: usize,
) -> Result<Option<&'a [f32]>> {
    match TaskKind::try_from(task.kind).unwrap_or(TaskKind::Unspecified) {
        TaskKind::Fit if global.len() != update_len => Err(ClientError::BadTask(format!(
            "update of {update_len} values for a global state of {}",
            global.len()
        ))),
        TaskKind::Fit => Ok(Some(global)),
        TaskKind::Gradient => Ok(Some(&[])),
        _ => Ok(None),
    }
}

/// The model a task names (its kind, features, classes, image shape).
pub(crate) fn task_model(task: &Task) -> Result<&shoal_proto::v1::ModelSpec> {
    task.model
        .as_ref()
        .ok_or_else(|| ClientError::BadTask("task has no model".into()))
}

/// How many of `n` local examples are held out for federated evaluation at `fraction`: the
/// last `ceil(fraction * n)`, at least one and never all (none below two examples).
pub fn holdout_len(n: usize, fraction: f64) -> usize {
    if !(fraction > 0.0 && fraction < 1.0) || n < 2 {
        return 0;
    }
    ((fraction * n as f64).ceil() as usize).clamp(1, n - 1)
}

/// The local data split as `task` asks: (examples to train on, held-out examples).
fn split_local(task: &Task, data: &Dataset) -> Result<(Dataset, Dataset)> {
    let n = data.len();
    let held = holdout_len(n, task.holdout_fraction);
    let part = |range: std::ops::Range<usize>| {
        data.subset(&range.collect::<Vec<_>>())
            .map_err(|e| ClientError::BadTask(format!("splitting local data: {e}")))
    };
    Ok((part(0..n - held)?, part(n - held..n)?))
}

/// What a client keeps from task to task for the algorithms that need it; `shoal client`
/// keeps it in files too ([`ClientState::in_dir`]), so it outlives the process.
#[derive(Debug, Default)]
pub struct ClientState {
    /// The client's stable id (its state is kept under it).
    pub client_id: String,
    /// SCAFFOLD's control variate.
    pub variate: ControlVariate,
    /// What top-k compression left out of the client's recent updates.
    pub feedback: ErrorFeedback,
    /// For the task at hand only: a simulated slow device's share of its local SGD steps
    /// ([`crate::faults::partial_share`]); `None` does them all.
    pub step_share: Option<f64>,
}

impl ClientState {
    /// The state of client `client_id`, kept in memory.
    pub fn new(client_id: String) -> Self {
        Self {
            client_id,
            ..Self::default()
        }
    }

    /// The state of client `client_id`, kept in files in `dir` too (`ID.scaffold`,
    /// `ID.topk`), each read at its first use and rewritten after every round that uses it.
    pub fn in_dir(client_id: String, dir: &std::path::Path) -> Self {
        Self {
            variate: ControlVariate::in_dir(dir, &client_id),
            feedback: ErrorFeedback::in_dir(dir, &client_id),
            client_id,
            step_share: None,
        }
    }

    /// The same client's state as it would be after a restart: its files read again at their
    /// next use, nothing held in memory.
    pub fn fresh(&self) -> Self {
        Self {
            client_id: self.client_id.clone(),
            variate: self.variate.fresh(),
            feedback: self.feedback.fresh(),
            step_share: None,
        }
    }
}

/// Runs `task` on `data` starting from `global`, with `trainer` for the model's work and
/// `state` for what the client carries between tasks.
pub fn run_task(
    trainer: &dyn LocalTrainer,
    task: &Task,
    global: &Arc<Vec<f32>>,
    data: &Dataset,
    state: &mut ClientState,
) -> Result<LocalUpdate> {
    if data.is_empty() {
        return Err(ClientError::BadTask("no local data".into()));
    }
    let kind = TaskKind::try_from(task.kind).unwrap_or(TaskKind::Unspecified);
    if !(task.holdout_fraction >= 0.0 && task.holdout_fraction < 1.0) {
        return Err(ClientError::BadTask(format!(
            "held-out fraction {} is outside [0, 1)",
            task.holdout_fraction
        )));
    }
    // With a held-out split, evaluation sees only it and everything else never sees it.
    let part;
    let data = if task.holdout_fraction > 0.0 {
        let (train, held) = split_local(task, data)?;
        part = if kind == TaskKind::Evaluate {
            held
        } else {
            train
        };
        &part
    } else {
        data
    };
    match kind {
        TaskKind::Fit => fit(trainer, task, global, data, state),
        TaskKind::Gradient => grad(trainer, task, global, data),
        TaskKind::Evaluate => eval(trainer, task, global, data),
        TaskKind::KmeansInit => kmeans_init(task, data),
        TaskKind::KmeansStep => kmeans_step(task, global, data),
        TaskKind::Unspecified => Err(ClientError::BadTask(format!(
            "unknown task kind {}",
            task.kind
        ))),
    }
}

fn fit(
    trainer: &dyn LocalTrainer,
    task: &Task,
    global: &Arc<Vec<f32>>,
    data: &Dataset,
    state: &mut ClientState,
) -> Result<LocalUpdate> {
    let cfg = task.fit.unwrap_or_default();
    let train = TrainConfig {
        epochs: cfg.epochs as usize,
        batch_size: cfg.batch_size as usize,
        lr: cfg.lr,
        seed: task.seed,
        proximal_mu: cfg.proximal_mu,
        max_steps: state.step_share.map_or(0, |share| {
            let per_epoch = data.len().div_ceil(cfg.batch_size.max(1) as usize);
            let all = per_epoch * cfg.epochs as usize;
            ((share * all as f64).ceil() as usize).max(1)
        }),
    };
    if cfg.epochs == 0 && !cfg.control_variate {
        // Nothing to train: the client scores the global model on its data and sends it back
        // unchanged, scoring it with the process's shared model where the trainer keeps one.
        // The configuration is held to what training would hold it to all the same.
        train.validate()?;
        let report = trainer.score(task_model(task)?, global, data)?;
        return Ok(LocalUpdate {
            num_examples: report.examples as u64,
            payload: global.clone(),
            counts: Vec::new(),
            metrics: loss_and_accuracy(report.loss, report.accuracy),
            encoded: None,
        });
    }
    let (params, report) = if cfg.control_variate {
        let variate = &mut state.variate;
        crate::scaffold::fit(
            trainer,
            task,
            global,
            data,
            &train,
            &state.client_id,
            variate,
        )?
    } else {
        trainer.fit(task_model(task)?, global, data, &train)?
    };
    Ok(LocalUpdate {
        num_examples: report.examples as u64,
        payload: Arc::new(params),
        counts: Vec::new(),
        metrics: loss_and_accuracy(report.loss, report.accuracy),
        encoded: None,
    })
}

/// The metrics a classifier's update reports.
fn loss_and_accuracy(loss: f64, accuracy: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("loss".to_string(), loss),
        ("accuracy".to_string(), accuracy),
    ])
}

/// Loss and accuracy of the global model on the held-out examples, weighted by their number.
fn eval(
    trainer: &dyn LocalTrainer,
    task: &Task,
    global: &Arc<Vec<f32>>,
    data: &Dataset,
) -> Result<LocalUpdate> {
    if task.holdout_fraction <= 0.0 || data.is_empty() {
        return Err(ClientError::BadTask(
            "an evaluation task needs held-out examples, and there are none".into(),
        ));
    }
    let report = trainer.score(task_model(task)?, global, data)?;
    Ok(LocalUpdate {
        num_examples: report.examples as u64,
        payload: Arc::default(),
        counts: Vec::new(),
        metrics: loss_and_accuracy(report.loss, report.accuracy),
        encoded: None,
    })
}

fn grad(
    trainer: &dyn LocalTrainer,
    task: &Task,
    global: &[f32],
    data: &Dataset,
) -> Result<LocalUpdate> {
    let cfg = task.gradient.unwrap_or_default();
    let (g, report) = trainer.gradient(
        task_model(task)?,
        global,
        data,
        cfg.batches as usize,
        cfg.batch_size as usize,
        task.seed,
    )?;
    Ok(LocalUpdate {
        num_examples: report.examples as u64,
        payload: Arc::new(g),
        counts: Vec::new(),
        metrics: BTreeMap::from([("loss".to_string(), report.loss)]),
        encoded: None,
    })
}

fn kmeans_config(task: &Task, data: &Dataset) -> Result<(usize, usize)> {
    let cfg = task
        .kmeans
        .ok_or_else(|| ClientError::BadTask("k-means task without config".into()))?;
    if cfg.dim as usize != data.num_features || cfg.k == 0 {
        return Err(ClientError::BadTask(format!(
            "k-means task for k={} dim={}, local data has {} features",
            cfg.k, cfg.dim, data.num_features
        )));
    }
    Ok((cfg.k as usize, cfg.local_k as usize))
}

/// k-FED round 0: local centres and their counts, padded to `local_k` rows (padding rows
/// carry count 0 and are ignored by the coordinator), so every update has the planned shape.
fn kmeans_init(task: &Task, data: &Dataset) -> Result<LocalUpdate> {
    let (_, local_k) = kmeans_config(task, data)?;
    let dim = data.num_features;
    let (mut centres, mut counts) = kmeans::local_kmeans(data, local_k, task.seed)?;
    centres.resize(local_k * dim, 0.0);
    counts.resize(local_k, 0);
    Ok(LocalUpdate {
        num_examples: data.len() as u64,
        payload: Arc::new(centres),
        counts,
        metrics: BTreeMap::new(),
        encoded: None,
    })
}

/// A Lloyd step: per-centroid sums, then counts and per-centroid label counts.
fn kmeans_step(task: &Task, global: &[f32], data: &Dataset) -> Result<LocalUpdate> {
    let (k, _) = kmeans_config(task, data)?;
    let stats = kmeans::lloyd_stats(global, k, data)?;
    let mut counts = stats.counts;
    let classes = task.model.as_ref().map_or(0, |m| m.num_classes as usize);
    if stats.label_counts.len() != k * classes {
        return Err(ClientError::BadTask(format!(
            "task expects {classes} classes, local data has {}",
            data.num_classes
        )));
    }
    counts.extend(stats.label_counts);
    Ok(LocalUpdate {
        num_examples: data.len() as u64,
        payload: Arc::new(stats.sums),
        counts,
        metrics: BTreeMap::from([("inertia".to_string(), stats.inertia)]),
        encoded: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::BuiltinTrainer;
    use shoal_models::{ModelKind, ModelSpec, init_params};
    use shoal_proto::v1::{FitConfig, ModelSpec as TaskModel};

    fn fit_task(epochs: u32) -> Task {
        Task {
            kind: TaskKind::Fit as i32,
            model: Some(TaskModel {
                kind: "mlp".into(),
                num_features: 64,
                num_classes: 10,
                image_rows: 0,
                image_cols: 0,
            }),
            fit: Some(FitConfig {
                epochs,
                batch_size: 10,
                lr: 0.1,
                ..Default::default()
            }),
            seed: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_fit_of_zero_epochs_sends_the_shared_global_back_and_scores_it() {
        let data = shoal_datasets::digits().unwrap();
        let data = data.subset(&(0..50).collect::<Vec<_>>()).unwrap();
        let spec = ModelSpec::for_dataset(ModelKind::Mlp { hidden: vec![128] }, &data);
        let global = Arc::new(init_params(&spec, 4).unwrap());
        let trainer = BuiltinTrainer::default();
        let mut state = ClientState::default();
        let update = run_task(&trainer, &fit_task(0), &global, &data, &mut state).unwrap();
        // The process's copy, not a copy of it.
        assert!(Arc::ptr_eq(&update.payload, &global));
        assert_eq!(update.num_examples, 50);
        let expected = shoal_models::evaluate(&spec, &global, &data).unwrap();
        assert_eq!(update.metrics["loss"], expected.loss);
        assert_eq!(update.metrics["accuracy"], expected.accuracy);

        // A second client of the process scores with the model already built; a new global
        // gets a model of its own.
        let other = data.subset(&(10..30).collect::<Vec<_>>()).unwrap();
        let again = run_task(&trainer, &fit_task(0), &global, &other, &mut state).unwrap();
        let expected = shoal_models::evaluate(&spec, &global, &other).unwrap();
        assert_eq!(again.metrics["loss"], expected.loss);
        let next = Arc::new(init_params(&spec, 5).unwrap());
        let moved = run_task(&trainer, &fit_task(0), &next, &other, &mut state).unwrap();
        let expected = shoal_models::evaluate(&spec, &next, &other).unwrap();
        assert_eq!(moved.metrics["loss"], expected.loss);
        assert_ne!(moved.metrics["loss"], again.metrics["loss"]);

        // One epoch trains a vector of the client's own.
        let trained = run_task(&trainer, &fit_task(1), &global, &data, &mut state).unwrap();
        assert!(!Arc::ptr_eq(&trained.payload, &global));
        assert_ne!(*trained.payload, *global);
    }
}
