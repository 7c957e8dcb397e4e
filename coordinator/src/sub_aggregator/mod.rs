//! A sub-aggregator: a process between clients and the coordinator (or another sub-aggregator)
//! that spreads the coordinator's load. Clients speak the unchanged fleet protocol to it and
//! cannot tell it from a coordinator.
//!
//! * Join, Pull, Abandon and Leave are relayed upstream under the client's own id, so the
//!   coordinator still registers, selects, fences and times out *clients*; the aggregator only
//!   notes which clients were handed which round's task.
//! * Each round's global state is fetched upstream once and served to every client from here.
//! * Updates are folded here into the same exact sum the coordinator keeps ([`crate::aggregate`])
//!   and sent upstream as one partial sum (PushPartial) once every client handed the task here
//!   delivered or is gone, or once the oldest has waited `hold`: integer sums add exactly, so
//!   a tree of aggregators gives the bits of a flat run. Rounds whose updates must stay whole
//!   (k-FED seeding, evaluation) are relayed update by update.
//! * A child aggregator's partial sums are folded like updates, so trees have any depth.
//! * Clients meet the defences and authentication of a coordinator ([`AggregatorConfig`]'s
//!   `security` and `limits`); the aggregator checks every request's client id itself and
//!   relays it upstream with its *own* credentials ([`Upstream::with_token`], a client
//!   certificate on its channels). The upstream lets it act for clients and send partial sums
//!   only if it lists its id as an aggregator ([`crate::net::auth::AuthPolicy::relays`]).
//!
//! An aggregator keeps nothing that cannot be redone: if it dies, its clients move to another
//! address of their list, join again, are handed their task again by the coordinator (which
//! never saw their update) and recompute it, seeded, to the same bits.

mod rounds;
mod service;
mod upstream;

pub use service::AggregatorService;
pub use upstream::Upstream;

use crate::engine::refusals::Refusals;
use crate::error::Result;
use crate::net::auth::AuthPolicy;
use crate::strategy::results::PartialSum;
use crate::{Limits, Security};
use rounds::{RoundState, Rounds};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};

/// How often pending partial sums are looked at.
const FLUSH_TICK: Duration = Duration::from_millis(20);

/// Once the run is over upstream, a sub-aggregator tells its clients so itself, and stops
/// when none came to hear it for this long.
const FINISH_GRACE: Duration = Duration::from_secs(3);

/// Settings of one sub-aggregator.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// Its id upstream (on its partial sums).
    pub id: String,
    /// Longest an update waits here for the round's other clients before it is sent up.
    pub hold: Duration,
    /// What clients may send and hold open, as on a coordinator: the largest update
    /// (`max_update_values`) and chunk (`max_chunk_bytes`, also the chunk size of the partial
    /// sums sent up), connections, streams and timeouts. The run's rules (norm bound, pacing)
    /// come from upstream.
    pub limits: Limits,
    /// How clients connect and prove who they are, as on a coordinator; identities listed as
    /// aggregators may be child aggregators.
    pub security: Security,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            id: "aggregator".into(),
            hold: Duration::from_millis(200),
            limits: Limits::default(),
            security: Security::plaintext(),
        }
    }
}

/// What the service and the flusher share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: AggregatorConfig,
    pub(crate) upstream: Upstream,
    pub(crate) rounds: Rounds,
    /// Wakes the flusher when an update arrives or a client goes.
    pub(crate) wake: Notify,
    /// Woken once the run is over upstream.
    pub(crate) finished: Notify,
    /// How the run ended upstream, once it has: clients are then told here, without a relay
    /// (the upstream may be gone).
    pub(crate) run_over: std::sync::OnceLock<shoal_proto::v1::Finished>,
    /// Requests answered with the end of the run: the aggregator stops once they stop coming.
    pub(crate) told_over: std::sync::atomic::AtomicU64,
    /// What clients must prove (from `config.security`).
    pub(crate) auth: AuthPolicy,
    /// Requests and connections refused, by reason.
    pub(crate) refusals: Arc<Refusals>,
}

/// Notes a failed upstream call: if it moved the aggregator to its next upstream address,
/// every partial sum sent up for the rounds still passing through is sent there again.
pub(crate) fn upstream_failed(shared: &Arc<Shared>, status: &tonic::Status, used: usize) {
    if !shared.upstream.failed(status, used) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        for state in shared.rounds.all() {
            for partial in state.sent() {
                info!(fence = %state.fence, clients = partial.reports.len(), "partial sum sent again to the new upstream");
                push(&shared, &state, &partial).await;
            }
        }
    });
}

/// Serves clients on `listener` until `shutdown` resolves or a grace period after the run
/// ended upstream; partial sums still pending are sent before it returns. Clients meet the
/// same defences and authentication as at a coordinator (see [`crate::net::server`]).
pub async fn serve(
    config: AggregatorConfig,
    upstream: Upstream,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let shared = Arc::new(Shared {
        auth: config.security.policy(),
        config,
        upstream,
        rounds: Rounds::default(),
        wake: Notify::new(),
        finished: Notify::new(),
        run_over: std::sync::OnceLock::new(),
        told_over: std::sync::atomic::AtomicU64::new(0),
        refusals: Arc::new(Refusals::default()),
    });
    let flusher = tokio::spawn(flush_loop(shared.clone()));
    let ended = {
        let shared = shared.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = async {
                    shared.finished.notified().await;
                    loop {
                        let told = shared.told_over.load(std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(FINISH_GRACE).await;
                        if shared.told_over.load(std::sync::atomic::Ordering::Relaxed) == told {
                            break;
                        }
                    }
                } => info!("the run is over upstream and every client heard so; stopping"),
            }
        }
    };
    let served = crate::net::server::serve_guarded(
        listener,
        &shared.config.limits,
        shared.refusals.clone(),
        &shared.config.security,
        AggregatorService::new(shared.clone()),
        ended,
    )
    .await;
    flusher.abort();
    flush_all(&shared, Duration::ZERO).await;
    let refused = shared.refusals.snapshot();
    if !refused.is_empty() {
        info!(?refused, "requests refused while serving");
    }
    served
}

/// Sends every partial sum that is due, until aborted.
async fn flush_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(FLUSH_TICK) => {}
        }
        flush_all(&shared, shared.config.hold).await;
    }
}

/// Sends the partial sums due after `hold`.
async fn flush_all(shared: &Arc<Shared>, hold: Duration) {
    for state in shared.rounds.all() {
        if let Some(partial) = state.take_due(hold) {
            push(shared, &state, &partial).await;
        }
    }
}

/// Streams one partial sum of the round `state` upstream; a refusal is logged (its updates'
/// round is over, or they were counted already) and its clients forgotten here, so any the
/// upstream hands their task again deliver again; a lost upstream moves to the next address
/// and the kept partial sums follow.
async fn push(shared: &Arc<Shared>, state: &RoundState, partial: &Arc<PartialSum>) {
    let fence = &state.fence;
    let clients = partial.reports.len();
    let parts = partial.to_wire(
        &shared.config.id,
        fence.clone(),
        shared.config.limits.max_chunk_bytes,
    );
    let (used, mut client) = shared.upstream.client();
    match client
        .push_partial(shared.upstream.request(tokio_stream::iter(parts)))
        .await
    {
        Ok(reply) => {
            state.acknowledged(partial);
            info!(
                %fence,
                clients,
                accepted_in_round = reply.get_ref().accepted_in_round,
                "partial sum sent upstream"
            );
        }
        Err(status) => {
            if status.metadata().get(shoal_proto::REASON_HEADER).is_some() {
                state.forget(partial);
            }
            upstream_failed(shared, &status, used);
            warn!(%fence, clients, status = %status.message(), code = ?status.code(), "partial sum refused upstream");
        }
    }
}
