//! Bring your own model code: a client whose [`LocalTrainer`] is written here, in plain Rust
//! (softmax regression with its own gradient and SGD loop, no burn), trains federatedly over
//! gRPC against a real coordinator that has no code for it (`model = "external"`): the
//! coordinator knows the model only by its layout and starting point — two tensors,
//! `softmax.weight [features, classes]` and `softmax.bias [classes]`, as a safetensors file
//! would give them to `shoal coordinator --model external --init FILE` — and the clients
//! score each round's model on examples they hold out (federated evaluation). At the end the
//! trained model is exported as safetensors, read back and scored on the test split.
//!
//! `cargo run --release -p shoal-client --example own_trainer` prints one line per round and
//! the final accuracies; the tests run it and hold it to a bar.

#[path = "shared/federate.rs"]
mod federate;

use shoal_client::{ClientError, LocalTrainer};
use shoal_coordinator::RunConfig;
use shoal_coordinator::store::metrics::sha256_f32;
use shoal_datasets::rng::rng_for;
use shoal_datasets::{Dataset, DatasetSource, load};
use shoal_models::{
    EvalReport, GradReport, Manifest, ParamEntry, TrainConfig, TrainReport, from_safetensors,
    read_safetensors, to_safetensors,
};
use shoal_proto::v1::ModelSpec as TaskModel;
use std::sync::Arc;

/// Softmax regression on flat parameters laid out as `[W (features × classes), b (classes)]`.
#[derive(Debug)]
pub struct SoftmaxRegression;

impl SoftmaxRegression {
    fn shape(model: &TaskModel, global: &[f32]) -> Result<(usize, usize), ClientError> {
        let (f, c) = (model.num_features as usize, model.num_classes as usize);
        if global.len() != f * c + c {
            return Err(ClientError::BadTask(format!(
                "softmax regression for {f} features and {c} classes has {} parameters, got {}",
                f * c + c,
                global.len()
            )));
        }
        Ok((f, c))
    }

    /// Class probabilities of example `x`.
    fn probabilities(w: &[f32], f: usize, c: usize, x: &[f32]) -> Vec<f64> {
        let mut logits: Vec<f64> = (0..c).map(|k| f64::from(w[f * c + k])).collect();
        for (i, &xi) in x.iter().enumerate() {
            for (k, logit) in logits.iter_mut().enumerate() {
                *logit += f64::from(xi) * f64::from(w[i * c + k]);
            }
        }
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        exp.into_iter().map(|e| e / sum).collect()
    }

    /// Adds the gradient of example `i`'s cross-entropy to `grad`; returns its loss and
    /// whether it was classified right.
    fn accumulate(
        w: &[f32],
        f: usize,
        c: usize,
        data: &Dataset,
        i: usize,
        grad: &mut [f64],
    ) -> (f64, bool) {
        let x = data.row(i);
        let y = data.labels[i] as usize;
        let p = Self::probabilities(w, f, c, x);
        for k in 0..c {
            let delta = p[k] - f64::from(u8::from(k == y));
            for (j, &xj) in x.iter().enumerate() {
                grad[j * c + k] += delta * f64::from(xj);
            }
            grad[f * c + k] += delta;
        }
        let best = (0..c).fold(0, |b, k| if p[k] > p[b] { k } else { b });
        (-p[y].max(1e-12).ln(), best == y)
    }
}

impl LocalTrainer for SoftmaxRegression {
    fn fit(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
        config: &TrainConfig,
    ) -> shoal_client::Result<(Vec<f32>, TrainReport)> {
        let (f, c) = Self::shape(model, global)?;
        let mut w = global.to_vec();
        let (mut loss, mut correct, mut steps) = (0.0, 0, 0);
        for epoch in 0..config.epochs {
            let mut order: Vec<usize> = (0..data.len()).collect();
            rand::seq::SliceRandom::shuffle(
                &mut order[..],
                &mut rng_for(config.seed, &[epoch as u64]),
            );
            (loss, correct) = (0.0, 0);
            for batch in order.chunks(config.batch_size.max(1)) {
                let mut grad = vec![0.0; w.len()];
                for &i in batch {
                    let (l, right) = Self::accumulate(&w, f, c, data, i, &mut grad);
                    loss += l;
                    correct += usize::from(right);
                }
                for (wi, g) in w.iter_mut().zip(&grad) {
                    *wi -= (config.lr * g / batch.len() as f64) as f32;
                }
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
        Ok((w, report))
    }

    fn gradient(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
        _batches: usize,
        _batch_size: usize,
        _seed: u64,
    ) -> shoal_client::Result<(Vec<f32>, GradReport)> {
        // Always the exact full-data gradient: a valid answer to any mini-batch request.
        let (f, c) = Self::shape(model, global)?;
        let mut grad = vec![0.0; global.len()];
        let mut loss = 0.0;
        for i in 0..data.len() {
            loss += Self::accumulate(global, f, c, data, i, &mut grad).0;
        }
        let n = data.len().max(1) as f64;
        let report = GradReport {
            loss: loss / n,
            examples: data.len(),
        };
        Ok((grad.iter().map(|g| (g / n) as f32).collect(), report))
    }

    fn evaluate(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
    ) -> shoal_client::Result<EvalReport> {
        let (f, c) = Self::shape(model, global)?;
        let mut sink = vec![0.0; global.len()];
        let (mut loss, mut correct) = (0.0, 0);
        for i in 0..data.len() {
            let (l, right) = Self::accumulate(global, f, c, data, i, &mut sink);
            loss += l;
            correct += usize::from(right);
        }
        let n = data.len().max(1) as f64;
        Ok(EvalReport {
            loss: loss / n,
            accuracy: correct as f64 / n,
            examples: data.len(),
        })
    }
}

/// The example model's layout: what the coordinator is told instead of its code.
fn layout(features: usize, classes: usize) -> Manifest {
    let weight = features * classes;
    Manifest {
        entries: vec![
            ParamEntry {
                name: "softmax.weight".into(),
                shape: vec![features, classes],
                offset: 0,
                len: weight,
            },
            ParamEntry {
                name: "softmax.bias".into(),
                shape: vec![classes],
                offset: weight,
                len: classes,
            },
        ],
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let split = load(&DatasetSource::Digits, 0.2, 0)?;
    let clients = federate::clients_of(&split.train, 8)?;
    let (features, classes) = (split.train.num_features, split.train.num_classes);
    let layout = layout(features, classes);
    // The starting point a team would hand over as `--init FILE`: all zeros here.
    let init = vec![0.0f32; layout.total()];
    let init_file = to_safetensors(&layout, &init, &Default::default())?;
    let (announced, init) = read_safetensors(&init_file)?;

    let mut config = RunConfig {
        rounds: 15,
        ..RunConfig::default()
    };
    config.fit.lr = 0.5;
    let outcome = federate::federate(config, init, Arc::new(SoftmaxRegression), clients).await?;

    // The trained model leaves as safetensors and comes back in, checked against the layout.
    let path = std::env::temp_dir().join(format!("own-trainer-{}.safetensors", std::process::id()));
    std::fs::write(
        &path,
        to_safetensors(&announced, &outcome.global, &Default::default())?,
    )?;
    let reloaded = from_safetensors(&std::fs::read(&path)?, &announced)?;
    std::fs::remove_file(&path)?;
    let model = TaskModel {
        kind: "external".into(),
        num_features: features as u32,
        num_classes: classes as u32,
        image_rows: 0,
        image_cols: 0,
    };
    let test = SoftmaxRegression.evaluate(&model, &reloaded, &split.test)?;
    println!(
        "reloaded model: sha256 {} test accuracy {:.4}",
        sha256_f32(&reloaded),
        test.accuracy
    );
    println!("summary model sha256 {}", outcome.summary.model_sha256);
    Ok(())
}
