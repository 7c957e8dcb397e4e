//! A team's own model code behind [`LocalTrainer`]: the worked example in
//! `examples/own_trainer.rs` (softmax regression written by hand, no burn) agrees with the
//! built-in model of the same flat layout, and trains federatedly over gRPC against a
//! coordinator that knows it only by its layout (`external`) to a stated accuracy, then
//! leaves as safetensors and comes back bit for bit.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

#[path = "../examples/own_trainer.rs"]
mod example;

use example::SoftmaxRegression;
use shoal_client::{BuiltinTrainer, LocalTrainer};
use shoal_datasets::{DatasetSource, load};
use shoal_models::{ModelKind, ModelSpec, init_params};
use shoal_proto::v1::ModelSpec as TaskModel;

#[test]
fn the_hand_written_model_means_what_the_built_in_one_means() {
    let split = load(&DatasetSource::Digits, 0.2, 0).unwrap();
    let spec = ModelSpec::for_dataset(ModelKind::LogReg, &split.train);
    let model = TaskModel {
        kind: "logreg".into(),
        num_features: spec.num_features as u32,
        num_classes: spec.num_classes as u32,
        image_rows: 0,
        image_cols: 0,
    };
    let params = init_params(&spec, 11).unwrap();
    let data = split.test;
    let (ours, our_report) = SoftmaxRegression
        .gradient(&model, &params, &data, 0, 256, 0)
        .unwrap();
    let (theirs, their_report) = BuiltinTrainer::default()
        .gradient(&model, &params, &data, 0, 256, 0)
        .unwrap();
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "gradients differ by {worst}");
    assert!((our_report.loss - their_report.loss).abs() < 1e-5);
    let ours = SoftmaxRegression.evaluate(&model, &params, &data).unwrap();
    let theirs = BuiltinTrainer::default()
        .evaluate(&model, &params, &data)
        .unwrap();
    assert_eq!(ours.accuracy, theirs.accuracy);
    // A vector of the wrong length is refused, not indexed out of bounds.
    assert!(
        SoftmaxRegression
            .evaluate(&model, &params[1..], &data)
            .is_err()
    );
}

/// Runs example `name` (cargo builds examples with the tests) and returns what it printed.
fn run_example(name: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join(name))
        .unwrap();
    let out = std::process::Command::new(&example)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", example.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The value printed right after `prefix` in `text`.
fn after<'a>(text: &'a str, prefix: &str) -> &'a str {
    let line = text.lines().find(|l| l.contains(prefix)).unwrap();
    let at = line.find(prefix).unwrap() + prefix.len();
    line[at..].split_whitespace().next().unwrap()
}

#[test]
fn a_burn_model_outside_the_zoo_trains_over_grpc_and_reloads_into_burn() {
    let text = run_example("burn_signals");
    let rounds: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("round"))
        .map(|l| after(l, "federated accuracy ").parse().unwrap())
        .collect();
    assert_eq!(rounds.len(), 12, "{text}");
    assert!(rounds[0] < rounds[11], "it did not learn: {text}");
    assert_eq!(after(&text, "same predictions "), "true", "{text}");
    let test: f64 = after(&text, "test accuracy ").parse().unwrap();
    assert!(test >= 0.95, "{text}");
}

#[test]
fn the_example_trains_over_grpc_to_the_stated_accuracy() {
    let text = run_example("own_trainer");
    assert_eq!(text.lines().filter(|l| l.starts_with("round")).count(), 15);
    let federated: f64 = after(&text, "final federated accuracy ").parse().unwrap();
    assert!(federated >= 0.9, "{text}");
    // Exported, read back against its layout, scored on the test split the run never saw.
    let test: f64 = after(&text, "test accuracy ").parse().unwrap();
    assert!(test >= 0.94, "{text}");
    assert_eq!(
        after(&text, "reloaded model: sha256 "),
        after(&text, "summary model sha256 ")
    );
}
