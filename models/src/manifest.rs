//! The flat parameter layout: which slice of a parameter vector belongs to which tensor.
//!
//! The order is the order in which burn's [`ModuleVisitor`] walks the model, so flattening,
//! loading and gradients all agree on it. Names are module paths such as `layers.0.weight`
//! or `conv1.bias`; burn stores a linear weight as `[d_input, d_output]` and a convolution
//! weight as `[out_channels, in_channels, kh, kw]`, both row-major.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::device::inference_device;
use crate::error::{ModelError, Result};
use crate::net::Net;
use crate::spec::ModelSpec;

/// One parameter tensor's place in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamEntry {
    /// Module path, e.g. `layers.0.weight`.
    pub name: String,
    /// Tensor shape as burn stores it.
    pub shape: Vec<usize>,
    /// Index of the first value in the flat vector.
    pub offset: usize,
    /// Number of values (product of `shape`).
    pub len: usize,
}

/// The layout of a model's flat parameter vector, in visiting order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// The parameter tensors, contiguous and in order.
    pub entries: Vec<ParamEntry>,
}

impl Manifest {
    /// Total number of parameters (length of the flat vector).
    pub fn total(&self) -> usize {
        self.entries.last().map_or(0, |e| e.offset + e.len)
    }

    /// The entry called `name`, if any.
    pub fn entry(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Checks that the entries tile the flat vector: each starts where the previous ended and
    /// holds the product of its shape, without overflow. A layout built by hand (for a model
    /// outside the zoo) is checked before anything is read through it.
    pub fn check_layout(&self) -> Result<()> {
        let mut offset = 0usize;
        for entry in &self.entries {
            let len = entry
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d));
            if entry.offset != offset || len != Some(entry.len) {
                return Err(ModelError::InvalidSpec(format!(
                    "layout entry {} (offset {}, {} values, shape {:?}) does not follow the \
                     previous entries (which end at {offset})",
                    entry.name, entry.offset, entry.len, entry.shape
                )));
            }
            offset = offset
                .checked_add(entry.len)
                .ok_or_else(|| ModelError::InvalidSpec("layout size overflows".into()))?;
        }
        Ok(())
    }

    /// Checks that `params` has exactly [`Manifest::total`] values, all finite.
    pub fn check_params(&self, params: &[f32]) -> Result<()> {
        if params.len() != self.total() {
            return Err(ModelError::ParamLength {
                expected: self.total(),
                got: params.len(),
            });
        }
        if all_finite(params) {
            return Ok(());
        }
        let index = params.iter().position(|v| !v.is_finite()).unwrap_or(0);
        Err(ModelError::NonFiniteParams { index })
    }

    /// The manifest of an already built model.
    pub(crate) fn of(net: &Net) -> Manifest {
        module_layout(net)
    }
}

/// The largest bit pattern of `values` with the sign cleared: the largest |x| when all are
/// finite, at least the pattern of infinity when one is not. A fold without early exit, which
/// the compiler vectorises; the coordinator's update checks use it too.
pub fn max_abs_bits(values: &[f32]) -> u32 {
    values
        .iter()
        .fold(0u32, |max, v| max.max(v.to_bits() & 0x7fff_ffff))
}

/// True if every value is finite: [`max_abs_bits`] block by block, stopping at the first
/// block with a bad value, many times faster than looking for the first bad value itself.
pub(crate) fn all_finite(values: &[f32]) -> bool {
    values
        .chunks(4096)
        .all(|block| max_abs_bits(block) < f32::INFINITY.to_bits())
}

/// The layout of any burn module's float parameters, in the order burn visits them: names
/// are module paths (`conv.weight`, `head.bias`), shapes as burn stores them. With
/// [`crate::module_params`] and [`crate::load_module`], this is what a team's own model needs
/// to be federated: the coordinator is given this layout (as a safetensors file), the
/// clients' trainer moves the module to and from the flat vector.
pub fn module_layout<M: Module>(module: &M) -> Manifest {
    let mut collector = LayoutCollector::default();
    module.visit(&mut collector);
    Manifest {
        entries: collector.entries,
    }
}

impl ModelSpec {
    /// The flat parameter layout of this model.
    pub fn manifest(&self) -> Result<Manifest> {
        Ok(Manifest::of(&Net::build(self, &inference_device())?))
    }

    /// Number of parameters of this model.
    pub fn num_params(&self) -> Result<usize> {
        Ok(self.manifest()?.total())
    }
}

/// Tracks the module path during a visit or map, skipping enum variant names.
#[derive(Debug, Default)]
pub(crate) struct PathTracker {
    parts: Vec<Option<String>>,
}

impl PathTracker {
    /// Called from `enter_module`.
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        let visible = !container_type.starts_with("Enum:");
        self.parts.push(visible.then(|| name.to_string()));
    }

    /// Called from `exit_module`.
    pub(crate) fn exit(&mut self) {
        self.parts.pop();
    }

    /// The dotted path of the current position.
    pub(crate) fn path(&self) -> String {
        let parts: Vec<&str> = self.parts.iter().flatten().map(String::as_str).collect();
        parts.join(".")
    }
}

/// Records name and shape of every float parameter without initialising it.
#[derive(Default)]
struct LayoutCollector {
    path: PathTracker,
    entries: Vec<ParamEntry>,
    offset: usize,
}

impl ModuleVisitor for LayoutCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.lazy_shape().to_vec();
        let len = shape.iter().product();
        self.entries.push(ParamEntry {
            name: self.path.path(),
            shape,
            offset: self.offset,
            len,
        });
        self.offset += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ModelKind;
    use crate::test_util::{cnn_spec, digits_spec, mlp_spec};

    fn layout(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
        let manifest = spec.manifest().unwrap();
        manifest
            .entries
            .into_iter()
            .map(|e| (e.name, e.shape))
            .collect()
    }

    #[test]
    fn totals_match_the_architectures() {
        assert_eq!(mlp_spec().num_params().unwrap(), 9_610);
        assert_eq!(digits_spec(ModelKind::LogReg).num_params().unwrap(), 650);
        let deep = digits_spec(ModelKind::Mlp {
            hidden: vec![256, 128],
        });
        assert_eq!(
            deep.num_params().unwrap(),
            64 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
        );
        // McMahan et al. 2017 CNN: 832 + 51,264 + 1,606,144 + 5,130.
        assert_eq!(cnn_spec().num_params().unwrap(), 1_663_370);
        for spec in [mlp_spec(), deep, cnn_spec(), digits_spec(ModelKind::LogReg)] {
            assert_eq!(
                spec.num_params().unwrap(),
                spec.analytic_param_count().unwrap()
            );
        }
    }

    #[test]
    fn entries_are_named_contiguous_and_in_visit_order() {
        let expected = [
            ("layers.0.weight", vec![64, 128]),
            ("layers.0.bias", vec![128]),
            ("layers.1.weight", vec![128, 10]),
            ("layers.1.bias", vec![10]),
        ];
        let got = layout(&mlp_spec());
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        assert_eq!(got, expected);

        let names: Vec<String> = layout(&cnn_spec()).into_iter().map(|(n, _)| n).collect();
        let cnn_names = [
            "conv1.weight",
            "conv1.bias",
            "conv2.weight",
            "conv2.bias",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
        ];
        assert_eq!(names, cnn_names);
        let manifest = cnn_spec().manifest().unwrap();
        assert_eq!(
            manifest.entry("conv2.weight").unwrap().shape,
            vec![64, 32, 5, 5]
        );
        assert_eq!(manifest.entry("fc1.weight").unwrap().shape, vec![3136, 512]);

        let mut offset = 0;
        for entry in &manifest.entries {
            assert_eq!(entry.offset, offset);
            assert_eq!(entry.len, entry.shape.iter().product::<usize>());
            offset += entry.len;
        }
        assert_eq!(offset, manifest.total());
    }

    #[test]
    fn manifests_serialise() {
        let manifest = mlp_spec().manifest().unwrap();
        let json = serde_json::to_string(&manifest).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
    }

    #[test]
    fn all_finite_finds_any_bad_value_in_any_block() {
        let mut values = vec![1.0f32; 10_000];
        assert!(all_finite(&values));
        assert!(all_finite(&[]));
        for fine in [f32::MAX, f32::MIN, -0.0, f32::MIN_POSITIVE / 2.0] {
            values[9_999] = fine;
            assert!(all_finite(&values), "{fine}");
        }
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
            for at in [0, 4_095, 4_096, 9_999] {
                let mut values = vec![1.0f32; 10_000];
                values[at] = bad;
                assert!(!all_finite(&values), "{bad} at {at}");
            }
        }
    }

    #[test]
    fn check_params_refuses_wrong_lengths_and_non_finite_values() {
        let manifest = digits_spec(ModelKind::LogReg).manifest().unwrap();
        let mut params = vec![0.0; 650];
        assert!(manifest.check_params(&params).is_ok());
        assert!(matches!(
            manifest.check_params(&params[..649]),
            Err(ModelError::ParamLength {
                expected: 650,
                got: 649
            })
        ));
        params[17] = f32::INFINITY;
        assert!(matches!(
            manifest.check_params(&params),
            Err(ModelError::NonFiniteParams { index: 17 })
        ));
    }
}
