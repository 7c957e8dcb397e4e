//! A deployment where the coordinator has neither the model's code nor any data: the real
//! `shoal coordinator` serves `--model external` laid out by `--init`, on `--dataset shape:`,
//! to clients running their own trainer (this test process), checkpoints every round, and
//! `shoal checkpoint export --layout` takes any checkpointed model out.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::{read_model, start_coordinator, summary};
use common::{arg, finish, shoal_with};
use shoal_client::{FleetConfig, LocalTrainer, Result as ClientResult, run_fleet};
use shoal_datasets::{Dataset, DatasetSource, Partition, load, partition};
use shoal_models::{EvalReport, GradReport, TrainConfig, TrainReport};
use shoal_proto::v1::ModelSpec as TaskModel;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A team's own model code, as far as the coordinator can tell: here the built-in logistic
/// regression under another name, so its numbers can be checked against Shoal's own.
#[derive(Debug)]
struct TheirOwnCode;

impl TheirOwnCode {
    fn as_logreg(model: &TaskModel) -> TaskModel {
        assert_eq!(
            model.kind, "external",
            "the coordinator announces the model as it is"
        );
        TaskModel {
            kind: "logreg".into(),
            ..model.clone()
        }
    }
}

impl LocalTrainer for TheirOwnCode {
    fn fit(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
        config: &TrainConfig,
    ) -> ClientResult<(Vec<f32>, TrainReport)> {
        shoal_client::BuiltinTrainer::default().fit(&Self::as_logreg(model), global, data, config)
    }

    fn gradient(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
        batches: usize,
        batch_size: usize,
        seed: u64,
    ) -> ClientResult<(Vec<f32>, GradReport)> {
        shoal_client::BuiltinTrainer::default().gradient(
            &Self::as_logreg(model),
            global,
            data,
            batches,
            batch_size,
            seed,
        )
    }

    fn evaluate(
        &self,
        model: &TaskModel,
        global: &[f32],
        data: &Dataset,
    ) -> ClientResult<EvalReport> {
        shoal_client::BuiltinTrainer::default().evaluate(&Self::as_logreg(model), global, data)
    }
}

/// Ten clients with the IID split of digits a `shoal run` would give them, training `url`'s
/// run with [`TheirOwnCode`].
fn their_fleet(url: &str) {
    let split = load(&DatasetSource::Digits, 0.2, 0).unwrap();
    let train = split.train;
    let clients: Vec<(String, Dataset)> =
        partition(&train.labels, train.num_classes, 10, &Partition::Iid, 0)
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, idx)| (format!("client-{i:05}"), train.subset(idx).unwrap()))
            .collect();
    let mut fleet = FleetConfig::new(url.to_owned());
    fleet.trainer = Arc::new(TheirOwnCode);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime
        .block_on(run_fleet(fleet, clients, std::future::pending()))
        .unwrap();
    assert_eq!(report.failed, 0);
}

/// `shoal checkpoint export CKPT --round ROUND --out OUT` with `extra` flags.
fn export(ckpt: &Path, round: &str, out: &Path, extra: &[&str]) -> common::Finished {
    let mut cmd = shoal_with(&[
        "checkpoint",
        "export",
        arg(ckpt),
        "--round",
        round,
        "--out",
        arg(out),
    ]);
    cmd.args(extra);
    finish(&mut cmd)
}

#[test]
fn a_coordinator_without_model_code_or_data_trains_checkpoints_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    // The team's starting point: a logistic regression's tensors, by name and shape.
    finish(&mut shoal_with(&[
        "run",
        "--quiet",
        "--model",
        "logreg",
        "--rounds",
        "1",
        "--model-out",
        arg(&path("init.safetensors")),
    ]))
    .assert_success();
    let run = ["--rounds", "4", "--eval", "federated"];
    let init = path("init.safetensors");
    // What Shoal's own logistic regression makes of the same start.
    let reference = path("reference.json");
    let mut args = vec!["run", "--quiet", "--model", "logreg", "--init", arg(&init)];
    args.extend(run);
    args.extend(["--summary-out", arg(&reference)]);
    finish(&mut shoal_with(&args)).assert_success();

    let ckpt = path("ckpt");
    let out = path("summary.json");
    let last = path("final.safetensors");
    let mut args = vec![
        "--model",
        "external",
        "--init",
        arg(&init),
        "--dataset",
        "shape:8x8,10",
        "--checkpoint-dir",
        arg(&ckpt),
        "--quiet",
        "--summary-out",
        arg(&out),
        "--model-out",
        arg(&last),
    ];
    args.extend(run);
    let (coordinator, url) = start_coordinator(&args);
    their_fleet(&url);
    let done = coordinator.finish(Duration::from_secs(120));
    done.assert_success();
    let s = summary(&out);
    assert_eq!(s["rounds_completed"], 4, "{s}");
    // Neither the model's code nor the data at the coordinator changed a bit of the result.
    assert_eq!(s["model_sha256"], summary(&reference)["model_sha256"]);

    // The last checkpoint is the final model, named and shaped as the team's file.
    let exported = path("round4.safetensors");
    let done = export(&ckpt, "4", &exported, &["--layout", arg(&init)]);
    done.assert_success();
    let (layout, params) = read_model(&exported);
    let (final_layout, final_params) = read_model(&last);
    let (init_layout, _) = read_model(&init);
    assert_eq!(layout, init_layout);
    assert_eq!(layout, final_layout);
    assert_eq!(params, final_params);

    // Without its layout, or with another model's, the export is refused and writes nothing.
    let refused = path("refused.safetensors");
    let done = export(&ckpt, "4", &refused, &[]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(done.stderr.contains("--layout FILE"), "{}", done.stderr);
    let done = export(&ckpt, "4", &refused, &["--layout", arg(&exported)]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("not the model file this run started from"),
        "{}",
        done.stderr
    );
    assert!(!refused.exists());
}
