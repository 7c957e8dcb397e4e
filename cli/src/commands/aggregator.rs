//! `shoal aggregator`: a sub-aggregator between clients and the coordinator (or another
//! aggregator). Clients connect to it as to a coordinator; it relays their joins and pulls,
//! serves each round's global state once fetched, and sends their updates upstream as exact
//! partial sums, so a tree of aggregators computes the bits of a flat run.
//!
//! Towards its clients it is a server like `shoal coordinator` (the same TLS, client
//! certificate and token flags and limits); towards its upstream it is a client like
//! `shoal client` (`--ca`, `--cert`, `--key`, `--token`), proving its own id, which the
//! upstream must list in its `--aggregators`.

use crate::commands::client::{CredentialArgs, TlsArgs};
use crate::commands::coordinator::{ServerSecurityArgs, describe};
use crate::host::ctrl_c;
use crate::limits_args::ServingLimitsArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_client::connection::channel;
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
    /// This aggregator's id: on its partial sums, and the identity its --cert or --token
    /// proves upstream [default: aggregator-PORT].
    #[arg(long)]
    id: Option<String>,
    /// Longest an update waits for the round's other clients before it is sent upstream,
    /// in seconds (0.001 to 60).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.2)]
    hold: f64,
    #[command(flatten)]
    security: ServerSecurityArgs,
    #[command(flatten)]
    limits: ServingLimitsArgs,
    // Towards the upstream: how its certificate is checked (--ca, --tls-domain).
    #[command(flatten)]
    upstream_tls: TlsArgs,
    // Towards the upstream: this aggregator's certificate and/or token, naming its --id.
    #[command(flatten)]
    credentials: CredentialArgs,
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
        let security = self.security.load()?;
        let limits = self.limits.limits()?;
        let urls = split_urls(&self.upstream);
        let mut tls = self.upstream_tls.load(None)?;
        self.credentials.add_identity(&mut tls)?;
        let listener = TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        let addr = listener.local_addr()?;
        security.check_listener(addr).with_context(|| {
            "give --tls-cert and --tls-key with --client-ca and/or --tokens (see `shoal certs`), \
             listen on loopback, or pass --insecure"
        })?;
        let id = self
            .id
            .unwrap_or_else(|| format!("aggregator-{}", addr.port()));
        let max_message = shoal_proto::message_limit(limits.max_chunk_bytes);
        let mut upstream = Upstream::with_channels(&urls, max_message, |url| {
            channel(url, tls.as_ref()).map_err(|e| e.to_string())
        })?;
        if let Some(token) = self.credentials.token(&id)? {
            upstream = upstream.with_token(&token)?;
        }
        eprintln!(
            "aggregator {id} listening on {addr}, upstream {}, {}",
            urls.join(","),
            describe(&security)
        );
        let config = AggregatorConfig {
            id,
            hold: Duration::from_secs_f64(self.hold),
            limits,
            security,
        };
        serve(config, upstream, listener, ctrl_c()).await?;
        Ok(())
    }
}
