//! `shoal client`: one edge client. Its data is either its own file (`--data csv:PATH`) or, for
//! demos, one partition of a shared dataset (`--dataset`, `--partition`, `--clients`, `--index`).
//! Over `https://` it checks the coordinator against `--ca`, and proves its id with a client
//! certificate (`--cert`, `--key`) and/or a bearer token (`--token`).

use crate::data::{client_id, load, partitions};
use crate::host::ctrl_c;
use crate::options::ClientDataOptions;
use anyhow::{Context, Result, bail};
use clap::Args;
use shoal_client::connection::{BearerAuth, ClientTls, TlsIdentity, channel, fleet_client};
use shoal_client::route::split_urls;
use shoal_client::{ClientOptions, EdgeClient, Route, cache::GlobalCache};
use shoal_coordinator::net::certs::bundle::parse_token_list;
use shoal_datasets::{Dataset, DatasetSource};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// How a client checks the coordinator's certificate (shared by `client` and `simulate`).
#[derive(Debug, Default, Clone, Args)]
pub struct TlsArgs {
    /// Trust this CA for the coordinator's certificate (PEM, e.g. ca.pem from `shoal certs`);
    /// needs an https:// coordinator URL.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The name the coordinator's certificate must carry [default: the URL's host].
    #[arg(long, value_name = "NAME")]
    pub tls_domain: Option<String>,
}

impl TlsArgs {
    /// The TLS settings, if a CA was given (`--ca`, or else `default_ca`).
    pub fn load(&self, default_ca: Option<&Path>) -> Result<Option<ClientTls>> {
        let Some(ca) = self.ca.as_deref().or(default_ca) else {
            if self.tls_domain.is_some() {
                bail!("--tls-domain needs --ca");
            }
            return Ok(None);
        };
        let mut tls = ClientTls::new(read(ca, "CA certificate")?);
        if let Some(domain) = &self.tls_domain {
            tls = tls.with_domain(domain.clone());
        }
        Ok(Some(tls))
    }
}

/// How a client, or an aggregator towards its upstream, proves its id (shared by `client`
/// and `aggregator`).
#[derive(Debug, Default, Clone, Args)]
pub struct CredentialArgs {
    /// Mutual TLS: the certificate naming this id (PEM, e.g. client-ID.pem from `shoal certs`).
    #[arg(long, value_name = "FILE", requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The bearer token of this id: a file holding the token, or a `CLIENT_ID TOKEN` list
    /// (tokens.txt from `shoal certs --tokens`) with a line for it.
    #[arg(long, value_name = "FILE")]
    pub token: Option<PathBuf>,
}

impl CredentialArgs {
    /// Adds the client certificate to `tls`, if both are given.
    pub fn add_identity(&self, tls: &mut Option<ClientTls>) -> Result<()> {
        if let (Some(tls), Some(cert), Some(key)) = (tls, &self.cert, &self.key) {
            tls.identity = Some(identity(cert, key)?);
        }
        Ok(())
    }

    /// The bearer token of `id`, if a token file is given.
    pub fn token(&self, id: &str) -> Result<Option<String>> {
        self.token
            .as_deref()
            .map(|path| token_for(path, id))
            .transpose()
    }
}

/// Reads a text file, naming it in the error.
pub fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// A client certificate and key from files.
pub fn identity(cert: &Path, key: &Path) -> Result<TlsIdentity> {
    Ok(TlsIdentity {
        cert_pem: read(cert, "client certificate")?,
        key_pem: read(key, "client key")?,
    })
}

/// Reads a token file of `CLIENT_ID TOKEN` lines.
pub fn read_tokens(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    parse_token_list(&read(path, "token file")?)
        .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))
}

/// The token of client `id` in `path`: the file's only word, or the `id` line of a
/// `CLIENT_ID TOKEN` list.
fn token_for(path: &Path, id: &str) -> Result<String> {
    let text = read(path, "token file")?;
    let words: Vec<&str> = text.split_whitespace().collect();
    if let [token] = words.as_slice() {
        return Ok((*token).to_owned());
    }
    read_tokens(path)?
        .remove(id)
        .with_context(|| format!("token file {} has no line for {id}", path.display()))
}

/// Options of `shoal client`.
#[derive(Debug, Args)]
pub struct ClientCmd {
    /// Coordinator URL; with standby coordinators, all their URLs, comma-separated (the
    /// client follows whichever leads).
    #[arg(
        long,
        value_name = "URL[,URL...]",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    /// Stable client id [default: client-INDEX].
    #[arg(long)]
    id: Option<String>,
    /// This client's own data: csv:PATH trains on the whole file (a run with --eval federated
    /// or both holds out its last rows for scoring, as the coordinator's tasks say);
    /// csv:TRAIN,TEST trains on TRAIN; other sources on their training split.
    #[arg(long, value_name = "SOURCE")]
    data: Option<String>,
    /// Which partition of --dataset to use when --data is not given.
    #[arg(long, default_value_t = 0)]
    index: usize,
    #[command(flatten)]
    options: ClientDataOptions,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    credentials: CredentialArgs,
    /// Give up after the coordinator has been unreachable this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = shoal_client::DEFAULT_GIVE_UP_AFTER.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    give_up_after: u64,
    /// Where this client keeps what it carries from round to round, so a restart loses none
    /// of it: SCAFFOLD's control variate (DIR/ID.scaffold) and what top-k compression left
    /// out of its updates (DIR/ID.topk); written only in runs that use them.
    #[arg(long, value_name = "DIR", default_value = "shoal-client-state")]
    state_dir: PathBuf,
}

impl ClientCmd {
    /// Runs the client until the coordinator ends the run.
    pub async fn execute(self) -> Result<()> {
        let plan = self.options.resolve()?;
        let data: Dataset = match &self.data {
            Some(source) => {
                let source: DatasetSource = source.parse()?;
                let local = match &source {
                    // The client's own file is all its data: nothing is split off unseen.
                    DatasetSource::Csv { train, test: None } => shoal_datasets::read_csv(train),
                    _ => shoal_datasets::load(&source, plan.test_fraction, plan.seed)
                        .map(|split| split.train),
                }
                .with_context(|| format!("loading {source}"))?;
                if local.is_empty() {
                    bail!("--data {source} holds no examples to train on");
                }
                local
            }
            None => {
                if self.index >= plan.clients {
                    bail!(
                        "--index {} is out of range for --clients {}",
                        self.index,
                        plan.clients
                    );
                }
                let split = load(&plan)?;
                partitions(&plan, &split.train, "client")?
                    .swap_remove(self.index)
                    .1
            }
        };
        let id = self.id.unwrap_or_else(|| client_id("client", self.index));
        let mut tls = self.tls.load(None)?;
        self.credentials.add_identity(&mut tls)?;
        let auth = match self.credentials.token(&id)? {
            Some(token) => BearerAuth::token(&token)?,
            None => BearerAuth::none(),
        };
        let urls = split_urls(&self.coordinator);
        if urls.is_empty() {
            bail!("--coordinator needs a URL, or several separated by commas");
        }
        let fleets = urls
            .iter()
            .map(|url| {
                channel(url, tls.as_ref())
                    .map(|c| fleet_client(c, auth.clone()))
                    .with_context(|| format!("connecting to {url}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let route = Route::new(fleets, urls.into(), Default::default());
        let options = ClientOptions {
            seed: plan.seed,
            give_up_after: std::time::Duration::from_secs(self.give_up_after),
            coordinator_url: self.coordinator.clone(),
            ..ClientOptions::default()
        };
        let client = EdgeClient::new(
            id.clone(),
            Arc::new(data),
            route,
            GlobalCache::default(),
            Arc::new(Semaphore::new(1)),
            options,
        )
        .with_state_dir(&self.state_dir);
        let stats = client.run(ctrl_c()).await?;
        eprintln!(
            "client {id}: {} updates accepted, {} refused",
            stats.accepted, stats.refused
        );
        Ok(())
    }
}
