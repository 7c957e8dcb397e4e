//! A real Prometheus server for the tests: Debian's `prometheus` (see [`super::packages`]),
//! scraping given targets every 100 ms, with its own data directory and a loopback port. A
//! missing binary fails the test; it never skips.

use super::Running;
use super::ports::stable_ports;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    _process: Running,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:PORT` of its HTTP API.
    pub addr: String,
}

/// The prometheus binary: `SHOAL_PROMETHEUS`, else `prometheus` on the PATH or in /usr/bin,
/// else installed from Debian's `prometheus`.
fn binary() -> PathBuf {
    super::packages::find_or_install("prometheus", "SHOAL_PROMETHEUS", "prometheus")
}

impl Prometheus {
    /// Starts Prometheus scraping `http://TARGET/metrics` for each of `targets` and waits
    /// until it serves its API.
    pub fn start(targets: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 100ms\n  scrape_timeout: 90ms\n\
                 scrape_configs:\n  - job_name: shoal\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", stable_ports(1)[0]);
        let mut process = Running::spawn(
            Command::new(binary())
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=info"),
        );
        process.wait_for_stderr(
            "Server is ready to receive web requests",
            Duration::from_secs(60),
        );
        Self {
            _process: process,
            _dir: dir,
            addr,
        }
    }

    /// The value of instant query `query` (the first series), if Prometheus has one yet.
    pub fn value(&self, query: &str) -> Option<f64> {
        let body = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", encode(query)),
        )?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }
}

/// Percent-encodes a query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of `GET path` from `addr` over plain HTTP/1.0, if it answered 200.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    status.contains(" 200 ").then(|| body.to_string())
}
