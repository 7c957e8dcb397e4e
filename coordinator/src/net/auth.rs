//! Who may speak for a client: the authentication policy the gRPC service applies to every
//! request before it reaches the engine.
//!
//! A client proves an identity with a client certificate (mutual TLS: the handshake proves the
//! client holds the certificate's key, [`ClientCa`] checks here that the certificate chains to
//! the configured CA and is valid now, and it names the client in a `shoal://client/ID` URI, see
//! [`crate::net::certs`]), with a bearer token (`authorization: Bearer TOKEN`, looked up by its
//! SHA-256 in a token table), or both. Every mechanism the coordinator is configured with is
//! required, they must prove the same identity, and that identity must equal the client id the
//! request claims: nobody acts under another client's id.
//!
//! The one exception is a sub-aggregator: an identity the server lists as an aggregator
//! ([`AuthPolicy::relays`]) authenticated its own clients itself and relays their requests
//! under their ids; only such an identity may send partial sums
//! ([`AuthPolicy::check_aggregator`]).

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::metadata::MetadataMap;

pub use crate::error::AuthError;

/// The SHA-256 of a token, in lowercase hex: what a token file keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Clients' bearer tokens, kept as SHA-256 digests and looked up by digest.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    owners: HashMap<[u8; 32], String>,
}

impl TokenTable {
    /// Parses a token file: one `CLIENT_ID SHA256HEX` line per client; blank lines and lines
    /// starting with `#` are skipped. Refuses a client listed twice or a digest shared by two
    /// clients, which would make a token's owner ambiguous.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let mut owners = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |problem: &str| AuthError::TokenFileLine {
                line: n + 1,
                problem: problem.to_owned(),
            };
            let mut fields = line.split_whitespace();
            let (Some(id), Some(digest), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(at("expected `CLIENT_ID SHA256HEX`"));
            };
            crate::engine::registry::check_client_id(id).map_err(|e| at(&e.to_string()))?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(digest, &mut bytes)
                .map_err(|_| at("the digest must be 64 hex digits (a SHA-256)"))?;
            if !seen.insert(id.to_owned()) {
                return Err(at(&format!("client {id:?} is listed twice")));
            }
            if let Some(other) = owners.insert(bytes, id.to_owned()) {
                return Err(at(&format!("{id:?} has the same token as {other:?}")));
            }
        }
        Ok(Self { owners })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let failed = |problem: String| AuthError::TokenFile {
            path: path.to_owned(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
        Self::parse(&text).map_err(|e| failed(e.to_string()))
    }

    /// Clients with a token.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// True if no client has a token.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// The client a token belongs to.
    pub fn owner(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.owners.get(&digest).map(String::as_str)
    }
}

/// The CA that client certificates must chain to.
#[derive(Clone)]
pub struct ClientCa {
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    algorithms: &'static [&'static dyn SignatureVerificationAlgorithm],
    /// Chains verified lately, by SHA-256 of the chain: their client id and until when (Unix
    /// seconds) the verdict holds. See [`ClientCa::verify_now`].
    verified: Arc<Mutex<VerifiedChains>>,
}

/// SHA-256 of a chain → (client id, Unix second until which the verdict holds).
type VerifiedChains = HashMap<[u8; 32], (String, u64)>;

/// How long a verified chain is trusted without verifying it again. The chain must also verify
/// this far in the future before it is cached, so a cached chain never outlives its validity.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Most chains remembered; past it the memory is cleared (a crowd of distinct valid
/// certificates costs verifications, never memory).
const VERIFIED_CAP: usize = 100_000;

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

impl ClientCa {
    /// Trusts every CA certificate in `pem`.
    pub fn from_pem(pem: &[u8]) -> crate::Result<Self> {
        let anchors = crate::net::tls::pem_certs(pem, "client CA")?
            .iter()
            .map(|der| webpki::anchor_from_trusted_cert(der).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crate::CoordinatorError::Config(format!("tls: client CA: {e}")))?;
        Ok(Self {
            anchors: Arc::new(anchors),
            algorithms: crate::net::tls::provider()
                .signature_verification_algorithms
                .all,
            verified: Arc::default(),
        })
    }

    /// [`ClientCa::verify`] at the current time, remembering a success for `VERIFIED_FOR`.
    ///
    /// A chain verification costs 53-67 µs (an ECDSA signature and the chain walk, measured on
    /// the project VM), and every request is authorised: with 1,000 clients making three
    /// requests a round, that would be 0.2 s of CPU a round, more than the round itself. A
    /// remembered chain costs one SHA-256 of its bytes and a lookup: 0.4 µs. Only successes are remembered, and only
    /// for a chain that still verifies at the end of the period; refusals are verified each time.
    pub fn verify_now(&self, chain: &[CertificateDer<'_>]) -> Result<String, AuthError> {
        let now = UnixTime::now();
        let mut digest = Sha256::new();
        for cert in chain {
            digest.update((cert.len() as u64).to_le_bytes());
            digest.update(cert.as_ref());
        }
        let key: [u8; 32] = digest.finalize().into();
        if let Some((id, until)) = crate::sync::lock(&self.verified).get(&key)
            && now.as_secs() < *until
        {
            return Ok(id.clone());
        }
        let id = self.verify(chain, now)?;
        let until = now.as_secs().saturating_add(VERIFIED_FOR.as_secs());
        let later = UnixTime::since_unix_epoch(Duration::from_secs(until));
        if self.verify(chain, later).is_ok() {
            let mut verified = crate::sync::lock(&self.verified);
            if verified.len() >= VERIFIED_CAP {
                verified.clear();
            }
            verified.insert(key, (id.clone(), until));
        }
        Ok(id)
    }

    /// Checks that `chain` (leaf first) chains to the CA, is valid at `now` and is meant for
    /// client authentication; returns the client id it certifies.
    pub fn verify(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> Result<String, AuthError> {
        let (leaf, intermediates) = chain.split_first().ok_or(AuthError::NoCertificate)?;
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            AuthError::UntrustedCertificate(format!("unreadable client certificate: {e}"))
        })?;
        cert.verify_for_usage(
            self.algorithms,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| {
            let self_signed = cert.issuer() == cert.subject();
            AuthError::UntrustedCertificate(untrusted_reason(&e, self_signed))
        })?;
        crate::net::certs::client_id_of(leaf).map_err(AuthError::CertificateId)
    }
}

/// Why webpki refused a client certificate, in words.
fn untrusted_reason(err: &webpki::Error, self_signed: bool) -> String {
    use webpki::Error as E;
    match err {
        E::CertExpired { .. } => "client certificate has expired".into(),
        E::CertNotValidYet { .. } => "client certificate is not valid yet".into(),
        E::UnknownIssuer | E::InvalidSignatureForPublicKey if self_signed => {
            "client certificate is self-signed, not issued by this coordinator's CA".into()
        }
        E::UnknownIssuer | E::InvalidSignatureForPublicKey => {
            "client certificate is not issued by this coordinator's CA".into()
        }
        E::RequiredEkuNotFoundContext(_) => {
            "client certificate is not meant for client authentication".into()
        }
        other => format!("client certificate refused: {other}"),
    }
}

/// What a request claims to be: a client (or an aggregator relaying for it), or the
/// sub-aggregator sending a partial sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The id is a client's: [`AuthPolicy::check`].
    Client,
    /// The id is the sub-aggregator's own: [`AuthPolicy::check_aggregator`].
    Aggregator,
}

/// What a request must prove, as configured on the coordinator.
#[derive(Debug, Clone, Default)]
pub struct AuthPolicy {
    /// A client certificate that chains to this CA must name the claimed client.
    pub client_ca: Option<ClientCa>,
    /// A bearer token from this table must belong to the claimed client.
    pub tokens: Option<TokenTable>,
    /// Identities that may act for any client: sub-aggregators, which authenticate their own
    /// clients. Meaningful only with a CA or tokens.
    pub relays: BTreeSet<String>,
}

impl AuthPolicy {
    /// Anyone may claim any id (loopback demos and tests).
    pub fn open() -> Self {
        Self::default()
    }

    /// True if the policy checks nothing.
    pub fn is_open(&self) -> bool {
        self.client_ca.is_none() && self.tokens.is_none()
    }

    /// Checks the credentials of `request` (its TLS client certificate, its bearer token)
    /// against the id it claims, as a client or as a sub-aggregator.
    pub fn check_request<T>(
        &self,
        request: &tonic::Request<T>,
        claimed: &str,
        claim: Claim,
    ) -> Result<(), AuthError> {
        if self.is_open() {
            return Ok(());
        }
        let certs = request.peer_certs();
        let certs = certs.as_deref().map(Vec::as_slice);
        match claim {
            Claim::Client => self.check(certs, request.metadata(), claimed),
            Claim::Aggregator => self.check_aggregator(certs, request.metadata(), claimed),
        }
    }

    /// Checks a request's credentials against the id it claims: they must prove that client,
    /// or one of the [`AuthPolicy::relays`]. `peer_certs` is the chain the client presented in
    /// the TLS handshake (leaf first), `metadata` the request's headers.
    pub fn check(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
        metadata: &MetadataMap,
        claimed: &str,
    ) -> Result<(), AuthError> {
        let Some(identity) = self.identity(peer_certs, metadata, claimed)? else {
            return Ok(());
        };
        if identity == claimed || self.relays.contains(&identity) {
            return Ok(());
        }
        Err(self.mismatch(identity, claimed))
    }

    /// Checks the credentials of a partial sum from sub-aggregator `aggregator`: they must
    /// prove that identity, and it must be one of the [`AuthPolicy::relays`].
    pub fn check_aggregator(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
        metadata: &MetadataMap,
        aggregator: &str,
    ) -> Result<(), AuthError> {
        let Some(identity) = self.identity(peer_certs, metadata, aggregator)? else {
            return Ok(());
        };
        if identity != aggregator {
            return Err(self.mismatch(identity, aggregator));
        }
        if !self.relays.contains(&identity) {
            return Err(AuthError::NotAnAggregator { identity });
        }
        Ok(())
    }

    /// The identity the credentials prove, or `None` if the policy checks nothing. A
    /// certificate and a token of two different clients prove nothing: the refusal names the
    /// one that is not `claimed`'s.
    fn identity(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
        metadata: &MetadataMap,
        claimed: &str,
    ) -> Result<Option<String>, AuthError> {
        let certified = match &self.client_ca {
            Some(ca) => Some(ca.verify_now(peer_certs.unwrap_or_default())?),
            None => None,
        };
        let owner = match &self.tokens {
            Some(tokens) => {
                let header = metadata
                    .get("authorization")
                    .ok_or(AuthError::NoToken)?
                    .to_str()
                    .map_err(|_| AuthError::MalformedToken)?;
                let token = bearer(header).ok_or(AuthError::MalformedToken)?;
                Some(
                    tokens
                        .owner(token)
                        .ok_or(AuthError::UnknownToken)?
                        .to_owned(),
                )
            }
            None => None,
        };
        match (certified, owner) {
            (Some(certified), Some(owner)) if certified != owner => {
                let claimed = claimed.to_owned();
                Err(if certified == claimed {
                    AuthError::TokenMismatch { owner, claimed }
                } else {
                    AuthError::CertificateMismatch { certified, claimed }
                })
            }
            (Some(id), _) | (None, Some(id)) => Ok(Some(id)),
            (None, None) => Ok(None),
        }
    }

    /// The refusal of `identity` acting as `claimed`, named after the credential that proved it.
    fn mismatch(&self, identity: String, claimed: &str) -> AuthError {
        let claimed = claimed.to_owned();
        if self.client_ca.is_some() {
            AuthError::CertificateMismatch {
                certified: identity,
                claimed,
            }
        } else {
            AuthError::TokenMismatch {
                owner: identity,
                claimed,
            }
        }
    }
}

/// The token in `Bearer TOKEN` (the scheme is case-insensitive, as in RFC 6750).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn table() -> TokenTable {
        let text = format!(
            "# comment\n\nclient-a {}\nclient-b   {}\n",
            hash_token("secret-a"),
            hash_token("secret-b")
        );
        TokenTable::parse(&text).unwrap()
    }

    fn with_auth(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    fn tokens_only() -> AuthPolicy {
        AuthPolicy {
            client_ca: None,
            tokens: Some(table()),
            relays: BTreeSet::new(),
        }
    }

    #[test]
    fn a_token_speaks_only_for_its_owner() {
        let p = tokens_only();
        assert_eq!(
            p.check(None, &with_auth("Bearer secret-a"), "client-a"),
            Ok(())
        );
        assert_eq!(
            p.check(None, &with_auth("bearer  secret-b "), "client-b"),
            Ok(())
        );
        assert_eq!(
            p.check(None, &with_auth("Bearer secret-a"), "client-b"),
            Err(AuthError::TokenMismatch {
                owner: "client-a".into(),
                claimed: "client-b".into()
            })
        );
        assert_eq!(
            p.check(None, &with_auth("Bearer nope"), "client-a"),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            p.check(None, &MetadataMap::new(), "client-a"),
            Err(AuthError::NoToken)
        );
        for bad in ["secret-a", "Basic secret-a", "Bearer ", "Bearer"] {
            assert_eq!(
                p.check(None, &with_auth(bad), "client-a"),
                Err(AuthError::MalformedToken),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_listed_aggregators_speak_for_others_and_send_partial_sums() {
        let p = AuthPolicy {
            relays: BTreeSet::from(["client-b".to_owned()]),
            ..tokens_only()
        };
        let (a, b) = (with_auth("Bearer secret-a"), with_auth("Bearer secret-b"));
        // The aggregator relays for any client; a client still only for itself.
        assert_eq!(p.check(None, &b, "client-a"), Ok(()));
        assert_eq!(p.check(None, &b, "client-zzz"), Ok(()));
        assert_eq!(
            p.check(None, &a, "client-b"),
            Err(AuthError::TokenMismatch {
                owner: "client-a".into(),
                claimed: "client-b".into()
            })
        );
        // Partial sums: only a listed aggregator, under its own id.
        assert_eq!(p.check_aggregator(None, &b, "client-b"), Ok(()));
        assert_eq!(
            p.check_aggregator(None, &a, "client-a"),
            Err(AuthError::NotAnAggregator {
                identity: "client-a".into()
            })
        );
        assert_eq!(
            p.check_aggregator(None, &b, "client-a"),
            Err(AuthError::TokenMismatch {
                owner: "client-b".into(),
                claimed: "client-a".into()
            })
        );
        assert!(
            AuthError::NotAnAggregator {
                identity: "x".into()
            }
            .is_impersonation()
        );
        assert_eq!(
            p.check_aggregator(None, &with_auth("Bearer nope"), "client-b"),
            Err(AuthError::UnknownToken)
        );
        // An open server checks nothing, partial sums included.
        assert_eq!(
            AuthPolicy::open().check_aggregator(None, &MetadataMap::new(), "anyone"),
            Ok(())
        );
    }

    #[test]
    fn mutual_tls_needs_a_certificate() {
        let ca = crate::net::certs::DevCa::generate(crate::net::certs::Validity::days(1)).unwrap();
        let p = AuthPolicy {
            client_ca: Some(ClientCa::from_pem(ca.pem().cert.as_bytes()).unwrap()),
            tokens: None,
            relays: BTreeSet::new(),
        };
        assert_eq!(
            p.check(None, &MetadataMap::new(), "client-a"),
            Err(AuthError::NoCertificate)
        );
        assert_eq!(
            p.check(Some(&[]), &MetadataMap::new(), "client-a"),
            Err(AuthError::NoCertificate)
        );
        assert!(AuthPolicy::open().is_open());
        assert_eq!(
            AuthPolicy::open().check(None, &MetadataMap::new(), "x"),
            Ok(())
        );
    }

    /// The first certificate of a PEM text.
    fn der(pem: &str) -> CertificateDer<'static> {
        crate::net::tls::pem_certs(pem.as_bytes(), "test")
            .unwrap()
            .remove(0)
    }

    /// A development CA, and the trust in it a coordinator configured with it has.
    fn ca_and_trust() -> (crate::net::certs::DevCa, ClientCa) {
        let ca = crate::net::certs::DevCa::generate(crate::net::certs::Validity::days(1)).unwrap();
        let trust = ClientCa::from_pem(ca.pem().cert.as_bytes()).unwrap();
        (ca, trust)
    }

    #[test]
    fn verified_chains_are_remembered_only_while_they_stay_valid() {
        use crate::net::certs::{DevCa, Validity};
        use std::time::{Duration, SystemTime};
        let (ca, trust) = ca_and_trust();
        let remembered = || crate::sync::lock(&trust.verified).len();

        let good = der(&ca.client("client-a", Validity::days(1)).unwrap().cert);
        for _ in 0..3 {
            assert_eq!(
                trust.verify_now(std::slice::from_ref(&good)),
                Ok("client-a".into())
            );
        }
        assert_eq!(remembered(), 1);

        // Valid now but not in a minute: verified every time, never remembered.
        let now = SystemTime::now();
        let brief = Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(30),
        };
        let short = der(&ca.client("client-b", brief).unwrap().cert);
        assert_eq!(
            trust.verify_now(std::slice::from_ref(&short)),
            Ok("client-b".into())
        );
        assert_eq!(remembered(), 1);

        // Refusals are not remembered either, and a remembered chain proves only its own id.
        let stranger = DevCa::generate(Validity::days(1)).unwrap();
        let foreign = der(&stranger.client("client-a", Validity::days(1)).unwrap().cert);
        assert!(matches!(
            trust.verify_now(std::slice::from_ref(&foreign)),
            Err(AuthError::UntrustedCertificate(_))
        ));
        assert_eq!(remembered(), 1);
    }

    #[test]
    fn client_certificates_must_chain_to_the_ca_and_be_current() {
        use crate::net::certs::{DevCa, Validity, self_signed_client};
        use std::time::Duration;
        let (ca, trust) = ca_and_trust();
        let now = UnixTime::now();
        let good = der(&ca.client("client-a", Validity::days(1)).unwrap().cert);
        assert_eq!(
            trust.verify(std::slice::from_ref(&good), now),
            Ok("client-a".into())
        );
        let refused = |chain: &[CertificateDer<'_>], at: UnixTime| match trust.verify(chain, at) {
            Err(AuthError::UntrustedCertificate(reason)) => reason,
            other => panic!("{other:?}"),
        };
        let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + 3 * 86_400));
        assert!(refused(std::slice::from_ref(&good), later).contains("expired"));
        let stranger = DevCa::generate_named("Stranger CA", Validity::days(1)).unwrap();
        let theirs = der(&stranger.client("client-a", Validity::days(1)).unwrap().cert);
        assert!(refused(&[theirs], now).contains("not issued by this coordinator's CA"));
        let own = der(&self_signed_client("client-a", Validity::days(1))
            .unwrap()
            .cert);
        assert!(refused(&[own], now).contains("self-signed"));
        let server = ca.server(&["localhost".into()], Validity::days(1)).unwrap();
        assert!(refused(&[der(&server.cert)], now).contains("not meant for client authentication"));
        assert_eq!(trust.verify(&[], now), Err(AuthError::NoCertificate));
    }

    #[test]
    fn token_files_are_checked_line_by_line() {
        let h = hash_token("t");
        assert_eq!(table().len(), 2);
        assert_eq!(table().owner("secret-b"), Some("client-b"));
        for (text, want) in [
            ("client-a".to_owned(), "line 1: expected"),
            (format!("client-a {h} extra"), "line 1: expected"),
            ("client-a abc".to_owned(), "64 hex digits"),
            (
                format!("\nclient-a {h}\nclient-a {}", hash_token("u")),
                "line 3",
            ),
            (format!("client-a {h}\nclient-b {h}"), "same token"),
        ] {
            let err = TokenTable::parse(&text).unwrap_err();
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn hashes_are_lowercase_sha256_hex() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
