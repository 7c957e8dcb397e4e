//! Pacing each client's pulls, so a flood from one client can neither starve the others nor
//! burn the coordinator's CPU.
//!
//! The rule is the generic cell rate algorithm (a token bucket kept as one timestamp per
//! client): a client may pull `per_second` times a second on average, with bursts of `burst`
//! pulls. A pull over the rate is first *delayed* (it sleeps, costing no CPU, until its slot
//! comes), as long as that slot is at most [`MAX_PULL_DELAY`] away; a pull whose slot is further
//! away is *refused* at once with `ResourceExhausted` and a retry hint.
//!
//! So a well-behaved client, which waits for each answer before pulling again, is at worst
//! slowed to the rate and never refused; a client firing many pulls at once gets its burst
//! served, about a second's worth queued, and everything else refused in microseconds.

use crate::config::PullRate;
use std::time::{Duration, Instant};

/// Longest a pull over the rate is held before it is served; beyond this it is refused.
pub const MAX_PULL_DELAY: Duration = Duration::from_secs(1);

/// One client's pacing state: the theoretical time its next pull is due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullPacer {
    due: Option<Instant>,
}

impl PullPacer {
    /// Reserves a slot for a pull arriving at `now`: `Ok(delay)` to serve it after `delay`
    /// (zero within the burst), or `Err(retry_after)` to refuse it; a refusal reserves nothing.
    pub fn reserve(&mut self, now: Instant, rate: PullRate) -> Result<Duration, Duration> {
        let Some(interval) = rate.interval() else {
            return Ok(Duration::ZERO);
        };
        let due = self.due.map_or(now, |d| d.max(now));
        let tolerance = interval.saturating_mul(rate.burst);
        let delay = due.saturating_duration_since(now).saturating_sub(tolerance);
        if delay > MAX_PULL_DELAY {
            return Err(delay - MAX_PULL_DELAY);
        }
        self.due = Some(due + interval);
        Ok(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: PullRate = PullRate {
        per_second: 10.0,
        burst: 5,
    };

    #[test]
    fn a_burst_passes_then_pulls_are_delayed_then_refused() {
        let t0 = Instant::now();
        let mut p = PullPacer::default();
        let mut delays = Vec::new();
        let refused = loop {
            match p.reserve(t0, RATE) {
                Ok(d) => delays.push(d),
                Err(retry) => break retry,
            }
        };
        // burst + 1 at once, then one every 100 ms up to a one-second wait.
        assert!(delays[..6].iter().all(|d| d.is_zero()), "{delays:?}");
        assert_eq!(delays.len(), 6 + 10);
        assert!(delays[6..].windows(2).all(|w| w[0] < w[1]));
        assert!(*delays.last().unwrap() <= MAX_PULL_DELAY);
        assert!(refused > Duration::ZERO && refused <= Duration::from_millis(100));
        // A refusal reserved nothing: the same instant is refused again, identically.
        assert_eq!(p.reserve(t0, RATE), Err(refused));
    }

    #[test]
    fn a_client_that_waits_for_its_answers_is_never_refused() {
        let mut now = Instant::now();
        let mut p = PullPacer::default();
        for _ in 0..10_000 {
            let delay = p
                .reserve(now, RATE)
                .expect("sequential pulls are only paced");
            assert!(delay <= Duration::from_millis(100));
            now += delay;
        }
    }

    #[test]
    fn the_bucket_refills_over_time() {
        let t0 = Instant::now();
        let mut p = PullPacer::default();
        while p.reserve(t0, RATE).is_ok() {}
        let later = t0 + Duration::from_secs(5);
        assert_eq!(p.reserve(later, RATE), Ok(Duration::ZERO));
    }

    #[test]
    fn an_unusable_rate_is_not_enforced() {
        let t0 = Instant::now();
        let mut p = PullPacer::default();
        for per_second in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let rate = PullRate {
                per_second,
                burst: 0,
            };
            for _ in 0..100 {
                assert_eq!(p.reserve(t0, rate), Ok(Duration::ZERO));
            }
        }
    }
}
