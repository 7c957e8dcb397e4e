//! Counting refused requests by reason, so an operator can see what broken or hostile clients
//! tried (`Coordinator::refusals`, and `refusals` in the run summary).
//!
//! Counted where the gRPC service turns a [`crate::CoordinatorError`] into a status (the
//! reasons are the stable keys of [`crate::CoordinatorError::reason`]), where it meets a broken
//! update stream (`message_too_large`, `stream_cancelled`, `stream_error`), and around the
//! generated server for unary requests tonic could not decode (`malformed_message`,
//! `message_too_large`; see `undecodable.rs`). The counter
//! has its own small lock, so a flood of refusals never contends for the round's state.
//!
//! Log lines about refusals are rate-limited per reason ([`Refusals::may_log`]): one client
//! with valid credentials must not be able to fill the operator's disk with warnings.

use crate::sync::lock;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per refusal reason this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Refusals so far, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Per reason: when a line was last logged, and refusals not logged since.
    logged: Mutex<BTreeMap<&'static str, (Instant, u64)>>,
}

impl Refusals {
    /// Counts one refusal for `reason`.
    pub fn record(&self, reason: &'static str) {
        *lock(&self.counts).entry(reason).or_insert(0) += 1;
    }

    /// The counts so far, by reason.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.counts)
            .iter()
            .map(|(reason, n)| ((*reason).to_string(), *n))
            .collect()
    }

    /// Whether a log line about a refusal for `reason` may be written at `now`: `Some(n)` if
    /// so, `n` being how many were left unlogged since the last line; `None` to stay quiet.
    pub fn may_log(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut logged = lock(&self.logged);
        match logged.get_mut(reason) {
            Some((last, quiet)) if now.saturating_duration_since(*last) < LOG_EVERY => {
                *quiet += 1;
                None
            }
            Some((last, quiet)) => {
                *last = now;
                Some(std::mem::take(quiet))
            }
            None => {
                logged.insert(reason, (now, 0));
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
        r.record("stale_fence");
        r.record("non_finite");
        r.record("stale_fence");
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
        assert_eq!(r.may_log("unauthenticated", t0), Some(0), "per reason");
        assert_eq!(r.may_log("impersonation", t0 + LOG_EVERY), Some(7000));
        assert_eq!(r.may_log("impersonation", t0 + LOG_EVERY), None);
    }
}
