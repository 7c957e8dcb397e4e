//! Campaigning in an etcd election: the candidates of one run (same election name) each hold a
//! key under the name, attached to their own lease; etcd makes the oldest key the leader. A
//! candidate's key is created when it starts campaigning, so leaders follow one another in key
//! creation order, and the creation revision of the leader's key only grows from one leader to
//! the next: that revision is the leader's epoch ([`epoch_of`]).

use crate::error::{CoordinatorError, Result};
use crate::leadership::lease::Lease;
use etcd_client::{Client, ConnectOptions, LeaderKey, ResignOptions};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Epochs of elected leaders start here, far above epochs taken from the clock in
/// milliseconds, so a run first served without an election can be taken over by one.
pub const ELECTED_EPOCH_BASE: u64 = 1 << 56;

/// How long a call to etcd that should answer at once may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The epoch of the leader whose election key was created at `revision`.
pub fn epoch_of(revision: i64) -> u64 {
    ELECTED_EPOCH_BASE + revision.max(0) as u64
}

/// What a candidate announces in the election: where clients reach it, and which run it serves
/// (so two runs with different configs cannot share an election name unnoticed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The URL clients dial, e.g. `http://10.0.0.5:7070`.
    pub url: String,
    /// The run id (a digest of the run config).
    pub run_id: String,
}

impl Candidate {
    fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| CoordinatorError::codec("encode the candidate", e))
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A connection to the etcd cluster holding the election `name`.
#[derive(Clone)]
pub struct Election {
    client: Client,
    name: String,
    endpoints: String,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Election {
    /// Connects to the etcd members at `endpoints` (`http://HOST:PORT` each) for the election
    /// `name`, and checks that the cluster answers: an unreachable cluster is an error after a
    /// few seconds, not a silent wait.
    pub async fn connect(endpoints: &[String], name: &str) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(CoordinatorError::Config(
                "--etcd needs at least one URL".into(),
            ));
        }
        if name.is_empty() || name.contains('/') {
            return Err(CoordinatorError::Config(format!(
                "--election {name:?}: a non-empty name without '/'"
            )));
        }
        let listed = endpoints.join(",");
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let unreachable = |e: &dyn std::fmt::Display| {
            CoordinatorError::Election(format!("etcd at {listed} cannot be reached: {e}"))
        };
        let mut client =
            tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, Some(options)))
                .await
                .map_err(|_| unreachable(&"no answer within 5 s"))?
                .map_err(|e| unreachable(&e))?;
        tokio::time::timeout(CALL_TIMEOUT, client.status())
            .await
            .map_err(|_| unreachable(&"no answer within 5 s"))?
            .map_err(|e| unreachable(&e))?;
        Ok(Self {
            client,
            name: format!("shoal/{name}"),
            endpoints: listed,
        })
    }

    /// The client underneath, for leases.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// The current leader, if there is one; `Err` if etcd does not answer.
    pub async fn leader(&self) -> Result<Option<Candidate>> {
        Ok(self.leader_key().await?.and_then(|(_, c)| c))
    }

    /// The current leader's election key and what it announced.
    async fn leader_key(&self) -> Result<Option<(Vec<u8>, Option<Candidate>)>> {
        let mut client = self.client.clone();
        match tokio::time::timeout(CALL_TIMEOUT, client.leader(self.name.as_str())).await {
            Err(_) => Err(CoordinatorError::Election(format!(
                "etcd at {} did not answer within 5 s",
                self.endpoints
            ))),
            Ok(Ok(reply)) => Ok(reply
                .kv()
                .map(|kv| (kv.key().to_vec(), Candidate::decode(kv.value())))),
            // No key under the name: no leader.
            Ok(Err(e)) if e.to_string().contains("no leader") => Ok(None),
            Ok(Err(e)) => Err(CoordinatorError::Election(e.to_string())),
        }
    }

    /// Follows who leads, for standbys to tell clients: the watch holds the leader (or `None`
    /// while there is none or etcd cannot be reached) until `stop` is dropped.
    pub fn follow(&self) -> (watch::Receiver<Option<Candidate>>, watch::Sender<()>) {
        let (tx, rx) = watch::channel(None);
        let (stop, mut stopped) = watch::channel(());
        let election = self.clone();
        tokio::spawn(async move {
            loop {
                let next = election.leader().await.unwrap_or_default();
                tx.send_if_modified(|now| {
                    let changed = *now != next;
                    *now = next;
                    changed
                });
                tokio::select! {
                    _ = stopped.changed() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        (rx, stop)
    }

    /// Campaigns as `me` under `lease` until elected; returns the leadership with its epoch.
    /// A broken call to etcd is retried (the lease keeps the candidate's place); a lease that
    /// lapses meanwhile is an error, and the caller campaigns again with a new one.
    pub async fn campaign(&self, me: &Candidate, lease: &Lease) -> Result<Leadership> {
        let value = me.encode()?;
        let mut lost = lease.lost();
        loop {
            let mut client = self.client.clone();
            let campaign = client.campaign(self.name.as_str(), value.clone(), lease.id());
            let reply = tokio::select! {
                reply = campaign => reply,
                _ = lost.wait_for(|l| *l) => {
                    return Err(CoordinatorError::Election("the lease lapsed while campaigning".into()));
                }
            };
            match reply {
                Ok(mut reply) => {
                    let Some(key) = reply.take_leader() else {
                        return Err(CoordinatorError::Election(
                            "etcd elected without naming the leader key".into(),
                        ));
                    };
                    // Elected only if the key is still ours and still the oldest: a campaign
                    // can return after its lease lapsed.
                    if lease.is_lost() {
                        return Err(CoordinatorError::Election(
                            "the lease lapsed while campaigning".into(),
                        ));
                    }
                    match self.leader_key().await? {
                        Some((now, _)) if now == key.key() => {}
                        other => {
                            debug!(leader = ?other.map(|(_, c)| c), "campaign returned, but another candidate leads; campaigning on");
                            continue;
                        }
                    }
                    let epoch = epoch_of(key.rev());
                    info!(election = %self.name, epoch, revision = key.rev(), "elected leader");
                    return Ok(Leadership {
                        election: self.clone(),
                        key,
                        epoch,
                    });
                }
                Err(e) => {
                    warn!(error = %e, "campaign call failed; campaigning again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// This coordinator's term as leader.
#[derive(Debug)]
pub struct Leadership {
    election: Election,
    key: LeaderKey,
    epoch: u64,
}

impl Leadership {
    /// The leader's epoch: every state write and fence of this term carries it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Hands leadership on at once (the next candidate need not wait for the lease to lapse).
    /// Best effort: if etcd does not answer, the lease lapses anyway.
    pub async fn resign(self) {
        let mut client = self.election.client.clone();
        let options = ResignOptions::new().with_leader(self.key);
        if let Err(e) = tokio::time::timeout(CALL_TIMEOUT, client.resign(Some(options))).await {
            warn!(error = %e, "resigning took too long; the lease will lapse instead");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elected_epochs_grow_with_the_revision_and_exceed_clock_epochs() {
        assert!(epoch_of(2) > epoch_of(1));
        // Epochs from the clock (milliseconds) stay below elected ones for millennia.
        let year_3000_ms: u64 = 32_503_680_000_000;
        assert!(epoch_of(1) > year_3000_ms);
        assert_eq!(epoch_of(-5), ELECTED_EPOCH_BASE);
    }

    #[test]
    fn candidates_round_trip_and_garbage_is_no_candidate() {
        let me = Candidate {
            url: "http://127.0.0.1:7070".into(),
            run_id: "abc".into(),
        };
        assert_eq!(Candidate::decode(&me.encode().unwrap()), Some(me));
        assert_eq!(Candidate::decode(b"not json"), None);
    }
}
