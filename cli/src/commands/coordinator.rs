//! `shoal coordinator`: serve a run to clients that dial in from other processes or machines,
//! over TLS or mutual TLS, with per-client bearer tokens if asked. Plaintext, or clients who
//! prove no identity, are served only on a loopback address, unless `--insecure`.

use crate::host::{Durability, Outputs, ctrl_c, host, prepare};
use crate::options::RunOptions;
use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_coordinator::Security;
use shoal_coordinator::net::auth::TokenTable;
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
        Ok(security.allow_insecure(self.insecure))
    }
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
}

impl CoordinatorCmd {
    /// Serves the run until it ends or Ctrl-C.
    pub async fn execute(self) -> Result<()> {
        let mut plan = self.options.resolve()?;
        let limits = self.limits.limits()?;
        let security = self.security.load()?;
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
        host(&plan, prepared, listener, security, &self.outputs, ctrl_c()).await?;
        Ok(())
    }
}

/// "plaintext", "tls", "mutual tls + tokens"...
fn describe(security: &Security) -> String {
    let policy = security.policy();
    let mut parts = vec![match (security.is_tls(), policy.client_ca.is_some()) {
        (false, _) => "plaintext",
        (true, false) => "tls",
        (true, true) => "mutual tls",
    }];
    if policy.tokens.is_some() {
        parts.push("tokens");
    }
    parts.join(" + ")
}
