//! Run state in a real S3-compatible object store (s3s-fs on a loopback port): the storage
//! interface behaves as the local directory does, conditional writes fence a deposed
//! coordinator out, a coordinator killed mid-round resumes from the store with its logged
//! updates, and a store that cannot be used is a clear error at start.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::s3::{BUCKET, S3Server};
use common::{header, join, push, raw, start_checkpointed, task};
use shoal_coordinator::store::checkpoint::{Checkpoint, CheckpointStore};
use shoal_coordinator::store::local::LocalDir;
use shoal_coordinator::store::object::{ObjectState, S3Settings};
use shoal_coordinator::store::state::StateStore;
use shoal_coordinator::{CoordinatorError, RunConfig};

/// What both homes must do alike.
fn behaves_as_a_state_store(store: &dyn StateStore) {
    assert!(store.get("missing").unwrap().is_none());
    assert!(store.create("a", b"one").unwrap());
    assert!(!store.create("a", b"two").unwrap(), "create-only");
    assert!(
        store.create("a", b"one").unwrap(),
        "the same bytes again: a retried write that had landed"
    );
    assert_eq!(store.get("a").unwrap().unwrap().0, b"one");

    let v1 = store.swap("m", b"first", None).unwrap().unwrap();
    assert_eq!(store.swap("m", b"again", None).unwrap(), None, "exists now");
    let v2 = store.swap("m", b"second", Some(&v1)).unwrap().unwrap();
    assert_eq!(
        store.swap("m", b"stale", Some(&v1)).unwrap(),
        None,
        "a writer holding the old version is refused"
    );
    let (bytes, version) = store.get("m").unwrap().unwrap();
    assert_eq!((bytes.as_slice(), version), (&b"second"[..], v2));

    let mut log = store.start_stream("round-1.wal").unwrap();
    log.append(b"open").unwrap();
    log.append(b"update").unwrap();
    assert_eq!(
        store.read_stream("round-1.wal").unwrap(),
        vec![b"open".to_vec(), b"update".to_vec()]
    );
    assert_eq!(
        store.list_streams("round").unwrap(),
        vec!["round-1.wal".to_string()]
    );
    assert_eq!(store.list("a").unwrap(), vec!["a".to_string()]);
    assert_eq!(store.list("m").unwrap(), vec!["m".to_string()]);
    drop(store.start_stream("round-1.wal").unwrap());
    assert!(store.read_stream("round-1.wal").unwrap().is_empty());
    store.delete_stream("round-1.wal").unwrap();
    store.delete("a").unwrap();
    store.delete("a").unwrap();
    assert!(store.list("a").unwrap().is_empty());
    assert!(store.list_streams("round").unwrap().is_empty());
}

#[test]
fn the_object_store_behaves_as_the_local_directory_does() {
    let dir = tempfile::tempdir().unwrap();
    behaves_as_a_state_store(&LocalDir::open(dir.path()).unwrap());
    let server = S3Server::start();
    let s3 = ObjectState::s3(&format!("{BUCKET}/conformance"), &server.settings()).unwrap();
    behaves_as_a_state_store(&s3);
}

fn checkpoint(round: u32, epoch: u64) -> Checkpoint {
    Checkpoint {
        config_hash: "0".repeat(64),
        config_json: serde_json::to_string(&RunConfig::default()).unwrap(),
        round,
        epoch,
        strategy: "fedavg".into(),
        strategy_state: vec![round as u8; 16],
        records: Vec::new(),
        written_unix_ms: 0,
    }
}

#[test]
fn a_deposed_coordinator_cannot_commit_to_the_object_store() {
    let server = S3Server::start();
    let location = format!("s3://{BUCKET}/fenced");
    let old = CheckpointStore::open_with(&location, &server.settings()).unwrap();
    old.write(&checkpoint(1, 5)).unwrap();
    let new = CheckpointStore::open_with(&location, &server.settings()).unwrap();
    new.claim(6).unwrap();
    let err = old.write(&checkpoint(2, 5)).unwrap_err();
    assert!(
        matches!(err, CoordinatorError::Deposed { ours: 5, owner: 6 }),
        "{err}"
    );
    assert_eq!(new.latest().unwrap().unwrap(), checkpoint(1, 5));
    new.write(&checkpoint(2, 6)).unwrap();
    assert_eq!(new.latest().unwrap().unwrap(), checkpoint(2, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_round_resumes_from_the_object_store() {
    let server = S3Server::start();
    let location = format!("s3://{BUCKET}/run");
    let config = common::config(3, 1);
    let (hosted, replayed) = start_checkpointed(
        config.clone(),
        CheckpointStore::open_with(&location, &server.settings()).unwrap(),
    )
    .await;
    assert_eq!(replayed, 0);
    let mut c = raw(&hosted.url).await;
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
    hosted.abort();

    // Another coordinator (this machine's local disk plays no part) carries the round on.
    let (hosted, replayed) = start_checkpointed(
        config,
        CheckpointStore::open_with(&location, &server.settings()).unwrap(),
    )
    .await;
    assert_eq!(replayed, 2, "both accepted updates are in the store");
    let mut c = raw(&hosted.url).await;
    for id in ["a", "b", "c"] {
        join(&mut c, id, 10).await;
    }
    let t = task(&mut c, "c").await;
    let fence2 = t.fence.clone().unwrap();
    assert!(
        fence2.epoch > fence.epoch,
        "the new owner's epoch is higher"
    );
    common::fetch(&mut c, "c", &fence2, t.global_len)
        .await
        .unwrap();
    push(&mut c, header("c", &fence2, 10, n), &vec![3.0; n])
        .await
        .unwrap();
    let outcome = hosted.finish().await.unwrap();
    assert_eq!(outcome.summary.rounds_completed, 1);
    assert_eq!(outcome.records[0].clients, 3);
    // The store holds the committed checkpoint, and no log of a finished round.
    let store = CheckpointStore::open_with(&location, &server.settings()).unwrap();
    let latest = store.latest().unwrap().unwrap();
    assert_eq!(latest.round, 1);
    assert_eq!(latest.epoch, fence2.epoch);
    assert!(store.state().list_streams("round").unwrap().is_empty());
}

#[test]
fn a_store_that_cannot_be_used_is_a_clear_error_at_start() {
    let server = S3Server::start();
    let missing_bucket =
        CheckpointStore::open_with("s3://no-such-bucket/run", &server.settings()).unwrap_err();
    assert!(
        missing_bucket
            .to_string()
            .contains("cannot use s3://no-such-bucket/run"),
        "{missing_bucket}"
    );
    let wrong_secret = S3Settings {
        credentials: Some(("shoal-test-key".into(), "wrong".into())),
        ..server.settings()
    };
    let refused = CheckpointStore::open_with(format!("s3://{BUCKET}/run"), &wrong_secret)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("cannot use s3://shoal/run"), "{refused}");
    let dead = S3Settings {
        endpoint: Some(format!("http://{}", common::unused_addr())),
        ..server.settings()
    };
    let unreachable = CheckpointStore::open_with(format!("s3://{BUCKET}/run"), &dead)
        .unwrap_err()
        .to_string();
    assert!(
        unreachable.contains("cannot use s3://shoal/run"),
        "{unreachable}"
    );
    for err in [&refused, &unreachable] {
        assert!(!err.contains('\n'), "one line: {err}");
    }
}
