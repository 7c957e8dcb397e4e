//! The trained model as a file: safetensors, one named f32 tensor per parameter, named and
//! shaped as the burn module names and shapes it (the [`Manifest`]).
//!
//! Python reads the same file with `safetensors.torch.load_file`; Shoal reads it back with
//! [`from_safetensors`] (checked against the layout it must fit) or [`read_safetensors`] (the
//! layout taken from the file, for a coordinator that knows no model code). The format
//! stores tensors sorted by name, so the flat order is kept in the header's metadata under
//! [`ORDER_KEY`].

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{ModelError, Result};
use crate::manifest::{Manifest, ParamEntry};

/// Metadata key holding the tensor names in flat-vector order, comma-separated.
pub const ORDER_KEY: &str = "shoal.order";

/// `params`, laid out by `manifest`, as the bytes of a safetensors file carrying `metadata`
/// (free-form strings, e.g. the run id and round) in its header.
pub fn to_safetensors(
    manifest: &Manifest,
    params: &[f32],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    manifest.check_layout()?;
    manifest.check_params(params)?;
    if let Some(bad) = manifest.entries.iter().find(|e| e.name.contains(',')) {
        return Err(ModelError::ModelFile(format!(
            "tensor name {:?} contains a comma, which {ORDER_KEY} cannot carry",
            bad.name
        )));
    }
    let views = manifest
        .entries
        .iter()
        .map(|entry| {
            let bytes: Vec<u8> = params[entry.offset..entry.offset + entry.len]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            Ok((entry.name.clone(), (entry.shape.clone(), bytes)))
        })
        .collect::<Result<Vec<_>>>()?;
    let tensors = views
        .iter()
        .map(|(name, (shape, bytes))| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.as_str(), view))
                .map_err(|e| ModelError::ModelFile(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut metadata: HashMap<String, String> = metadata.clone().into_iter().collect();
    let order: Vec<&str> = manifest.entries.iter().map(|e| e.name.as_str()).collect();
    metadata.insert(ORDER_KEY.to_string(), order.join(","));
    let bytes = safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| ModelError::ModelFile(format!("writing safetensors: {e}")))?;
    canonical_header(bytes)
}

/// The same file with its JSON header's keys sorted: the crate writes metadata in a hash
/// map's order, and a seeded run must give the same bytes every time.
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |e: &dyn std::fmt::Display| ModelError::ModelFile(format!("safetensors header: {e}"));
    let n = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| bad(&"shorter than 8 bytes"))? as usize;
    let end = 8usize.checked_add(n).filter(|&e| e <= bytes.len());
    let end = end.ok_or_else(|| bad(&"header longer than the file"))?;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| bad(&e))?;
    if let Some(meta) = header.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> =
            serde_json::from_value(meta.take()).map_err(|e| bad(&e))?;
        *meta = serde_json::to_value(sorted).map_err(|e| bad(&e))?;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| bad(&e))?;
    // The data must start 8-byte aligned, as the format requires: pad with spaces.
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - end);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// The flat parameters held by a safetensors file, checked against `manifest`: every
/// tensor it names must be present as f32 with its shape, finite, and nothing else.
pub fn from_safetensors(bytes: &[u8], manifest: &Manifest) -> Result<Vec<f32>> {
    manifest.check_layout()?;
    let (found, params) = read_safetensors(bytes)?;
    for entry in &manifest.entries {
        match found.entry(&entry.name) {
            Some(got) if got.shape == entry.shape => {}
            Some(got) => {
                return Err(ModelError::ModelFile(format!(
                    "tensor {} has shape {:?}, the model needs {:?}",
                    entry.name, got.shape, entry.shape
                )));
            }
            None => {
                return Err(ModelError::ModelFile(format!(
                    "the file has no tensor {}",
                    entry.name
                )));
            }
        }
    }
    if found.entries.len() != manifest.entries.len() {
        let extra: Vec<&str> = found
            .entries
            .iter()
            .filter(|e| manifest.entry(&e.name).is_none())
            .map(|e| e.name.as_str())
            .collect();
        return Err(ModelError::ModelFile(format!(
            "the file has tensors the model does not: {}",
            extra.join(", ")
        )));
    }
    let mut flat = Vec::with_capacity(manifest.total());
    for entry in &manifest.entries {
        if let Some(got) = found.entry(&entry.name) {
            flat.extend_from_slice(&params[got.offset..got.offset + got.len]);
        }
    }
    manifest.check_params(&flat)?;
    Ok(flat)
}

/// The layout and flat parameters of a safetensors file, tensors in the order its
/// [`ORDER_KEY`] metadata names (files Shoal writes), else in the order of their data in the
/// file. Only f32 tensors are accepted; a truncated or malformed file is an error, never a
/// panic.
pub fn read_safetensors(bytes: &[u8]) -> Result<(Manifest, Vec<f32>)> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::ModelFile(format!("not a safetensors file: {e}")))?;
    let mut tensors: Vec<(String, TensorView<'_>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name.to_string(), view))
        .collect();
    // Data order, ties (empty tensors) by name: the same order for the same file every time.
    tensors.sort_by(|(a, va), (b, vb)| {
        (va.data().as_ptr() as usize, a).cmp(&(vb.data().as_ptr() as usize, b))
    });
    if let Some(order) = safetensors_metadata(bytes)?
        .get(ORDER_KEY)
        .filter(|o| !o.is_empty())
    {
        let names: Vec<&str> = order.split(',').collect();
        if names.len() != tensors.len() {
            return Err(ModelError::ModelFile(format!(
                "{ORDER_KEY} names {} tensors, the file holds {}",
                names.len(),
                tensors.len()
            )));
        }
        let mut ordered = Vec::with_capacity(tensors.len());
        for name in names {
            let at = tensors.iter().position(|(n, _)| n == name).ok_or_else(|| {
                ModelError::ModelFile(format!(
                    "{ORDER_KEY} names {name}, which is not in the file"
                ))
            })?;
            ordered.push(tensors.swap_remove(at));
        }
        tensors = ordered;
    }
    let mut entries = Vec::with_capacity(tensors.len());
    let mut params = Vec::new();
    for (name, view) in tensors {
        if view.dtype() != Dtype::F32 {
            return Err(ModelError::ModelFile(format!(
                "tensor {name} is {:?}; Shoal models are f32",
                view.dtype()
            )));
        }
        let len: usize = view.shape().iter().product();
        entries.push(ParamEntry {
            name,
            shape: view.shape().to_vec(),
            offset: params.len(),
            len,
        });
        params.extend(
            view.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    let manifest = Manifest { entries };
    manifest.check_params(&params)?;
    Ok((manifest, params))
}

/// The metadata strings in a safetensors file's header.
pub fn safetensors_metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| ModelError::ModelFile(format!("not a safetensors file: {e}")))?;
    Ok(header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ModelKind;
    use crate::test_util::{digits_head, digits_spec, mlp_spec};
    use crate::{evaluate, init_params, predict};

    #[test]
    fn a_model_round_trips_and_predicts_the_same() {
        let spec = mlp_spec();
        let manifest = spec.manifest().unwrap();
        let params = init_params(&spec, 3).unwrap();
        let meta = BTreeMap::from([("round".to_string(), "7".to_string())]);
        let bytes = to_safetensors(&manifest, &params, &meta).unwrap();
        assert_eq!(to_safetensors(&manifest, &params, &meta).unwrap(), bytes);
        let back = from_safetensors(&bytes, &manifest).unwrap();
        assert_eq!(back, params);
        let data = digits_head(300);
        assert_eq!(
            predict(&spec, &back, &data).unwrap(),
            predict(&spec, &params, &data).unwrap()
        );
        assert_eq!(
            evaluate(&spec, &back, &data).unwrap(),
            evaluate(&spec, &params, &data).unwrap()
        );
        let header = safetensors_metadata(&bytes).unwrap();
        assert_eq!(header["round"], "7");
        assert_eq!(
            header[ORDER_KEY],
            "layers.0.weight,layers.0.bias,layers.1.weight,layers.1.bias"
        );
        let (layout, flat) = read_safetensors(&bytes).unwrap();
        assert_eq!(layout, manifest);
        assert_eq!(flat, params);
    }

    #[test]
    fn a_file_for_another_model_is_refused() {
        let logreg = digits_spec(ModelKind::LogReg);
        let params = init_params(&logreg, 1).unwrap();
        let bytes = to_safetensors(&logreg.manifest().unwrap(), &params, &BTreeMap::new()).unwrap();
        let err = from_safetensors(&bytes, &mlp_spec().manifest().unwrap()).unwrap_err();
        assert!(err.to_string().contains("layers.0.weight"), "{err}");
    }

    #[test]
    fn truncated_and_garbage_files_are_errors() {
        let spec = mlp_spec();
        let params = init_params(&spec, 1).unwrap();
        let bytes = to_safetensors(&spec.manifest().unwrap(), &params, &BTreeMap::new()).unwrap();
        for bad in [
            &bytes[..bytes.len() - 3],
            &bytes[..5],
            b"not a model at all".as_slice(),
        ] {
            assert!(matches!(
                read_safetensors(bad),
                Err(ModelError::ModelFile(_))
            ));
        }
    }

    /// What Python's reader relies on, checked by hand: an 8-byte little-endian header
    /// length, a JSON header giving each tensor's dtype, shape and byte range, and the data.
    #[test]
    fn the_file_is_what_a_python_reader_expects() {
        let spec = mlp_spec();
        let manifest = spec.manifest().unwrap();
        let params = init_params(&spec, 5).unwrap();
        let bytes = to_safetensors(&manifest, &params, &BTreeMap::new()).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        for entry in &manifest.entries {
            let tensor = &header[&entry.name];
            assert_eq!(tensor["dtype"], "F32");
            let shape: Vec<usize> = serde_json::from_value(tensor["shape"].clone()).unwrap();
            assert_eq!(shape, entry.shape);
            let range: Vec<usize> = serde_json::from_value(tensor["data_offsets"].clone()).unwrap();
            assert_eq!(range[1] - range[0], 4 * entry.len);
            let first = f32::from_le_bytes(data[range[0]..range[0] + 4].try_into().unwrap());
            assert_eq!(first, params[entry.offset]);
        }
        assert!(header["__metadata__"][ORDER_KEY].is_string());
    }
}
