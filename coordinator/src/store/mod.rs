//! What a run keeps so that it survives a crash: checkpoints of whole rounds, the write-ahead
//! log of the round in flight, the per-round records, and the recovery that reads them back.
//!
//! Every write is atomic (temporary file, fsync, rename, fsync of the directory) and every read
//! is bounded and verified, so a torn or corrupt file is set aside, never half-used.

pub mod checkpoint;
pub mod metrics;
pub mod recovery;
pub mod round_log;
