//! Which coordinator a client talks to, when a run has standby coordinators.
//!
//! A client is given every coordinator's URL (`--coordinator URL1,URL2,...`). It talks to one
//! at a time. A standby refuses with reason `standby` and, once a leader is elected, its URL in
//! the `shoal-leader` metadata: the client moves there. A coordinator that cannot be reached
//! sends the client to the next URL in the list. Clients of one fleet share where they go, so
//! the first to learn of a new leader moves them all, and a dead address is left once, not once
//! per client.

use crate::connection::Fleet;
use crate::error::{ClientError, reason};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The coordinators a client may talk to, and the one it talks to now.
#[derive(Debug, Clone)]
pub struct Route {
    /// One way to reach each coordinator URL (a gRPC client, or the coordinator in this
    /// process), in the order of `urls`.
    fleets: Vec<Fleet>,
    urls: Arc<[String]>,
    /// Index of the coordinator to talk to, shared by a fleet's clients.
    current: Arc<AtomicUsize>,
    /// The index the last request went to.
    used: usize,
    /// Which coordinators failed to answer since one last did (this client's view).
    failed: Vec<bool>,
}

/// Where a failed request sends the client next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// A standby named the leader: go there now.
    ToLeader,
    /// A standby answered, but no leader is elected yet: ask again shortly.
    AwaitingLeader,
    /// The coordinator could not be reached: the next one in the list is tried.
    ToNext,
    /// Only one coordinator is known: stay.
    Stayed,
}

impl From<Fleet> for Route {
    fn from(fleet: Fleet) -> Self {
        Self::new(vec![fleet], Arc::from(vec![String::new()]), Arc::default())
    }
}

impl Route {
    /// Talks to `fleets[i]` for `urls[i]`, starting at the shared index `current`.
    pub fn new(fleets: Vec<Fleet>, urls: Arc<[String]>, current: Arc<AtomicUsize>) -> Self {
        let failed = vec![false; fleets.len()];
        Self {
            fleets,
            urls,
            current,
            used: 0,
            failed,
        }
    }

    /// The way to the coordinator to talk to now.
    pub fn fleet(&mut self) -> &mut Fleet {
        let at = self.current.load(Ordering::Relaxed) % self.fleets.len().max(1);
        self.used = at;
        &mut self.fleets[at]
    }

    /// How many coordinators this route knows.
    pub fn len(&self) -> usize {
        self.fleets.len()
    }

    /// True if it knows none (never, once built from a fleet).
    pub fn is_empty(&self) -> bool {
        self.fleets.is_empty()
    }

    /// The URL of the coordinator talked to last.
    pub fn url(&self) -> &str {
        self.urls.get(self.used).map_or("", String::as_str)
    }

    /// A coordinator answered: none counts as failed any more.
    pub fn answered(&mut self) {
        self.failed.iter_mut().for_each(|f| *f = false);
    }

    /// True once every coordinator failed to answer since one last did: only then is it
    /// worth backing off further.
    pub fn all_failed(&self) -> bool {
        self.failed.iter().all(|f| *f)
    }

    /// After a request failed with `err` (one worth retrying), decides where to go next.
    pub fn after_failure(&mut self, err: &ClientError) -> Moved {
        if let ClientError::Refused(status) = err
            && reason(status) == Some("standby")
        {
            self.answered();
            let leader = status
                .metadata()
                .get(shoal_proto::LEADER_HEADER)
                .and_then(|v| v.to_str().ok());
            return match leader.and_then(|url| self.urls.iter().position(|u| same_url(u, url))) {
                Some(at) if at != self.used => {
                    self.current.store(at, Ordering::Relaxed);
                    Moved::ToLeader
                }
                // It names itself: it won and is taking the run over.
                Some(_) => Moved::AwaitingLeader,
                // It names a leader this client was not given: try the others.
                None if leader.is_some() => self.next(),
                None => Moved::AwaitingLeader,
            };
        }
        if let Some(failed) = self.failed.get_mut(self.used) {
            *failed = true;
        }
        self.next()
    }

    /// Moves every client sharing this route from the coordinator just used to the next one
    /// (once, however many of them fail there at the same moment).
    fn next(&mut self) -> Moved {
        if self.fleets.len() < 2 {
            return Moved::Stayed;
        }
        let next = (self.used + 1) % self.fleets.len();
        let _ =
            self.current
                .compare_exchange(self.used, next, Ordering::Relaxed, Ordering::Relaxed);
        Moved::ToNext
    }
}

/// Whether two coordinator URLs name the same place (ignoring a trailing slash and case).
fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// Splits a `--coordinator` value into its URLs (comma-separated, at least one).
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::connection::{BearerAuth, channel, fleet_client};
    use tonic::Status;
    use tonic::metadata::MetadataValue;

    fn route(urls: &[&str], current: Arc<AtomicUsize>) -> Route {
        let fleets = urls
            .iter()
            .map(|u| fleet_client(channel(u, None).unwrap(), BearerAuth::none()))
            .collect();
        let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
        Route::new(fleets, Arc::from(urls), current)
    }

    fn standby(leader: Option<&'static str>) -> ClientError {
        let mut status = Status::unavailable("standby");
        status.metadata_mut().insert(
            shoal_proto::REASON_HEADER,
            MetadataValue::from_static("standby"),
        );
        if let Some(leader) = leader {
            status.metadata_mut().insert(
                shoal_proto::LEADER_HEADER,
                MetadataValue::from_static(leader),
            );
        }
        ClientError::Refused(status)
    }

    #[tokio::test]
    async fn clients_follow_the_named_leader_and_leave_dead_addresses_together() {
        let shared = Arc::new(AtomicUsize::new(0));
        let urls = [
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ];
        let mut a = route(&urls, shared.clone());
        let mut b = route(&urls, shared.clone());
        // Both fail at the first address at once: the fleet moves on once, not twice.
        a.fleet();
        b.fleet();
        let down = ClientError::Refused(Status::unavailable("connection refused"));
        assert_eq!(a.after_failure(&down), Moved::ToNext);
        assert_eq!(b.after_failure(&down), Moved::ToNext);
        assert_eq!(shared.load(Ordering::Relaxed), 1);
        // The standby there names the third as leader: everyone goes there.
        a.fleet();
        assert_eq!(
            a.after_failure(&standby(Some("http://127.0.0.1:3/"))),
            Moved::ToLeader
        );
        b.fleet();
        assert_eq!(b.url(), "http://127.0.0.1:3");
        // No leader yet: stay and ask again.
        assert_eq!(b.after_failure(&standby(None)), Moved::AwaitingLeader);
        assert_eq!(shared.load(Ordering::Relaxed), 2);
        // A standby naming a leader this client was not given: try the next.
        b.fleet();
        assert_eq!(
            b.after_failure(&standby(Some("http://10.9.9.9:7070"))),
            Moved::ToNext
        );
        assert_eq!(shared.load(Ordering::Relaxed), 0);
        // A standby naming itself is taking over: ask it again.
        a.fleet();
        assert_eq!(
            a.after_failure(&standby(Some("http://127.0.0.1:1"))),
            Moved::AwaitingLeader
        );
    }

    #[tokio::test]
    async fn backing_off_waits_until_every_coordinator_failed() {
        let mut route = route(
            &["http://127.0.0.1:1", "http://127.0.0.1:2"],
            Arc::default(),
        );
        let down = ClientError::Refused(Status::unavailable("connection refused"));
        route.fleet();
        route.after_failure(&down);
        // The same address failing twice (other clients moved back to it) is not every one.
        route.fleet();
        route.current.store(0, Ordering::Relaxed);
        route.fleet();
        route.after_failure(&down);
        assert!(!route.all_failed());
        route.fleet();
        assert_eq!(route.after_failure(&down), Moved::ToNext);
        assert!(route.all_failed());
        // A standby answering means someone is there: no longer all failed.
        route.fleet();
        route.after_failure(&standby(None));
        assert!(!route.all_failed());
    }

    #[tokio::test]
    async fn a_single_coordinator_is_kept() {
        let mut only = route(&["http://127.0.0.1:1"], Arc::default());
        only.fleet();
        let down = ClientError::Refused(Status::unavailable("connection refused"));
        assert_eq!(only.after_failure(&down), Moved::Stayed);
        assert_eq!(only.after_failure(&standby(None)), Moved::AwaitingLeader);
        assert_eq!(
            split_urls(" http://a:1, http://b:2 ,,"),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
    }
}
