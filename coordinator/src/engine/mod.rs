//! The round engine: the coordinator's shared state, the requests clients make of it, and the
//! loop that opens, gathers, closes and records rounds.
//!
//! [`coordinator`] holds the state and answers requests ([`polling`]: the long polls for
//! work, a client's own or shared by many); [`driver`] runs the rounds on it,
//! through the lifecycle [`phase`] defines;
//! [`round`] is one open round (fence, selected clients, running aggregate); [`registry`] knows
//! which clients are there and how often they may pull ([`pacing`]); [`selection`] picks a
//! round's clients; [`refusals`] counts what was refused and why.

pub mod coordinator;
pub mod driver;
pub mod pacing;
pub mod phase;
pub mod polling;
pub mod refusals;
pub mod registry;
pub mod round;
pub mod selection;

pub use coordinator::Coordinator;
pub use driver::RoundDriver;
pub use phase::Phase;
