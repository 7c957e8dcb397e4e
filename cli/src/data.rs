//! Turning a [`DataPlan`] into datasets: the held-out set the coordinator evaluates on, and the
//! per-client partitions a fleet trains on. Both sides derive the same split from the same seed.

use crate::options::{DataPlan, Plan};
use anyhow::{Context, Result, bail};
use shoal_coordinator::StrategyConfig;
use shoal_coordinator::store::metrics::sha256_f32;
use shoal_datasets::{Dataset, Split, partition};
use shoal_models::{ModelKind, ModelSpec, from_safetensors};

/// Loads the dataset and splits off the held-out set.
pub fn load(plan: &DataPlan) -> Result<Split> {
    shoal_datasets::load(&plan.source, plan.test_fraction, plan.seed)
        .with_context(|| format!("loading dataset {}", plan.source))
}

/// The id of simulated client `index`.
pub fn client_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:05}")
}

/// Refuses a dataset that names only the data's shape where clients are to train on it.
pub fn require_examples(plan: &DataPlan) -> Result<()> {
    if !plan.source.holds_examples() {
        bail!(
            "--dataset {} names only the data's shape: clients need examples to train on \
             (only `shoal coordinator` runs without data)",
            plan.source
        );
    }
    Ok(())
}

/// The training set's examples of each of `plan.clients` clients (indices into `train`).
fn split(plan: &DataPlan, train: &Dataset) -> Result<Vec<Vec<usize>>> {
    require_examples(plan)?;
    partition(
        &train.labels,
        train.num_classes,
        plan.clients,
        &plan.partition,
        plan.seed,
    )
    .with_context(|| {
        format!(
            "partitioning {} examples among {} clients",
            train.len(),
            plan.clients
        )
    })
}

/// Refuses a `--local-k` above the examples of the smallest of `parts` (client `i` is
/// `prefix-i`): that client could not make that many clusters.
fn check_local_k(plan: &DataPlan, parts: &[Vec<usize>], prefix: &str) -> Result<()> {
    let Some(local_k) = plan.local_k else {
        return Ok(());
    };
    let smallest = parts
        .iter()
        .enumerate()
        .min_by_key(|(i, part)| (part.len(), *i));
    if let Some((i, part)) = smallest
        && local_k > part.len()
    {
        bail!(
            "--local-k {local_k} is above the smallest client's {} examples ({}); give at most {}",
            part.len(),
            client_id(prefix, i),
            part.len()
        );
    }
    Ok(())
}

/// Splits the training set among `plan.clients` clients; returns each client's id and data.
pub fn partitions(
    plan: &DataPlan,
    train: &Dataset,
    prefix: &str,
) -> Result<Vec<(String, Dataset)>> {
    let parts = split(plan, train)?;
    check_local_k(plan, &parts, prefix)?;
    parts
        .iter()
        .enumerate()
        .map(|(i, idx)| Ok((client_id(prefix, i), train.subset(idx)?)))
        .collect()
}

/// Fixes the data-dependent parts of the run (k defaults to the number of classes), checks
/// them against the data (k at most the training examples, an explicit local k at most the
/// examples of the smallest client of the split), and returns the model spec the coordinator
/// announces.
pub fn finish_plan(plan: &mut Plan, train: &Dataset) -> Result<ModelSpec> {
    if let StrategyConfig::FedKMeans { k, local_k, .. } = &mut plan.run.strategy {
        if *k == 0 {
            *k = train.num_classes;
        }
        if *local_k == 0 {
            *local_k = *k;
        }
        if *k > train.len() {
            bail!(
                "--k {k} is above the {} training examples; give at most {}",
                train.len(),
                train.len()
            );
        }
        if plan.data.local_k.is_some() {
            check_local_k(&plan.data, &split(&plan.data, train)?, "client")?;
        }
    }
    plan.run.validate()?;
    let kind: ModelKind = plan.run.model.parse()?;
    let spec = ModelSpec::for_dataset(kind, train);
    if !matches!(plan.run.strategy, StrategyConfig::FedKMeans { .. }) {
        spec.validate()
            .with_context(|| format!("model {} on dataset {}", plan.run.model, plan.data.source))?;
    }
    if spec.kind == ModelKind::External && plan.init.is_none() {
        bail!("--model external needs --init FILE: the model's layout and starting point");
    }
    if let Some(path) = &plan.init {
        if matches!(plan.run.strategy, StrategyConfig::FedKMeans { .. }) {
            bail!("--init: federated k-means starts from its own seeding round, not a model file");
        }
        let params = if spec.kind == ModelKind::External {
            let (layout, params) = crate::model_file::read_external(path, "--init")?;
            plan.init_layout = Some(layout);
            params
        } else {
            let bytes =
                std::fs::read(path).with_context(|| format!("--init {}", path.display()))?;
            from_safetensors(&bytes, &spec.manifest()?).with_context(|| {
                format!("--init {} for model {}", path.display(), plan.run.model)
            })?
        };
        plan.run.init_sha256 = Some(sha256_f32(&params));
        plan.init_params = Some(params);
    }
    Ok(spec)
}
