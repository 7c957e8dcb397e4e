//! The `shoal coordinator` flags for its limits: how long pulls are held, when a silent client
//! stops being offered work, what one client may send (message and update sizes, example
//! counts, how often it pulls, the L2 norm of its update), and what all peers together may
//! hold (connections, streams, and how long a connection or request may stay silent). The
//! last two groups are [`ServingLimitsArgs`], which `shoal aggregator` takes too. Defaults come
//! from [`Limits::default`], so the flags and the library agree.

use anyhow::{Result, bail};
use shoal_coordinator::{Limits, NormPolicy, PullRate};
use std::time::Duration;

/// Limits of `shoal coordinator`, on time and on what one client may send.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsArgs {
    #[command(flatten)]
    pub serving: ServingLimitsArgs,
    /// Longest a client's pull is held open, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().poll_timeout.as_secs_f64())]
    pub poll_timeout: f64,
    /// Seconds of silence after which a client is no longer offered work.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().liveness.as_secs_f64())]
    pub liveness: f64,
    /// Most clients registered at once; further joins are refused (ResourceExhausted).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_clients)]
    pub max_clients: usize,
    /// Largest example count (the update's weight) one update may claim.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_examples)]
    pub max_examples: u64,
    /// Pulls per second one client may make on average; excess pulls are delayed up to a
    /// second, then refused (ResourceExhausted). 0 turns pacing off.
    #[arg(long, value_name = "N", default_value_t = default_rate().per_second)]
    pub max_pulls_per_second: f64,
    /// Pulls one client may make back to back before pacing starts.
    #[arg(long, value_name = "N", default_value_t = default_rate().burst)]
    pub pull_burst: u32,
    /// Largest L2 norm of an update: of its delta from the global parameters (FedAvg), of the
    /// gradient (FedSGD); k-means is exempt. `off` for no bound.
    #[arg(long, value_name = "NORM|off", default_value_t = NormBound(Limits::default().max_update_norm), value_parser = parse_norm)]
    pub max_update_norm: NormBound,
    /// What happens to an update over --max-update-norm: reject (refused) or clip (scaled
    /// down to the bound).
    #[arg(long, value_name = "reject|clip", default_value_t = NormPolicy::Reject)]
    pub norm_policy: NormPolicy,
}

/// The limits every Shoal server has, coordinator and sub-aggregator alike: what one upload
/// may hold, and what all peers together may hold open.
#[derive(Debug, Clone, clap::Args)]
pub struct ServingLimitsArgs {
    /// Largest update accepted, in f32 values; a larger declared payload is refused before
    /// anything is allocated.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_update_values)]
    pub max_update_values: usize,
    /// Largest payload chunk accepted, in bytes (at most 1 MiB); a gRPC message may be this
    /// plus 64 KiB, anything longer is refused before it is decoded.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_chunk_bytes)]
    pub max_chunk_bytes: usize,
    /// Most connections open at once (lowered to fit the open-file limit). At the cap a new
    /// connection sheds one that never spoke or is idle longest, or is closed.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Most requests in flight on one HTTP/2 connection (clients queue requests past it); each
    /// client sharing a connection holds one long-poll on it.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_streams_per_connection)]
    pub max_streams_per_connection: u32,
    /// Most requests in flight across all connections; past it requests get Unavailable and
    /// clients retry.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_streams)]
    pub max_streams: usize,
    /// Seconds a new connection has to send its first byte (and finish its TLS handshake).
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().first_bytes_timeout.as_secs_f64())]
    pub first_bytes_timeout: f64,
    /// Seconds a connection may send nothing before it is closed (the server pings every
    /// connection at a third of it).
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().idle_timeout.as_secs_f64())]
    pub idle_timeout: f64,
    /// Longest a request may take, in seconds, from its headers to the end of its response;
    /// must exceed --poll-timeout and leave room for the largest upload.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().request_timeout.as_secs_f64())]
    pub request_timeout: f64,
}

/// The value of `--max-update-norm`: a bound, or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormBound(pub Option<f64>);

fn parse_norm(text: &str) -> std::result::Result<NormBound, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(NormBound(None));
    }
    match text.parse::<f64>() {
        Ok(norm) if norm.is_finite() && norm > 0.0 => Ok(NormBound(Some(norm))),
        _ => Err(format!("expected a positive number or `off`, got {text:?}")),
    }
}

impl std::fmt::Display for NormBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(norm) => write!(f, "{norm}"),
            None => f.write_str("off"),
        }
    }
}

fn default_rate() -> PullRate {
    Limits::default().pull_rate.unwrap_or(PullRate {
        per_second: 0.0,
        burst: 0,
    })
}

/// Seconds from a flag, refused unless positive and representable.
fn seconds(flag: &str, value: f64) -> Result<Duration> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() && value <= 1e9 => Ok(d),
        _ => bail!("{flag} must be a positive number of seconds (at most 1e9), got {value}"),
    }
}

impl LimitsArgs {
    /// The limits these flags describe, checked.
    pub fn limits(&self) -> Result<Limits> {
        let rate = self.max_pulls_per_second;
        if !(rate.is_finite() && rate >= 0.0) {
            bail!("--max-pulls-per-second must be 0 (off) or a positive number, got {rate}");
        }
        let limits = Limits {
            poll_timeout: seconds("--poll-timeout", self.poll_timeout)?,
            liveness: seconds("--liveness", self.liveness)?,
            max_clients: self.max_clients,
            max_examples: self.max_examples,
            pull_rate: (rate > 0.0).then_some(PullRate {
                per_second: rate,
                burst: self.pull_burst,
            }),
            max_update_norm: self.max_update_norm.0,
            norm_policy: self.norm_policy,
            ..self.serving.unchecked()?
        };
        limits.check()?;
        Ok(limits)
    }
}

impl ServingLimitsArgs {
    /// The default limits with these flags' values, checked.
    pub fn limits(&self) -> Result<Limits> {
        let limits = self.unchecked()?;
        limits.check()?;
        Ok(limits)
    }

    /// The default limits with these flags' values, each flag checked alone (the whole is
    /// checked once the other flags are in).
    fn unchecked(&self) -> Result<Limits> {
        Ok(Limits {
            max_update_values: self.max_update_values,
            max_chunk_bytes: self.max_chunk_bytes,
            max_connections: self.max_connections,
            max_streams_per_connection: self.max_streams_per_connection,
            max_streams: self.max_streams,
            first_bytes_timeout: seconds("--first-bytes-timeout", self.first_bytes_timeout)?,
            idle_timeout: seconds("--idle-timeout", self.idle_timeout)?,
            request_timeout: seconds("--request-timeout", self.request_timeout)?,
            ..Limits::default()
        })
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
        cmd.limits.limits()
    }

    #[test]
    fn defaults_are_the_library_defaults() {
        assert_eq!(limits(&[]).unwrap(), Limits::default());
    }

    #[test]
    fn flags_set_every_limit() {
        let l = limits(&[
            "--poll-timeout",
            "2.5",
            "--liveness",
            "30",
            "--max-update-values",
            "1000",
            "--max-chunk-bytes",
            "4096",
            "--max-clients",
            "7",
            "--max-examples",
            "99",
        ])
        .unwrap();
        assert_eq!(l.poll_timeout, Duration::from_millis(2500));
        assert_eq!(l.liveness, Duration::from_secs(30));
        assert_eq!(
            (
                l.max_update_values,
                l.max_chunk_bytes,
                l.max_clients,
                l.max_examples
            ),
            (1000, 4096, 7, 99)
        );
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
        assert_eq!(
            limits(&["--max-update-norm", "off"])
                .unwrap()
                .max_update_norm,
            None
        );
        assert_eq!(l.norm_policy, NormPolicy::Clip);
        assert_eq!(
            limits(&["--max-pulls-per-second", "0"]).unwrap().pull_rate,
            None
        );
    }

    #[test]
    fn flags_set_the_connection_limits() {
        let l = limits(&[
            "--max-connections",
            "50",
            "--max-streams-per-connection",
            "8",
            "--max-streams",
            "64",
            "--first-bytes-timeout",
            "0.5",
            "--idle-timeout",
            "30",
            "--request-timeout",
            "120",
        ])
        .unwrap();
        assert_eq!(
            (
                l.max_connections,
                l.max_streams_per_connection,
                l.max_streams
            ),
            (50, 8, 64)
        );
        assert_eq!(l.first_bytes_timeout, Duration::from_millis(500));
        assert_eq!(l.idle_timeout, Duration::from_secs(30));
        assert_eq!(l.request_timeout, Duration::from_secs(120));
    }

    #[test]
    fn nonsense_connection_limits_are_refused() {
        for flag in [
            "--max-connections",
            "--max-streams-per-connection",
            "--max-streams",
        ] {
            assert!(limits(&[flag, "0"]).is_err(), "{flag} 0");
            assert!(limits(&[flag, "-1"]).is_err(), "{flag} -1");
        }
        assert!(limits(&["--max-streams-per-connection", "5000000000"]).is_err());
        for flag in [
            "--first-bytes-timeout",
            "--idle-timeout",
            "--request-timeout",
        ] {
            for bad in ["0", "-1", "1e20", "inf", "NaN"] {
                assert!(limits(&[flag, bad]).is_err(), "{flag} {bad}");
            }
        }
        // Every held pull would be cut.
        assert!(limits(&["--request-timeout", "10"]).is_err());
        assert!(limits(&["--request-timeout", "5", "--poll-timeout", "4"]).is_ok());
        // Longer than a year.
        assert!(limits(&["--idle-timeout", "1e8"]).is_err());
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(limits(&["--norm-policy", "drop"]).is_err());
        assert!(limits(&["--max-update-norm", "0"]).is_err());
        assert!(limits(&["--max-update-norm", "-3"]).is_err());
        assert!(limits(&["--max-pulls-per-second", "-1"]).is_err());
        assert!(limits(&["--max-update-norm", "nan"]).is_err());
        for flag in ["--poll-timeout", "--liveness"] {
            for bad in ["0", "-1", "1e20", "inf", "NaN"] {
                assert!(limits(&[flag, bad]).is_err(), "{flag} {bad}");
            }
        }
        assert!(limits(&["--max-chunk-bytes", "0"]).is_err());
        assert!(limits(&["--max-chunk-bytes", "2000000"]).is_err());
        assert!(limits(&["--max-clients", "0"]).is_err());
        assert!(limits(&["--max-examples", "0"]).is_err());
        assert!(limits(&["--max-update-values", "0"]).is_err());
    }
}
