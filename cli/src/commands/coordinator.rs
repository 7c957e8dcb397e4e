//! `shoal coordinator`: serve a run to clients that dial in from other processes or machines,
//! over TLS or mutual TLS, with per-client bearer tokens if asked. Plaintext, or clients who
//! prove no identity, are served only on a loopback address, unless `--insecure`.

use crate::candidate::{CandidateSetup, Loaded, run_candidate};
use crate::data::{finish_plan, load};
use crate::host::{Durability, Outputs, ctrl_c, host, prepare};
use crate::options::{Plan, RunOptions};
use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_client::route::split_urls;
use shoal_coordinator::net::auth::TokenTable;
use shoal_coordinator::{Limits, Security};
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;

/// Transport security and client authentication of `shoal coordinator`.
#[derive(Debug, Default, Args)]
pub struct ServerSecurityArgs {
    /// Serve TLS with this certificate (PEM, e.g. server.pem from `shoal certs`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by this CA that names the client
    /// id they use (SAN URI shoal://client/ID).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Require a bearer token per client: a file of `CLIENT_ID SHA256HEX(TOKEN)` lines, e.g.
    /// tokens.sha256 from `shoal certs --tokens`.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Sub-aggregators: these ids (as their certificate or token proves them) may relay the
    /// requests of clients they authenticated themselves, and send partial sums. Needs
    /// --client-ca or --tokens.
    #[arg(long, value_name = "ID[,ID...]", value_delimiter = ',')]
    aggregators: Vec<String>,
    /// Allow plaintext, or clients without a certificate or token, on a non-loopback address:
    /// anyone on the network can then read and alter the traffic (tokens included), or take
    /// part under any client id.
    #[arg(long)]
    insecure: bool,
}

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

impl ServerSecurityArgs {
    /// Reads and checks the certificates, key and token file.
    pub fn load(&self) -> Result<Security> {
        let mut security = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Security::tls(read(cert, "--tls-cert")?, read(key, "--tls-key")?)
                    .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?
            }
            (None, None) => Security::plaintext(),
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        if let Some(ca) = &self.client_ca {
            security = security
                .with_client_ca(read(ca, "--client-ca")?)
                .with_context(|| format!("loading {}", ca.display()))?;
        }
        if let Some(path) = &self.tokens {
            let table = TokenTable::load(path)?;
            if table.is_empty() {
                bail!("token file {} lists no client", path.display());
            }
            security = security.with_tokens(table);
        }
        if !self.aggregators.is_empty() {
            security = security
                .with_aggregators(self.aggregators.iter().map(|id| id.trim()))
                .context("--aggregators")?;
        }
        Ok(security.allow_insecure(self.insecure))
    }
}

/// Standby coordinators: leadership through an etcd election.
#[derive(Debug, Default, Args)]
pub struct HaArgs {
    /// Campaign for leadership of the run in the etcd cluster at these URLs (comma-separated
    /// http://HOST:PORT); every coordinator of the run gets the same --etcd, --election, run
    /// options and --checkpoint-dir, and only the leader serves the run.
    #[arg(long, value_name = "URL[,URL...]", requires_all = ["election", "checkpoint_dir"])]
    etcd: Option<String>,
    /// Name of the run's election (one per run).
    #[arg(long, value_name = "NAME", requires = "etcd")]
    election: Option<String>,
    /// URL clients reach this coordinator at, told to them by standbys [default: the listen
    /// address, http:// or https://].
    #[arg(long, value_name = "URL", requires = "etcd")]
    advertise: Option<String>,
    /// Seconds a leader's lease lasts unrenewed: how long a dead leader holds the run up
    /// before a standby takes over, 2..=3600.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, requires = "etcd")]
    lease_ttl: u64,
}

/// Options of `shoal coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorCmd {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    #[command(flatten)]
    options: RunOptions,
    #[command(flatten)]
    outputs: Outputs,
    #[command(flatten)]
    durability: Durability,
    #[command(flatten)]
    security: ServerSecurityArgs,
    #[command(flatten)]
    limits: crate::limits_args::LimitsArgs,
    #[command(flatten)]
    ha: HaArgs,
}

impl CoordinatorCmd {
    /// Serves the run until it ends or Ctrl-C.
    pub async fn execute(self) -> Result<()> {
        let mut plan = self.options.resolve()?;
        let limits = self.limits.limits()?;
        let security = self.security.load()?;
        if self.ha.etcd.is_some() {
            return self.execute_as_candidate(plan, limits, security).await;
        }
        let prepared = prepare(&mut plan, limits, &self.durability)?;
        let listener = TcpListener::bind(&self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        let addr = listener.local_addr()?;
        security.check_listener(addr).with_context(|| {
            "give --tls-cert and --tls-key with --client-ca and/or --tokens (see `shoal certs`), \
             listen on loopback, or pass --insecure"
        })?;
        eprintln!(
            "coordinator listening on {addr} (run {}, waiting for {} clients, {})",
            prepared.coordinator.run_id(),
            plan.run.selection.min_available,
            describe(&security),
        );
        host(
            &plan,
            prepared,
            listener,
            security,
            &self.outputs,
            ctrl_c(),
            std::future::pending(),
        )
        .await?;
        Ok(())
    }

    /// One of several coordinators of the run: a standby until elected in etcd.
    async fn execute_as_candidate(
        self,
        mut plan: Plan,
        limits: Limits,
        security: Security,
    ) -> Result<()> {
        let ha = &self.ha;
        if !(2..=3600).contains(&ha.lease_ttl) {
            bail!(
                "--lease-ttl {} is out of range 2..=3600 seconds",
                ha.lease_ttl
            );
        }
        let etcd = split_urls(ha.etcd.as_deref().unwrap_or_default());
        if etcd.is_empty() {
            bail!("--etcd needs at least one URL");
        }
        let split = load(&plan.data)?;
        let spec = finish_plan(&mut plan, &split.train)?;
        let listener = std::net::TcpListener::bind(&self.listen)
            .with_context(|| format!("binding {}", self.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        security.check_listener(addr).with_context(|| {
            "give --tls-cert and --tls-key with --client-ca and/or --tokens (see `shoal certs`), \
             listen on loopback, or pass --insecure"
        })?;
        let advertise = match &ha.advertise {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                bail!("--advertise {url:?}: expected http://HOST:PORT or https://HOST:PORT")
            }
            Some(url) => url.clone(),
            None if addr.ip().is_unspecified() => {
                bail!(
                    "listening on {addr}: give --advertise with the URL clients reach this coordinator at"
                )
            }
            None => format!(
                "{}://{addr}",
                if security.is_tls() { "https" } else { "http" }
            ),
        };
        let setup = CandidateSetup {
            etcd,
            election: ha.election.clone().unwrap_or_default(),
            advertise,
            lease_ttl: std::time::Duration::from_secs(ha.lease_ttl),
        };
        let loaded = Loaded {
            plan,
            split,
            spec,
            limits,
        };
        run_candidate(
            setup,
            loaded,
            listener,
            security,
            &self.durability,
            &self.outputs,
            ctrl_c(),
        )
        .await
    }
}

/// "plaintext", "tls", "mutual tls + tokens"...
pub fn describe(security: &Security) -> String {
    let policy = security.policy();
    let mut parts = vec![match (security.is_tls(), policy.client_ca.is_some()) {
        (false, _) => "plaintext",
        (true, false) => "tls",
        (true, true) => "mutual tls",
    }];
    if policy.tokens.is_some() {
        parts.push("tokens");
    }
    let mut described = parts.join(" + ");
    if !policy.relays.is_empty() {
        let ids: Vec<&str> = policy.relays.iter().map(String::as_str).collect();
        described.push_str(&format!(", aggregators {}", ids.join(",")));
    }
    described
}
