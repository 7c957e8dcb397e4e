//! From a run configuration to the strategy object that runs it.

use super::{FedAvg, FedKMeans, FedSgd, Scaffold, Strategy};
use crate::config::{RunConfig, StrategyConfig};
use crate::error::{CoordinatorError, Result};
use shoal_models::ModelSpec;

/// [`build`], starting from `init` (a model trained elsewhere) when given.
pub fn build_from(
    config: &RunConfig,
    spec: &ModelSpec,
    init: Option<Vec<f32>>,
) -> Result<Box<dyn Strategy>> {
    let Some(params) = init else {
        return build(config, spec);
    };
    let rule = config.rule()?;
    if let Some(i) = params.iter().position(|v| !v.is_finite()) {
        return Err(CoordinatorError::Config(format!(
            "--init: parameter {i} is not finite"
        )));
    }
    Ok(match &config.strategy {
        StrategyConfig::FedAvg => {
            Box::new(FedAvg::from_params(spec.clone(), params, config.fit.clone()).with_rule(rule))
        }
        StrategyConfig::FedProx { mu } => Box::new(
            FedAvg::from_params(spec.clone(), params, config.fit.clone())
                .with_rule(rule)
                .with_proximal_mu(*mu),
        ),
        StrategyConfig::FedOpt { optimizer } => Box::new(
            FedAvg::from_params(spec.clone(), params, config.fit.clone())
                .with_rule(rule)
                .with_optimizer(optimizer.clone()),
        ),
        StrategyConfig::Scaffold => Box::new(Scaffold::from_params(
            spec.clone(),
            params,
            config.fit.clone(),
            config.selection.min_available,
        )),
        StrategyConfig::FedSgd { optimizer } => Box::new(
            FedSgd::from_params(
                spec.clone(),
                params,
                optimizer.clone(),
                config.gradient.clone(),
            )
            .with_rule(rule),
        ),
        StrategyConfig::FedKMeans { .. } => {
            return Err(CoordinatorError::Config(
                "--init: federated k-means starts from its own seeding round, not a model file"
                    .into(),
            ));
        }
    })
}

/// Builds the strategy a run asks for, with its initial global state.
pub fn build(config: &RunConfig, spec: &ModelSpec) -> Result<Box<dyn Strategy>> {
    let rule = config.rule()?;
    Ok(match &config.strategy {
        StrategyConfig::FedAvg => {
            Box::new(FedAvg::new(spec.clone(), config.seed, config.fit.clone())?.with_rule(rule))
        }
        StrategyConfig::FedProx { mu } => Box::new(
            FedAvg::new(spec.clone(), config.seed, config.fit.clone())?
                .with_rule(rule)
                .with_proximal_mu(*mu),
        ),
        StrategyConfig::FedOpt { optimizer } => Box::new(
            FedAvg::new(spec.clone(), config.seed, config.fit.clone())?
                .with_rule(rule)
                .with_optimizer(optimizer.clone()),
        ),
        StrategyConfig::Scaffold => Box::new(Scaffold::new(
            spec.clone(),
            config.seed,
            config.fit.clone(),
            config.selection.min_available,
        )?),
        StrategyConfig::FedSgd { optimizer } => Box::new(
            FedSgd::new(
                spec.clone(),
                config.seed,
                optimizer.clone(),
                config.gradient.clone(),
            )?
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
