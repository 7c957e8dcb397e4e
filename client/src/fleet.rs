//! A fleet: many simulated clients in one process, each with its own partition, sharing a
//! small pool of HTTP/2 channels, one cache of the round's global state, and a CPU budget. A
//! client with its own TLS certificate (mutual TLS) gets a connection of its own, since a TLS
//! identity belongs to a connection. A fleet hosted in its coordinator's process calls it in
//! place instead ([`FleetConfig::direct`]): no channels at all.
//!
//! Every client keeps one request open at a time (mostly a long-poll), so a connection carries
//! as many concurrent HTTP/2 streams as it has clients. The fleet opens enough connections that
//! none carries more than [`CLIENTS_PER_CHANNEL`], well under the coordinator's per-connection
//! stream cap: a crowded connection would queue or reset streams, and its clients would starve.

use crate::attack::{Attack, Byzantine};
use crate::budget::{DEFAULT_UPDATE_BUDGET, UpdateBudget};
use crate::cache::GlobalCache;
use crate::collusion::Collusion;
use crate::connection::{
    BearerAuth, ClientTls, Fleet, TlsIdentity, channel, fleet_client, grpc_client,
};
use crate::edge::{ClientOptions, ClientStats, EdgeClient};
use crate::error::{ClientError, Result};
use crate::faults::Faults;
use crate::route::{Route, split_urls};
use crate::shared_pull::SharedPulls;
use crate::trainer::{BuiltinTrainer, LocalTrainer};
use shoal_datasets::Dataset;
use shoal_proto::DirectFleet;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::transport::Channel;
use tracing::warn;

/// Most clients sharing one connection (see the module docs).
pub const CLIENTS_PER_CHANNEL: usize = 500;

/// How a fleet connects and behaves.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Coordinator URL, e.g. "http://127.0.0.1:7070", or the URLs of a leader and its
    /// standbys, comma-separated (clients follow the leader, see [`crate::route`]).
    pub url: String,
    /// HTTP/2 channels shared by all clients, at least; raised so that no channel carries more
    /// than [`CLIENTS_PER_CHANNEL`] clients. Must be at least 1. Unused (as is `tls`) when the
    /// fleet calls its coordinator in place ([`FleetConfig::direct`]).
    pub channels: usize,
    /// Local work running at once (defaults to the number of cores); a fleet calling its
    /// coordinator in process runs one more, as its clients also wait on the coordinator
    /// while they hold a core.
    pub concurrency: usize,
    /// Per-client behaviour.
    pub options: ClientOptions,
    /// Simulated faults, drawn from `options.seed` per (client, round) [default: none].
    pub faults: Faults,
    /// Simulated attackers: a seeded share of the fleet's clients whose updates lie
    /// [default: none].
    pub byzantine: Option<Byzantine>,
    /// Every client id of the simulated population when it is split over several processes,
    /// so that the attackers are the same share (and the same clients) whatever the split
    /// [default: empty, this fleet's own clients].
    pub population: Vec<String>,
    /// TLS towards the coordinator (CA, server name) for every client; `None` for plaintext.
    pub tls: Option<ClientTls>,
    /// Each client's own credentials, by client id [default: none].
    pub credentials: HashMap<String, Credentials>,
    /// Told at once, with the client id and its error, when a client stops on an error; the
    /// host of an in-process fleet stops the run then rather than wait for a client that will
    /// not come back [default: nobody].
    pub failures: Option<mpsc::UnboundedSender<(String, ClientError)>>,
    /// The model code every client runs [default: the built-in models].
    pub trainer: Arc<dyn LocalTrainer>,
    /// Spread the clients over the URLs: client `i` starts at URL `i mod n`, and the clients
    /// that started at one URL move along the list together when it fails — a fleet feeding
    /// several sub-aggregators. Otherwise all start at the first URL and move together (a
    /// leader and its standbys) [default: false].
    pub spread: bool,
    /// Bytes of finished updates the fleet holds at once, across its clients (see
    /// [`crate::budget`]) [default: [`DEFAULT_UPDATE_BUDGET`]].
    pub update_budget: usize,
    /// The coordinator, called in this process instead of dialled at `url` (which then only
    /// names it in logs): a fleet hosted beside its coordinator skips protobuf, HTTP/2 and
    /// the socket. Its clients carry no credentials: the coordinator trusts callers in its
    /// process [default: none, dial `url`].
    pub direct: Option<Arc<dyn DirectFleet>>,
}

/// What one client proves itself with.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// A client certificate for mutual TLS (needs [`FleetConfig::tls`]).
    pub identity: Option<TlsIdentity>,
    /// A bearer token.
    pub token: Option<String>,
}

/// HTTP/2 channels a fleet's clients share by default.
pub const DEFAULT_CHANNELS: usize = 4;

impl FleetConfig {
    /// Defaults for `url`: [`DEFAULT_CHANNELS`] channels, one worker per core.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            channels: DEFAULT_CHANNELS,
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            options: ClientOptions::default(),
            faults: Faults::default(),
            byzantine: None,
            population: Vec::new(),
            tls: None,
            credentials: HashMap::new(),
            failures: None,
            trainer: Arc::new(BuiltinTrainer::default()),
            spread: false,
            update_budget: DEFAULT_UPDATE_BUDGET,
            direct: None,
        }
    }
}

/// What the whole fleet did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetReport {
    /// Clients that ran to the end.
    pub finished: usize,
    /// Clients that stopped on an error.
    pub failed: usize,
    /// Sum of the clients' statistics.
    pub totals: ClientStats,
}

/// Runs one client per `(id, data)` until the run finishes or `shutdown` resolves.
pub async fn run_fleet(
    config: FleetConfig,
    clients: Vec<(String, Dataset)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<FleetReport> {
    if config.channels == 0 {
        return Err(ClientError::Config(
            "a fleet needs at least one channel".into(),
        ));
    }
    let tls = config.tls.as_ref();
    let urls = split_urls(&config.url);
    if urls.is_empty() {
        return Err(ClientError::BadAddress(
            config.url.clone(),
            "expected one or more URLs, comma-separated".into(),
        ));
    }
    if config.direct.is_some() && (urls.len() != 1 || !config.credentials.is_empty()) {
        return Err(ClientError::Config(
            "an in-process fleet talks to one coordinator, without credentials".into(),
        ));
    }
    let shared = match config.direct {
        Some(_) => 0,
        None => clients
            .len()
            .div_ceil(CLIENTS_PER_CHANNEL)
            .max(config.channels),
    };
    // Per coordinator URL, the channels its clients share.
    let channels = urls
        .iter()
        .map(|url| (0..shared).map(|_| channel(url, tls)).collect())
        .collect::<Result<Vec<Vec<_>>>>()?;
    // Per coordinator URL, the pulls shared by the clients without credentials of their own.
    let pulls: Vec<SharedPulls> = channels
        .iter()
        .map(|per_url| {
            SharedPulls::new(
                per_url
                    .iter()
                    .map(|channel| grpc_client(channel.clone(), BearerAuth::none()))
                    .collect(),
            )
        })
        .collect();
    let urls: Arc<[String]> = urls.into();
    // Where each group of clients talks now: one group, or one per URL when spread.
    let groups = if config.spread { urls.len() } else { 1 };
    let currents: Vec<Arc<AtomicUsize>> = (0..groups)
        .map(|start| Arc::new(AtomicUsize::new(start)))
        .collect();
    let cache = GlobalCache::default();
    // In process, a client holding a core also waits: for its turn at the coordinator's
    // fold, and for the runtime to hand its push on. One worker more than asked keeps the
    // cores busy meanwhile (1,000 clients of a 1M-parameter model on 2 cores: 2.3–2.8 s a
    // round with 2 workers, 2.0–2.3 s with 3).
    let workers = config.concurrency.max(1) + usize::from(config.direct.is_some());
    let cpu = Arc::new(Semaphore::new(workers));
    let budget = UpdateBudget::new(config.update_budget);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut options = config.options.clone();
    if options.coordinator_url.is_empty() {
        options.coordinator_url.clone_from(&config.url);
    }
    let attackers: std::collections::HashSet<String> = {
        // The whole simulated population when the fleet is one part of it.
        let population: Vec<&str> = if config.population.is_empty() {
            clients.iter().map(|(id, _)| id.as_str()).collect()
        } else {
            config.population.iter().map(String::as_str).collect()
        };
        config
            .byzantine
            .map(|b| b.attackers(options.seed, population.into_iter()))
            .into_iter()
            .flatten()
            .collect()
    };
    let attack_of = |id: &String| {
        config
            .byzantine
            .filter(|_| attackers.contains(id))
            .map(|b| b.attack)
    };
    // Each client's data, poisoned if it is an attacker that lies about its labels.
    let clients: Vec<(String, Arc<Dataset>)> = clients
        .into_iter()
        .map(|(id, data)| {
            let data = match attack_of(&id) {
                Some(attack) => attack.poison(data),
                None => data,
            };
            (id, Arc::new(data))
        })
        .collect();
    let collusion = match config.byzantine.map(|b| b.attack) {
        Some(Attack::Alie(z)) => {
            let population = config.population.len().max(clients.len());
            let z = z.map_or_else(
                || Collusion::paper_z(population, attackers.len()),
                f64::from,
            );
            let colluders = clients
                .iter()
                .filter(|(id, _)| attackers.contains(id))
                .cloned()
                .collect();
            Some(Arc::new(Collusion::new(colluders, z, options.seed)))
        }
        _ => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (id, data)) in clients.into_iter().enumerate() {
        let attack = attack_of(&id);
        let fleets = match &config.direct {
            Some(direct) => vec![Fleet::Direct(direct.clone())],
            None => dial(&config, &channels, &pulls, &urls, i, &id)?,
        };
        let client = EdgeClient::new(
            id,
            data,
            Route::new(fleets, urls.clone(), currents[i % groups].clone()),
            cache.clone(),
            cpu.clone(),
            options.clone(),
        )
        .with_faults(config.faults.clone())
        .with_update_budget(budget.clone())
        .with_trainer(config.trainer.clone());
        let client = match (attack, &collusion) {
            (Some(Attack::Alie(_)), Some(collusion)) => client.with_collusion(collusion.clone()),
            (Some(attack), _) => client.with_attack(attack),
            (None, _) => client,
        };
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let id = client.id().to_owned();
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            (id, client.run(stopped).await)
        });
    }
    let mut report = FleetReport::default();
    while let Some(joined) = tasks.join_next().await {
        let (id, outcome) = joined.map_err(|e| ClientError::Worker(e.to_string()))?;
        match outcome {
            Ok(stats) => {
                report.finished += 1;
                report.totals.add(&stats);
            }
            Err(err) => {
                report.failed += 1;
                warn!(client = %id, error = %err, "client stopped");
                if let Some(failures) = &config.failures {
                    let _ = failures.send((id, err));
                }
            }
        }
    }
    Ok(report)
}

/// Client `i`'s connections, one per coordinator URL: the shared channels and pulls, or its
/// own channels when it has a certificate of its own (a TLS identity belongs to a connection).
/// A client with credentials of its own pulls alone (a request proves one identity).
fn dial(
    config: &FleetConfig,
    channels: &[Vec<Channel>],
    pulls: &[SharedPulls],
    urls: &[String],
    i: usize,
    id: &str,
) -> Result<Vec<Fleet>> {
    let tls = config.tls.as_ref();
    let credentials = config.credentials.get(id).cloned().unwrap_or_default();
    let alone = credentials.token.is_some() || credentials.identity.is_some();
    let connections = match (credentials.identity, tls) {
        (None, _) => channels
            .iter()
            .map(|per_url| per_url[i % per_url.len()].clone())
            .collect(),
        (Some(identity), Some(tls)) => {
            let tls = tls.clone().with_identity(identity);
            urls.iter()
                .map(|url| channel(url, Some(&tls)))
                .collect::<Result<Vec<_>>>()?
        }
        (Some(_), None) => {
            return Err(ClientError::Credentials(format!(
                "client {id} has a certificate, but the fleet has no TLS settings"
            )));
        }
    };
    let auth = match &credentials.token {
        Some(token) => BearerAuth::token(token)?,
        None => BearerAuth::none(),
    };
    if !alone {
        return Ok(connections
            .into_iter()
            .zip(pulls)
            .map(|(connection, pulls)| {
                Fleet::Shared(grpc_client(connection, BearerAuth::none()), pulls.clone())
            })
            .collect());
    }
    Ok(connections
        .into_iter()
        .map(|connection| fleet_client(connection, auth.clone()))
        .collect())
}
