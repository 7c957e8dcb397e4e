//! The trained model leaves Shoal: `--model-out` and `shoal checkpoint export` write
//! safetensors whose tensors reload into the burn model and predict exactly what the run
//! reported, and whose flat parameters hash to the summary's `model_sha256`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{self, read_model, sha};
use common::{arg, finish, shoal_with};
use shoal_coordinator::store::metrics::sha256_f32;
use shoal_datasets::{DatasetSource, load};
use shoal_models::{ModelKind, ModelSpec, evaluate};
use std::path::Path;

#[test]
fn the_final_model_reloads_and_predicts_what_the_run_reported() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    let summary = dir.path().join("summary.json");
    let ckpt = dir.path().join("ckpt");
    finish(&mut shoal_with(&[
        "run",
        "--quiet",
        "--rounds",
        "6",
        "--model",
        "mlp",
        "--checkpoint-dir",
        arg(&ckpt),
        "--summary-out",
        arg(&summary),
        "--model-out",
        arg(&model),
    ]))
    .assert_success();
    let (expected_sha, _) = sha(&summary);
    let json = runs::summary(&summary);
    let reported = json["final_accuracy"].as_f64().unwrap();

    let (layout, params) = read_model(&model);
    assert_eq!(sha256_f32(&params), expected_sha);
    let names: Vec<&str> = layout.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias"
        ]
    );
    // The run's own held-out split (default fraction 0.2, default seed 0), evaluated with
    // the model rebuilt from the file.
    let split = load(&DatasetSource::Digits, 0.2, 0).unwrap();
    let spec = ModelSpec::for_dataset(ModelKind::Mlp { hidden: vec![128] }, &split.train);
    assert_eq!(spec.manifest().unwrap(), layout);
    let report = evaluate(&spec, &params, &split.test).unwrap();
    assert_eq!(report.accuracy, reported);

    // The newest checkpoint exports the very same file; an older round another model.
    let newest = dir.path().join("newest.safetensors");
    finish(&mut shoal_with(&[
        "checkpoint",
        "export",
        arg(&ckpt),
        "--out",
        arg(&newest),
    ]))
    .assert_success();
    assert_eq!(
        std::fs::read(&newest).unwrap(),
        std::fs::read(&model).unwrap()
    );
    let older = dir.path().join("round5.safetensors");
    let out = finish(&mut shoal_with(&[
        "checkpoint",
        "export",
        arg(&ckpt),
        "--round",
        "5",
        "--out",
        arg(&older),
    ]));
    out.assert_success();
    assert!(out.stdout.contains("round 5 of run"), "{}", out.stdout);
    let (older_layout, older_params) = read_model(&older);
    assert_eq!(older_layout, layout);
    assert_ne!(sha256_f32(&older_params), expected_sha);

    // A round that was not kept: a clear error naming the rounds that were.
    let missing = finish(&mut shoal_with(&[
        "checkpoint",
        "export",
        arg(&ckpt),
        "--round",
        "1",
        "--out",
        arg(&dir.path().join("x.safetensors")),
    ]));
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        missing.stderr.contains("no usable checkpoint of round 1")
            && missing.stderr.contains("it holds rounds 6, 5"),
        "{}",
        missing.stderr
    );
}

#[test]
fn k_means_leaves_as_its_centroid_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("centroids.safetensors");
    let summary = dir.path().join("summary.json");
    finish(&mut shoal_with(&[
        "run",
        "--quiet",
        "--strategy",
        "fedkmeans",
        "--k",
        "12",
        "--summary-out",
        arg(&summary),
        "--model-out",
        arg(&model),
    ]))
    .assert_success();
    let (layout, params) = read_model(&model);
    assert_eq!(layout.entries.len(), 1);
    assert_eq!(layout.entries[0].name, "centroids");
    assert_eq!(layout.entries[0].shape, vec![12, 64]);
    assert_eq!(sha256_f32(&params), sha(&summary).0);
}

#[test]
fn a_model_file_that_cannot_be_written_stops_the_run_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no/such/dir/model.safetensors");
    let out = finish(&mut shoal_with(&[
        "run",
        "--quiet",
        "--model-out",
        arg(&nowhere),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("is not a directory"), "{}", out.stderr);
    assert!(
        !out.stdout.contains("rounds in"),
        "the run went ahead: {}",
        out.stdout
    );
}

/// A run started with `--init` from exactly the parameters the seed would have drawn ends
/// with the same model as one without: the file replaces only the initial state.
#[test]
fn init_from_the_seeded_model_changes_nothing_but_the_run_id() {
    let dir = tempfile::tempdir().unwrap();
    let split = load(&DatasetSource::Digits, 0.2, 0).unwrap();
    let spec = ModelSpec::for_dataset(ModelKind::Mlp { hidden: vec![128] }, &split.train);
    let params =
        shoal_models::init_params(&spec, shoal_coordinator::strategy::init_stream(0)).unwrap();
    let init = dir.path().join("init.safetensors");
    std::fs::write(
        &init,
        shoal_models::to_safetensors(&spec.manifest().unwrap(), &params, &Default::default())
            .unwrap(),
    )
    .unwrap();
    let plain = dir.path().join("plain.json");
    let started = dir.path().join("started.json");
    for (summary, extra) in [(&plain, None), (&started, Some(&init))] {
        let mut args = vec![
            "run",
            "--quiet",
            "--rounds",
            "3",
            "--summary-out",
            arg(summary),
        ];
        if let Some(init) = extra {
            args.extend(["--init", arg(init)]);
        }
        finish(&mut shoal_with(&args)).assert_success();
    }
    assert_eq!(sha(&started).0, sha(&plain).0);
    let id = |p: &Path| -> String { runs::summary(p)["run_id"].as_str().unwrap().to_string() };
    assert_ne!(
        id(&started),
        id(&plain),
        "the starting model is part of the run's identity"
    );

    // A file for another model, and k-means, are refused before anything runs.
    let out = finish(&mut shoal_with(&[
        "run",
        "--quiet",
        "--model",
        "logreg",
        "--init",
        arg(&init),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains("layers.0.weight has shape [64, 128], the model needs [64, 10]"),
        "{}",
        out.stderr
    );
    let out = finish(&mut shoal_with(&[
        "run",
        "--quiet",
        "--strategy",
        "fedkmeans",
        "--init",
        arg(&init),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("--init: federated k-means"),
        "{}",
        out.stderr
    );
}
