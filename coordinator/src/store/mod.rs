//! What a run keeps so that it survives a crash or the loss of its coordinator: checkpoints of
//! whole rounds, the write-ahead log of the round in flight, the manifest that says who owns
//! them, the per-round records, and the recovery that reads them back.
//!
//! All of it goes through one interface ([`state`]) with two homes, a local directory
//! ([`local`]) and an S3-compatible object store ([`object`]). Every write is whole and atomic,
//! a deposed coordinator's writes are refused by the store itself ([`manifest`]), and every
//! read is bounded and verified, so a torn or corrupt object is set aside, never half-used.

pub mod checkpoint;
pub mod local;
pub mod manifest;
pub mod metrics;
pub mod object;
pub mod recovery;
pub mod round_log;
pub mod state;
