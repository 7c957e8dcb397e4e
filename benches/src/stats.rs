//! Summaries of repeated measurements.

/// Mean, median and range of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Values summarised.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises `values`; `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            count: n,
            mean: sorted.iter().sum::<f64>() / n as f64,
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// Bytes per second as decimal GB/s (10^9), the unit criterion and STREAM use.
pub fn gb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e9
}

/// Seconds of each round, from a `--metrics-out` CSV.
pub fn round_seconds(path: &std::path::Path) -> anyhow::Result<Vec<f64>> {
    metrics_column(path, "seconds")
}

/// Column `name` of each round, from a `--metrics-out` CSV.
pub fn metrics_column(path: &std::path::Path, name: &str) -> anyhow::Result<Vec<f64>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty metrics")?.split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == name)
        .with_context(|| format!("no {name} column in {}", path.display()))?;
    lines
        .map(|l| {
            l.split(',')
                .nth(col)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("bad {name} cell in {l:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_odd_and_even_samples() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!(
            s.map(|s| (s.mean, s.median, s.min, s.max)),
            Some((2.0, 2.0, 1.0, 3.0))
        );
        assert_eq!(
            Summary::of(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median),
            Some(2.5)
        );
        assert!(Summary::of(&[]).is_none());
        assert_eq!(gb_per_s(2_000_000_000, 2.0), 1.0);
    }
}
