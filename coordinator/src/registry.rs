//! The registry of clients: who joined, how much data they hold, and when they were last heard.
//!
//! A client's pulls double as its heartbeat; one whose pulls stop for longer than the liveness
//! window is no longer offered work, but keeps its id and comes back by pulling again. Each
//! record also paces its client's pulls ([`crate::pacing`]); a reconnect, or leaving and joining
//! again, keeps the pacing.

use crate::error::{CoordinatorError, Result};
use crate::pacing::{PullPacer, PullRate};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the coordinator knows about one client.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    /// Examples the client says it holds.
    pub num_examples: u64,
    /// Last join or pull.
    pub last_seen: Instant,
    /// When its next pull is due, under the pull rate limit.
    pub pacer: PullPacer,
}

/// Live clients by stable id; a `BTreeMap` so listings come sorted, independent of join order.
#[derive(Debug, Default)]
pub struct Registry {
    clients: BTreeMap<String, ClientRecord>,
    /// Pull pacing of clients that left, so leaving and joining again does not refill a
    /// client's pull budget. At most [`DEPARTED_CAP`] are kept.
    departed: BTreeMap<String, PullPacer>,
}

/// Most departed clients whose pacing is remembered (about 10 MB at the cap). Past it the
/// smallest id is forgotten: only an unauthenticated run, where anyone may use fresh ids and
/// per-id pacing cannot hold anyway, churns through that many ids.
const DEPARTED_CAP: usize = 100_000;

/// Checks that a client id is usable: 1 to 128 printable ASCII characters.
pub fn check_client_id(id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(CoordinatorError::BadClientId)
    }
}

impl Registry {
    /// Registers `id`, or refreshes it if it was already known (a reconnect).
    pub fn join(
        &mut self,
        id: &str,
        num_examples: u64,
        max_clients: usize,
        now: Instant,
    ) -> Result<()> {
        check_client_id(id)?;
        if !self.clients.contains_key(id) && self.clients.len() >= max_clients {
            return Err(CoordinatorError::TooManyClients(max_clients));
        }
        let pacer = match self.clients.get(id) {
            Some(record) => record.pacer,
            None => self.departed.remove(id).unwrap_or_default(),
        };
        self.clients.insert(
            id.to_owned(),
            ClientRecord {
                num_examples,
                last_seen: now,
                pacer,
            },
        );
        Ok(())
    }

    /// Paces a pull from `id` arriving at `now`: the delay before serving it, or a
    /// rate-limit refusal (which changes nothing, not even the heartbeat).
    pub fn pace(&mut self, id: &str, now: Instant, rate: PullRate) -> Result<Duration> {
        let record = self
            .clients
            .get_mut(id)
            .ok_or_else(|| CoordinatorError::UnknownClient(id.to_owned()))?;
        record
            .pacer
            .reserve(now, rate)
            .map_err(|retry| CoordinatorError::RateLimited {
                client: id.to_owned(),
                per_second: rate.per_second,
                retry_after_ms: retry.as_millis().max(1) as u64,
            })
    }

    /// Records a heartbeat; unknown ids are refused.
    pub fn touch(&mut self, id: &str, now: Instant) -> Result<()> {
        match self.clients.get_mut(id) {
            Some(record) => {
                record.last_seen = now;
                Ok(())
            }
            None => Err(CoordinatorError::UnknownClient(id.to_owned())),
        }
    }

    /// True if `id` has joined and not left.
    pub fn contains(&self, id: &str) -> bool {
        self.clients.contains_key(id)
    }

    /// Forgets a client that left, all but its pull pacing.
    pub fn leave(&mut self, id: &str) -> Result<()> {
        let record = self
            .clients
            .remove(id)
            .ok_or_else(|| CoordinatorError::UnknownClient(id.to_owned()))?;
        if self.departed.len() >= DEPARTED_CAP {
            self.departed.pop_first();
        }
        self.departed.insert(id.to_owned(), record.pacer);
        Ok(())
    }

    /// Sorted ids of clients heard from within `liveness`.
    pub fn available(&self, now: Instant, liveness: Duration) -> Vec<String> {
        self.clients
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last_seen) <= liveness)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client is registered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_touches_and_expires() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.join("b", 10, 10, t0).unwrap();
        r.join("a", 10, 10, t0).unwrap();
        assert_eq!(r.available(t0, Duration::from_secs(1)), vec!["a", "b"]);
        let later = t0 + Duration::from_secs(5);
        r.touch("b", later).unwrap();
        assert_eq!(r.available(later, Duration::from_secs(1)), vec!["b"]);
        assert!(matches!(
            r.touch("zz", later),
            Err(CoordinatorError::UnknownClient(_))
        ));
        r.leave("b").unwrap();
        assert!(!r.contains("b"));
    }

    #[test]
    fn pulls_are_paced_per_client_and_survive_a_reconnect() {
        let now = Instant::now();
        let rate = PullRate {
            per_second: 1.0,
            burst: 0,
        };
        let mut r = Registry::default();
        r.join("a", 1, 10, now).unwrap();
        r.join("b", 1, 10, now).unwrap();
        assert_eq!(r.pace("a", now, rate).unwrap(), Duration::ZERO);
        assert_eq!(r.pace("a", now, rate).unwrap(), Duration::from_secs(1));
        assert!(matches!(
            r.pace("a", now, rate),
            Err(CoordinatorError::RateLimited { .. })
        ));
        assert_eq!(
            r.pace("b", now, rate).unwrap(),
            Duration::ZERO,
            "b is unaffected"
        );
        r.join("a", 1, 10, now).unwrap();
        assert!(
            r.pace("a", now, rate).is_err(),
            "rejoining does not reset the pace"
        );
        r.leave("a").unwrap();
        r.join("a", 1, 10, now).unwrap();
        assert!(
            r.pace("a", now, rate).is_err(),
            "leaving and joining again does not reset the pace either"
        );
        assert!(matches!(
            r.pace("zz", now, rate),
            Err(CoordinatorError::UnknownClient(_))
        ));
    }

    #[test]
    fn refuses_bad_ids_and_overflow() {
        let now = Instant::now();
        let mut r = Registry::default();
        assert!(r.join("", 1, 10, now).is_err());
        assert!(r.join("has space", 1, 10, now).is_err());
        r.join("a", 1, 1, now).unwrap();
        r.join("a", 2, 1, now).unwrap();
        assert!(matches!(
            r.join("b", 1, 1, now),
            Err(CoordinatorError::TooManyClients(1))
        ));
    }
}
