//! Process-level tests of transport security: `shoal certs` makes the credentials, a
//! `shoal coordinator` serves mutual TLS with tokens, and a `shoal simulate` and a `shoal client`
//! process finish a run with them; plaintext on a non-loopback address is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::runs::data_args;
use common::{DEADLINE, Running, arg, finish, shoal_with};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How long a coordinator may take to load its data and start listening.
const STARTUP: Duration = Duration::from_secs(30);

/// The address in "coordinator listening on ADDR (...)".
fn listening_addr(line: &str) -> SocketAddr {
    line.split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

fn file(dir: &Path, name: &str) -> String {
    arg(&dir.join(name)).to_owned()
}

#[test]
fn certs_coordinator_simulate_and_client_finish_a_mutual_tls_run() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = finish(&mut shoal_with(&[
        "certs",
        "--out",
        arg(&certs),
        "--num-clients",
        "2",
        "--tokens",
    ]));
    made.assert_success();
    assert!(
        made.stderr.contains("2 client certificates"),
        "{}",
        made.stderr
    );

    let run = ["--rounds", "2", "--clients", "2"];
    let mut cmd = shoal_with(&["coordinator", "--listen", "127.0.0.1:0", "--quiet"]);
    cmd.args(run).args([
        "--tls-cert",
        &file(&certs, "server.pem"),
        "--tls-key",
        &file(&certs, "server.key"),
        "--client-ca",
        &file(&certs, "ca.pem"),
        "--tokens",
        &file(&certs, "tokens.sha256"),
    ]);
    let mut coordinator = Running::spawn(&mut cmd);
    let line = coordinator.wait_for_stderr("coordinator listening on ", STARTUP);
    assert!(line.contains("mutual tls + tokens"), "{line}");
    let url = format!("https://{}", listening_addr(&line));

    // Client 0 from a simulated fleet, client 1 as its own process.
    let mut simulate = shoal_with(&["simulate", "--coordinator", &url, "--indices", "0..1"]);
    simulate.args(data_args(&run)).args([
        "--certs-dir",
        arg(&certs),
        "--tokens-file",
        &file(&certs, "tokens.txt"),
    ]);
    let simulate = Running::spawn(&mut simulate);
    let mut client = shoal_with(&["client", "--coordinator", &url, "--index", "1"]);
    client.args(data_args(&run)).args([
        "--ca",
        &file(&certs, "ca.pem"),
        "--cert",
        &file(&certs, "client-client-00001.pem"),
        "--key",
        &file(&certs, "client-client-00001.key"),
        "--token",
        &file(&certs, "tokens.txt"),
    ]);
    let client = Running::spawn(&mut client);

    let simulated = simulate.finish(DEADLINE);
    simulated.assert_success();
    assert!(
        simulated
            .stderr
            .contains("1 simulated clients: 2 updates accepted"),
        "{}",
        simulated.stderr
    );
    let client = client.finish(DEADLINE);
    client.assert_success();
    assert!(
        client
            .stderr
            .contains("client client-00001: 2 updates accepted"),
        "{}",
        client.stderr
    );
    coordinator.finish(DEADLINE).assert_success();
}

#[test]
fn a_client_with_another_clients_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    finish(&mut shoal_with(&[
        "certs",
        "--out",
        arg(&certs),
        "--num-clients",
        "2",
    ]))
    .assert_success();
    let mut cmd = shoal_with(&["coordinator", "--listen", "127.0.0.1:0", "--clients", "2"]);
    cmd.args([
        "--tls-cert",
        &file(&certs, "server.pem"),
        "--tls-key",
        &file(&certs, "server.key"),
        "--client-ca",
        &file(&certs, "ca.pem"),
    ]);
    let mut coordinator = Running::spawn(&mut cmd);
    let line = coordinator.wait_for_stderr("coordinator listening on ", STARTUP);
    let url = format!("https://{}", listening_addr(&line));
    let impostor = finish(&mut shoal_with(&[
        "client",
        "--coordinator",
        &url,
        "--index",
        "1",
        "--clients",
        "2",
        "--ca",
        &file(&certs, "ca.pem"),
        "--cert",
        &file(&certs, "client-client-00000.pem"),
        "--key",
        &file(&certs, "client-client-00000.key"),
    ]));
    assert!(!impostor.status.success(), "{}", impostor.stderr);
    assert!(
        impostor.stderr.contains(
            "client certificate is for \"client-00000\", but the request claims \"client-00001\""
        ),
        "{}",
        impostor.stderr
    );
    coordinator.kill();
}

#[test]
fn plaintext_off_loopback_needs_insecure() {
    let refused = finish(&mut shoal_with(&[
        "coordinator",
        "--listen",
        "0.0.0.0:0",
        "--rounds",
        "1",
    ]));
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("refusing to serve plaintext"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--insecure"), "{}", refused.stderr);

    let mut cmd = shoal_with(&[
        "coordinator",
        "--listen",
        "0.0.0.0:0",
        "--rounds",
        "1",
        "--insecure",
        "--log",
        "warn",
    ]);
    let mut insecure = Running::spawn(&mut cmd);
    insecure.wait_for_stderr("coordinator listening on ", STARTUP);
    assert!(
        insecure
            .seen_stderr()
            .iter()
            .any(|l| l.contains("PLAINTEXT")),
        "{:?}",
        insecure.seen_stderr()
    );
    insecure.kill();
}
