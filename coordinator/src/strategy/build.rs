//! From a run configuration to the strategy object that runs it.

use super::{FedAvg, FedKMeans, FedSgd, Scaffold, Strategy, init_stream};
use crate::config::{RunConfig, StrategyConfig};
use crate::error::{CoordinatorError, Result};
use shoal_models::{ModelSpec, init_params};

/// Builds the strategy a run asks for, with its initial global state.
pub fn build(config: &RunConfig, spec: &ModelSpec) -> Result<Box<dyn Strategy>> {
    build_from(config, spec, None)
}

/// [`build`], starting from `init` (a model trained elsewhere) when given, else from
/// parameters initialised by the run seed.
pub fn build_from(
    config: &RunConfig,
    spec: &ModelSpec,
    init: Option<Vec<f32>>,
) -> Result<Box<dyn Strategy>> {
    let rule = config.rule()?;
    if let Some(i) = init.iter().flatten().position(|v| !v.is_finite()) {
        return Err(CoordinatorError::Config(format!(
            "--init: parameter {i} is not finite"
        )));
    }
    let kmeans = matches!(config.strategy, StrategyConfig::FedKMeans { .. });
    if kmeans && init.is_some() {
        return Err(CoordinatorError::Config(
            "--init: federated k-means starts from its own seeding round, not a model file".into(),
        ));
    }
    // The starting parameters: called by the one arm below that builds a model.
    let params = || match init {
        Some(params) => Ok::<_, CoordinatorError>(params),
        None => Ok(init_params(spec, init_stream(config.seed))?),
    };
    let fedavg = |params| FedAvg::from_params(spec.clone(), params, config.fit.clone());
    Ok(match &config.strategy {
        StrategyConfig::FedAvg => Box::new(fedavg(params()?).with_rule(rule)),
        StrategyConfig::FedProx { mu } => {
            Box::new(fedavg(params()?).with_rule(rule).with_proximal_mu(*mu))
        }
        StrategyConfig::FedOpt { optimizer } => Box::new(
            fedavg(params()?)
                .with_rule(rule)
                .with_optimizer(optimizer.clone()),
        ),
        StrategyConfig::Scaffold => Box::new(Scaffold::from_params(
            spec.clone(),
            params()?,
            config.fit.clone(),
            config.selection.min_available,
        )),
        StrategyConfig::FedSgd { optimizer } => Box::new(
            FedSgd::from_params(
                spec.clone(),
                params()?,
                optimizer.clone(),
                config.gradient.clone(),
            )
            .with_rule(rule),
        ),
        StrategyConfig::FedKMeans { k, local_k, tol } => Box::new(FedKMeans::new(
            spec.num_features,
            spec.num_classes,
            *k,
            *local_k,
            *tol,
            config.seed,
        )?),
    })
}
