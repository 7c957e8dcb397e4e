//! Federated evaluation: the round's clients score the new model on examples they hold out
//! (and never train on), and the coordinator reports their example-weighted means. The test
//! rebuilds every client's held-out split itself and checks the reported accuracy is exactly
//! central evaluation on their union.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{one_process_run, read_model, start_coordinator, summary};
use common::{Running, arg, finish, shoal_with};
use shoal_client::holdout_len;
use shoal_coordinator::EvalMode;
use shoal_datasets::{Dataset, DatasetSource, Partition, load, partition};
use shoal_models::{ModelKind, ModelSpec, evaluate};
use std::time::Duration;

/// The union of the held-out examples of `clients` IID clients of digits (seed 0), as a
/// client holding out `fraction` keeps them: the last ones of its partition.
fn held_out_union(clients: usize, fraction: f64) -> (Dataset, Dataset) {
    let split = load(&DatasetSource::Digits, 0.2, 0).unwrap();
    let parts = partition(
        &split.train.labels,
        split.train.num_classes,
        clients,
        &Partition::Iid,
        0,
    )
    .unwrap();
    let mut union = Vec::new();
    for part in parts {
        let held = holdout_len(part.len(), fraction);
        union.extend_from_slice(&part[part.len() - held..]);
    }
    (split.train.subset(&union).unwrap(), split.test)
}

#[test]
fn federated_accuracy_is_central_accuracy_on_the_union_of_held_out_splits() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    let out = dir.path().join("summary.json");
    let csv = dir.path().join("metrics.csv");
    finish(&mut shoal_with(&[
        "run",
        "--quiet",
        "--rounds",
        "4",
        "--eval",
        "both",
        "--eval-holdout",
        "0.25",
        "--summary-out",
        arg(&out),
        "--metrics-out",
        arg(&csv),
        "--model-out",
        arg(&model),
    ]))
    .assert_success();
    let (_, params) = read_model(&model);
    let (held, test) = held_out_union(10, 0.25);
    let spec = ModelSpec::for_dataset(ModelKind::Mlp { hidden: vec![128] }, &held);
    let union = evaluate(&spec, &params, &held).unwrap();
    let central = evaluate(&spec, &params, &test).unwrap();

    let text = std::fs::read_to_string(&csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = text.lines().last().unwrap().split(',').collect();
    let cell = |name: &str| -> f64 {
        last[header.iter().position(|h| *h == name).unwrap()]
            .parse()
            .unwrap()
    };
    // The CSV keeps 6 decimals; the summary keeps the exact value.
    assert!((cell("fed_accuracy") - union.accuracy).abs() < 1e-6);
    assert!((cell("fed_loss") - union.loss).abs() < 1e-6);
    let s = summary(&out);
    assert_eq!(s["final_accuracy"].as_f64().unwrap(), central.accuracy);
    assert_ne!(
        union.accuracy, central.accuracy,
        "two different sets score alike"
    );
}

#[test]
fn federated_only_reports_the_clients_scores_as_the_runs_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    let out = dir.path().join("summary.json");
    finish(&mut shoal_with(&[
        "run",
        "--quiet",
        "--rounds",
        "3",
        "--eval",
        "federated",
        "--summary-out",
        arg(&out),
        "--model-out",
        arg(&model),
    ]))
    .assert_success();
    let (_, params) = read_model(&model);
    let (held, _) = held_out_union(10, 0.2);
    let spec = ModelSpec::for_dataset(ModelKind::Mlp { hidden: vec![128] }, &held);
    let union = evaluate(&spec, &params, &held).unwrap();
    let reported = summary(&out)["final_accuracy"].as_f64().unwrap();
    // Weighted mean of per-client accuracies: equal to the union's up to rounding.
    assert!(
        (reported - union.accuracy).abs() < 1e-12,
        "{reported} vs {}",
        union.accuracy
    );
}

#[test]
fn a_coordinator_with_no_data_runs_on_the_clients_scores() {
    let dir = tempfile::tempdir().unwrap();
    let reference = one_process_run(
        dir.path(),
        "run.json",
        &["--rounds", "3", "--eval", "federated"],
    );
    // The coordinator knows only the examples' shape: it evaluates on the clients by default.
    let out = dir.path().join("summary.json");
    let model = dir.path().join("model.safetensors");
    let (coordinator, url) = start_coordinator(&[
        "--dataset",
        "shape:64,10",
        "--rounds",
        "3",
        "--quiet",
        "--summary-out",
        arg(&out),
        "--model-out",
        arg(&model),
    ]);
    let fleet = Running::spawn(&mut shoal_with(&["simulate", "--coordinator", &url]));
    let done = coordinator.finish(Duration::from_secs(120));
    done.assert_success();
    assert!(
        done.stdout.contains("final federated accuracy"),
        "{}",
        done.stdout
    );
    fleet.finish(Duration::from_secs(60)).assert_success();
    let s = summary(&out);
    // Same seed, same model and clients: the data the coordinator lacks changed nothing.
    assert_eq!(s["model_sha256"], reference["model_sha256"]);
    let (_, params) = read_model(&model);
    let (held, _) = held_out_union(10, EvalMode::HOLDOUT);
    let spec = ModelSpec::for_dataset(ModelKind::Mlp { hidden: vec![128] }, &held);
    let union = evaluate(&spec, &params, &held).unwrap();
    let reported = s["final_accuracy"].as_f64().unwrap();
    assert!(
        (reported - union.accuracy).abs() < 1e-12,
        "{reported} vs {}",
        union.accuracy
    );
}

#[test]
fn federated_evaluation_goes_on_without_clients_that_drop_out() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("metrics.csv");
    let mut coordinator = Running::spawn(&mut shoal_with(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--rounds",
        "4",
        "--clients",
        "8",
        "--eval",
        "federated",
        "--round-timeout",
        "2",
        "--metrics-out",
        arg(&csv),
        "--quiet",
    ]));
    let line = coordinator.wait_for_stderr("listening on", Duration::from_secs(60));
    let url = format!("http://{}", line.split_whitespace().nth(3).unwrap());
    let fleet = Running::spawn(&mut shoal_with(&[
        "simulate",
        "--coordinator",
        &url,
        "--clients",
        "8",
        "--dropout",
        "0.3",
        "--seed",
        "3",
    ]));
    let done = coordinator.finish(Duration::from_secs(120));
    done.assert_success();
    fleet.finish(Duration::from_secs(60));
    let text = std::fs::read_to_string(&csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for row in text.lines().skip(1) {
        let cells: Vec<&str> = row.split(',').collect();
        let accuracy: f64 = cells[col("accuracy")].parse().unwrap();
        assert!(accuracy > 0.0 && accuracy <= 1.0, "{row}");
        // With federated scores only, they are the run's: no fed_ columns.
        assert!(cells[col("fed_accuracy")].is_empty(), "{row}");
    }
    assert_eq!(text.lines().count(), 5, "{text}");
    // Each round's evaluation stage: how many answered of those asked.
    let stages: Vec<(usize, usize)> = done
        .stderr
        .lines()
        .filter(|l| l.contains("round evaluated on clients"))
        .map(|l| {
            let field = |name: &str| -> usize {
                let at = l.find(&format!(" {name}=")).unwrap() + name.len() + 2;
                l[at..].split_whitespace().next().unwrap().parse().unwrap()
            };
            (field("clients"), field("asked"))
        })
        .collect();
    assert_eq!(stages.len(), 4, "{}", done.stderr);
    for &(answered, asked) in &stages {
        assert!(answered >= 1 && answered <= asked, "{stages:?}");
    }
    assert!(
        stages.iter().any(|(answered, asked)| answered < asked),
        "no evaluation lost a client to dropout: {stages:?}"
    );
}
