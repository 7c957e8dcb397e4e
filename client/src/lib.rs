//! The Shoal client side: an edge client that trains on data that never leaves it, and a fleet
//! that runs many simulated clients in one process.

pub mod attack;
mod backoff;
pub mod budget;
pub mod cache;
pub mod carried;
pub mod collusion;
pub mod compress;
pub mod connection;
pub mod edge;
mod error;
pub mod faults;
pub mod fleet;
pub mod forward;
pub mod route;
pub mod scaffold;
pub mod shared_pull;
pub mod state_file;
mod stats;
pub mod trainer;
mod unreachable;
pub mod work;

pub use budget::{DEFAULT_UPDATE_BUDGET, UpdateBudget};
pub use edge::{ClientOptions, ClientStats, DEFAULT_GIVE_UP_AFTER, EdgeClient};
pub use error::{ClientError, Result};
pub use faults::{Fault, Faults};
pub use fleet::{Credentials, DEFAULT_CHANNELS, FleetConfig, FleetReport, run_fleet};
pub use route::Route;
pub use trainer::{BuiltinTrainer, LocalTrainer};
pub use work::holdout_len;
