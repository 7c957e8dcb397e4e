//! Reaching the coordinator: [`Fleet`] calls it over gRPC or, for a fleet hosted in its
//! process, in place. Dialling it: one HTTP/2 channel per connection, plaintext (`http://`) or TLS
//! (`https://`, optionally presenting a client certificate for mutual TLS), with the same
//! message limits as the server, so chunked payloads pass and nothing larger does. A client's
//! bearer token rides on every request as `authorization: Bearer TOKEN` ([`BearerAuth`]).

use crate::compress::Encoded;
use crate::error::{ClientError, Result};
use crate::shared_pull::SharedPulls;
use shoal_proto::v1::fleet_client::FleetClient;
use shoal_proto::v1::update_part::Part;
use shoal_proto::v1::{
    AbandonReply, AbandonRequest, FetchRequest, JoinReply, JoinRequest, LeaveReply, LeaveRequest,
    PullReply, PullRequest, PushReply, UpdateHeader, UpdatePart,
};
use shoal_proto::{ChunkStream, DirectFleet, MAX_CHUNK_BYTES};
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

/// A gRPC client for the fleet protocol, attaching the client's token if it has one.
pub type GrpcFleet = FleetClient<InterceptedService<Channel, BearerAuth>>;

/// How a client reaches its coordinator: over gRPC, or by calling it in this process (a
/// simulated fleet hosted beside its coordinator, see [`shoal_proto::DirectFleet`]). The calls
/// and their answers are the same either way.
#[derive(Debug, Clone)]
pub enum Fleet {
    /// Over the network.
    Grpc(GrpcFleet),
    /// Over the network, waiting for work in pulls shared with the process's other clients.
    Shared(GrpcFleet, SharedPulls),
    /// In this process.
    Direct(Arc<dyn DirectFleet>),
}

impl Fleet {
    /// Whether the coordinator is in this process, so that a call is CPU work rather than
    /// a wait on the network.
    pub fn in_process(&self) -> bool {
        matches!(self, Self::Direct(_))
    }

    /// Joins (or joins again) the run.
    pub async fn join(
        &mut self,
        request: JoinRequest,
    ) -> std::result::Result<Response<JoinReply>, Status> {
        match self {
            Fleet::Shared(grpc, shared) => {
                let _turn = shared.join_turn().await;
                Box::pin(grpc.join(request)).await
            }
            Fleet::Grpc(grpc) => grpc.join(request).await,
            Fleet::Direct(direct) => direct.join(request).await.map(Response::new),
        }
    }

    /// Asks for work: a long poll.
    pub async fn pull(
        &mut self,
        request: PullRequest,
    ) -> std::result::Result<Response<PullReply>, Status> {
        match self {
            Fleet::Shared(grpc, shared) => {
                if shared.supported()
                    && let Some(heard) = shared.pull(&request.client_id).await
                {
                    return heard.map(Response::new);
                }
                Box::pin(grpc.pull(request)).await
            }
            // Boxed: a simulated client's task is as large as its largest wait, and most of
            // them wait in a shared pull.
            Fleet::Grpc(grpc) => Box::pin(grpc.pull(request)).await,
            Fleet::Direct(direct) => direct.pull(request).await.map(Response::new),
        }
    }

    /// Downloads the round's global state.
    pub async fn fetch_global(
        &mut self,
        request: FetchRequest,
    ) -> std::result::Result<Response<ChunkStream>, Status> {
        match self {
            Fleet::Grpc(grpc) | Fleet::Shared(grpc, _) => {
                let stream = grpc.fetch_global(request).await?.into_inner();
                Ok(Response::new(Box::pin(stream)))
            }
            Fleet::Direct(direct) => direct.fetch_global(request).await.map(Response::new),
        }
    }

    /// Delivers an update announced by `header`: in process a plain one is handed over as its
    /// values (nothing to chunk, nothing for the coordinator to copy); anything else travels
    /// as chunks of at most `chunk_bytes`.
    pub async fn push(
        &mut self,
        header: UpdateHeader,
        encoded: &Encoded,
        chunk_bytes: usize,
    ) -> std::result::Result<Response<PushReply>, Status> {
        if let (Fleet::Direct(direct), Encoded::Plain(values)) = (&*self, encoded) {
            return direct
                .push_values(header, values.clone())
                .await
                .map(Response::new);
        }
        let mut parts = vec![UpdatePart {
            part: Some(Part::Header(header)),
        }];
        parts.extend(encoded.chunks(chunk_bytes).map(|c| UpdatePart {
            part: Some(Part::Chunk(c)),
        }));
        self.push_update(parts).await
    }

    /// Uploads an update: its header, then its chunks.
    pub async fn push_update(
        &mut self,
        parts: Vec<UpdatePart>,
    ) -> std::result::Result<Response<PushReply>, Status> {
        match self {
            Fleet::Grpc(grpc) | Fleet::Shared(grpc, _) => {
                grpc.push_update(futures::stream::iter(parts)).await
            }
            Fleet::Direct(direct) => direct.push_update(parts).await.map(Response::new),
        }
    }

    /// Says the client is leaving.
    pub async fn leave(
        &mut self,
        request: LeaveRequest,
    ) -> std::result::Result<Response<LeaveReply>, Status> {
        match self {
            Fleet::Grpc(grpc) | Fleet::Shared(grpc, _) => grpc.leave(request).await,
            Fleet::Direct(direct) => direct.leave(request).await.map(Response::new),
        }
    }

    /// Says the client cannot do its task.
    pub async fn abandon(
        &mut self,
        request: AbandonRequest,
    ) -> std::result::Result<Response<AbandonReply>, Status> {
        match self {
            Fleet::Grpc(grpc) | Fleet::Shared(grpc, _) => grpc.abandon(request).await,
            Fleet::Direct(direct) => direct.abandon(request).await.map(Response::new),
        }
    }
}

/// A client certificate and its private key, both PEM, for mutual TLS.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate (chain), PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How a client checks the coordinator, and how it proves itself over TLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA the coordinator's certificate must chain to, PEM.
    pub ca_pem: String,
    /// The name the coordinator's certificate must carry [default: the URL's host].
    pub domain: Option<String>,
    /// A client certificate for mutual TLS.
    pub identity: Option<TlsIdentity>,
}

impl ClientTls {
    /// Trusts the CA in `ca_pem`, checks the URL's host, presents no certificate.
    pub fn new(ca_pem: impl Into<String>) -> Self {
        Self {
            ca_pem: ca_pem.into(),
            domain: None,
            identity: None,
        }
    }

    /// The same, expecting the server certificate to name `domain`.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// The same, presenting `identity` for mutual TLS.
    pub fn with_identity(mut self, identity: TlsIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    fn config(&self) -> Result<ClientTlsConfig> {
        let pem_cert = |pem: &str, what: &str| {
            if pem.contains("-----BEGIN CERTIFICATE-----") {
                Ok(())
            } else {
                Err(ClientError::Credentials(format!(
                    "the {what} holds no PEM certificate"
                )))
            }
        };
        pem_cert(&self.ca_pem, "CA file")?;
        if let Some(id) = &self.identity {
            pem_cert(&id.cert_pem, "client certificate file")?;
        }
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(Duration::from_secs(10));
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some(id) = &self.identity {
            config = config.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        Ok(config)
    }
}

/// A lazily connecting channel to `url` ("http://host:port", or "https://host:port" with
/// `tls`): it dials on first use and redials after a failure, which is what a client that
/// outlives coordinator restarts needs. Certificates and keys are checked now.
pub fn channel(url: &str, tls: Option<&ClientTls>) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::BadAddress(url.to_owned(), e.to_string()))?;
    let uri = endpoint.uri().clone();
    if uri.host().is_none() {
        return Err(ClientError::BadAddress(
            url.to_owned(),
            "expected http://HOST:PORT or https://HOST:PORT".into(),
        ));
    }
    let endpoint = match (uri.scheme_str(), tls) {
        (Some("http"), None) => endpoint,
        (Some("https"), Some(tls)) => endpoint
            .tls_config(tls.config()?)
            .map_err(|e| ClientError::Credentials(crate::error::chain(&e)))?,
        (Some("http"), Some(_)) => {
            return Err(ClientError::BadAddress(
                url.to_owned(),
                "TLS is configured: use https://".into(),
            ));
        }
        (Some("https"), None) => {
            return Err(ClientError::BadAddress(
                url.to_owned(),
                "https:// needs a CA certificate to check the coordinator against".into(),
            ));
        }
        _ => {
            return Err(ClientError::BadAddress(
                url.to_owned(),
                "expected http://HOST:PORT or https://HOST:PORT".into(),
            ));
        }
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A coordinator that stops answering (paused, cut off) is noticed within 10 s, also
        // by a client waiting in a long-poll, which then moves on to a standby.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// Puts a client's bearer token on every request, or nothing if it has none.
#[derive(Clone, Default)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.header.as_ref().map(|_| "<redacted>");
        f.debug_struct("BearerAuth").field("token", &token).finish()
    }
}

impl BearerAuth {
    /// Sends no token.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sends `token` (printable ASCII, no spaces).
    pub fn token(token: &str) -> Result<Self> {
        let header = shoal_proto::bearer_header(token).ok_or_else(|| {
            ClientError::Credentials("a bearer token must be printable ASCII without spaces".into())
        })?;
        Ok(Self {
            header: Some(header),
        })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// A fleet client over `channel`, sending `auth` with every request, with message limits
/// matching the server's.
pub fn fleet_client(channel: Channel, auth: BearerAuth) -> Fleet {
    Fleet::Grpc(grpc_client(channel, auth))
}

/// The generated gRPC client itself, set up as [`fleet_client`] sets it up: for callers that
/// stream by hand (tests of what a misbehaving peer can send).
pub fn grpc_client(channel: Channel, auth: BearerAuth) -> GrpcFleet {
    let max = shoal_proto::message_limit(MAX_CHUNK_BYTES);
    FleetClient::with_interceptor(channel, auth)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn schemes_must_match_the_tls_settings() {
        assert!(channel("http://127.0.0.1:1", None).is_ok());
        let tls = ClientTls::new("not a certificate");
        let err = channel("http://127.0.0.1:1", Some(&tls)).unwrap_err();
        assert!(err.to_string().contains("use https://"), "{err}");
        let err = channel("https://127.0.0.1:1", None).unwrap_err();
        assert!(err.to_string().contains("needs a CA"), "{err}");
        assert!(channel("ftp://127.0.0.1:1", None).is_err());
        let err = channel("https://127.0.0.1:1", Some(&tls)).unwrap_err();
        assert!(matches!(err, ClientError::Credentials(_)), "{err}");
    }

    #[test]
    fn tokens_become_bearer_headers_and_stay_out_of_logs() {
        let mut auth = BearerAuth::token(" s3cret ").unwrap();
        assert!(!format!("{auth:?}").contains("s3cret"));
        let request = auth.call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        let request = BearerAuth::none().call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
        assert!(BearerAuth::token("two words").is_err());
        assert!(BearerAuth::token("").is_err());
    }
}
