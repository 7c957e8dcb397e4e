//! The `shoal coordinator` flags for the limits against hostile clients: how often one client
//! may pull, and how large an update may be (its L2 norm). Defaults come from
//! [`Limits::default`], so the flags and the library agree.

use anyhow::Result;
use shoal_coordinator::{Limits, NormPolicy, PullRate};

/// Limits on what one client may send.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsArgs {
    /// Pulls per second one client may make on average; excess pulls are delayed up to a
    /// second, then refused (ResourceExhausted). 0 turns pacing off.
    #[arg(long, value_name = "N", default_value_t = default_rate().per_second)]
    pub max_pulls_per_second: f64,
    /// Pulls one client may make back to back before pacing starts.
    #[arg(long, value_name = "N", default_value_t = default_rate().burst)]
    pub pull_burst: u32,
    /// Largest L2 norm of an update: of its delta from the global parameters (FedAvg), of the
    /// gradient (FedSGD); k-means is exempt [default: unbounded].
    #[arg(long, value_name = "NORM")]
    pub max_update_norm: Option<f64>,
    /// What happens to an update over --max-update-norm: reject (refused) or clip (scaled
    /// down to the bound).
    #[arg(long, value_name = "reject|clip", default_value_t = NormPolicy::Reject)]
    pub norm_policy: NormPolicy,
}

fn default_rate() -> PullRate {
    Limits::default().pull_rate.unwrap_or(PullRate {
        per_second: 0.0,
        burst: 0,
    })
}

impl LimitsArgs {
    /// `limits` with these flags applied, checked.
    pub fn apply(&self, limits: Limits) -> Result<Limits> {
        let rate = self.max_pulls_per_second;
        if !(rate.is_finite() && rate >= 0.0) {
            anyhow::bail!(
                "--max-pulls-per-second must be 0 (off) or a positive number, got {rate}"
            );
        }
        let limits = Limits {
            pull_rate: (rate > 0.0).then_some(PullRate {
                per_second: rate,
                burst: self.pull_burst,
            }),
            max_update_norm: self.max_update_norm,
            norm_policy: self.norm_policy,
            ..limits
        };
        limits.check()?;
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        limits: LimitsArgs,
    }

    fn limits(args: &[&str]) -> Result<Limits> {
        let cmd = Cmd::try_parse_from(std::iter::once("shoal").chain(args.iter().copied()))?;
        cmd.limits.apply(Limits::default())
    }

    #[test]
    fn defaults_are_the_library_defaults() {
        assert_eq!(limits(&[]).unwrap(), Limits::default());
    }

    #[test]
    fn flags_set_the_rate_and_the_norm_bound() {
        let l = limits(&[
            "--max-pulls-per-second",
            "5",
            "--pull-burst",
            "2",
            "--max-update-norm",
            "10",
            "--norm-policy",
            "clip",
        ])
        .unwrap();
        assert_eq!(
            l.pull_rate,
            Some(PullRate {
                per_second: 5.0,
                burst: 2
            })
        );
        assert_eq!(l.max_update_norm, Some(10.0));
        assert_eq!(l.norm_policy, NormPolicy::Clip);
        assert_eq!(
            limits(&["--max-pulls-per-second", "0"]).unwrap().pull_rate,
            None
        );
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(limits(&["--norm-policy", "drop"]).is_err());
        assert!(limits(&["--max-update-norm", "0"]).is_err());
        assert!(limits(&["--max-update-norm", "-3"]).is_err());
        assert!(limits(&["--max-pulls-per-second", "-1"]).is_err());
    }
}
