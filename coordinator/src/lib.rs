//! The Shoal coordinator: the gRPC service, the round engine, the strategies and their maths.
//!
//! Rooms, each depending only on the ones before it:
//! * [`aggregate`]: exact, order-independent sums and the update-norm bound (pure maths);
//! * [`error`](CoordinatorError), [`refusal`], [`config`], [`bounded`] decoding: the vocabulary
//!   of the rest;
//! * [`strategy`]: one algorithm per file (FedAvg, FedSGD, federated k-means), the task plan a
//!   round follows and the results it folds;
//! * [`store`]: checkpoints, the write-ahead round log and recovery;
//! * [`leadership`]: the etcd election and lease that make one of several coordinators the
//!   leader;
//! * [`engine`]: the shared state, client requests, and the round loop;
//! * [`net`]: the gRPC service, listener, TLS, authentication and development certificates;
//! * [`hosting`]: start, serve, run, drain and stop a run as one handle;
//! * [`sub_aggregator`]: a process between clients and the coordinator that folds their updates
//!   into exact partial sums.

pub mod aggregate;
pub mod bounded;
pub mod config;
pub mod engine;
mod error;
pub mod hosting;
pub mod leadership;
pub mod net;
pub mod refusal;
pub mod store;
pub mod strategy;
pub mod sub_aggregator;
mod sync;
pub mod telemetry;

pub use config::{EvalMode, Limits, NormPolicy, PullRate, RunConfig, StrategyConfig};
pub use engine::Coordinator;
pub use engine::driver::RunOutcome;
pub use error::{AuthError, CoordinatorError, Result};
pub use hosting::{HostedRun, RunStart};
pub use net::server::{Security, serve, serve_standby, serve_with};
pub use refusal::Refusal;
pub use store::checkpoint::CheckpointStore;
pub use store::metrics::{RoundRecord, RunSummary};
pub use store::recovery::{Resume, recover};
