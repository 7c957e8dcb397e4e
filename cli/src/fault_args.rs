//! The faults and attacks a simulated fleet suffers, as flags shared by `shoal simulate` and
//! `shoal run`: seeded dropouts, stragglers and crashes, and Byzantine clients whose updates
//! lie. Every one replays exactly for the same `--seed`.

use clap::Args;
use shoal_client::attack::Byzantine;
use shoal_client::faults::DEFAULT_CRASH_DOWNTIME;
use shoal_client::{Faults, FleetConfig};
use std::time::Duration;

/// A fault's probability per (client, round) and its duration.
type FaultRate = (f64, Duration);

/// Simulated faults and attacks.
#[derive(Debug, Clone, Default, Args)]
pub struct FaultArgs {
    /// Simulated dropouts: with probability P per round a client takes its task and never
    /// delivers the update [default: 0].
    #[arg(long, value_name = "P", value_parser = parse_probability)]
    dropout: Option<f64>,
    /// Simulated stragglers: with probability P per round a client delays its push by SECONDS.
    #[arg(long, value_name = "P:SECONDS", value_parser = parse_straggle)]
    straggle: Option<FaultRate>,
    /// Simulated crashes: with probability P per round a client dies mid-round, stays silent
    /// for SECONDS [default: 2], then joins again under the same id.
    #[arg(long, value_name = "P[:SECONDS]", value_parser = parse_crash)]
    crash: Option<FaultRate>,
    /// Simulated attackers: a seeded FRACTION of the fleet's clients follow the protocol but
    /// send sign-flip (their change negated), scale:LAMBDA (times LAMBDA), noise:SIGMA
    /// (Gaussian noise instead of their change), label-flip (trained on labels y -> C-1-y)
    /// or alie[:Z] updates ("a little is enough": the attackers collude and all send the mean
    /// of their honest changes minus Z standard deviations, Z by default from the population
    /// and the attackers' number as Baruch et al. 2019 choose it).
    #[arg(long, value_name = "FRACTION:KIND", value_parser = str::parse::<Byzantine>)]
    byzantine: Option<Byzantine>,
    /// Simulated slow devices: with probability P per round a client does only a seeded
    /// random share of its local SGD steps (at least one) and sends what it has, as FedProx's
    /// stragglers do.
    #[arg(long, value_name = "P", value_parser = parse_probability)]
    partial_work: Option<f64>,
}

impl FaultArgs {
    /// Sets the fleet's faults and attackers.
    pub fn apply(&self, fleet: &mut FleetConfig) {
        fleet.faults = Faults {
            dropout: self.dropout.unwrap_or(0.0),
            straggle: self.straggle,
            crash: self.crash,
            partial_work: self.partial_work.unwrap_or(0.0),
        };
        fleet.byzantine = self.byzantine;
    }
}

/// Parses a probability in [0, 1].
fn parse_probability(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a probability between 0 and 1, got {s:?}")),
    }
}

/// Parses a non-negative number of seconds.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|secs| *secs >= 0.0)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("expected a number of seconds >= 0, got {s:?}"))
}

/// Parses "P:SECONDS".
fn parse_straggle(s: &str) -> Result<FaultRate, String> {
    let (p, secs) = s
        .split_once(':')
        .ok_or_else(|| format!("expected P:SECONDS, e.g. 0.2:3, got {s:?}"))?;
    Ok((parse_probability(p)?, parse_seconds(secs)?))
}

/// Parses "P" or "P:SECONDS" (the downtime defaults to two seconds).
fn parse_crash(s: &str) -> Result<FaultRate, String> {
    match s.split_once(':') {
        Some((p, secs)) => Ok((parse_probability(p)?, parse_seconds(secs)?)),
        None => Ok((parse_probability(s)?, DEFAULT_CRASH_DOWNTIME)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_must_lie_in_the_unit_interval() {
        assert_eq!(parse_probability("0"), Ok(0.0));
        assert_eq!(parse_probability(" 0.25 "), Ok(0.25));
        assert_eq!(parse_probability("1"), Ok(1.0));
        for bad in ["-0.1", "1.5", "NaN", "inf", "half", ""] {
            let err = parse_probability(bad).unwrap_err();
            assert!(err.contains("between 0 and 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn straggle_needs_a_probability_and_seconds() {
        assert_eq!(parse_straggle("0.2:3"), Ok((0.2, Duration::from_secs(3))));
        assert_eq!(
            parse_straggle("1:0.5"),
            Ok((1.0, Duration::from_millis(500)))
        );
        assert!(parse_straggle("0.2").unwrap_err().contains("P:SECONDS"));
        assert!(
            parse_straggle("2:3")
                .unwrap_err()
                .contains("between 0 and 1")
        );
        assert!(
            parse_straggle("0.2:-1")
                .unwrap_err()
                .contains("seconds >= 0")
        );
        assert!(
            parse_straggle("0.2:x")
                .unwrap_err()
                .contains("seconds >= 0")
        );
        assert!(parse_straggle("0.2:1e300").is_err());
    }

    #[test]
    fn crash_downtime_defaults_to_two_seconds() {
        assert_eq!(parse_crash("0.1"), Ok((0.1, Duration::from_secs(2))));
        assert_eq!(parse_crash("0.1:0"), Ok((0.1, Duration::ZERO)));
        assert!(parse_crash("-1").is_err());
        assert!(parse_crash("0.1:soon").is_err());
    }
}
