//! One way to start a run: serve a coordinator on a listener, drive its rounds, and once the run
//! has ended keep serving until clients have heard so, then stop the server. The CLI, the tests
//! and the benchmarks all start runs through [`Coordinator::host`], so the order start → serve
//! → run → drain → stop is written once.

use crate::engine::driver::RunOutcome;
use crate::engine::{Coordinator, RoundDriver};
use crate::error::{CoordinatorError, Result};
use crate::net::server::{Security, serve_with};
use crate::store::metrics::RoundRecord;
use crate::store::recovery::Resume;
use crate::strategy::Strategy;
use shoal_datasets::Dataset;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

/// Longest the server stays up by default after the run ended, so that clients still pulling,
/// or backing off after a lost connection, hear that it ended (see [`Coordinator::drain`]).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// What a hosted run starts from, beyond the coordinator itself.
pub struct RunStart {
    strategy: Box<dyn Strategy>,
    test: Arc<Dataset>,
    resume: Resume,
    observer: Option<UnboundedSender<RoundRecord>>,
    security: Security,
    drain_limit: Duration,
}

impl RunStart {
    /// A run of `strategy` from round 1, evaluated on `test`, served in plaintext (loopback
    /// only, see [`Security::check_listener`]), draining for at most [`DRAIN_LIMIT`].
    pub fn new(strategy: Box<dyn Strategy>, test: Arc<Dataset>) -> Self {
        Self {
            strategy,
            test,
            resume: Resume::default(),
            observer: None,
            security: Security::plaintext(),
            drain_limit: DRAIN_LIMIT,
        }
    }

    /// Resumes where a checkpoint left off (see [`crate::recover`]).
    pub fn resume(mut self, resume: Resume) -> Self {
        self.resume = resume;
        self
    }

    /// Sends every round's record to `observer` as it is made.
    pub fn observer(mut self, observer: UnboundedSender<RoundRecord>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Serves with `security` (TLS, client authentication).
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Drains for at most `limit` after the run ended.
    pub fn drain_limit(mut self, limit: Duration) -> Self {
        self.drain_limit = limit;
        self
    }
}

/// A run being served: where clients dial, the coordinator, and the run's outcome to await.
#[derive(Debug)]
pub struct HostedRun {
    /// `http://ADDR` or, over TLS, `https://ADDR`.
    pub url: String,
    /// The coordinator serving the run.
    pub coordinator: Coordinator,
    task: JoinHandle<Result<RunOutcome>>,
}

impl HostedRun {
    /// True once the run has ended and the server stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops serving and driving at once, without telling anyone: what a crash does to the
    /// process, for tests of recovery.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// A handle that steps this run's coordinator down, usable while [`HostedRun::finish`] is
    /// awaited: a leader whose lease lapsed stops serving at once.
    pub fn step_down_handle(&self) -> StepDown {
        StepDown {
            coordinator: self.coordinator.clone(),
            task: self.task.abort_handle(),
        }
    }

    /// Waits for the run to end, for clients to hear so, and for the server to stop; returns
    /// what the run produced (or why it failed).
    pub async fn finish(self) -> Result<RunOutcome> {
        self.task
            .await
            .map_err(|source| CoordinatorError::TaskFailed {
                task: "hosted run",
                source,
            })?
    }
}

/// Steps a hosted run's coordinator down (see [`HostedRun::step_down_handle`]).
#[derive(Debug)]
pub struct StepDown {
    coordinator: Coordinator,
    task: tokio::task::AbortHandle,
}

impl StepDown {
    /// Refuses every request from now on, without ending the run for clients (they move to
    /// the new leader, see [`Coordinator::step_down`]), and stops driving and serving. Open
    /// connections are closed gracefully once their last request was refused.
    pub fn now(&self) {
        self.coordinator.step_down();
        self.task.abort();
    }
}

impl Coordinator {
    /// Serves this coordinator on `listener` and drives the run `start` describes until it
    /// ends or `shutdown` resolves; the returned handle's [`HostedRun::finish`] gives the
    /// outcome once clients have been told and the server has stopped. A listener the
    /// security settings refuse (plaintext off loopback) is an error now, not later.
    pub fn host(
        &self,
        listener: TcpListener,
        start: RunStart,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<HostedRun> {
        let addr = listener.local_addr()?;
        start.security.check_listener(addr)?;
        let scheme = if start.security.is_tls() {
            "https"
        } else {
            "http"
        };
        let RunStart {
            strategy,
            test,
            resume,
            observer,
            security,
            drain_limit,
        } = start;
        let coordinator = self.clone();
        let task = tokio::spawn(async move {
            let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
            // Serving and driving are one task, so aborting it stops both, as a crash would.
            let serving = serve_with(listener, coordinator.clone(), security, async move {
                let _ = server_stopped.await;
            });
            let driving = async {
                let outcome = RoundDriver::new(coordinator.clone(), strategy, test, resume)
                    .observed_by(observer)
                    .run(shutdown)
                    .await;
                // A deposed coordinator's clients are not told anything: they find the leader
                // that took over.
                if !matches!(outcome, Err(CoordinatorError::Deposed { .. })) {
                    coordinator.drain(drain_limit).await;
                }
                let _ = stop_server.send(());
                outcome
            };
            tokio::pin!(serving, driving);
            tokio::select! {
                outcome = &mut driving => {
                    let served = serving.await;
                    // The run's own error says more than a server that stopped because of it.
                    let outcome = outcome?;
                    served?;
                    Ok(outcome)
                }
                served = &mut serving => {
                    // The server stopped before the run ended: no client can reach the run.
                    served?;
                    Err(CoordinatorError::Io(std::io::Error::other(
                        "the server stopped before the run ended",
                    )))
                }
            }
        });
        Ok(HostedRun {
            url: format!("{scheme}://{addr}"),
            coordinator: self.clone(),
            task,
        })
    }
}
