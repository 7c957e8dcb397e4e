//! The flat parameter layout: which slice of a parameter vector belongs to which tensor.
//!
//! The order is the order in which burn's [`ModuleVisitor`] walks the model, so flattening,
//! loading and gradients all agree on it. Names are module paths such as `layers.0.weight`
//! or `conv1.bias`; burn stores a linear weight as `[d_input, d_output]` and a convolution
//! weight as `[out_channels, in_channels, kh, kw]`, both row-major.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::net::{Net, inference_device};
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

    /// Checks that `params` has exactly [`Manifest::total`] values, all finite.
    pub fn check_params(&self, params: &[f32]) -> Result<()> {
        if params.len() != self.total() {
            return Err(ModelError::ParamLength {
                expected: self.total(),
                got: params.len(),
            });
        }
        match params.iter().position(|v| !v.is_finite()) {
            Some(index) => Err(ModelError::NonFiniteParams { index }),
            None => Ok(()),
        }
    }

    /// The manifest of an already built model.
    pub(crate) fn of(net: &Net) -> Manifest {
        let mut collector = LayoutCollector::default();
        net.visit(&mut collector);
        Manifest {
            entries: collector.entries,
        }
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
