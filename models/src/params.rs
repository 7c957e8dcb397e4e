//! Moving parameters between burn modules and flat `f32` vectors, and seeded initialisation.
//!
//! [`flatten`] walks the model with a [`ModuleVisitor`], [`load`] rebuilds every parameter
//! with a [`ModuleMapper`] from its slice of the vector, keeping the parameter's id, device
//! and gradient requirement so the loaded model stays trainable. Both follow the
//! [`Manifest`] order, and the round trip is bit-exact.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use shoal_datasets::rng::rng_for;

use crate::device::tensor_values;
use crate::error::{ModelError, Result};
use crate::manifest::{Manifest, ParamEntry};
use crate::net::Net;
use crate::spec::ModelSpec;

/// Stream tag of the initialisation RNG (`rng_for(seed, &[INIT_STREAM, entry_index])`).
const INIT_STREAM: u64 = 0x1417;

/// A fresh parameter vector for `spec`, deterministic in `seed` alone.
///
/// Follows burn's default scheme for `Linear` and `Conv2d` (Kaiming-uniform with gain
/// `1/sqrt(3)`): every weight and bias value is drawn uniformly from `[-b, b)` with
/// `b = 1/sqrt(fan_in)`, where `fan_in` is the layer's input width (linear) or
/// `in_channels * kh * kw` (convolution). Entry `i` of the manifest draws from
/// `rng_for(seed, &[0x1417, i])` as `b * (2u - 1)` with `u` a uniform `f64` in `[0, 1)`, so
/// the vector is bit-identical on every run and machine.
pub fn init_params(spec: &ModelSpec, seed: u64) -> Result<Vec<f32>> {
    let manifest = spec.manifest()?;
    let mut params = Vec::with_capacity(manifest.total());
    for (index, entry) in manifest.entries.iter().enumerate() {
        let bound = 1.0 / (fan_in(&manifest, entry)? as f64).sqrt();
        let mut rng = rng_for(seed, &[INIT_STREAM, index as u64]);
        params.extend((0..entry.len).map(|_| {
            let u: f64 = rng.random();
            (bound * (2.0 * u - 1.0)) as f32
        }));
    }
    Ok(params)
}

/// The fan-in of a parameter: from its own shape for weights, from the sibling weight for
/// biases.
fn fan_in(manifest: &Manifest, entry: &ParamEntry) -> Result<usize> {
    let from_weight = |shape: &[usize]| match shape {
        [d_input, _] => Some(*d_input),
        [_, rest @ ..] if rest.len() == 3 => Some(rest.iter().product()),
        _ => None,
    };
    let weight = match entry.name.strip_suffix(".bias") {
        Some(layer) => manifest.entry(&format!("{layer}.weight")),
        None => Some(entry),
    };
    weight
        .and_then(|w| from_weight(&w.shape))
        .filter(|&f| f > 0)
        .ok_or_else(|| ModelError::InvalidSpec(format!("no fan-in for parameter {}", entry.name)))
}

/// Every float parameter of `net`, flattened in manifest order.
pub(crate) fn flatten(net: &Net) -> Result<Vec<f32>> {
    module_params(net)
}

/// Every float parameter of any burn module, flattened in the order burn visits them (the
/// order of [`module_layout`]): how a team's own model becomes the vector Shoal federates.
pub fn module_params<M: Module>(module: &M) -> Result<Vec<f32>> {
    let net = module;
    let mut collector = ValueCollector {
        values: Vec::new(),
        error: None,
    };
    net.visit(&mut collector);
    match collector.error {
        Some(err) => Err(err),
        None => Ok(collector.values),
    }
}

/// `net` with every parameter replaced by its slice of `params` (created on `device`).
///
/// `params` must already be checked against the manifest of `net` (length).
pub(crate) fn load(net: Net, params: &[f32], device: &Device) -> Result<Net> {
    load_module(net, params, device)
}

/// Any burn module with every float parameter replaced by its slice of `params`, in the order
/// of [`module_layout`], created on `device` (each keeps its id and gradient requirement, so
/// the module stays trainable). A vector of another length is an error.
pub fn load_module<M: Module>(net: M, params: &[f32], device: &Device) -> Result<M> {
    let mut loader = Loader {
        params,
        offset: 0,
        device,
        error: None,
    };
    let net = net.map(&mut loader);
    if let Some(err) = loader.error {
        return Err(err);
    }
    if loader.offset != params.len() {
        return Err(ModelError::ParamLength {
            expected: loader.offset,
            got: params.len(),
        });
    }
    Ok(net)
}

/// Builds the model for `spec` on `device` with `params` loaded, after checking `params`
/// (length and finiteness) against the manifest.
pub(crate) fn build_loaded(spec: &ModelSpec, params: &[f32], device: &Device) -> Result<Net> {
    let net = Net::build(spec, device)?;
    Manifest::of(&net).check_params(params)?;
    load(net, params, device)
}

struct ValueCollector {
    values: Vec<f32>,
    error: Option<ModelError>,
}

impl ModuleVisitor for ValueCollector {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        match tensor_values(param.val()) {
            Ok(values) => self.values.extend_from_slice(&values),
            Err(err) => self.error = Some(err),
        }
    }
}

struct Loader<'a> {
    params: &'a [f32],
    offset: usize,
    device: &'a Device,
    error: Option<ModelError>,
}

impl ModuleMapper for Loader<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.lazy_shape();
        let len = shape.num_elements();
        let end = self.offset + len;
        let Some(values) = self.params.get(self.offset..end) else {
            self.error.get_or_insert(ModelError::ParamLength {
                expected: end,
                got: self.params.len(),
            });
            return param;
        };
        self.offset = end;
        let tensor = Tensor::<D>::from_data(TensorData::new(values.to_vec(), shape), self.device);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{inference_device, training_device};
    use crate::spec::ModelKind;
    use crate::test_util::{cnn_spec, digits_spec, mlp_spec};

    #[test]
    fn init_is_deterministic_per_seed_and_differs_across_seeds() {
        let spec = mlp_spec();
        let a = init_params(&spec, 11).unwrap();
        let b = init_params(&spec, 11).unwrap();
        let c = init_params(&spec, 12).unwrap();
        assert_eq!(a.len(), 9_610);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert_ne!(bits(&a), bits(&c));
    }

    #[test]
    fn init_follows_burns_kaiming_uniform_bounds() {
        let spec = cnn_spec();
        let manifest = spec.manifest().unwrap();
        let params = init_params(&spec, 3).unwrap();
        for (entry, fan_in) in manifest
            .entries
            .iter()
            .zip([25, 25, 800, 800, 3136, 3136, 512, 512])
        {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let values = &params[entry.offset..entry.offset + entry.len];
            let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(max <= bound, "{}: {max} > {bound}", entry.name);
            // Uniform draws come close to the bound and are not all equal.
            assert!(max > 0.8 * bound, "{}: {max} vs {bound}", entry.name);
        }
    }

    fn assert_round_trip(spec: &ModelSpec) {
        let params = init_params(spec, 5).unwrap();
        for device in [inference_device(), training_device()] {
            let net = build_loaded(spec, &params, &device).unwrap();
            let back = flatten(&net).unwrap();
            assert_eq!(back.len(), params.len());
            assert!(
                back.iter()
                    .zip(&params)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} round trip is not bit-exact",
                spec.kind
            );
        }
    }

    #[test]
    fn flatten_load_round_trips_every_kind_exactly() {
        assert_round_trip(&digits_spec(ModelKind::LogReg));
        assert_round_trip(&mlp_spec());
        assert_round_trip(&digits_spec(ModelKind::Mlp {
            hidden: vec![32, 16, 8],
        }));
        assert_round_trip(&cnn_spec());
    }

    #[test]
    fn load_refuses_a_short_vector() {
        let spec = mlp_spec();
        let net = Net::build(&spec, &inference_device()).unwrap();
        let err = load(net, &[0.0; 100], &inference_device()).unwrap_err();
        assert!(matches!(err, ModelError::ParamLength { .. }));
    }
}
