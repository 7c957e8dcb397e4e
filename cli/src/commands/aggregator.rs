//! `shoal aggregator`: a sub-aggregator between clients and the coordinator (or another
//! aggregator). Clients connect to it as to a coordinator; it relays their joins and pulls,
//! serves each round's global state once fetched, and sends their updates upstream as exact
//! partial sums, so a tree of aggregators computes the bits of a flat run.

use crate::host::ctrl_c;
use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_client::route::split_urls;
use shoal_coordinator::sub_aggregator::{AggregatorConfig, Upstream, serve};
use std::time::Duration;
use tokio::net::TcpListener;

/// Options of `shoal aggregator`.
#[derive(Debug, Args)]
pub struct AggregatorCmd {
    /// Where this aggregator's updates go: the coordinator's URL, or a parent aggregator's;
    /// several, comma-separated, are tried in turn when one cannot be reached.
    #[arg(long, value_name = "URL[,URL...]")]
    upstream: String,
    /// Address clients connect to.
    #[arg(long, default_value = "127.0.0.1:7071")]
    listen: String,
    /// This aggregator's id on its partial sums [default: aggregator-PORT].
    #[arg(long)]
    id: Option<String>,
    /// Longest an update waits for the round's other clients before it is sent upstream,
    /// in seconds (0.001 to 60).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.2)]
    hold: f64,
    /// Serve plaintext on a non-loopback address (anyone on the network can then read and
    /// alter the traffic).
    #[arg(long)]
    insecure: bool,
}

impl AggregatorCmd {
    /// Serves until the run is over upstream, or Ctrl-C.
    pub async fn execute(self) -> Result<()> {
        if !(0.001..=60.0).contains(&self.hold) {
            bail!(
                "--hold must be between 0.001 and 60 seconds, got {}",
                self.hold
            );
        }
        let urls = split_urls(&self.upstream);
        let listener = TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() && !self.insecure {
            bail!(
                "aggregators serve plaintext: listen on a loopback address, or pass --insecure \
                 to serve {addr} anyway"
            );
        }
        let mut config = AggregatorConfig {
            hold: Duration::from_secs_f64(self.hold),
            ..AggregatorConfig::default()
        };
        config.id = self
            .id
            .unwrap_or_else(|| format!("aggregator-{}", addr.port()));
        let upstream = Upstream::new(&urls, shoal_proto::message_limit(config.max_chunk_bytes))?;
        eprintln!(
            "aggregator {} listening on {addr}, upstream {}",
            config.id,
            urls.join(",")
        );
        serve(config, upstream, listener, ctrl_c()).await?;
        Ok(())
    }
}
