//! Fixtures shared by the unit tests.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor};
use shoal_datasets::{Dataset, digits, train_test_split};

use crate::device::tensor_values;
use crate::spec::{ModelKind, ModelSpec};

/// The digits dataset (1797 x 64, 10 classes).
pub(crate) fn digits_data() -> Dataset {
    digits().expect("embedded digits load")
}

/// The first `n` digits examples.
pub(crate) fn digits_head(n: usize) -> Dataset {
    let idx: Vec<usize> = (0..n).collect();
    digits_data().subset(&idx).expect("subset")
}

/// A seeded 75/25 split of digits.
pub(crate) fn digits_split() -> (Dataset, Dataset) {
    let split = train_test_split(&digits_data(), 0.25, 7).expect("split");
    (split.train, split.test)
}

/// A spec of `kind` for 8x8 digits.
pub(crate) fn digits_spec(kind: ModelKind) -> ModelSpec {
    ModelSpec {
        kind,
        num_features: 64,
        num_classes: 10,
        image_shape: Some((8, 8)),
    }
}

/// MLP 64-128-10 for digits.
pub(crate) fn mlp_spec() -> ModelSpec {
    digits_spec(ModelKind::Mlp { hidden: vec![128] })
}

/// The McMahan CNN for 28x28 images.
pub(crate) fn cnn_spec() -> ModelSpec {
    ModelSpec {
        kind: ModelKind::Cnn,
        num_features: 784,
        num_classes: 10,
        image_shape: Some((28, 28)),
    }
}

/// `n` synthetic 28x28 images with labels cycling over 10 classes.
pub(crate) fn tiny_images(n: usize) -> Dataset {
    let features = (0..n * 784)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    let labels = (0..n).map(|i| (i % 10) as u32).collect();
    Dataset::new(features, labels, 784, 10, Some((28, 28))).expect("images")
}

/// Each float parameter's gradient in `grads`, in manifest order (empty for a parameter
/// without one).
pub(crate) fn param_grads<M: Module>(net: &M, grads: &Gradients) -> Vec<Vec<f32>> {
    struct Collect<'a>(&'a Gradients, Vec<Vec<f32>>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let grad = param
                .val()
                .grad(self.0)
                .map(|g| tensor_values(g).expect("values"));
            self.1.push(grad.unwrap_or_default());
        }
    }
    let mut collect = Collect(grads, Vec::new());
    net.visit(&mut collect);
    collect.1
}
