//! Serving the fleet protocol on a listener until a shutdown future resolves, in plaintext, over
//! TLS, or over mutual TLS (`tls`), with the client authentication of [`crate::net::auth`].

use crate::config::Limits;
use crate::engine::Coordinator;
use crate::error::{CoordinatorError, Result};
use crate::leadership::Candidate;
use crate::net::admission::{Admission, Gate};
use crate::net::auth::{AuthPolicy, ClientCa, TokenTable};
use crate::net::listener::Connections;
use crate::net::service::FleetService;
use crate::net::tls::ServerKeys;
use crate::refusal::RefusalCounter;
use shoal_proto::v1::fleet_server::{Fleet, FleetServer};
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tracing::warn;

/// How the server protects its transport and authenticates clients. The default is plaintext
/// with no client authentication, which [`serve_with`] allows only on a loopback address unless
/// [`Security::allow_insecure`] says otherwise.
#[derive(Clone, Default)]
pub struct Security {
    /// The server's certificate chain and key; `None` serves plaintext.
    keys: Option<Arc<ServerKeys>>,
    /// CA that client certificates must chain to; `Some` turns on mutual TLS.
    client_ca: Option<ClientCa>,
    /// Clients' token digests; `Some` requires a bearer token on every request.
    tokens: Option<TokenTable>,
    /// Identities that may relay for clients and send partial sums: sub-aggregators.
    aggregators: BTreeSet<String>,
    /// Plaintext is acceptable on a non-loopback address.
    insecure: bool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.is_tls())
            .field("mutual_tls", &self.client_ca.is_some())
            .field("tokens", &self.tokens.as_ref().map(TokenTable::len))
            .field("aggregators", &self.aggregators)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Security {
    /// Plaintext, no client authentication.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// TLS with the server certificate chain and private key in `cert_pem` and `key_pem`.
    /// Both are checked now, so a bad file fails before anything is served.
    pub fn tls(cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Result<Self> {
        let keys = ServerKeys::from_pem(cert_pem.as_ref(), key_pem.as_ref())?;
        Ok(Self {
            keys: Some(Arc::new(keys)),
            ..Self::default()
        })
    }

    /// Mutual TLS: clients must present a certificate that chains to the CA in `ca_pem`, is
    /// valid now, and names the client id they claim. Needs [`Security::tls`] first.
    pub fn with_client_ca(mut self, ca_pem: impl AsRef<[u8]>) -> Result<Self> {
        if self.keys.is_none() {
            return Err(CoordinatorError::Config(
                "mutual TLS needs a server certificate and key".into(),
            ));
        }
        self.client_ca = Some(ClientCa::from_pem(ca_pem.as_ref())?);
        Ok(self)
    }

    /// Requires every request to carry the bearer token of the client it claims to be.
    pub fn with_tokens(mut self, tokens: TokenTable) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Lets the parties proving these ids act for their clients and send partial sums:
    /// sub-aggregators, which authenticate their clients themselves. Needs client
    /// authentication first ([`Security::with_client_ca`], [`Security::with_tokens`]): on an
    /// open server anyone may already do anything.
    pub fn with_aggregators<I, S>(mut self, ids: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if self.client_ca.is_none() && self.tokens.is_none() {
            return Err(CoordinatorError::Config(
                "naming aggregators needs client authentication (a client CA or tokens)".into(),
            ));
        }
        for id in ids {
            let id = id.into();
            crate::engine::registry::check_client_id(&id)
                .map_err(|e| CoordinatorError::Config(format!("aggregator id {id:?}: {e}")))?;
            self.aggregators.insert(id);
        }
        Ok(self)
    }

    /// Allows plaintext on a non-loopback address (with a warning), when `insecure`.
    pub fn allow_insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// True if the transport is TLS.
    pub fn is_tls(&self) -> bool {
        self.keys.is_some()
    }

    /// What each request must prove.
    pub fn policy(&self) -> AuthPolicy {
        AuthPolicy {
            client_ca: self.client_ca.clone(),
            tokens: self.tokens.clone(),
            relays: self.aggregators.clone(),
        }
    }

    /// On a non-loopback address, refuses plaintext and unauthenticated clients unless insecure
    /// operation was allowed, and then warns about each.
    pub fn check_listener(&self, addr: SocketAddr) -> Result<()> {
        if addr.ip().is_loopback() {
            return Ok(());
        }
        if !self.is_tls() {
            if !self.insecure {
                return Err(CoordinatorError::Config(format!(
                    "refusing to serve plaintext on non-loopback address {addr}: configure TLS, \
                     or allow insecure transport explicitly"
                )));
            }
            warn!(%addr, "serving PLAINTEXT on a non-loopback address: traffic and any bearer tokens can be read and altered on the network");
        }
        if self.policy().is_open() {
            // An unknown party must not take part by default, even over TLS.
            if !self.insecure {
                return Err(CoordinatorError::Config(format!(
                    "refusing to serve unauthenticated clients on non-loopback address {addr}: \
                     configure a client CA or bearer tokens, or allow it explicitly"
                )));
            }
            warn!(%addr, "clients are not authenticated: anyone who can connect may act under any client id");
        }
        Ok(())
    }
}

/// Serves `coordinator` on `listener` in plaintext with no client authentication until
/// `shutdown` resolves (mini-redis style: the caller owns the signal, so tests and the CLI stop
/// the server the same way). Refuses a non-loopback listener, as [`serve_with`] does.
pub async fn serve(
    listener: TcpListener,
    coordinator: Coordinator,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    serve_with(listener, coordinator, Security::plaintext(), shutdown).await
}

/// Serves `coordinator` on `listener` with `security` until `shutdown` resolves, responsive
/// when peers crowd it (see [`serve_guarded`]).
pub async fn serve_with(
    listener: TcpListener,
    coordinator: Coordinator,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let fleet = FleetService::with_policy(coordinator.clone(), security.policy());
    serve_fleet(listener, coordinator, security, fleet, shutdown).await
}

/// Serves as a standby until `shutdown` resolves: with the same security and limits as a
/// leader, every request is refused with `standby` and the URL of the leader `leader` holds
/// (`coordinator` only keeps the counts of those refusals).
pub async fn serve_standby(
    listener: TcpListener,
    coordinator: Coordinator,
    security: Security,
    leader: watch::Receiver<Option<Candidate>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let fleet = FleetService::standby(coordinator.clone(), security.policy(), leader);
    serve_fleet(listener, coordinator, security, fleet, shutdown).await
}

async fn serve_fleet(
    listener: TcpListener,
    coordinator: Coordinator,
    security: Security,
    fleet: FleetService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let refusals = coordinator.refusal_counter();
    let limits = &coordinator.shared.limits;
    serve_guarded(listener, limits, refusals, &security, fleet, shutdown).await
}

/// Serves the fleet protocol as `fleet` implements it (a coordinator's, a sub-aggregator's) on
/// `listener` with `security`, behind the defences every Shoal server has, until `shutdown`
/// resolves: connections are capped, and silent or idle ones closed (`listener.rs`); requests
/// are admitted before their bodies are read, with a cap on open streams and a deadline
/// (`admission.rs`); what is refused is counted in `refusals`. HTTP/2 settings are hyper's
/// defaults, written out because the memory bound in `listener.rs` rests on them.
pub(crate) async fn serve_guarded<F: Fleet>(
    listener: TcpListener,
    limits: &Limits,
    refusals: RefusalCounter,
    security: &Security,
    fleet: F,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    security.check_listener(listener.local_addr()?)?;
    let max_message = shoal_proto::message_limit(limits.max_chunk_bytes);
    let policy = security.policy();
    let service = FleetServer::new(fleet)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let service = crate::net::undecodable::CountUndecodable::new(service, refusals.clone());
    let connections = Connections::new(limits, refusals.clone());
    let gate = Gate::new(limits, refusals, connections.clone(), &policy);
    let service = Admission::new(service, gate);
    let router = Server::builder()
        // Every live peer has something to send within the idle timeout: the ping's answer.
        .http2_keepalive_interval(Some(keepalive_interval(limits.idle_timeout)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST))
        .add_service(service);
    let accepted = crate::net::listener::accept(listener, connections);
    let served = match &security.keys {
        Some(keys) => {
            let config = keys.config(security.client_ca.is_some())?;
            let incoming = crate::net::tls::incoming(accepted, config);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            let incoming = crate::net::listener::upgrade(accepted, |stream| async { Some(stream) });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    served.map_err(|e| CoordinatorError::Io(std::io::Error::other(e)))
}

/// HTTP/2 receive window of one stream: how much of a request body a client may send ahead of
/// the handler (hyper's default). Tonic moves what arrives into the message buffer at once, so
/// this bounds no memory by itself; it sets upload speed on long links (1 MiB per round trip).
const STREAM_WINDOW: u32 = 1 << 20;
/// HTTP/2 receive window of a connection, across its streams (hyper's default).
const CONNECTION_WINDOW: u32 = 1 << 20;
/// Largest HTTP/2 frame a peer may send: the read buffer of a connection holds one (the
/// protocol's and hyper's default).
const MAX_FRAME: u32 = 16 << 10;
/// Largest header block a request may have, decoded (hyper's default); our requests carry a
/// few hundred bytes.
const MAX_HEADER_LIST: u32 = 16 << 10;

/// How often the server pings a connection that sent nothing: a third of the idle timeout, so
/// a live peer answers twice before it would be shed, and at most every 20 s (what clients use).
fn keepalive_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(20))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::net::certs::{DevCa, Validity};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn plaintext_is_for_loopback_unless_insecure() {
        let plain = Security::plaintext();
        assert!(plain.check_listener(addr("127.0.0.1:7070")).is_ok());
        assert!(plain.check_listener(addr("[::1]:7070")).is_ok());
        let err = plain.check_listener(addr("0.0.0.0:7070")).unwrap_err();
        assert!(
            err.to_string().contains("refusing to serve plaintext"),
            "{err}"
        );
        assert!(plain.check_listener(addr("10.1.2.3:7070")).is_err());
        let insecure = Security::plaintext().allow_insecure(true);
        assert!(insecure.check_listener(addr("0.0.0.0:7070")).is_ok());
    }

    #[test]
    fn tls_is_accepted_anywhere_and_bad_keys_fail_early() {
        let ca = DevCa::generate(Validity::days(1)).unwrap();
        let server = ca.server(&["localhost".into()], Validity::days(1)).unwrap();
        let tls = Security::tls(&server.cert, &server.key).unwrap();
        assert!(tls.check_listener(addr("127.0.0.1:7070")).is_ok());
        // TLS alone does not say who the client is: off loopback that needs --insecure too.
        let err = tls.check_listener(addr("0.0.0.0:7070")).unwrap_err();
        assert!(err.to_string().contains("unauthenticated"), "{err}");
        let open = Security::tls(&server.cert, &server.key)
            .unwrap()
            .allow_insecure(true);
        assert!(open.check_listener(addr("0.0.0.0:7070")).is_ok());
        let mutual = tls.with_client_ca(&ca.pem().cert).unwrap();
        assert!(mutual.check_listener(addr("0.0.0.0:7070")).is_ok());
        assert!(mutual.policy().client_ca.is_some());
        let stranger = DevCa::generate(Validity::days(1)).unwrap();
        let err = Security::tls(&server.cert, &stranger.pem().key).unwrap_err();
        assert!(
            err.to_string().contains("server certificate and key"),
            "{err}"
        );
        assert!(Security::tls(&server.cert, "not a key").is_err());
        assert!(Security::tls("not a cert", &server.key).is_err());
        let bad_ca = Security::tls(&server.cert, &server.key)
            .unwrap()
            .with_client_ca("nothing here");
        assert!(bad_ca.is_err());
        assert!(
            Security::plaintext()
                .with_client_ca(&ca.pem().cert)
                .is_err()
        );
    }
}
