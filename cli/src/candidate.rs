//! `shoal coordinator --etcd ... --election NAME`: one of several coordinators serving a run,
//! the leader or a hot standby (see `shoal_coordinator::leadership` for the life of a
//! candidate).
//!
//! The listening socket is bound once and kept for the process's life: as a standby it serves
//! refusals that name the leader; once elected, the same address serves the run, so clients
//! that were told "standby" here find the leader here. The data is loaded once, before the
//! first campaign; what a term needs from the store (claim, checkpoint, round log) is read when
//! it is won.

use crate::host::{Durability, Outputs, SteppedDown, host, restore};
use crate::options::Plan;
use anyhow::{Context, Result, bail};
use shoal_coordinator::leadership::{Candidate, Election, Lease};
use shoal_coordinator::{Coordinator, CoordinatorError, Limits, Security, serve_standby};
use shoal_datasets::Split;
use shoal_models::ModelSpec;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// What a candidate needs beyond the run itself.
pub struct CandidateSetup {
    /// etcd member URLs.
    pub etcd: Vec<String>,
    /// The election name the run's coordinators share.
    pub election: String,
    /// The URL this coordinator announces to clients.
    pub advertise: String,
    /// TTL of the candidate's lease: how long a dead leader holds the run up.
    pub lease_ttl: Duration,
}

/// Everything loaded before the first campaign.
pub struct Loaded {
    /// The resolved plan.
    pub plan: Plan,
    /// The data (the coordinator evaluates on its test part).
    pub split: Split,
    /// The model's shape.
    pub spec: ModelSpec,
    /// Server limits.
    pub limits: Limits,
}

/// Campaigns, serves as a standby until elected, serves the run as leader, and goes back to
/// standby if the lease is lost, until the run ends or `shutdown` resolves.
pub async fn run_candidate(
    setup: CandidateSetup,
    loaded: Loaded,
    listener: std::net::TcpListener,
    security: Security,
    durability: &Durability,
    outputs: &Outputs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Loaded {
        plan,
        split,
        spec,
        limits,
    } = loaded;
    let election = Election::connect(&setup.etcd, &setup.election).await?;
    let me = Candidate {
        url: setup.advertise.clone(),
        run_id: plan.run.run_id(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    loop {
        // Standby: campaign, and meanwhile send clients to the leader.
        let lease = Lease::grant(&election, setup.lease_ttl).await?;
        let (leader, _following) = election.follow();
        let standby = Coordinator::new(plan.run.clone(), limits.clone(), spec.clone());
        let (end_standby, standby_ended) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve_standby(
            tokio_listener(&listener)?,
            standby,
            security.clone(),
            leader.clone(),
            async move {
                let _ = standby_ended.await;
            },
        ));
        let mut foreign = leader.clone();
        eprintln!(
            "standby for election {} at {} (lease {} s)",
            setup.election,
            me.url,
            setup.lease_ttl.as_secs()
        );
        let won = tokio::select! {
            won = election.campaign(&me, &lease) => won,
            found = foreign.wait_for(|l| l.as_ref().is_some_and(|c| c.run_id != me.run_id)) => {
                let other = found.ok().and_then(|l| l.clone());
                bail!(
                    "election {} is held by a coordinator of another run ({}, run {}; this run is {}): \
                     give each run its own --election name",
                    setup.election,
                    other.as_ref().map_or("?", |c| c.url.as_str()),
                    other.as_ref().map_or("?", |c| c.run_id.as_str()),
                    me.run_id
                );
            }
            () = stopped(stop_rx.clone()) => {
                lease.revoke(&election).await;
                return Ok(());
            }
        };
        // The standby server closes its connections gracefully (its answers are immediate);
        // clients redial the same address and reach the leader.
        let _ = end_standby.send(());
        let abort = serving.abort_handle();
        if tokio::time::timeout(Duration::from_millis(500), serving)
            .await
            .is_err()
        {
            info!("standby connections still open after 500 ms; dropping them");
            abort.abort();
        }
        let leadership = match won {
            Ok(leadership) => leadership,
            Err(e) => {
                warn!(error = %e, "not elected; campaigning again");
                continue;
            }
        };
        // Leader: claim the state with the elected epoch and serve the run.
        eprintln!(
            "elected leader of {} (epoch {:#x})",
            setup.election,
            leadership.epoch()
        );
        let prepared = match restore(
            &plan,
            split.clone(),
            &spec,
            limits.clone(),
            durability,
            Some(leadership.epoch()),
        ) {
            Ok(prepared) => prepared,
            Err(e) if is_deposed(&e) => {
                warn!(error = %e, "a newer leader owns the state; standing by again");
                continue;
            }
            Err(e) => return Err(e),
        };
        // The leader stops serving when its lease may have lapsed, and on Ctrl-C: then it
        // hands the run over to a standby instead of ending it for the clients.
        let mut lost = lease.lost();
        let mut interrupted = stop_rx.clone();
        let step_down = async move {
            tokio::select! {
                _ = lost.wait_for(|l| *l) => {}
                _ = interrupted.wait_for(|s| *s) => {}
            }
        };
        let served = host(
            &plan,
            prepared,
            tokio_listener(&listener)?,
            security.clone(),
            outputs,
            std::future::pending(),
            step_down,
        )
        .await;
        match served {
            Ok(_) => {
                // The run is over: hand over at once, so each standby finds it finished too.
                leadership.resign().await;
                lease.revoke(&election).await;
                return Ok(());
            }
            Err(e) if e.is::<SteppedDown>() && *stop_rx.borrow() => {
                leadership.resign().await;
                lease.revoke(&election).await;
                eprintln!("interrupted: the run is handed over to a standby coordinator");
                return Ok(());
            }
            Err(e) if e.is::<SteppedDown>() || is_deposed(&e) => {
                eprintln!("{e}; standing by again");
                continue;
            }
            Err(e) => {
                leadership.resign().await;
                lease.revoke(&election).await;
                return Err(e);
            }
        }
    }
}

/// Whether `err` says another coordinator owns the run's state now.
fn is_deposed(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<CoordinatorError>(),
        Some(CoordinatorError::Deposed { .. })
    )
}

/// Another handle on the bound socket, for the next server (standby or leader).
fn tokio_listener(listener: &std::net::TcpListener) -> Result<TcpListener> {
    let copy = listener
        .try_clone()
        .context("sharing the listening socket")?;
    TcpListener::from_std(copy).context("serving on the listening socket")
}
