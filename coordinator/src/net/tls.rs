//! The TLS plumbing under [`crate::net::server`]: the rustls server configuration, and the
//! handshakes on the connections [`crate::net::listener`] accepts, each on its own task so a slow or
//! hostile peer never holds up the others.
//!
//! Under mutual TLS the handshake asks every client for a certificate and checks that the
//! client holds its private key (the CertificateVerify signature), but leaves the question
//! "does this certificate chain to our CA, and is it valid today?" to [`crate::net::auth`], which
//! asks it on every request. A refused certificate then gets an `Unauthenticated` status that
//! says why (expired, unknown CA, self-signed), instead of a TLS alert that races the client's
//! first request and reaches it, if at all, as "transport error". No request is served without
//! that check: the service authorizes each one before it reaches the engine (a chain that
//! verified stays trusted for a minute, see [`crate::net::auth::ClientCa::verify_now`]).

use crate::error::{CoordinatorError, Result};
use crate::net::listener::Guarded;
use futures::Stream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// The crypto provider: ring, as everywhere else in the stack.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

fn tls_error(msg: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Config(format!("tls: {msg}"))
}

/// Every certificate in a PEM text, in order.
pub(crate) fn pem_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("{what}: bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(format!("{what}: no PEM certificate found")));
    }
    Ok(certs)
}

/// The server's certificate chain and private key.
#[derive(Debug)]
pub(crate) struct ServerKeys {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerKeys {
    /// Parses the PEM chain and key and checks that they make a usable server configuration.
    pub(crate) fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let chain = pem_certs(cert_pem, "server certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| tls_error(format!("server key: {e}")))?;
        let keys = Self { chain, key };
        keys.config(false)?;
        Ok(keys)
    }

    /// A rustls configuration serving HTTP/2; with `ask_client_certs`, clients are asked for a
    /// certificate as described in the module docs.
    pub(crate) fn config(&self, ask_client_certs: bool) -> Result<Arc<ServerConfig>> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?;
        let builder = if ask_client_certs {
            builder.with_client_cert_verifier(Arc::new(KeyHolderVerifier {
                algorithms: provider.signature_verification_algorithms,
            }))
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls_error(format!("server certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Asks for a client certificate, accepts a connection without one, and checks only the
/// handshake signature: proof that the client holds the certificate's key. The chain is
/// checked per request ([`crate::net::auth::ClientCa`]).
#[derive(Debug)]
struct KeyHolderVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for KeyHolderVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, tokio_rustls::rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Runs a TLS handshake with `config` on each connection `accepted` yields once it has sent
/// its first bytes, each on its own task (see [`crate::net::listener::upgrade`]), and yields those
/// that complete. A handshake has the connection's first-bytes deadline to finish
/// ([`Guarded`] fails the connection when it passes, counting it as silent), and the
/// connection cap bounds how many run at once.
pub(crate) fn incoming(
    accepted: impl Stream<Item = Guarded<TcpStream>> + Send + 'static,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = std::io::Result<TlsStream<Guarded<TcpStream>>>> {
    let acceptor = TlsAcceptor::from(config);
    crate::net::listener::upgrade(accepted, move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let peer = stream.peer();
            match acceptor.accept(stream.handshaking()).await {
                Ok(mut tls) => {
                    tls.get_mut().0.start_counting();
                    Some(tls)
                }
                Err(err) => {
                    debug!(%peer, error = %err, "tls handshake failed");
                    None
                }
            }
        }
    })
}
