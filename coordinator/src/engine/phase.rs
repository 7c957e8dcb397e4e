//! Where a run is, and the only ways it moves on.
//!
//! ```text
//!            open                close
//!   Waiting ──────▶ Open(round) ──────▶ Closed(round) ──┐
//!      ▲                                               │ aggregated and recorded,
//!      └───────────────────────────────────────────────┘ or a retry of the round
//!   any phase ── finish ──▶ Finished(reason)   (the first reason stays; nothing leaves it)
//! ```
//!
//! Requests read the phase (a pull is answered with the open round's task, an update is
//! admitted against its fence); only the round driver moves it, through these transitions,
//! each of which refuses a move the lifecycle does not allow. A round with several stages
//! (secure aggregation: key exchange, masked upload, unmasking) is a sequence of
//! open → close steps of one round number, each stage's plan from the strategy.

use crate::engine::round::OpenRound;
use crate::error::{CoordinatorError, Result};

/// Where the run is.
#[derive(Debug)]
pub enum Phase {
    /// No round open: before the first one, while waiting for clients, or between attempts.
    Waiting,
    /// A round is open: selected clients pull its task and push updates.
    Open(Box<OpenRound>),
    /// A round closed: its updates are being aggregated and recorded.
    Closed {
        /// The round that closed.
        round: u32,
    },
    /// The run ended; pulls answer Finished with this reason.
    Finished(String),
}

impl Phase {
    /// Opens `round`. Refused while another round is open or after the run ended.
    pub fn open(&mut self, round: OpenRound) -> Result<()> {
        match self {
            Self::Waiting | Self::Closed { .. } => {
                *self = Self::Open(Box::new(round));
                Ok(())
            }
            Self::Open(_) => Err(CoordinatorError::Internal(
                "opened a round while one is open",
            )),
            Self::Finished(_) => Err(CoordinatorError::ShuttingDown),
        }
    }

    /// Closes the open round: no update is admitted from now on. Returns it, for its results.
    pub fn close(&mut self) -> Result<Box<OpenRound>> {
        match std::mem::replace(self, Self::Waiting) {
            Self::Open(round) => {
                *self = Self::Closed {
                    round: round.fence.round,
                };
                Ok(round)
            }
            Self::Finished(reason) => {
                *self = Self::Finished(reason);
                Err(CoordinatorError::ShuttingDown)
            }
            other => {
                *self = other;
                Err(CoordinatorError::Internal(
                    "closed a round that is not open",
                ))
            }
        }
    }

    /// The closed round is aggregated and recorded (or is to be retried): wait for the next.
    pub fn settle(&mut self) {
        if let Self::Closed { .. } = self {
            *self = Self::Waiting;
        }
    }

    /// Ends the run with `reason`; returns false if it had already ended (the first reason
    /// stays).
    pub fn finish(&mut self, reason: &str) -> bool {
        if self.has_finished() {
            return false;
        }
        *self = Self::Finished(reason.to_string());
        true
    }

    /// The open round, if one is.
    pub fn open_round(&self) -> Option<&OpenRound> {
        match self {
            Self::Open(round) => Some(round),
            _ => None,
        }
    }

    /// The open round, if one is, to record what clients did.
    pub fn open_round_mut(&mut self) -> Option<&mut OpenRound> {
        match self {
            Self::Open(round) => Some(round),
            _ => None,
        }
    }

    /// True once the run ended.
    pub fn has_finished(&self) -> bool {
        matches!(self, Self::Finished(_))
    }
}
