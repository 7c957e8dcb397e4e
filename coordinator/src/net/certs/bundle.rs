//! A directory of development credentials, as `shoal certs` writes it:
//!
//! | file | what | who needs it |
//! | --- | --- | --- |
//! | `ca.pem`, `ca.key` | the development CA | everyone / only `shoal certs` |
//! | `server.pem`, `server.key` | the coordinator's certificate | the coordinator |
//! | `client-ID.pem`, `client-ID.key` | client ID's certificate | client ID |
//! | `tokens.txt` | `CLIENT_ID TOKEN` lines (secret) | the clients |
//! | `tokens.sha256` | `CLIENT_ID SHA256HEX(TOKEN)` lines | the coordinator |
//!
//! An existing CA in the directory is reused, so certificates for new clients chain to the same
//! CA; existing tokens are kept. Keys and `tokens.txt` are written readable by the owner only.

use super::{CertifiedPem, DevCa, Validity, cert_error};
use crate::error::Result;
use crate::net::auth::hash_token;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The CA certificate.
pub const CA_CERT: &str = "ca.pem";
/// The CA key.
pub const CA_KEY: &str = "ca.key";
/// The server certificate.
pub const SERVER_CERT: &str = "server.pem";
/// The server key.
pub const SERVER_KEY: &str = "server.key";
/// Clients' tokens in the clear: `CLIENT_ID TOKEN` lines.
pub const TOKENS: &str = "tokens.txt";
/// Clients' token digests for the coordinator: `CLIENT_ID SHA256HEX` lines.
pub const TOKEN_DIGESTS: &str = "tokens.sha256";

/// The certificate file of client `id`.
pub fn client_cert_file(id: &str) -> String {
    format!("client-{id}.pem")
}

/// The key file of client `id`.
pub fn client_key_file(id: &str) -> String {
    format!("client-{id}.key")
}

/// What to put in the directory.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// DNS names and IP addresses the server certificate is valid for.
    pub server_names: Vec<String>,
    /// Client ids, one certificate each.
    pub clients: Vec<String>,
    /// Days each new certificate is valid.
    pub days: u32,
    /// Also give each client a bearer token.
    pub tokens: bool,
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    /// The CA was already there and was reused.
    pub reused_ca: bool,
    /// Files written, in order.
    pub files: Vec<PathBuf>,
}

/// Writes the CA (unless `dir` has one), the server certificate, the client certificates and,
/// if asked, the token files into `dir`, creating it if needed.
pub fn write_bundle(dir: &Path, spec: &BundleSpec) -> Result<Bundle> {
    if spec.days == 0 {
        return Err(cert_error(
            "certificates must be valid for at least one day",
        ));
    }
    for id in &spec.clients {
        crate::engine::registry::check_client_id(id)?;
        if id.contains(['/', '\\']) {
            return Err(cert_error(format!(
                "client id {id:?} cannot name a file: no / or \\"
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let validity = Validity::days(spec.days);
    let mut bundle = Bundle::default();
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let ca = if ca_cert.exists() && ca_key.exists() {
        bundle.reused_ca = true;
        DevCa::load(&read(&ca_cert)?, &read(&ca_key)?)?
    } else {
        let ca = DevCa::generate(validity)?;
        write_pair(&mut bundle, ca.pem(), &ca_cert, &ca_key)?;
        ca
    };
    if !spec.server_names.is_empty() {
        let server = ca.server(&spec.server_names, validity)?;
        write_pair(
            &mut bundle,
            &server,
            &dir.join(SERVER_CERT),
            &dir.join(SERVER_KEY),
        )?;
    }
    for id in &spec.clients {
        let client = ca.client(id, validity)?;
        write_pair(
            &mut bundle,
            &client,
            &dir.join(client_cert_file(id)),
            &dir.join(client_key_file(id)),
        )?;
    }
    if spec.tokens {
        write_tokens(&mut bundle, dir, &spec.clients)?;
    }
    Ok(bundle)
}

/// Parses `CLIENT_ID TOKEN` lines (blank lines and `#` comments skipped).
pub fn parse_token_list(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut tokens = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(id), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!("line {}: expected `CLIENT_ID TOKEN`", n + 1));
        };
        if tokens.insert(id.to_owned(), token.to_owned()).is_some() {
            return Err(format!("line {}: client {id:?} is listed twice", n + 1));
        }
    }
    Ok(tokens)
}

/// A fresh bearer token: 32 bytes from the operating system's generator, in hex.
pub fn generate_token() -> Result<String> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| cert_error(format!("no randomness for a token: {e}")))?;
    Ok(hex::encode(bytes))
}

fn write_tokens(bundle: &mut Bundle, dir: &Path, clients: &[String]) -> Result<()> {
    let path = dir.join(TOKENS);
    let mut tokens = if path.exists() {
        parse_token_list(&read(&path)?)
            .map_err(|e| cert_error(format!("{}: {e}", path.display())))?
    } else {
        BTreeMap::new()
    };
    for id in clients {
        if !tokens.contains_key(id) {
            tokens.insert(id.clone(), generate_token()?);
        }
    }
    let clear: String = tokens.iter().map(|(id, t)| format!("{id} {t}\n")).collect();
    let digests: String = tokens
        .iter()
        .map(|(id, t)| format!("{id} {}\n", hash_token(t)))
        .collect();
    write_file(bundle, &path, &clear, true)?;
    write_file(bundle, &dir.join(TOKEN_DIGESTS), &digests, false)
}

fn write_pair(bundle: &mut Bundle, pem: &CertifiedPem, cert: &Path, key: &Path) -> Result<()> {
    write_file(bundle, cert, &pem.cert, false)?;
    write_file(bundle, key, &pem.key, true)
}

fn write_file(bundle: &mut Bundle, path: &Path, text: &str, secret: bool) -> Result<()> {
    std::fs::write(path, text).map_err(|e| io_error(path, e))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    bundle.files.push(path.to_owned());
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, err: std::io::Error) -> crate::error::CoordinatorError {
    cert_error(format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::net::auth::TokenTable;

    fn spec(clients: &[&str], tokens: bool) -> BundleSpec {
        BundleSpec {
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            clients: clients.iter().map(|s| s.to_string()).collect(),
            days: 30,
            tokens,
        }
    }

    #[test]
    fn a_bundle_reuses_its_ca_and_keeps_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_bundle(dir.path(), &spec(&["client-00000"], true)).unwrap();
        assert!(!first.reused_ca);
        for f in [
            CA_CERT,
            CA_KEY,
            SERVER_CERT,
            SERVER_KEY,
            TOKENS,
            TOKEN_DIGESTS,
        ] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        assert!(dir.path().join("client-client-00000.pem").exists());
        let ca = read(&dir.path().join(CA_CERT)).unwrap();
        let tokens = parse_token_list(&read(&dir.path().join(TOKENS)).unwrap()).unwrap();

        let second = write_bundle(dir.path(), &spec(&["client-00001"], true)).unwrap();
        assert!(second.reused_ca);
        assert_eq!(read(&dir.path().join(CA_CERT)).unwrap(), ca);
        let now = parse_token_list(&read(&dir.path().join(TOKENS)).unwrap()).unwrap();
        assert_eq!(now.len(), 2);
        assert_eq!(now["client-00000"], tokens["client-00000"]);
        let table = TokenTable::load(&dir.path().join(TOKEN_DIGESTS)).unwrap();
        assert_eq!(table.owner(&now["client-00001"]), Some("client-00001"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are private");
        }
    }

    #[test]
    fn ids_that_cannot_name_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_bundle(dir.path(), &spec(&["a/b"], false)).is_err());
        assert!(write_bundle(dir.path(), &spec(&["a b"], false)).is_err());
        assert!(parse_token_list("a 1\na 2").is_err());
        assert!(parse_token_list("a").is_err());
    }
}
