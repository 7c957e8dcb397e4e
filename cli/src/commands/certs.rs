//! `shoal certs`: a development CA and certificates for a coordinator and its clients, and
//! optionally a bearer token per client. Each client certificate binds its client id as the
//! subject common name and as a SAN URI `shoal://client/ID`, which is what the coordinator
//! checks under mutual TLS. Run again on the same directory to add clients: the CA is reused.

use crate::data::client_id;
use anyhow::{Result, bail};
use clap::Args;
use shoal_coordinator::net::certs::bundle::{
    BundleSpec, CA_CERT, SERVER_CERT, SERVER_KEY, TOKEN_DIGESTS, TOKENS, write_bundle,
};
use std::path::PathBuf;

/// Options of `shoal certs`.
#[derive(Debug, Args)]
pub struct CertsCmd {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// DNS names and IP addresses the coordinator's certificate is valid for.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    names: Vec<String>,
    /// Client ids to issue certificates for, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "num_clients")]
    clients: Vec<String>,
    /// Or: this many clients, named PREFIX-00000, PREFIX-00001, ... (the ids `shoal simulate`
    /// uses).
    #[arg(long, value_name = "N")]
    num_clients: Option<usize>,
    /// Prefix of the ids made by --num-clients.
    #[arg(long, default_value = "client", requires = "num_clients")]
    id_prefix: String,
    /// Days the new certificates are valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Also give each client a bearer token: tokens.txt (CLIENT_ID TOKEN, for the clients) and
    /// tokens.sha256 (CLIENT_ID SHA256HEX, for `shoal coordinator --tokens`).
    #[arg(long)]
    tokens: bool,
}

impl CertsCmd {
    /// Writes the files and says which is for whom.
    pub async fn execute(self) -> Result<()> {
        let clients = match self.num_clients {
            Some(n) => (0..n).map(|i| client_id(&self.id_prefix, i)).collect(),
            None => self.clients,
        };
        if self.days == 0 || self.days > 36_500 {
            bail!("--days must be between 1 and 36500, got {}", self.days);
        }
        let spec = BundleSpec {
            server_names: self.names,
            clients,
            days: self.days,
            tokens: self.tokens,
        };
        let out = self.out;
        let bundle = tokio::task::spawn_blocking({
            let out = out.clone();
            let spec = spec.clone();
            move || write_bundle(&out, &spec)
        })
        .await??;
        let dir = out.display();
        if bundle.reused_ca {
            eprintln!("reused the CA in {dir}/{CA_CERT}");
        }
        eprintln!(
            "wrote {} files to {dir} ({} client certificates)",
            bundle.files.len(),
            spec.clients.len()
        );
        eprintln!(
            "coordinator: --tls-cert {dir}/{SERVER_CERT} --tls-key {dir}/{SERVER_KEY} \
             --client-ca {dir}/{CA_CERT}{}",
            if spec.tokens {
                format!(" --tokens {dir}/{TOKEN_DIGESTS}")
            } else {
                String::new()
            }
        );
        eprintln!(
            "clients:     --coordinator https://HOST:PORT --ca {dir}/{CA_CERT} \
             --cert {dir}/client-ID.pem --key {dir}/client-ID.key{}",
            if spec.tokens {
                format!(" --token {dir}/{TOKENS}")
            } else {
                String::new()
            }
        );
        Ok(())
    }
}
