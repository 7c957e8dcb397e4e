//! The trained model as a file: `--model-out FILE` at the end of a run and `shoal checkpoint
//! export` for any checkpointed round write safetensors, one named tensor per parameter.

use anyhow::{Context, Result};
use shoal_coordinator::{RunConfig, StrategyConfig};
use shoal_models::{Manifest, ModelSpec, ParamEntry, to_safetensors};
use std::collections::BTreeMap;
use std::path::Path;

/// The layout and parameters of a model file for a model Shoal has no code for: its tensors,
/// as the file names and shapes them, are the layout. `flag` names the option that gave it.
pub fn read_external(path: &Path, flag: &str) -> Result<(Manifest, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))?;
    shoal_models::read_safetensors(&bytes).with_context(|| format!("{flag} {}", path.display()))
}

/// Name of the one tensor a k-means model has: the `[k, features]` centroid matrix.
pub const CENTROIDS: &str = "centroids";

/// The named layout of the global state `run` trains on `spec`'s data: the burn module's
/// parameters, or for k-means the centroid matrix.
pub fn layout(run: &RunConfig, spec: &ModelSpec) -> Result<Manifest> {
    match run.strategy {
        StrategyConfig::FedKMeans { k, .. } => Ok(Manifest {
            entries: vec![ParamEntry {
                name: CENTROIDS.to_string(),
                shape: vec![k, spec.num_features],
                offset: 0,
                len: k
                    .checked_mul(spec.num_features)
                    .context("k × features overflows")?,
            }],
        }),
        _ => spec
            .manifest()
            .with_context(|| format!("the layout of model {}", run.model)),
    }
}

/// What the file's header says about where the model comes from.
pub fn metadata(
    run: &RunConfig,
    run_id: &str,
    strategy: &str,
    round: u32,
    sha256: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("shoal.run_id".to_string(), run_id.to_string()),
        ("shoal.round".to_string(), round.to_string()),
        ("shoal.strategy".to_string(), strategy.to_string()),
        ("shoal.model".to_string(), run.model.clone()),
        ("shoal.dataset".to_string(), run.dataset.clone()),
        ("shoal.model_sha256".to_string(), sha256.to_string()),
    ])
}

/// Refuses a destination whose directory does not exist, before any work is done.
pub fn check_destination(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        anyhow::bail!(
            "cannot write the model to {}: {} is not a directory",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        anyhow::bail!(
            "cannot write the model to {}: it is a directory",
            path.display()
        );
    }
    Ok(())
}

/// Writes `params` laid out by `layout` to `path` as safetensors, atomically: a reader sees
/// the old file or the whole new one, never a part.
pub fn write(
    path: &Path,
    layout: &Manifest,
    params: &[f32],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let bytes = to_safetensors(layout, params, metadata)
        .with_context(|| format!("writing the model to {}", path.display()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
