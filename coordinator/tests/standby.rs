//! A standby coordinator's server, for real over gRPC: every request is refused with reason
//! `standby` and the leader's URL, and a fleet given the standby first follows it to the
//! leader, finishing the run exactly as a fleet that dialled the leader directly.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use shoal_client::{FleetConfig, run_fleet};
use shoal_coordinator::leadership::Candidate;
use shoal_coordinator::{Coordinator, Limits, Security, serve_standby};
use shoal_datasets::Partition;
use shoal_proto::v1::{JoinRequest, PullRequest};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Code;

/// A standby server on loopback announcing whatever `leader` holds; returns its URL.
async fn standby(
    config: shoal_coordinator::RunConfig,
    spec: shoal_models::ModelSpec,
    leader: watch::Receiver<Option<Candidate>>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let coordinator = Coordinator::new(config, Limits::default(), spec);
    tokio::spawn(serve_standby(
        listener,
        coordinator,
        Security::plaintext(),
        leader,
        std::future::pending(),
    ));
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_names_the_leader_or_says_none_is_elected() {
    let split = common::digits();
    let config = common::config(2, 1);
    let spec = common::spec("logreg", &split.train);
    let (tx, rx) = watch::channel(None);
    let url = standby(config, spec, rx).await;
    let mut client = common::raw(&url).await;
    let status = client
        .join(JoinRequest {
            client_id: "c".into(),
            num_examples: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(common::reason_of(&status), Some("standby"));
    assert!(status.message().contains("no leader is elected yet"));
    assert!(status.metadata().get(shoal_proto::LEADER_HEADER).is_none());
    tx.send(Some(Candidate {
        url: "http://127.0.0.1:9".into(),
        run_id: "r".into(),
    }))
    .unwrap();
    let status = client
        .pull(PullRequest {
            client_id: "c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(common::reason_of(&status), Some("standby"));
    assert_eq!(
        status.metadata().get(shoal_proto::LEADER_HEADER).unwrap(),
        "http://127.0.0.1:9"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_sent_to_a_standby_follows_it_to_the_leader() {
    let split = common::digits();
    let config = common::config(4, 3);
    let spec = common::spec("logreg", &split.train);
    let clients = common::clients(&split.train, 4, &Partition::Iid, 0);

    // The reference: the same run, dialled directly.
    let direct = common::start(
        config.clone(),
        spec.clone(),
        split.test.clone(),
        Limits::default(),
    )
    .await;
    let fleet = tokio::spawn(run_fleet(
        FleetConfig::new(direct.url.clone()),
        clients.clone(),
        std::future::pending(),
    ));
    let expected = direct.finish().await.unwrap().summary.model_sha256;
    fleet.await.unwrap().unwrap();

    let leader = common::start(config.clone(), spec.clone(), split.test, Limits::default()).await;
    let (_tx, rx) = watch::channel(Some(Candidate {
        url: leader.url.clone(),
        run_id: config.run_id(),
    }));
    let standby_url = standby(config, spec, rx).await;
    let fleet = tokio::spawn(run_fleet(
        FleetConfig::new(format!("{standby_url},{}", leader.url)),
        clients,
        std::future::pending(),
    ));
    let outcome = leader.finish().await.unwrap();
    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.finished, 4);
    assert_eq!(report.failed, 0);
    assert_eq!(outcome.summary.rounds_completed, 3);
    assert_eq!(outcome.summary.model_sha256, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_steps_down_refuses_even_the_pulls_waiting() {
    let split = common::digits();
    let config = common::config(2, 1);
    let spec = common::spec("logreg", &split.train);
    let running = common::start(config, spec, split.test, Limits::default()).await;
    let mut client = common::raw(&running.url).await;
    common::join(&mut client, "c", 10).await;
    // One of two clients: no round opens, the pull waits.
    let waiting = tokio::spawn(async move {
        client
            .pull(PullRequest {
                client_id: "c".into(),
            })
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    running.step_down_handle().now();
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the waiting pull is answered at once")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(common::reason_of(&status), Some("shutting_down"));
    assert!(running.coordinator.has_stepped_down());
    assert!(
        !running.coordinator.has_ended(),
        "stepping down must not tell clients the run ended"
    );
}
