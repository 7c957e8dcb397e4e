//! Recovery in process: a coordinator stopped mid-round keeps the updates its log holds, a
//! corrupt newest checkpoint falls back to the previous one, and a foreign config is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{fetch, header, join, push, raw, start_checkpointed, task};
use shoal_coordinator::store::checkpoint::CheckpointStore;
use shoal_coordinator::store::round_log::RoundLog;
use shoal_coordinator::{Coordinator, Limits, RunConfig, RunStart, recover, strategy};
use std::sync::Arc;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_round_keeps_the_logged_updates_and_asks_only_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(3, 1);
    let (hosted, replayed) =
        start_checkpointed(config.clone(), CheckpointStore::open(dir.path()).unwrap()).await;
    let url = hosted.url.clone();
    assert_eq!(replayed, 0);
    let mut c = raw(&url).await;
    for id in ["a", "b", "c"] {
        join(&mut c, id, 10).await;
    }
    let t = task(&mut c, "a").await;
    let fence = t.fence.clone().unwrap();
    let n = t.update_len as usize;
    push(&mut c, header("a", &fence, 10, n), &vec![1.0; n])
        .await
        .unwrap();
    task(&mut c, "b").await;
    push(&mut c, header("b", &fence, 10, n), &vec![2.0; n])
        .await
        .unwrap();
    // The coordinator dies before client c delivers.
    hosted.abort();

    let (hosted, replayed) =
        start_checkpointed(config, CheckpointStore::open(dir.path()).unwrap()).await;
    let url = hosted.url.clone();
    assert_eq!(replayed, 2, "both accepted updates survive the restart");
    let mut c = raw(&url).await;
    for id in ["a", "b", "c"] {
        join(&mut c, id, 10).await;
    }
    let t = task(&mut c, "c").await;
    let fence2 = t.fence.clone().unwrap();
    assert_eq!(fence2.round, 1);
    assert_ne!(
        fence2.epoch, fence.epoch,
        "a new incarnation fences the old one"
    );
    // a and b are not asked again; their pre-restart fence is refused.
    let reply = c
        .pull(shoal_proto::v1::PullRequest {
            client_id: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(
            reply.reply,
            Some(shoal_proto::v1::pull_reply::Reply::Wait(_))
        ),
        "{reply:?}"
    );
    common::assert_refused(
        push(&mut c, header("a", &fence, 10, n), &vec![1.0; n]).await,
        tonic::Code::FailedPrecondition,
        "stale_fence",
    );
    // The new incarnation took a's and b's updates over: they are folded into its round, and
    // its own log, opened under its epoch, holds them before anything new arrives.
    let log = RoundLog::read(&CheckpointStore::open(dir.path()).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (log.opened.round, log.opened.epoch),
        (1, fence2.epoch),
        "{:?}",
        log.opened
    );
    let logged: Vec<&str> = log.updates.iter().flat_map(|u| u.clients()).collect();
    assert_eq!(logged, ["a", "b"]);
    let global = fetch(&mut c, "c", &fence2, t.global_len).await.unwrap();
    assert_eq!(global.len(), n);
    push(&mut c, header("c", &fence2, 10, n), &vec![3.0; n])
        .await
        .unwrap();

    // The round closes with all three and the checkpoint holds their mean.
    let store = CheckpointStore::open(dir.path()).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let checkpoint = loop {
        if let Some(c) = store.latest().unwrap() {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(checkpoint.round, 1);
    assert_eq!(checkpoint.records[0].clients, 3);
    let params: Vec<f32> =
        bincode::serde::decode_from_slice(&checkpoint.strategy_state, bincode::config::standard())
            .unwrap()
            .0;
    assert!(params.iter().all(|v| *v == 2.0));
    hosted.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_newest_checkpoint_falls_back_and_a_foreign_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let split = common::digits();
    let spec = common::spec("logreg", &split.train);
    let config = common::config(2, 3);
    // Two real checkpoints from a real run.
    let mut parts = common::clients(&split.train, 2, &shoal_datasets::Partition::Iid, 0);
    let store = CheckpointStore::open(dir.path()).unwrap();
    let coordinator = Coordinator::with_checkpoints(
        config.clone(),
        Limits::default(),
        spec.clone(),
        store.clone(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let strategy = strategy::build(&config, &spec).unwrap();
    let start = RunStart::new(strategy, Arc::new(split.test));
    let hosted = coordinator
        .host(listener, start, std::future::pending())
        .unwrap();
    let fleet = tokio::spawn(shoal_client::run_fleet(
        shoal_client::FleetConfig::new(hosted.url.clone()),
        std::mem::take(&mut parts),
        std::future::pending(),
    ));
    hosted.finish().await.unwrap();
    fleet.await.unwrap().unwrap();

    // Checkpoint objects are named by round, then the writer's epoch.
    let newest = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ckpt-000003-"))
        })
        .unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&newest, &bytes).unwrap();
    let mut fresh = strategy::build(&config, &spec).unwrap();
    let resume = recover(&store, &config, fresh.as_mut(), false, false).unwrap();
    assert_eq!(
        resume.completed, 2,
        "the flipped byte is detected and round 2 is used"
    );

    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let resume = recover(&store, &config, fresh.as_mut(), false, false).unwrap();
    assert_eq!(
        resume.completed, 2,
        "the truncation is detected and round 2 is used"
    );

    let other = RunConfig {
        seed: 99,
        ..config.clone()
    };
    let err = recover(&store, &other, fresh.as_mut(), false, false).unwrap_err();
    assert!(err.to_string().contains("different run config"), "{err}");
    assert_eq!(
        recover(&store, &other, fresh.as_mut(), true, false)
            .unwrap()
            .completed,
        2
    );
}
