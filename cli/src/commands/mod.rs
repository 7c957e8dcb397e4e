//! One module per subcommand.

pub mod aggregator;
pub mod certs;
pub mod checkpoint;
pub mod client;
pub mod coordinator;
pub mod plot;
pub mod run;
pub mod simulate;
