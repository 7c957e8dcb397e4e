//! A crowd of peers against a real coordinator on 127.0.0.1:0, with small caps: connections
//! that never speak cannot keep an honest client out and are closed at the first-bytes
//! deadline, a stream whose body never arrives is ended by the request timeout, past the
//! stream cap requests get `Unavailable` at once, and under mutual TLS an outsider's
//! connection is refused and closed. Everything is counted in the refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use futures::StreamExt;
use shoal_client::connection::{BearerAuth, ClientTls, TlsIdentity, channel, grpc_client};
use shoal_coordinator::net::certs::{DevCa, Validity};
use shoal_coordinator::{Coordinator, Limits, RunConfig, Security};
use shoal_proto::v1::{JoinRequest, UpdatePart, update_part::Part};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;

/// Polls `done` every 10 ms until it holds, failing the test after `within`.
async fn poll_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn refusals(coordinator: &Coordinator, reason: &str) -> u64 {
    coordinator
        .refusals()
        .get(reason)
        .copied()
        .unwrap_or_default()
}

/// Reads until the server closes `stream` (EOF or reset), within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .is_ok()
}

/// A one-client run that never ends by itself, with `limits`.
async fn start(limits: Limits) -> common::Running {
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    let config = RunConfig {
        round_timeout_ms: 600_000,
        ..common::config(1, 1)
    };
    common::start(config, spec, split.test, limits).await
}

/// Short pulls, so an idle pull never holds a stream for long.
fn limits() -> Limits {
    Limits {
        poll_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_keep_an_honest_client_out() {
    let cap = 16;
    let first_bytes = Duration::from_secs(3);
    let running = start(Limits {
        max_connections: cap,
        first_bytes_timeout: first_bytes,
        ..limits()
    })
    .await;
    let coordinator = running.coordinator.clone();
    let addr = running.url.trim_start_matches("http://").to_string();
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..cap + 8 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Each connection past the cap shed an older silent one.
    poll_until("the crowd to be accepted", Duration::from_secs(5), || {
        refusals(&coordinator, "connection_limit") == 8
    })
    .await;

    // The honest client sheds one more, and joins and gets its task while every silent
    // connection it did not shed is still held: none has reached the first-bytes deadline.
    let mut honest = common::raw(&running.url).await;
    common::join(&mut honest, "honest", 10).await;
    let task = common::task(&mut honest, "honest").await;
    assert!(task.fence.is_some());
    assert_eq!(
        refusals(&coordinator, "connection_silent"),
        0,
        "the client got in only after silent connections timed out"
    );
    assert_eq!(refusals(&coordinator, "connection_limit"), 9);

    // Every silent connection ends: the shed ones at once, the others at the deadline (the
    // count below says which; the 30 s only bound a wait that would otherwise hang).
    for stream in &mut silent {
        assert!(closed_within(stream, Duration::from_secs(30)).await);
    }
    assert!(opened.elapsed() >= first_bytes);
    let counted = coordinator.refusals();
    assert_eq!(
        counted.get("connection_silent"),
        Some(&(cap as u64 - 1)),
        "{counted:?}"
    );
    // The honest connection spoke: it is still served.
    let reply = honest
        .pull(shoal_proto::v1::PullRequest {
            client_id: "honest".into(),
        })
        .await;
    assert!(reply.is_ok(), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_never_arrives_is_ended_by_the_request_timeout() {
    let timeout = Duration::from_secs(1);
    let running = start(Limits {
        request_timeout: timeout,
        ..limits()
    })
    .await;
    let coordinator = running.coordinator.clone();
    let mut c = common::raw(&running.url).await;
    common::join(&mut c, "slow", 10).await;
    let task = common::task(&mut c, "slow").await;

    // Headers, and no message at all.
    let started = Instant::now();
    common::assert_refused(
        c.push_update(futures::stream::pending::<UpdatePart>())
            .await,
        Code::DeadlineExceeded,
        "request_timeout",
    );
    assert!(started.elapsed() >= timeout);
    assert_eq!(refusals(&coordinator, "request_timeout"), 1);

    // The update's header, then silence.
    let header = common::header(
        "slow",
        task.fence.as_ref().unwrap(),
        10,
        task.global_len as usize,
    );
    let parts = futures::stream::iter([UpdatePart {
        part: Some(Part::Header(header)),
    }])
    .chain(futures::stream::pending());
    let started = Instant::now();
    common::assert_refused(
        c.push_update(parts).await,
        Code::DeadlineExceeded,
        "request_timeout",
    );
    assert!(started.elapsed() >= timeout);
    assert_eq!(refusals(&coordinator, "request_timeout"), 2);

    // Held pulls (300 ms) are not cut, and the client is still served.
    for _ in 0..3 {
        let reply = c
            .pull(shoal_proto::v1::PullRequest {
                client_id: "slow".into(),
            })
            .await;
        assert!(reply.is_ok(), "{reply:?}");
    }
    assert_eq!(refusals(&coordinator, "request_timeout"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_stream_cap_requests_are_refused_at_once() {
    let max_streams = 3;
    // The held streams last until the request timeout: long enough for the probe to find the
    // cap even on a loaded machine.
    let running = start(Limits {
        max_streams,
        request_timeout: Duration::from_secs(12),
        ..limits()
    })
    .await;
    let coordinator = running.coordinator.clone();
    let mut hog = common::raw(&running.url).await;
    common::join(&mut hog, "hog", 10).await;
    // Uploads whose bodies never come hold every stream until the request timeout.
    let hogs: Vec<_> = (0..max_streams)
        .map(|_| {
            let mut hog = hog.clone();
            tokio::spawn(async move {
                hog.push_update(futures::stream::pending::<UpdatePart>())
                    .await
                    .unwrap_err()
            })
        })
        .collect();

    let mut probe = common::raw(&running.url).await;
    let join = JoinRequest {
        client_id: "probe".into(),
        num_examples: 10,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        assert!(
            Instant::now() < deadline,
            "the stream cap was never reached"
        );
        match probe.join(join.clone()).await {
            Err(status) if status.code() == Code::Unavailable => break status,
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let status = common::assert_refused(status, Code::Unavailable, "stream_limit");
    assert_eq!(
        status.message(),
        format!("server busy: {max_streams} streams open; retry")
    );
    // Refused at once, not queued: queued, it would have waited for a held stream to end, and
    // every one is still held (they end at the request timeout).
    assert!(
        hogs.iter().all(|hog| !hog.is_finished()),
        "the refusal came only after a held stream ended"
    );
    assert_eq!(refusals(&coordinator, "request_timeout"), 0);
    assert!(refusals(&coordinator, "stream_limit") >= 1);

    // The held streams end at the request timeout, and requests are served again.
    for hog in hogs {
        common::assert_refused(
            hog.await.unwrap(),
            Code::DeadlineExceeded,
            "request_timeout",
        );
    }
    probe.join(join).await.unwrap();
    assert_eq!(
        refusals(&coordinator, "request_timeout"),
        max_streams as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_an_outsider_is_refused_before_its_body_and_dropped() {
    let ca = DevCa::generate(Validity::days(1)).unwrap();
    let server = ca
        .server(&["localhost".into(), "127.0.0.1".into()], Validity::days(1))
        .unwrap();
    let security = Security::tls(&server.cert, &server.key)
        .unwrap()
        .with_client_ca(&ca.pem().cert)
        .unwrap();
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    let config = RunConfig {
        round_timeout_ms: 600_000,
        ..common::config(1, 1)
    };
    let running = common::start_with(config, spec, split.test, limits(), security).await;
    let coordinator = running.coordinator.clone();
    let tls = ClientTls::new(ca.pem().cert.clone());

    // No certificate: refused with the usual status, then the connection is closed.
    let outsider = grpc_client(
        channel(&running.url, Some(&tls)).unwrap(),
        BearerAuth::none(),
    );
    let status = outsider
        .clone()
        .join(JoinRequest {
            client_id: "client-00009".into(),
            num_examples: 10,
        })
        .await
        .unwrap_err();
    let status = common::assert_refused(status, Code::Unauthenticated, "unauthenticated");
    assert!(
        status.message().contains("no client certificate"),
        "{status:?}"
    );
    // An upload is refused as well, before its body: none is ever sent.
    let status = outsider
        .clone()
        .push_update(futures::stream::pending::<UpdatePart>())
        .await;
    common::assert_refused(status, Code::Unauthenticated, "unauthenticated");
    poll_until(
        "the outsider's connection to close",
        Duration::from_secs(5),
        || refusals(&coordinator, "connection_unauthenticated") == 1,
    )
    .await;
    assert_eq!(refusals(&coordinator, "unauthenticated"), 2);

    // A client with a certificate from the CA is served.
    let cert = ca.client("client-00000", Validity::days(1)).unwrap();
    let tls = tls.with_identity(TlsIdentity {
        cert_pem: cert.cert.clone(),
        key_pem: cert.key.clone(),
    });
    let mut member = grpc_client(
        channel(&running.url, Some(&tls)).unwrap(),
        BearerAuth::none(),
    );
    member
        .join(JoinRequest {
            client_id: "client-00000".into(),
            num_examples: 10,
        })
        .await
        .unwrap();
    assert_eq!(refusals(&coordinator, "unauthenticated"), 2);
    assert_eq!(refusals(&coordinator, "connection_unauthenticated"), 1);
}
