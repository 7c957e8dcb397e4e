//! Counting refused requests by reason, so an operator can see what broken or hostile clients
//! tried (`Coordinator::refusals`, and `refusals` in the run summary).
//!
//! Counted where the gRPC service turns a [`crate::CoordinatorError`] into a status (the
//! reasons are the stable keys of [`crate::CoordinatorError::reason`]), where it meets a broken
//! update stream (`message_too_large`, `stream_cancelled`, `stream_error`), and around the
//! generated server for unary requests tonic could not decode (`malformed_message`,
//! `message_too_large`; see `undecodable.rs`). The counter
//! has its own small lock, so a flood of refusals never contends for the round's state.

use crate::round::lock;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Refusals so far, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<&'static str, u64>>,
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
}
