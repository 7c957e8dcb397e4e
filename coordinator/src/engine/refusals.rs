//! Counting refused requests by reason, so an operator can see what broken or hostile clients
//! tried (`Coordinator::refusals`, and `refusals` in the run summary).
//!
//! Counted by [`Refusal`] wherever one is made: where the gRPC service turns a
//! [`crate::CoordinatorError`] into a status, where it meets a broken update stream, around the
//! generated server for unary requests tonic could not decode, and in the listener for
//! connections it refuses or closes. The counter has its own small lock, so a flood of
//! refusals never contends for the round's state.
//!
//! Log lines about refusals are rate-limited per reason ([`Refusals::may_log`]): one client
//! with valid credentials must not be able to fill the operator's disk with warnings.

use crate::refusal::Refusal;
use crate::sync::lock;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per refusal reason this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Refusals so far, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<Refusal, u64>>,
    /// Per reason: when a line was last logged, and refusals not logged since.
    logged: Mutex<BTreeMap<&'static str, (Instant, u64)>>,
}

impl crate::refusal::CountRefusals for Refusals {
    fn count_refusal(&self, refusal: Refusal) {
        self.record(refusal);
    }
}

impl Refusals {
    /// Counts one refusal.
    pub fn record(&self, refusal: Refusal) {
        *lock(&self.counts).entry(refusal).or_insert(0) += 1;
    }

    /// The counts so far, by reason.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.counts)
            .iter()
            .map(|(refusal, n)| (refusal.reason().to_string(), *n))
            .collect()
    }

    /// Whether a log line on `topic` (a refusal's reason, or another event a client can
    /// repeat at will, such as leaving) may be written at `now`: `Some(n)` if so, `n` being how
    /// many were left unlogged since the last line; `None` to stay quiet.
    pub fn may_log(&self, topic: &'static str, now: Instant) -> Option<u64> {
        let mut logged = lock(&self.logged);
        match logged.get_mut(topic) {
            Some((last, quiet)) if now.saturating_duration_since(*last) < LOG_EVERY => {
                *quiet += 1;
                None
            }
            Some((last, quiet)) => {
                *last = now;
                Some(std::mem::take(quiet))
            }
            None => {
                logged.insert(topic, (now, 0));
                Some(0)
            }
        }
    }

    /// All refusals so far.
    pub fn total(&self) -> u64 {
        lock(&self.counts).values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let r = Refusals::default();
        r.record(Refusal::StaleFence);
        r.record(Refusal::NonFinite);
        r.record(Refusal::StaleFence);
        assert_eq!(
            r.snapshot(),
            BTreeMap::from([("non_finite".into(), 1), ("stale_fence".into(), 2)])
        );
        assert_eq!(r.total(), 3);
    }

    #[test]
    fn log_lines_are_rate_limited_per_reason() {
        let r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.may_log("impersonation", t0), Some(0));
        for _ in 0..7000 {
            assert_eq!(
                r.may_log("impersonation", t0 + Duration::from_secs(1)),
                None
            );
        }
        assert_eq!(r.may_log("unauthenticated", t0), Some(0), "per topic");
        assert_eq!(r.may_log("impersonation", t0 + LOG_EVERY), Some(7000));
        assert_eq!(r.may_log("impersonation", t0 + LOG_EVERY), None);
    }
}
