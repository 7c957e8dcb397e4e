//! The registry of clients: who joined, how much data they hold, and when they were last heard.
//!
//! A client's pulls double as its heartbeat; one whose pulls stop for longer than the liveness
//! window is no longer offered work, but keeps its id and comes back by pulling again. Each
//! record also paces its client's pulls ([`crate::engine::pacing`]); a reconnect, or leaving and joining
//! again, keeps the pacing.

use crate::config::PullRate;
use crate::engine::pacing::PullPacer;
use crate::error::{CoordinatorError, Result};
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
    /// Pulls it holds open right now: a client waiting in a long-poll is alive however long
    /// ago the poll started (its connection would drop, and the poll with it, if it died).
    pub polling: u32,
    /// Bumped by each pull it starts and each join: only its newest pull may take a task.
    /// A client holds one request at a time, so an older pull still open is one whose
    /// connection died unnoticed; a task it took would be answered into the void and the
    /// round would wait for the client's update until its deadline.
    pub newest_pull: u64,
}

impl ClientRecord {
    /// Waiting in a pull now, or heard from within `liveness`.
    fn is_live(&self, now: Instant, liveness: Duration) -> bool {
        self.polling > 0 || now.saturating_duration_since(self.last_seen) <= liveness
    }
}

/// Live clients by stable id; a `BTreeMap` so listings come sorted, independent of join order.
#[derive(Debug, Default)]
pub struct Registry {
    clients: BTreeMap<String, ClientRecord>,
    /// Pull pacing of clients that left, so leaving and joining again does not refill a
    /// client's pull budget. At most [`DEPARTED_CAP`] are kept.
    departed: BTreeMap<String, PullPacer>,
    /// Joins, heartbeats and departures so far: a draining coordinator watches it move.
    heard: u64,
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

/// At most `max` of `ids`, comma-separated, and how many more there are: a client list short
/// enough for a log line.
pub fn name_some(ids: &[&String], max: usize) -> String {
    let mut text = ids
        .iter()
        .take(max)
        .map(|id| id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > max {
        text.push_str(&format!(" and {} more", ids.len() - max));
    }
    text
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
        self.heard += 1;
        let (pacer, polling, newest_pull) = match self.clients.get(id) {
            // Joining again (a reconnect) supersedes the pulls it had open.
            Some(record) => (record.pacer, record.polling, record.newest_pull + 1),
            None => (self.departed.remove(id).unwrap_or_default(), 0, 0),
        };
        self.clients.insert(
            id.to_owned(),
            ClientRecord {
                num_examples,
                last_seen: now,
                pacer,
                polling,
                newest_pull,
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
                self.heard += 1;
                Ok(())
            }
            None => Err(CoordinatorError::UnknownClient(id.to_owned())),
        }
    }

    /// A pull from `id` started: it is counted as open ([`ClientRecord::polling`]) and becomes
    /// the client's newest; its number, for [`Registry::is_newest_pull`].
    pub fn pull_started(&mut self, id: &str) -> u64 {
        match self.clients.get_mut(id) {
            Some(record) => {
                record.polling = record.polling.saturating_add(1);
                record.newest_pull += 1;
                record.newest_pull
            }
            None => 0,
        }
    }

    /// A pull from `id` ended.
    pub fn pull_ended(&mut self, id: &str) {
        if let Some(record) = self.clients.get_mut(id) {
            record.polling = record.polling.saturating_sub(1);
        }
    }

    /// True if pull number `pull` is the newest request `id` made (no later pull or join).
    pub fn is_newest_pull(&self, id: &str, pull: u64) -> bool {
        self.clients
            .get(id)
            .is_some_and(|record| record.newest_pull == pull)
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
        self.heard += 1;
        if self.departed.len() >= DEPARTED_CAP {
            self.departed.pop_first();
        }
        self.departed.insert(id.to_owned(), record.pacer);
        Ok(())
    }

    /// Sorted ids of clients waiting in a pull now or heard from within `liveness`.
    pub fn available(&self, now: Instant, liveness: Duration) -> Vec<String> {
        self.clients
            .iter()
            .filter(|(_, r)| r.is_live(now, liveness))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Who is missing, for a log line: clients that left and clients silent past `liveness`,
    /// naming at most `max` of each, e.g. "left: a, b; silent: c and 4 more".
    pub fn absent(&self, now: Instant, liveness: Duration, max: usize) -> String {
        let silent: Vec<&String> = self
            .clients
            .iter()
            .filter(|(_, r)| !r.is_live(now, liveness))
            .map(|(id, _)| id)
            .collect();
        let left: Vec<&String> = self.departed.keys().collect();
        let name = |ids: &[&String]| name_some(ids, max);
        match (left.is_empty(), silent.is_empty()) {
            (true, true) => "none known".into(),
            (false, true) => format!("left: {}", name(&left)),
            (true, false) => format!("silent: {}", name(&silent)),
            (false, false) => format!("left: {}; silent: {}", name(&left), name(&silent)),
        }
    }

    /// Joins, heartbeats and departures so far.
    pub fn heard(&self) -> u64 {
        self.heard
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
        let first = r.pull_started("a");
        assert_eq!(
            r.available(later, Duration::from_secs(1)),
            vec!["a", "b"],
            "a client waiting in a pull is alive"
        );
        assert!(r.is_newest_pull("a", first));
        // A second pull, then a join, each supersede the one before.
        let second = r.pull_started("a");
        assert!(!r.is_newest_pull("a", first) && r.is_newest_pull("a", second));
        r.join("a", 10, 10, later).unwrap();
        assert!(!r.is_newest_pull("a", second));
        r.pull_ended("a");
        r.pull_ended("a");
        r.leave("b").unwrap();
        assert!(!r.contains("b"));
        let much_later = t0 + Duration::from_secs(10);
        assert_eq!(
            r.absent(much_later, Duration::from_secs(1), 10),
            "left: b; silent: a"
        );
        r.join("c", 1, 10, much_later).unwrap();
        r.join("d", 1, 10, much_later).unwrap();
        r.leave("c").unwrap();
        r.leave("d").unwrap();
        assert_eq!(
            r.absent(much_later, Duration::from_secs(60), 2),
            "left: b, c and 1 more"
        );
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
