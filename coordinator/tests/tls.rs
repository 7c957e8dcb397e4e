//! Transport security over real TLS on 127.0.0.1:0, with certificates made by the same code as
//! `shoal certs`: a mutual-TLS + token run completes while impostors are refused, each with its
//! status code and reason, without disturbing it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use shoal_client::connection::{
    BearerAuth, ClientTls, GrpcFleet, TlsIdentity, channel, grpc_client,
};
use shoal_client::{Credentials, FleetConfig, run_fleet};
use shoal_coordinator::net::auth::TokenTable;
use shoal_coordinator::net::certs::bundle::{
    BundleSpec, CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, TOKEN_DIGESTS, TOKENS, client_cert_file,
    client_key_file, parse_token_list, write_bundle,
};
use shoal_coordinator::net::certs::{CertifiedPem, DevCa, Validity, self_signed_client};
use shoal_coordinator::{Limits, Security};
use shoal_datasets::Partition;
use shoal_proto::v1::{
    Fence, FetchRequest, JoinRequest, LeaveRequest, PartialHeader, PartialPart, PullRequest,
    SharedPullRequest, UpdateHeader, UpdatePart, client_pull, partial_part, update_part::Part,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tonic::{Code, Status};

const A: &str = "client-00000";
const B: &str = "client-00001";
/// A sub-aggregator's identity.
const AGG: &str = "aggregator-1";

/// A `shoal certs` directory for clients A and B, with tokens.
struct Certs {
    dir: tempfile::TempDir,
    tokens: BTreeMap<String, String>,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spec = BundleSpec {
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            clients: vec![A.into(), B.into(), AGG.into()],
            days: 1,
            tokens: true,
        };
        write_bundle(dir.path(), &spec).unwrap();
        let tokens = parse_token_list(&read(dir.path(), TOKENS)).unwrap();
        Self { dir, tokens }
    }

    fn read(&self, name: &str) -> String {
        read(self.dir.path(), name)
    }

    fn ca(&self) -> DevCa {
        DevCa::load(&self.read(CA_CERT), &self.read(CA_KEY)).unwrap()
    }

    fn identity(&self, id: &str) -> TlsIdentity {
        TlsIdentity {
            cert_pem: self.read(&client_cert_file(id)),
            key_pem: self.read(&client_key_file(id)),
        }
    }

    fn tls(&self) -> ClientTls {
        ClientTls::new(self.read(CA_CERT))
    }

    fn server(&self) -> Security {
        Security::tls(self.read(SERVER_CERT), self.read(SERVER_KEY)).unwrap()
    }

    fn token_table(&self) -> TokenTable {
        TokenTable::load(&self.dir.path().join(TOKEN_DIGESTS)).unwrap()
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn identity(pem: &CertifiedPem) -> TlsIdentity {
    TlsIdentity {
        cert_pem: pem.cert.clone(),
        key_pem: pem.key.clone(),
    }
}

/// A coordinator of a one-round logistic-regression run for three clients, served with
/// `security`.
async fn serve_logreg(security: Security) -> common::Running {
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    common::start_with(
        common::config(3, 1),
        spec,
        split.test,
        Limits::default(),
        security,
    )
    .await
}

/// A protocol client over TLS presenting `cert` (if any) and `token` (if any).
fn dial(url: &str, tls: ClientTls, cert: Option<TlsIdentity>, token: Option<&str>) -> GrpcFleet {
    let tls = match cert {
        Some(cert) => tls.with_identity(cert),
        None => tls,
    };
    let auth = token.map_or_else(BearerAuth::none, |t| BearerAuth::token(t).unwrap());
    grpc_client(channel(url, Some(&tls)).unwrap(), auth)
}

async fn join(fleet: &mut GrpcFleet, id: &str) -> Result<(), Status> {
    fleet
        .join(JoinRequest {
            client_id: id.into(),
            num_examples: 10,
        })
        .await
        .map(|_| ())
}

/// The refusal of an identity: `code`, with the reason "impersonation" (valid credentials of
/// another client) or "unauthenticated" (missing or bad ones); `words` says which credential
/// and why.
#[derive(Debug, Clone, Copy)]
struct Refused<'a> {
    code: Code,
    reason: &'a str,
    words: &'a str,
}

/// Credentials of another client than the request claims.
fn impersonation(words: &str) -> Refused<'_> {
    Refused {
        code: Code::PermissionDenied,
        reason: "impersonation",
        words,
    }
}

/// Missing, unknown or invalid credentials.
fn unauthenticated(words: &str) -> Refused<'_> {
    Refused {
        code: Code::Unauthenticated,
        reason: "unauthenticated",
        words,
    }
}

#[track_caller]
fn assert_refused(result: Result<(), Status>, refused: Refused<'_>) {
    let status = common::assert_refused(result, refused.code, refused.reason);
    assert!(
        status.message().contains(refused.words),
        "{:?} lacks {:?}",
        status.message(),
        refused.words
    );
}

/// Claims `id` in every request of the protocol; each must be refused as `refused` says.
async fn assert_every_request_refused(fleet: &mut GrpcFleet, id: &str, refused: Refused<'_>) {
    assert_refused(join(fleet, id).await, refused);
    let pull = fleet
        .pull(PullRequest {
            client_id: id.into(),
        })
        .await;
    assert_refused(pull.map(|_| ()), refused);
    // A shared pull naming the client: refused whole (a certificate that proves nobody), or
    // answered, for that client, with the refusal its own pull got.
    let shared = fleet
        .pull_shared(SharedPullRequest {
            client_ids: vec![id.into()],
        })
        .await;
    let status = match shared.map(tonic::Response::into_inner) {
        Err(status) => status,
        Ok(shared) => {
            let [answer] = shared.answers.as_slice() else {
                panic!("one answer expected: {shared:?}");
            };
            assert_eq!(answer.client_id, id);
            let Some(client_pull::Answer::Refused(refusal)) = answer.answer.clone() else {
                panic!("a refusal expected: {answer:?}");
            };
            refusal.into_status()
        }
    };
    assert_refused(Err(status), refused);
    let fetch = fleet
        .fetch_global(FetchRequest {
            client_id: id.into(),
            fence: Some(Fence::default()),
        })
        .await;
    assert_refused(fetch.map(|_| ()), refused);
    let header = UpdateHeader {
        client_id: id.into(),
        fence: Some(Fence::default()),
        num_examples: 10,
        payload_len: 0,
        counts: vec![],
        metrics: Default::default(),
        ..Default::default()
    };
    let parts = vec![UpdatePart {
        part: Some(Part::Header(header)),
    }];
    let push = fleet.push_update(futures::stream::iter(parts)).await;
    assert_refused(push.map(|_| ()), refused);
    let leave = fleet
        .leave(LeaveRequest {
            client_id: id.into(),
        })
        .await;
    assert_refused(leave.map(|_| ()), refused);
}

/// Certificates that do not chain to the CA, or are not valid now, each refused with its
/// reason on every request: another CA's, an expired one, a self-signed one, and the server's
/// own certificate (not meant for clients).
async fn assert_bad_certificates_refused(url: &str, certs: &Certs) {
    let token = certs.tokens[A].as_str();
    let stranger = DevCa::generate_named("Stranger CA", Validity::days(1)).unwrap();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired = Validity {
        not_before: now - 10 * day,
        not_after: now - day,
    };
    let server = CertifiedPem {
        cert: certs.read(SERVER_CERT),
        key: certs.read(SERVER_KEY),
    };
    let cases = [
        (
            stranger.client(A, Validity::days(1)).unwrap(),
            "client certificate is not issued by this coordinator's CA",
        ),
        (
            certs.ca().client(A, expired).unwrap(),
            "client certificate has expired",
        ),
        (
            self_signed_client(A, Validity::days(1)).unwrap(),
            "client certificate is self-signed",
        ),
        (
            server,
            "client certificate is not meant for client authentication",
        ),
    ];
    for (pem, reason) in cases {
        let mut fleet = dial(url, certs.tls(), Some(identity(&pem)), Some(token));
        assert_every_request_refused(&mut fleet, A, unauthenticated(reason)).await;
    }
}

/// Valid credentials used for the wrong id, and missing or wrong ones.
async fn assert_impostors_refused(url: &str, certs: &Certs) {
    let (token_a, token_b) = (certs.tokens[A].as_str(), certs.tokens[B].as_str());
    // A's certificate with B's token, claiming B.
    let mut fleet = dial(url, certs.tls(), Some(certs.identity(A)), Some(token_b));
    let reason = format!("client certificate is for \"{A}\", but the request claims \"{B}\"");
    assert_every_request_refused(&mut fleet, B, impersonation(&reason)).await;
    // B's certificate with A's token, claiming B.
    let mut fleet = dial(url, certs.tls(), Some(certs.identity(B)), Some(token_a));
    let reason = format!("bearer token is for \"{A}\", but the request claims \"{B}\"");
    assert_every_request_refused(&mut fleet, B, impersonation(&reason)).await;
    // A's certificate, no token.
    let mut fleet = dial(url, certs.tls(), Some(certs.identity(A)), None);
    assert_every_request_refused(&mut fleet, A, unauthenticated("missing bearer token")).await;
    // A's certificate, a token nobody has.
    let mut fleet = dial(
        url,
        certs.tls(),
        Some(certs.identity(A)),
        Some("wrong-token"),
    );
    assert_every_request_refused(&mut fleet, A, unauthenticated("not recognised")).await;
    // A's token, no certificate.
    let mut fleet = dial(url, certs.tls(), None, Some(token_a));
    assert_every_request_refused(&mut fleet, A, unauthenticated("no client certificate")).await;
}

/// A fleet of one client, `id`, over mutual TLS with its certificate and token.
fn fleet_config(url: &str, certs: &Certs, id: &str) -> FleetConfig {
    let mut fleet = FleetConfig::new(url);
    fleet.tls = Some(certs.tls());
    fleet.credentials.insert(
        id.into(),
        Credentials {
            identity: Some(certs.identity(id)),
            token: Some(certs.tokens[id].clone()),
        },
    );
    fleet
}

async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One mutual-TLS + token run of clients A and B; with `impostors`, false and missing
/// identities are tried before, between and all through the rounds. Returns the outcome.
async fn mutual_tls_run(certs: &Arc<Certs>, impostors: bool) -> shoal_coordinator::RunOutcome {
    let security = certs
        .server()
        .with_client_ca(certs.read(CA_CERT))
        .unwrap()
        .with_tokens(certs.token_table());
    let split = common::digits();
    let rounds = 3;
    let mut config = common::config(2, rounds);
    config.fit.epochs = 1;
    let spec = common::spec("logreg", &split.train);
    let clients = common::clients(&split.train, 2, &Partition::Iid, 0);
    let running = common::start_with(config, spec, split.test, Limits::default(), security).await;
    let url = running.url.clone();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // Before the fleet arrives: nobody gets in under a false or missing identity.
    if impostors {
        assert_bad_certificates_refused(&url, certs).await;
        assert_impostors_refused(&url, certs).await;
        assert_eq!(running.coordinator.registered(), 0);
    }

    // A arrives; the run waits for B. Impostors claiming B (or A, or leaving as A) get nowhere.
    let mut data = clients.into_iter();
    let fleet_a = tokio::spawn(run_fleet(
        fleet_config(&url, certs, A),
        vec![data.next().unwrap()],
        std::future::pending(),
    ));
    wait_until(|| running.coordinator.registered() == 1).await;
    if impostors {
        assert_impostors_refused(&url, certs).await;
        assert_bad_certificates_refused(&url, certs).await;
        assert_eq!(
            running.coordinator.registered(),
            1,
            "A is still in, nobody else"
        );
    }

    // Impostors keep trying, B's id above all, from before B arrives until the run is over:
    // the first wave ends before B is let in, so at least one runs while the run waits for B
    // however slow the machine, and later ones run while rounds are open with B's update
    // still to come.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (waved, mut first_wave) = tokio::sync::watch::channel(0u32);
    let attacks = impostors.then(|| {
        let (url, certs) = (url.clone(), certs.clone());
        let coordinator = running.coordinator.clone();
        tokio::spawn(async move {
            let mut waves = 0u32;
            while !*stopped.borrow() {
                let (url, certs) = (url.clone(), certs.clone());
                let wave = tokio::spawn(async move {
                    assert_impostors_refused(&url, &certs).await;
                    assert_bad_certificates_refused(&url, &certs).await;
                });
                match wave.await {
                    Ok(()) => waves += 1,
                    // The run ended and the server stopped in the middle of a wave.
                    Err(_) if coordinator.has_ended() => break,
                    Err(failed) => std::panic::resume_unwind(failed.into_panic()),
                }
                let _ = waved.send(waves);
            }
            waves
        })
    });
    if impostors {
        first_wave.wait_for(|waves| *waves >= 1).await.unwrap();
    }
    let fleet_b = tokio::spawn(run_fleet(
        fleet_config(&url, certs, B),
        vec![data.next().unwrap()],
        std::future::pending(),
    ));

    if let Some(attacks) = attacks {
        // Waves stop once the run is over, while the server still answers.
        wait_until(|| running.coordinator.has_ended()).await;
        let _ = stop.send(true);
        assert!(
            attacks.await.unwrap() >= 1,
            "at least one wave during the run"
        );
    }
    let outcome = running.finish().await.unwrap();
    for fleet in [fleet_a, fleet_b] {
        let report = fleet.await.unwrap().unwrap();
        assert_eq!(report.finished, 1, "{report:?}");
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(report.totals.accepted, rounds, "{report:?}");
        assert_eq!(report.totals.refused, 0, "{report:?}");
    }
    assert_eq!(outcome.summary.rounds_completed, rounds);
    assert!(
        outcome.records.iter().all(|r| r.clients == 2),
        "{:?}",
        outcome.records
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_run_completes_while_impostors_are_refused() {
    let certs = Arc::new(Certs::new());
    let clean = mutual_tls_run(&certs, false).await;
    let attacked = mutual_tls_run(&certs, true).await;
    assert!(clean.summary.refusals.is_empty(), "{:?}", clean.summary);
    for reason in ["impersonation", "unauthenticated"] {
        assert!(
            attacked
                .summary
                .refusals
                .get(reason)
                .is_some_and(|n| *n > 0),
            "{reason}: {:?}",
            attacked.summary.refusals
        );
    }
    assert_eq!(
        clean.summary.model_sha256, attacked.summary.model_sha256,
        "impostors changed the model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_over_tls_authenticate_without_client_certificates() {
    let certs = Certs::new();
    let security = certs.server().with_tokens(certs.token_table());
    let running = serve_logreg(security).await;
    let url = running.url.clone();
    let mut fleet = dial(&url, certs.tls(), None, Some(&certs.tokens[A]));
    join(&mut fleet, A).await.unwrap();
    let reason = format!("bearer token is for \"{A}\", but the request claims \"{B}\"");
    assert_every_request_refused(&mut fleet, B, impersonation(&reason)).await;
    let mut anonymous = dial(&url, certs.tls(), None, None);
    assert_refused(
        join(&mut anonymous, A).await,
        unauthenticated("missing bearer token"),
    );
    assert_eq!(running.coordinator.registered(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_check_the_coordinator_certificate() {
    let certs = Certs::new();
    let running = serve_logreg(certs.server()).await;
    let url = running.url.clone();
    // The right CA and name: in.
    join(&mut dial(&url, certs.tls(), None, None), A)
        .await
        .unwrap();
    // A name the certificate does not carry, or a CA that did not sign it: out.
    let wrong_name = certs.tls().with_domain("coordinator.example");
    let status = join(&mut dial(&url, wrong_name, None, None), A)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        common::reason_of(&status),
        None,
        "the client refused the server"
    );
    assert!(format!("{status:?}").contains("certificate"), "{status:?}");
    let stranger = DevCa::generate_named("Stranger CA", Validity::days(1)).unwrap();
    let status = join(
        &mut dial(
            &url,
            ClientTls::new(stranger.pem().cert.clone()),
            None,
            None,
        ),
        A,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        common::reason_of(&status),
        None,
        "the client refused the server"
    );
    assert!(format!("{status:?}").contains("certificate"), "{status:?}");
    // Plaintext towards a TLS port: out.
    let plain_url = url.replacen("https://", "http://", 1);
    let mut plain = grpc_client(channel(&plain_url, None).unwrap(), BearerAuth::none());
    // The server drops the connection at its first bytes, which are not TLS: no request ever
    // reaches it, so there is no verdict, only a broken transport (Unknown or Cancelled,
    // depending on whether the client was still writing).
    let status = join(&mut plain, A).await.unwrap_err();
    assert_eq!(common::reason_of(&status), None, "{status:?}");
    assert!(
        std::error::Error::source(&status).is_some_and(|e| e.to_string().contains("transport")),
        "{status:?}"
    );
    assert_eq!(running.coordinator.registered(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_an_expired_certificate_stops_at_once_with_the_reason() {
    let certs = Certs::new();
    let security = certs.server().with_client_ca(certs.read(CA_CERT)).unwrap();
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    let clients = common::clients(&split.train, 2, &Partition::Iid, 0);
    let running = common::start_with(
        common::config(2, 1),
        spec,
        split.test,
        Limits::default(),
        security,
    )
    .await;
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired = certs
        .ca()
        .client(
            A,
            Validity {
                not_before: now - 10 * day,
                not_after: now - day,
            },
        )
        .unwrap();
    let mut fleet = FleetConfig::new(running.url.clone());
    fleet.tls = Some(certs.tls());
    fleet.credentials.insert(
        A.into(),
        Credentials {
            identity: Some(identity(&expired)),
            token: None,
        },
    );
    let (failures, mut failed) = tokio::sync::mpsc::unbounded_channel();
    fleet.failures = Some(failures);
    let report = run_fleet(fleet, clients[..1].to_vec(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    // It stopped on the coordinator's verdict (a status without a reason would have been
    // retried until the client gave up, and said so)...
    let (id, err) = failed.recv().await.unwrap();
    assert_eq!(id, A);
    let shoal_client::ClientError::Refused(status) = err else {
        panic!("the client must stop on the refusal itself, not on {err:?}");
    };
    let status = common::assert_refused(status, Code::Unauthenticated, "unauthenticated");
    assert!(
        status.message().contains("client certificate has expired"),
        "{status:?}"
    );
    // ...after one request: an authentication refusal is final, not retried.
    let refusals = running.coordinator.refusals();
    assert_eq!(refusals.get("unauthenticated"), Some(&1), "{refusals:?}");
    assert_eq!(running.coordinator.registered(), 0);
}

/// Sends the header of a partial sum from `aggregator` (nothing else: it is refused or not on
/// its credentials alone).
async fn push_partial(fleet: &mut GrpcFleet, aggregator: &str) -> Result<(), Status> {
    let header = PartialHeader {
        aggregator_id: aggregator.into(),
        ..PartialHeader::default()
    };
    let part = PartialPart {
        part: Some(partial_part::Part::Header(header)),
    };
    fleet
        .push_partial(tokio_stream::iter([part]))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_aggregator_speaks_for_its_clients_and_only_it_sends_partial_sums() {
    let certs = Certs::new();
    let security = certs
        .server()
        .with_client_ca(certs.read(CA_CERT))
        .unwrap()
        .with_tokens(certs.token_table())
        .with_aggregators([AGG])
        .unwrap();
    let running = serve_logreg(security).await;
    let url = running.url.clone();
    let (token_a, token_agg) = (certs.tokens[A].as_str(), certs.tokens[AGG].as_str());

    // The aggregator, with its own certificate and token, joins clients it vouches for.
    let mut aggregator = dial(
        &url,
        certs.tls(),
        Some(certs.identity(AGG)),
        Some(token_agg),
    );
    join(&mut aggregator, A).await.unwrap();
    join(&mut aggregator, B).await.unwrap();
    assert_eq!(running.coordinator.registered(), 2);

    // A client is no aggregator: it may not send a partial sum, under its id or another's.
    let mut client = dial(&url, certs.tls(), Some(certs.identity(A)), Some(token_a));
    assert_refused(
        push_partial(&mut client, A).await,
        impersonation("is not a sub-aggregator of this server"),
    );
    let reason = format!("client certificate is for \"{A}\", but the request claims \"{AGG}\"");
    assert_refused(push_partial(&mut client, AGG).await, impersonation(&reason));
    // Nor speak for another client.
    let reason = format!("client certificate is for \"{A}\", but the request claims \"{B}\"");
    assert_refused(join(&mut client, B).await, impersonation(&reason));
    // The aggregator's own partial sum passes authentication (and is then judged on its
    // contents: this one names no fence).
    let status = push_partial(&mut aggregator, AGG).await.unwrap_err();
    assert_ne!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_ne!(status.code(), Code::Unauthenticated, "{status:?}");
    // Naming aggregators needs client authentication to name them by.
    let err = Security::plaintext().with_aggregators([AGG]).unwrap_err();
    assert!(
        err.to_string().contains("needs client authentication"),
        "{err}"
    );
}
