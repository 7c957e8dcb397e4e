//! A team's own burn model, federated: a 1-D convolutional net that is not in Shoal's zoo,
//! classifying synthetic signals (three frequencies, random phase, noise). The clients run it
//! through a [`LocalTrainer`] written here on burn (autodiff, cross-entropy, SGD); the
//! coordinator has no code for it (`model = "external"`) and knows it only by its layout and
//! starting point, as `shoal coordinator --model external --init FILE` would. Clients score
//! each round on data they hold out (federated evaluation). At the end the trained model is
//! exported as safetensors, loaded back into a fresh burn module, and must predict exactly
//! what the trained parameters predict.
//!
//! `cargo run --release -p shoal-client --example burn_signals`; the tests run it.

#[path = "shared/federate.rs"]
mod federate;

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand::seq::SliceRandom;
use shoal_client::{ClientError, LocalTrainer};
use shoal_coordinator::RunConfig;
use shoal_datasets::Dataset;
use shoal_datasets::rng::rng_for;
use shoal_models::{
    EvalReport, GradReport, TrainConfig, TrainReport, from_safetensors, load_module, module_layout,
    module_params, sgd_step, to_safetensors,
};
use shoal_proto::v1::ModelSpec as TaskModel;
use std::f32::consts::PI;
use std::sync::Arc;

/// Samples per signal, filters, classes.
const LENGTH: usize = 32;
const FILTERS: usize = 6;
const WIDTH: usize = 5;
const CLASSES: usize = 3;

/// conv1d(1→6, width 5) → relu → linear(6·28 → 3).
#[derive(Module, Debug)]
pub struct SignalNet {
    conv: Conv1d,
    head: Linear,
}

impl SignalNet {
    /// The module's structure on `device`; its values come from a flat vector.
    pub fn new(device: &Device) -> Self {
        Self {
            conv: Conv1dConfig::new(1, FILTERS, WIDTH).init(device),
            head: LinearConfig::new(FILTERS * (LENGTH - WIDTH + 1), CLASSES).init(device),
        }
    }

    /// Class logits `[batch, classes]` of signals `[batch, LENGTH]`.
    pub fn forward(&self, signals: Tensor<2>) -> Tensor<2> {
        let [batch, length] = signals.dims();
        let y = relu(self.conv.forward(signals.reshape([batch, 1, length])));
        let [batch, channels, length] = y.dims();
        self.head.forward(y.reshape([batch, channels * length]))
    }
}

fn cpu() -> Device {
    Device::flex()
}

/// Rows `idx` of `data` as a `[n, LENGTH]` tensor and their labels.
fn batch(data: &Dataset, idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<2, Int>, Vec<u32>) {
    let rows: Vec<f32> = idx.iter().flat_map(|&i| data.row(i).to_vec()).collect();
    let labels: Vec<u32> = idx.iter().map(|&i| data.labels[i]).collect();
    let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    (
        Tensor::from_data(
            TensorData::new(rows, [idx.len(), data.num_features]),
            device,
        ),
        Tensor::from_data(TensorData::new(targets, [idx.len(), 1]), device),
        labels,
    )
}

/// Predicted classes and summed cross-entropy of a batch's logits.
fn score(logits: Tensor<2>, targets: Tensor<2, Int>) -> Result<(Vec<usize>, f64), ClientError> {
    let log_p = log_softmax(logits, 1);
    let loss = f64::from(
        log_p
            .clone()
            .gather(1, targets)
            .sum()
            .neg()
            .into_scalar::<f32>(),
    );
    let values = log_p
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| ClientError::BadTask(format!("{e:?}")))?;
    let predicted = values
        .chunks(CLASSES)
        .map(|row| (0..CLASSES).fold(0, |b, k| if row[k] > row[b] { k } else { b }))
        .collect();
    Ok((predicted, loss))
}

/// The clients' model code for [`SignalNet`].
#[derive(Debug)]
pub struct SignalTrainer;

impl SignalTrainer {
    /// The classes `params` predicts for every example of `data`.
    pub fn predict(params: &[f32], data: &Dataset) -> Result<Vec<usize>, ClientError> {
        let device = cpu();
        let net = load_module(SignalNet::new(&device), params, &device)?;
        let all: Vec<usize> = (0..data.len()).collect();
        let (signals, targets, _) = batch(data, &all, &device);
        Ok(score(net.forward(signals), targets)?.0)
    }
}

impl LocalTrainer for SignalTrainer {
    fn fit(
        &self,
        _model: &TaskModel,
        global: &[f32],
        data: &Dataset,
        config: &TrainConfig,
    ) -> shoal_client::Result<(Vec<f32>, TrainReport)> {
        let device = cpu().autodiff();
        let mut net = load_module(SignalNet::new(&device), global, &device)?;
        let (mut loss, mut correct, mut steps) = (0.0, 0, 0);
        for epoch in 0..config.epochs {
            let mut order: Vec<usize> = (0..data.len()).collect();
            order.shuffle(&mut rng_for(config.seed, &[epoch as u64]));
            (loss, correct) = (0.0, 0);
            for idx in order.chunks(config.batch_size.max(1)) {
                let (signals, targets, labels) = batch(data, idx, &device);
                let logits = net.forward(signals);
                let mean = log_softmax(logits.clone(), 1)
                    .gather(1, targets.clone())
                    .mean()
                    .neg();
                let (predicted, summed) = score(logits.inner(), targets.inner())?;
                loss += summed;
                correct += predicted
                    .iter()
                    .zip(&labels)
                    .filter(|(p, l)| **p == **l as usize)
                    .count();
                net = sgd_step(net, mean.backward(), config.lr);
                steps += 1;
            }
        }
        let n = data.len().max(1) as f64;
        let report = TrainReport {
            loss: loss / n,
            accuracy: correct as f64 / n,
            examples: data.len(),
            steps,
        };
        Ok((module_params(&net)?, report))
    }

    fn gradient(
        &self,
        _model: &TaskModel,
        _global: &[f32],
        _data: &Dataset,
        _batches: usize,
        _batch_size: usize,
        _seed: u64,
    ) -> shoal_client::Result<(Vec<f32>, GradReport)> {
        Err(ClientError::BadTask(
            "this example trains with FedAvg only".into(),
        ))
    }

    fn evaluate(
        &self,
        _model: &TaskModel,
        global: &[f32],
        data: &Dataset,
    ) -> shoal_client::Result<EvalReport> {
        let device = cpu();
        let net = load_module(SignalNet::new(&device), global, &device)?;
        let all: Vec<usize> = (0..data.len()).collect();
        let (signals, targets, labels) = batch(data, &all, &device);
        let (predicted, loss) = score(net.forward(signals), targets)?;
        let correct = predicted
            .iter()
            .zip(&labels)
            .filter(|(p, l)| **p == **l as usize)
            .count();
        let n = data.len().max(1) as f64;
        Ok(EvalReport {
            loss: loss / n,
            accuracy: correct as f64 / n,
            examples: data.len(),
        })
    }
}

/// `n` seeded signals: class k is a sine of frequency k + 1 cycles per window, random phase
/// and amplitude, plus noise.
fn signals(n: usize, seed: u64) -> Result<Dataset, shoal_datasets::DatasetError> {
    let mut rng = rng_for(seed, &[0x5167]);
    let mut features = Vec::with_capacity(n * LENGTH);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % CLASSES;
        let phase = rng.random::<f32>() * 2.0 * PI;
        let amplitude = 0.5 + rng.random::<f32>();
        for t in 0..LENGTH {
            let x = (class + 1) as f32 * 2.0 * PI * t as f32 / LENGTH as f32;
            features.push(amplitude * (x + phase).sin() + 0.3 * (rng.random::<f32>() - 0.5));
        }
        labels.push(class as u32);
    }
    Dataset::new(features, labels, LENGTH, CLASSES, None)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let train = signals(960, 1)?;
    let test = signals(300, 2)?;
    let clients = federate::clients_of(&train, 8)?;

    // The starting point handed to the coordinator: the module's layout with seeded values
    // (burn's own initialisation is not seeded), as a safetensors file would carry them.
    let device = cpu();
    let layout = module_layout(&SignalNet::new(&device));
    let mut rng = rng_for(7, &[0x1417]);
    let init: Vec<f32> = layout
        .entries
        .iter()
        .flat_map(|e| {
            let fan_in = if e.shape.len() == 3 {
                e.shape[1] * e.shape[2]
            } else {
                e.shape[0]
            };
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            (0..e.len)
                .map(|_| bound * (2.0 * rng.random::<f32>() - 1.0))
                .collect::<Vec<_>>()
        })
        .collect();
    let init_file = to_safetensors(&layout, &init, &Default::default())?;

    let mut config = RunConfig {
        rounds: 12,
        dataset: "signals".into(),
        ..RunConfig::default()
    };
    config.fit.epochs = 2;
    config.fit.batch_size = 16;
    config.fit.lr = 0.1;
    let init = from_safetensors(&init_file, &layout)?;
    let outcome = federate::federate(config, init, Arc::new(SignalTrainer), clients).await?;

    // Out as safetensors, back into a fresh burn module: the same predictions.
    let file = to_safetensors(&layout, &outcome.global, &Default::default())?;
    let reloaded = load_module(
        SignalNet::new(&device),
        &from_safetensors(&file, &layout)?,
        &device,
    )?;
    let back = module_params(&reloaded)?;
    let expected = SignalTrainer::predict(&outcome.global, &test)?;
    let predicted = SignalTrainer::predict(&back, &test)?;
    let correct = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| **p == **l as usize)
        .count();
    println!(
        "reloaded burn module: same predictions {} test accuracy {:.4}",
        predicted == expected,
        correct as f64 / test.len() as f64
    );
    Ok(())
}
