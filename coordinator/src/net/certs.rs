//! Development certificates for `shoal certs` and the TLS tests: a CA, a server certificate, and
//! one client certificate per client id, all made with rcgen.
//!
//! **How a client id is bound into its certificate.** A client certificate carries its id twice:
//! as the subject common name (for people reading it) and as a subject-alternative-name URI
//! `shoal://client/ID`, with every byte of ID outside `A-Z a-z 0-9 - . _ ~` percent-encoded. Only
//! the URI counts: the coordinator reads it back from the verified peer certificate
//! ([`client_id_of`]) and refuses a certificate with none, or with more than one. Client
//! certificates are marked for client authentication only, so a server certificate from the same
//! CA cannot stand in for a client.
//!
//! The CA made here is for development and tests: its key sits in a file next to the
//! certificates. Production deployments should issue certificates from their own CA with the
//! same URI convention.

pub mod bundle;

use crate::error::{CoordinatorError, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

/// The scheme and path every client-id URI starts with.
pub const CLIENT_URI_PREFIX: &str = "shoal://client/";

/// The common name of CAs made by [`DevCa::generate`].
pub const DEV_CA_NAME: &str = "Shoal development CA";

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertifiedPem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for CertifiedPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedPem")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before this instant.
    pub not_before: SystemTime,
    /// Not valid after this instant.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (to forgive small clock skew) until `days` from now.
    pub fn days(days: u32) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<()> {
        params.not_before = datetime(self.not_before)?;
        params.not_after = datetime(self.not_after)?;
        if params.not_after <= params.not_before {
            return Err(cert_error("a certificate must end after it starts"));
        }
        Ok(())
    }
}

fn datetime(at: SystemTime) -> Result<OffsetDateTime> {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| cert_error("certificate dates must be after 1970"))?
        .as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::UNIX_EPOCH.checked_add(time::Duration::seconds(s)))
        .ok_or_else(|| cert_error("certificate date out of range"))
}

fn cert_error(msg: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Config(format!("certificates: {msg}"))
}

/// A development certificate authority that signs server and client certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: CertifiedPem,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").field("pem", &self.pem).finish()
    }
}

fn ca_params(common_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Shoal");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl DevCa {
    /// A new CA named [`DEV_CA_NAME`] with a fresh ECDSA P-256 key.
    pub fn generate(validity: Validity) -> Result<Self> {
        Self::generate_named(DEV_CA_NAME, validity)
    }

    /// A new CA with the common name `common_name` (tests use a second CA to play a stranger).
    pub fn generate_named(common_name: &str, validity: Validity) -> Result<Self> {
        let mut params = ca_params(common_name)?;
        validity.apply(&mut params)?;
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = params.self_signed(&key).map_err(cert_error)?;
        let pem = CertifiedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA made earlier by [`DevCa::generate`] from its certificate and key, to issue more
    /// certificates under it. Refuses a pair that does not belong together or a CA made
    /// elsewhere (its name must be [`DEV_CA_NAME`]).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| cert_error(format!("ca.key: {e}")))?;
        let params = ca_params(DEV_CA_NAME)?;
        // Rebuild the CA's certificate from the same parameters and key: its subject and public
        // key must match the file's, or certificates issued now would not chain to it.
        let rebuilt = params.self_signed(&key).map_err(cert_error)?;
        let on_disk = first_cert_der(cert_pem)?;
        let same = |a: &webpki::EndEntityCert<'_>, b: &webpki::EndEntityCert<'_>| {
            a.subject() == b.subject() && a.subject_public_key_info() == b.subject_public_key_info()
        };
        let parsed = webpki::EndEntityCert::try_from(&on_disk)
            .map_err(|e| cert_error(format!("ca.pem: {e}")))?;
        let ours = webpki::EndEntityCert::try_from(rebuilt.der())
            .map_err(|e| cert_error(format!("rebuilt CA: {e}")))?;
        if !same(&parsed, &ours) {
            return Err(cert_error(
                "ca.pem and ca.key do not belong together, or the CA was not made by `shoal certs`",
            ));
        }
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem: CertifiedPem {
                cert: cert_pem.to_owned(),
                key: key_pem.to_owned(),
            },
        })
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> &CertifiedPem {
        &self.pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[String], validity: Validity) -> Result<CertifiedPem> {
        if names.is_empty() {
            return Err(cert_error("a server certificate needs at least one name"));
        }
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|e| cert_error(format!("server names {names:?}: {e}")))?;
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(params, validity)
    }

    /// A client certificate binding `client_id` (see the module docs).
    pub fn client(&self, client_id: &str, validity: Validity) -> Result<CertifiedPem> {
        self.leaf(client_params(client_id)?, validity)
    }

    fn leaf(&self, mut params: CertificateParams, validity: Validity) -> Result<CertifiedPem> {
        validity.apply(&mut params)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_error)?;
        Ok(CertifiedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn client_params(client_id: &str) -> Result<CertificateParams> {
    crate::engine::registry::check_client_id(client_id)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    params
        .distinguished_name
        .push(DnType::CommonName, client_id);
    let uri = client_uri(client_id)
        .try_into()
        .map_err(|e| cert_error(format!("client uri: {e}")))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// A self-signed client certificate for `client_id`, signed by no CA (tests show it is refused).
pub fn self_signed_client(client_id: &str, validity: Validity) -> Result<CertifiedPem> {
    let mut params = client_params(client_id)?;
    validity.apply(&mut params)?;
    let key = KeyPair::generate().map_err(cert_error)?;
    let cert = params.self_signed(&key).map_err(cert_error)?;
    Ok(CertifiedPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn first_cert_der(pem: &str) -> Result<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| cert_error("no certificate in PEM"))?
        .map_err(|e| cert_error(format!("bad PEM certificate: {e}")))
}

/// The SAN URI that binds `client_id`: `shoal://client/` + the percent-encoded id.
pub fn client_uri(client_id: &str) -> String {
    let mut uri = String::from(CLIENT_URI_PREFIX);
    for b in client_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// The client id in a `shoal://client/ID` URI, or `None` if the URI is not one.
pub fn parse_client_uri(uri: &str) -> Option<String> {
    let encoded = uri.strip_prefix(CLIENT_URI_PREFIX)?;
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let id = String::from_utf8(out).ok()?;
    (!id.is_empty()).then_some(id)
}

/// The client id bound into a certificate (DER): its one `shoal://client/ID` SAN URI. An error
/// says why there is no usable id.
pub fn client_id_of(cert_der: &[u8]) -> std::result::Result<String, String> {
    let der = rustls_pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let mut ids: Vec<String> = cert
        .valid_uri_names()
        .filter(|uri| uri.starts_with(CLIENT_URI_PREFIX))
        .map(|uri| parse_client_uri(uri).ok_or_else(|| format!("malformed client uri {uri:?}")))
        .collect::<std::result::Result<_, _>>()?;
    ids.dedup();
    match ids.len() {
        0 => Err(format!(
            "client certificate names no client id (expected a SAN URI {CLIENT_URI_PREFIX}ID)"
        )),
        1 => Ok(ids.swap_remove(0)),
        _ => Err(format!(
            "client certificate names several client ids: {ids:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        first_cert_der(pem).unwrap().to_vec()
    }

    #[test]
    fn client_uris_round_trip_every_printable_id() {
        for id in ["client-00000", "a", "x/y?z#%20", "~._-", "ünï"] {
            let uri = client_uri(id);
            assert!(uri.is_ascii(), "{uri}");
            assert_eq!(parse_client_uri(&uri).as_deref(), Some(id), "{uri}");
        }
        let all: String = (0x21u8..=0x7e).map(char::from).collect();
        assert_eq!(parse_client_uri(&client_uri(&all)), Some(all));
        assert_eq!(parse_client_uri("shoal://client/"), None);
        assert_eq!(parse_client_uri("shoal://client/%4"), None);
        assert_eq!(parse_client_uri("https://client/x"), None);
    }

    #[test]
    fn a_client_certificate_carries_its_id() {
        let ca = DevCa::generate(Validity::days(1)).unwrap();
        let cert = ca.client("client-00007", Validity::days(1)).unwrap();
        assert_eq!(client_id_of(&der(&cert.cert)).unwrap(), "client-00007");
        let odd = ca.client("a/b%c", Validity::days(1)).unwrap();
        assert_eq!(client_id_of(&der(&odd.cert)).unwrap(), "a/b%c");
        assert!(ca.client("has space", Validity::days(1)).is_err());
    }

    #[test]
    fn a_server_certificate_names_no_client() {
        let ca = DevCa::generate(Validity::days(1)).unwrap();
        let server = ca
            .server(&["localhost".into(), "127.0.0.1".into()], Validity::days(1))
            .unwrap();
        let err = client_id_of(&der(&server.cert)).unwrap_err();
        assert!(err.contains("names no client id"), "{err}");
    }

    #[test]
    fn a_ca_reloads_from_its_files_and_refuses_a_foreign_key() {
        let ca = DevCa::generate(Validity::days(1)).unwrap();
        let again = DevCa::load(&ca.pem().cert, &ca.pem().key).unwrap();
        assert_eq!(again.pem().cert, ca.pem().cert);
        let other = DevCa::generate(Validity::days(1)).unwrap();
        let err = DevCa::load(&ca.pem().cert, &other.pem().key).unwrap_err();
        assert!(err.to_string().contains("do not belong together"), "{err}");
        let stranger = DevCa::generate_named("someone else", Validity::days(1)).unwrap();
        assert!(DevCa::load(&stranger.pem().cert, &stranger.pem().key).is_err());
    }

    #[test]
    fn validity_must_not_be_empty() {
        let now = SystemTime::now();
        let bad = Validity {
            not_before: now,
            not_after: now - Duration::from_secs(1),
        };
        assert!(DevCa::generate(bad).is_err());
    }
}
