//! A burn module that is not in Shoal's zoo — a 1-D convolution over signals and a linear
//! head — moves to and from the flat vector Shoal federates with `module_layout`,
//! `module_params` and `load_module`, and leaves as safetensors: what a team's own trainer
//! (see `shoal_client::LocalTrainer`) needs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use shoal_models::{from_safetensors, load_module, module_layout, module_params, to_safetensors};

/// Signals of 16 samples: 4 filters of width 3, then 3 classes.
#[derive(Module, Debug)]
struct SignalNet {
    conv: Conv1d,
    head: Linear,
}

impl SignalNet {
    fn new(device: &Device) -> Self {
        Self {
            conv: Conv1dConfig::new(1, 4, 3).init(device),
            head: LinearConfig::new(4 * 14, 3).init(device),
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let y = relu(self.conv.forward(x));
        let [batch, channels, length] = y.dims();
        self.head.forward(y.reshape([batch, channels * length]))
    }
}

fn device() -> Device {
    Device::flex()
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn a_module_outside_the_zoo_round_trips_through_the_flat_vector_and_safetensors() {
    let device = device();
    let trained = SignalNet::new(&device);
    let layout = module_layout(&trained);
    let named: Vec<(&str, Vec<usize>)> = layout
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.shape.clone()))
        .collect();
    assert_eq!(
        named,
        [
            ("conv.weight", vec![4, 1, 3]),
            ("conv.bias", vec![4]),
            ("head.weight", vec![56, 3]),
            ("head.bias", vec![3]),
        ]
    );
    let params = module_params(&trained).unwrap();
    assert_eq!(params.len(), layout.total());

    // A freshly initialised module (other random weights) loaded with the vector is the
    // trained one: same parameters bit for bit, same outputs.
    let fresh = SignalNet::new(&device);
    assert_ne!(module_params(&fresh).unwrap(), params);
    let loaded = load_module(fresh, &params, &device).unwrap();
    assert_eq!(module_params(&loaded).unwrap(), params);
    let signal: Vec<f32> = (0..32).map(|i| (i as f32 * 0.7).sin()).collect();
    let input = || Tensor::<3>::from_data(TensorData::new(signal.clone(), [2, 1, 16]), &device);
    assert_eq!(
        values(loaded.forward(input())),
        values(trained.forward(input()))
    );

    // As a file: the layout's names and shapes, the same values back.
    let bytes = to_safetensors(&layout, &params, &Default::default()).unwrap();
    assert_eq!(from_safetensors(&bytes, &layout).unwrap(), params);

    // A vector of another length is refused.
    assert!(load_module(SignalNet::new(&device), &params[1..], &device).is_err());
}
