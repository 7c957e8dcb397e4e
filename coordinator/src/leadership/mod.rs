//! Standby coordinators: several coordinators serve one run, exactly one of them, the leader,
//! at a time. They campaign in an etcd election ([`election`]), each under its own lease
//! ([`lease`]); the leader's epoch comes from its election key, so it only grows from one
//! leader to the next, and every state write and fence of the leader carries it.
//!
//! A candidate's life (driven by `shoal coordinator --etcd`):
//! 1. grant a lease and campaign; meanwhile serve as a standby, answering every request with
//!    `standby` and the leader's URL (`crate::net::server::serve_standby`);
//! 2. once elected, claim the run's state with the elected epoch, recover from the newest
//!    checkpoint and the round log, and serve the run;
//! 3. when the lease is lost (etcd unanswered for the TTL, or the process paused), stop
//!    serving at once, as a crash would, and go back to 1 with a new lease; when the run ends,
//!    resign so the next candidate finds it finished and ends too.
//!
//! Safety does not rest on the lease: a deposed leader that still believes it leads is refused
//! by the store (its manifest swap fails) and by clients' next leader (its fences are stale).

pub mod election;
pub mod lease;

pub use election::{Candidate, ELECTED_EPOCH_BASE, Election, Leadership, epoch_of};
pub use lease::Lease;
