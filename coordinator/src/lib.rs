//! The Shoal coordinator: the gRPC service, the round engine, the strategies and their maths.
//!
//! Layers, each in its own module: [`service`] (transport) → [`engine`] (requests against shared
//! state) and [`driver`] (the round loop) → [`round`], [`results`], [`selection`] (round rules)
//! → [`strategy`] (algorithms) → [`aggregate`] (pure maths). [`server`] adds TLS, and [`auth`]
//! decides who may speak for a client ([`certs`] makes development certificates). Against
//! hostile input: [`pacing`] (pull rate), [`norm`] (update-norm bound), [`refusals`] (counts),
//! [`bounded`] (decoding files with a memory bound that follows their size).

mod admission;
pub mod aggregate;
pub mod auth;
pub mod bounded;
pub mod certs;
pub mod checkpoint;
pub mod config;
pub mod driver;
pub mod engine;
mod error;
pub mod hosting;
mod listener;
pub mod metrics;
pub mod norm;
pub mod pacing;
pub mod recovery;
pub mod refusals;
pub mod registry;
pub mod results;
pub mod round;
pub mod round_log;
pub mod selection;
pub mod server;
pub mod service;
pub mod strategy;
mod tls;
mod undecodable;

pub use checkpoint::CheckpointStore;
pub use config::{Limits, NormPolicy, PullRate, RunConfig, StrategyConfig};
pub use driver::{Resume, RunOutcome};
pub use engine::Coordinator;
pub use error::{CoordinatorError, Result};
pub use hosting::{HostedRun, RunStart};
pub use metrics::{RoundRecord, RunSummary};
pub use recovery::recover;
pub use server::{Security, serve, serve_with};
