//! What the user sees and keeps: the per-round table, the summary, and the output files.

use anyhow::{Context, Result};
use shoal_coordinator::store::metrics::write_csv;
use shoal_coordinator::{RoundRecord, RunSummary};
use std::path::Path;

/// Header of the per-round table for classification or clustering runs.
pub fn table_header(clustering: bool) -> String {
    if clustering {
        format!(
            "{:>5}  {:>7}  {:>12}  {:>10}  {:>6}  {:>6}  {:>7}",
            "round", "clients", "inertia", "shift", "nmi", "ari", "seconds"
        )
    } else {
        format!(
            "{:>5}  {:>7}  {:>8}  {:>8}  {:>10}  {:>7}",
            "round", "clients", "loss", "accuracy", "train_loss", "seconds"
        )
    }
}

/// One row of the per-round table.
pub fn table_row(r: &RoundRecord, clustering: bool) -> String {
    let f = |k: &str, p: usize| {
        r.get(k)
            .map_or_else(|| "-".to_string(), |v| format!("{v:.p$}"))
    };
    if clustering {
        format!(
            "{:>5}  {:>7}  {:>12}  {:>10}  {:>6}  {:>6}  {:>7.3}",
            r.round,
            r.clients,
            f("inertia", 2),
            f("shift", 5),
            f("nmi", 3),
            f("ari", 3),
            r.seconds
        )
    } else {
        format!(
            "{:>5}  {:>7}  {:>8}  {:>8}  {:>10}  {:>7.3}",
            r.round,
            r.clients,
            f("loss", 4),
            f("accuracy", 4),
            f("train_loss", 4),
            r.seconds
        )
    }
}

/// The closing lines of a run; `on_clients` when its accuracy is the clients' (federated
/// evaluation only).
pub fn summary_text(s: &RunSummary, on_clients: bool) -> String {
    let mut out = format!(
        "{} run {}: {} rounds in {:.2}s ({})\n",
        s.strategy, s.run_id, s.rounds_completed, s.wall_seconds, s.stop_reason
    );
    if let Some(a) = s.final_accuracy {
        out.push_str(&format!(
            "final {} accuracy {a:.4}, loss {:.4}\n",
            if on_clients { "federated" } else { "test" },
            s.final_loss.unwrap_or(f64::NAN)
        ));
    }
    if let Some(i) = s.final_inertia {
        out.push_str(&format!("final inertia {i:.4}\n"));
    }
    out.push_str(&format!(
        "model sha256 {} ({} values)",
        s.model_sha256, s.num_params
    ));
    out
}

/// Writes `--metrics-out` (CSV) and `--summary-out` (JSON) where asked.
pub fn write_outputs(
    metrics: Option<&Path>,
    summary_out: Option<&Path>,
    records: &[RoundRecord],
    summary: &RunSummary,
) -> Result<()> {
    if let Some(path) = metrics {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        write_csv(std::io::BufWriter::new(file), records)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = summary_out {
        let json = serde_json::to_string_pretty(summary)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
