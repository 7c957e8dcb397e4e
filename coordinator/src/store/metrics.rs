//! What a run reports: one record per round (CSV) and a summary at the end (JSON).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;

/// Columns of the per-round CSV, in order; a record lacking a value leaves its cell empty.
pub const CSV_COLUMNS: [&str; 15] = [
    "round",
    "clients",
    "selected",
    "examples",
    "loss",
    "accuracy",
    "train_loss",
    "train_accuracy",
    "inertia",
    "shift",
    "nmi",
    "ari",
    "seconds",
    "fed_loss",
    "fed_accuracy",
];

/// One aggregated round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number, from 1.
    pub round: u32,
    /// Clients whose updates were aggregated.
    pub clients: usize,
    /// Clients asked in the successful attempt.
    pub selected: usize,
    /// Attempts the round needed (1 unless quorum was missed).
    pub attempts: u32,
    /// Total examples behind the aggregate.
    pub examples: u64,
    /// Evaluation on held-out data, client averages and strategy metrics, by name.
    pub values: BTreeMap<String, f64>,
    /// Wall time of the round, selection to evaluation.
    pub seconds: f64,
}

impl RoundRecord {
    /// A metric by name.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }

    /// The CSV row for [`CSV_COLUMNS`].
    pub fn csv_row(&self) -> String {
        let cell = |k: &str| self.get(k).map(|v| format!("{v:.6}")).unwrap_or_default();
        let mut cells = vec![
            self.round.to_string(),
            self.clients.to_string(),
            self.selected.to_string(),
            self.examples.to_string(),
        ];
        cells.extend(CSV_COLUMNS[4..12].iter().map(|k| cell(k)));
        cells.push(format!("{:.4}", self.seconds));
        cells.extend(CSV_COLUMNS[13..].iter().map(|k| cell(k)));
        cells.join(",")
    }
}

/// Writes records as CSV with a header.
pub fn write_csv(mut out: impl Write, records: &[RoundRecord]) -> std::io::Result<()> {
    writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    for r in records {
        writeln!(out, "{}", r.csv_row())?;
    }
    Ok(())
}

/// The end of a run, as written by `--summary-out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id (prefix of the config hash).
    pub run_id: String,
    /// Strategy name.
    pub strategy: String,
    /// Rounds aggregated.
    pub rounds_completed: u32,
    /// Test accuracy after the last round (classification strategies).
    pub final_accuracy: Option<f64>,
    /// Test loss after the last round (classification strategies).
    pub final_loss: Option<f64>,
    /// Inertia of the final centroids on the held-out data (k-means).
    pub final_inertia: Option<f64>,
    /// SHA-256 of the final global state as little-endian f32 bytes.
    pub model_sha256: String,
    /// Number of values in the final global state.
    pub num_params: usize,
    /// Wall time of the rounds in seconds.
    pub wall_seconds: f64,
    /// Why the run ended.
    pub stop_reason: String,
    /// Requests refused during the run, by reason (e.g. "stale_fence", "rate_limited").
    #[serde(default)]
    pub refusals: BTreeMap<String, u64>,
}

/// SHA-256 of `values` as little-endian f32 bytes, hex.
pub fn sha256_f32(values: &[f32]) -> String {
    let mut hasher = Sha256::new();
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_header_and_blank_missing_cells() {
        let r = RoundRecord {
            round: 2,
            clients: 3,
            selected: 4,
            attempts: 1,
            examples: 100,
            values: BTreeMap::from([
                ("accuracy".to_string(), 0.5),
                ("fed_accuracy".to_string(), 0.25),
            ]),
            seconds: 1.25,
        };
        let mut out = Vec::new();
        write_csv(&mut out, &[r]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split(',').count(), 15);
        assert_eq!(lines[1], "2,3,4,100,,0.500000,,,,,,,1.2500,,0.250000");
    }

    #[test]
    fn sha_of_known_vector() {
        // sha256 of the 8 bytes 00 00 80 3f 00 00 00 40 (1.0f32, 2.0f32 little-endian)
        assert_eq!(
            sha256_f32(&[1.0, 2.0]),
            hex::encode(Sha256::digest([0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]))
        );
    }
}
