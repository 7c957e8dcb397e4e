//! A candidate's etcd lease, kept alive in the background. The lease is what makes a dead
//! leader's place lapse: when its process dies, its machine goes, or it pauses, nobody renews
//! the lease, etcd deletes its election key after the TTL, and the next candidate is elected.
//!
//! The keeper is also the leader's own alarm. It renews every fifth of the TTL; a renewal
//! counts only once etcd has answered it, and the lease is then alive until the TTL after the
//! renewal was *sent* (etcd's expiry is at least that late). Once that moment passes without a
//! newer answer, or etcd says the lease is gone, the lease is *lost*: the leader stops serving
//! at once, before a successor could have been elected. A leader that was paused (SIGSTOP, a
//! long stall) finds the moment passed as soon as it runs again.

use crate::error::{CoordinatorError, Result};
use crate::leadership::election::Election;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

/// A lease and its keeper task; dropping it stops renewing (and etcd lets it lapse).
#[derive(Debug)]
pub struct Lease {
    id: i64,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Lease {
    /// Grants a lease of `ttl` (whole seconds, at least 2: etcd's minimum on default settings)
    /// and starts renewing it.
    pub async fn grant(election: &Election, ttl: Duration) -> Result<Self> {
        let seconds = ttl.as_secs().max(2) as i64;
        let ttl = Duration::from_secs(seconds as u64);
        let mut client = election.client();
        let sent = Instant::now();
        let granted =
            tokio::time::timeout(Duration::from_secs(5), client.lease_grant(seconds, None))
                .await
                .map_err(|_| CoordinatorError::Election("granting a lease took over 5 s".into()))?
                .map_err(|e| CoordinatorError::Election(format!("granting a lease: {e}")))?;
        let id = granted.id();
        let (tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(election.clone(), id, ttl, sent + ttl, tx));
        Ok(Self { id, lost, keeper })
    }

    /// The lease id, for the election key.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// True once the lease may have lapsed.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// A watch that turns true once the lease may have lapsed.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Gives the lease up at once (its election key goes with it). Best effort.
    pub async fn revoke(self, election: &Election) {
        let mut client = election.client();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(self.id)).await;
    }
}

/// Renews lease `id` until it is lost; `alive_until` is how long the last answered renewal
/// (or the grant) keeps it alive.
async fn keep_alive(
    election: Election,
    id: i64,
    ttl: Duration,
    mut alive_until: Instant,
    lost: watch::Sender<bool>,
) {
    let every = ttl / 5;
    'reconnect: loop {
        if Instant::now() >= alive_until {
            break;
        }
        let mut client = election.client();
        let opened = tokio::time::timeout_at(alive_until, client.lease_keep_alive(id)).await;
        let (mut keeper, mut answers) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                debug!(error = %e, "lease keep-alive stream failed to open; retrying");
                tokio::time::sleep(every.min(Duration::from_millis(100))).await;
                continue;
            }
            Err(_) => break,
        };
        loop {
            let sent = Instant::now();
            if sent >= alive_until {
                break 'reconnect;
            }
            let answered = tokio::time::timeout_at(alive_until, async {
                keeper.keep_alive().await?;
                answers.message().await
            })
            .await;
            match answered {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => alive_until = sent + ttl,
                Ok(Ok(Some(_))) => {
                    warn!(lease = id, "etcd says the lease has expired");
                    break 'reconnect;
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    debug!(lease = id, "lease keep-alive stream broke; reopening");
                    continue 'reconnect;
                }
                Err(_) => break 'reconnect,
            }
            // Wake up at the next renewal, or at the expiry if the clock jumped past it (a
            // paused process wakes up here and finds the lease gone).
            tokio::time::sleep_until((sent + every).min(alive_until)).await;
        }
    }
    warn!(
        lease = id,
        "the lease lapsed (etcd unanswered for the whole TTL, or this process was paused)"
    );
    let _ = lost.send(true);
}
