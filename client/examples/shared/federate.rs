//! What the worked examples share: a run of a model the coordinator has no code for
//! (`external`), hosted in this process, trained by a fleet running the example's own
//! trainer, scored by the clients, with one line printed per round.

use shoal_client::{FleetConfig, LocalTrainer, run_fleet};
use shoal_coordinator::store::metrics::sha256_f32;
use shoal_coordinator::{Coordinator, EvalMode, Limits, RunConfig, RunOutcome, RunStart, strategy};
use shoal_datasets::{Dataset, DatasetError, Partition, partition};
use shoal_models::{ModelKind, ModelSpec};
use std::sync::Arc;

/// `data` split IID among `n` clients, as `client-00000`, `client-00001`, ...
pub fn clients_of(data: &Dataset, n: usize) -> Result<Vec<(String, Dataset)>, DatasetError> {
    partition(&data.labels, data.num_classes, n, &Partition::Iid, 0)?
        .iter()
        .enumerate()
        .map(|(i, idx)| Ok((format!("client-{i:05}"), data.subset(idx)?)))
        .collect()
}

/// Runs `config` (its rounds and local training) on `clients`, starting from `init`: the
/// coordinator knows the model only as `external` with `init`'s length, the clients train it
/// with `trainer` and score it on the 20% of their examples they hold out.
pub async fn federate(
    mut config: RunConfig,
    init: Vec<f32>,
    trainer: Arc<dyn LocalTrainer>,
    clients: Vec<(String, Dataset)>,
) -> Result<RunOutcome, Box<dyn std::error::Error>> {
    let shape = clients.first().map(|(_, data)| data).ok_or("no clients")?;
    let spec = ModelSpec::for_dataset(ModelKind::External, shape);
    config.model = "external".into();
    config.eval = EvalMode::Federated { holdout: 0.2 };
    config.init_sha256 = Some(sha256_f32(&init));
    config.selection.min_available = clients.len();
    config.validate()?;
    let strategy = strategy::build_from(&config, &spec, Some(init))?;
    // An empty test set: the coordinator cannot score a model it has no code for.
    let no_test = Dataset::new(
        Vec::new(),
        Vec::new(),
        spec.num_features,
        spec.num_classes,
        None,
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let start = RunStart::new(strategy, Arc::new(no_test));
    let hosted = Coordinator::new(config, Limits::default(), spec).host(
        listener,
        start,
        std::future::pending(),
    )?;
    let mut fleet = FleetConfig::new(hosted.url.clone());
    fleet.trainer = trainer;
    let fleet = tokio::spawn(run_fleet(fleet, clients, std::future::pending()));
    let outcome = hosted.finish().await?;
    fleet.await??;
    for record in &outcome.records {
        println!(
            "round {:2}  federated accuracy {:.4}  client train loss {:.4}",
            record.round,
            record.get("accuracy").unwrap_or(f64::NAN),
            record.get("train_loss").unwrap_or(f64::NAN)
        );
    }
    println!(
        "final federated accuracy {:.4}",
        outcome.summary.final_accuracy.unwrap_or(0.0)
    );
    Ok(outcome)
}
