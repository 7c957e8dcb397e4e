//! What a running coordinator tells a monitoring stack: Prometheus metrics, served over HTTP
//! by [`serve_metrics`] at `/metrics` in the OpenMetrics text format.
//!
//! Counters and histograms are updated where the work happens (the fold, the checkpoint
//! write, a refusal); gauges that mirror state (clients joined) are read at scrape time, so a
//! scrape never waits on the round and the hot paths pay an atomic add.

use crate::Coordinator;
use crate::refusal::Refusal;
use axum::Router;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::net::TcpListener;

/// The content type Prometheus asks for and this endpoint answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A refusal's reason, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The coordinator's metrics. Cheap to update from any thread.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    round: Gauge,
    rounds_completed: Counter,
    clients_joined: Gauge,
    clients_selected: Gauge,
    updates_accepted: Counter,
    updates_aggregated: Counter,
    refusals: Family<ReasonLabel, Counter>,
    bytes_received: Counter,
    bytes_sent: Counter,
    round_seconds: Histogram,
    fold_seconds: Histogram,
    checkpoint_seconds: Histogram,
    accuracy: Gauge<f64, AtomicU64>,
    loss: Gauge<f64, AtomicU64>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shoal");
        let t = Self {
            round: Gauge::default(),
            rounds_completed: Counter::default(),
            clients_joined: Gauge::default(),
            clients_selected: Gauge::default(),
            updates_accepted: Counter::default(),
            updates_aggregated: Counter::default(),
            refusals: Family::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            // 1 ms .. ~9 min for rounds; 10 µs .. ~5 s for folds and checkpoint writes.
            round_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            fold_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            checkpoint_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 20)),
            accuracy: Gauge::default(),
            loss: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("round", "The round open or last opened", t.round.clone());
        registry.register(
            "rounds_completed",
            "Rounds aggregated by this coordinator",
            t.rounds_completed.clone(),
        );
        registry.register(
            "clients_joined",
            "Clients currently joined",
            t.clients_joined.clone(),
        );
        registry.register(
            "clients_selected",
            "Clients selected for the round open or last opened",
            t.clients_selected.clone(),
        );
        registry.register(
            "updates_accepted",
            "Client updates accepted, training updates and evaluation reports alike",
            t.updates_accepted.clone(),
        );
        registry.register(
            "updates_aggregated",
            "Client updates in the aggregates of completed rounds",
            t.updates_aggregated.clone(),
        );
        registry.register(
            "refusals",
            "Requests, streams and connections refused, by reason",
            t.refusals.clone(),
        );
        registry.register(
            "received_bytes",
            "Update payload bytes accepted",
            t.bytes_received.clone(),
        );
        registry.register(
            "sent_bytes",
            "Global-state payload bytes sent to clients",
            t.bytes_sent.clone(),
        );
        registry.register(
            "round_seconds",
            "Wall time of a round, selection to evaluation",
            t.round_seconds.clone(),
        );
        registry.register(
            "fold_seconds",
            "Time to check, log and fold one update",
            t.fold_seconds.clone(),
        );
        registry.register(
            "checkpoint_seconds",
            "Time to write a round's checkpoint",
            t.checkpoint_seconds.clone(),
        );
        registry.register(
            "accuracy",
            "Accuracy of the global model after the last completed round",
            t.accuracy.clone(),
        );
        registry.register(
            "loss",
            "Loss of the global model after the last completed round",
            t.loss.clone(),
        );
        Self { registry, ..t }
    }
}

impl Telemetry {
    /// A round opened with `selected` clients asked.
    pub fn round_opened(&self, round: u32, selected: usize) {
        self.round.set(i64::from(round));
        self.clients_selected.set(selected as i64);
    }

    /// A round was aggregated from `clients` updates in `seconds`, evaluated to `accuracy`
    /// and `loss` where the run evaluates.
    pub fn round_completed(
        &self,
        clients: usize,
        seconds: f64,
        accuracy: Option<f64>,
        loss: Option<f64>,
    ) {
        self.rounds_completed.inc();
        self.updates_aggregated.inc_by(clients as u64);
        self.round_seconds.observe(seconds);
        if let Some(a) = accuracy {
            self.accuracy.set(a);
        }
        if let Some(l) = loss {
            self.loss.set(l);
        }
    }

    /// `updates` client updates (one, or a partial sum's) of `bytes` payload bytes were accepted
    /// after a fold of `took`.
    pub fn update_accepted(&self, updates: u64, bytes: u64, took: Duration) {
        self.updates_accepted.inc_by(updates);
        self.bytes_received.inc_by(bytes);
        self.fold_seconds.observe(took.as_secs_f64());
    }

    /// `bytes` of global state went to a client.
    pub fn sent(&self, bytes: u64) {
        self.bytes_sent.inc_by(bytes);
    }

    /// A request was refused.
    pub fn refused(&self, refusal: Refusal) {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: refusal.reason().to_string(),
            })
            .inc();
    }

    /// A checkpoint was written in `took`.
    pub fn checkpoint_written(&self, took: Duration) {
        self.checkpoint_seconds.observe(took.as_secs_f64());
    }

    /// The metrics in the OpenMetrics text format, with `joined` clients.
    pub fn render(&self, joined: usize) -> String {
        self.clients_joined.set(joined as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `coordinator`'s metrics on `listener` at `GET /metrics` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    coordinator: Coordinator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let coordinator = coordinator.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    coordinator.metrics_text(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason_and_rendered_as_openmetrics() {
        let t = Telemetry::default();
        t.refused(Refusal::StaleFence);
        t.refused(Refusal::StaleFence);
        t.refused(Refusal::UnknownClient);
        t.round_opened(7, 12);
        t.round_completed(10, 0.5, Some(0.25), None);
        let text = t.render(30);
        for line in [
            "shoal_refusals_total{reason=\"stale_fence\"} 2",
            "shoal_refusals_total{reason=\"unknown_client\"} 1",
            "shoal_round 7",
            "shoal_clients_selected 12",
            "shoal_clients_joined 30",
            "shoal_updates_aggregated_total 10",
            "shoal_accuracy 0.25",
            "shoal_round_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
