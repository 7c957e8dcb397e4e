//! Run state in an S3-compatible object store, through the `object_store` crate: what lets a
//! standby coordinator on another machine carry a run on when the leader's machine is lost.
//!
//! Create is a put with `If-None-Match: *`, swap a put with `If-Match: ETAG`: the store itself
//! refuses a write whose precondition no longer holds. A stream `NAME` is the objects
//! `NAME/0000000000`, `NAME/0000000001`, ... each one record, created create-only; reading
//! stops at the first missing number. Requests are retried with backoff by `object_store`
//! (a store that is down for a while delays the run; it loses nothing).
//!
//! The calls are synchronous (see [`crate::store::state`]): each runs on this store's own small
//! runtime while the caller's thread waits, so they work from blocking threads and from the
//! coordinator's runtime alike.

use crate::error::{CoordinatorError, Result};
use crate::store::state::{StateStore, StreamWriter, Version};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long the first request may take to answer before the store counts as unusable.
const PROBE_PATIENCE: Duration = Duration::from_secs(5);
/// How long a request is retried (with backoff, 100 ms to 15 s apart) before the outage counts
/// as a storage failure that stops the run.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(120);
/// Records of a stream fetched at once when it is read back.
const READ_AHEAD: usize = 16;
/// How long a request may go unanswered before the log says the store is not answering.
const SLOW_ANSWER: Duration = Duration::from_secs(2);

/// How to reach an S3-compatible store, beyond what the `AWS_*` environment variables say.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// The endpoint URL (`AWS_ENDPOINT`), for a store other than AWS.
    pub endpoint: Option<String>,
    /// The region (`AWS_REGION`).
    pub region: Option<String>,
    /// Access key id and secret (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub credentials: Option<(String, String)>,
    /// Allow a plain-HTTP endpoint (`AWS_ALLOW_HTTP`), e.g. a store on loopback.
    pub allow_http: bool,
}

/// A bucket (and key prefix) holding a run's state.
#[derive(Debug)]
pub struct ObjectState {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// What the store and its stream writers share.
#[derive(Debug)]
struct Shared {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    /// This store's runtime, where every request runs.
    handle: tokio::runtime::Handle,
}

impl ObjectState {
    /// The store `BUCKET[/PREFIX]` names, configured from the `AWS_*` environment variables
    /// (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP`...) and then `settings`. Checks that the bucket can be listed, so a
    /// wrong endpoint, wrong credentials or a missing bucket are reported now, in one line.
    pub fn s3(bucket_and_prefix: &str, settings: &S3Settings) -> Result<Self> {
        let (bucket, prefix) = match bucket_and_prefix.split_once('/') {
            Some((bucket, prefix)) => (bucket, prefix.trim_matches('/')),
            None => (bucket_and_prefix, ""),
        };
        if bucket.is_empty() {
            return Err(CoordinatorError::Config(
                "s3:// location without a bucket: use s3://BUCKET/PREFIX".into(),
            ));
        }
        // TLS to the store uses the same crypto provider as the rest of the coordinator.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some((key, secret)) = &settings.credentials {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        }
        if settings.allow_http {
            builder = builder.with_allow_http(true);
        }
        let location = format!("s3://{}", bucket_and_prefix.trim_end_matches('/'));
        let build = |retry: RetryConfig| {
            builder
                .clone()
                .with_retry(retry)
                .build()
                .map_err(|e| CoordinatorError::Config(format!("{location}: {e}")))
        };
        // At start a store that does not answer is a mistake to report now; while the run is
        // under way it is an outage to ride out, up to the patience below.
        let probe = Self::new(
            Arc::new(build(RetryConfig {
                max_retries: 1,
                retry_timeout: PROBE_PATIENCE,
                backoff: BackoffConfig::default(),
            })?),
            prefix,
            location.clone(),
        )?;
        probe.list("").map_err(|e| {
            CoordinatorError::Config(format!("cannot use {location} for the run's state: {e}"))
        })?;
        Self::new(
            Arc::new(build(RetryConfig {
                max_retries: usize::MAX,
                retry_timeout: OUTAGE_PATIENCE,
                backoff: BackoffConfig::default(),
            })?),
            prefix,
            location,
        )
    }

    /// State in `store` under the key prefix `prefix`; `location` names it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, location: String) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("state-store")
            .enable_all()
            .build()
            .map_err(CoordinatorError::Io)?;
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                prefix: prefix.to_string(),
                location,
                handle: runtime.handle().clone(),
            }),
            runtime: Some(runtime),
        })
    }
}

/// True if `err` is a failure of the connection itself (no answer from the store), not an
/// answer the store gave.
fn transport_failed(err: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<object_store::client::HttpError>() {
            return true;
        }
        source = e.source();
    }
    false
}

impl Shared {
    fn key(&self, name: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Runs `work` on the store's runtime and waits for it.
    fn block<T: Send + 'static>(
        &self,
        work: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> object_store::Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(work.await);
        });
        // Requests are retried inside object_store; say so while it takes long, and once it
        // answers again, so an outage is visible in the log as it happens.
        let started = std::time::Instant::now();
        let mut told = false;
        let answer = loop {
            match rx.recv_timeout(SLOW_ANSWER) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if !told {
                        tracing::warn!(
                            location = %self.location,
                            "the object store has not answered for {} s; retrying with backoff for up to {} s",
                            SLOW_ANSWER.as_secs(),
                            OUTAGE_PATIENCE.as_secs()
                        );
                        told = true;
                    }
                }
                other => break other.map_err(|_| ()),
            }
        };
        if told {
            tracing::info!(location = %self.location, waited_s = started.elapsed().as_secs_f64(), "the object store answered again");
        }
        answer.unwrap_or_else(|()| {
            Err(object_store::Error::Generic {
                store: "state",
                source: "the state store stopped before answering".into(),
            })
        })
    }

    fn err(&self, what: &'static str, name: &str, e: object_store::Error) -> CoordinatorError {
        CoordinatorError::Storage {
            path: format!("{}/{name}", self.location).into(),
            source: std::io::Error::other(format!("{what}: {e}")),
        }
    }

    /// A conditional write. The client retries a request whose answer was lost (the store
    /// went away mid-request), and the retry of a create or compare-and-swap that had in fact
    /// landed is refused by its own precondition: so a refusal is checked against what the
    /// store holds, and the very bytes this write was to leave there count as success.
    ///
    /// For the same reason a write whose connection failed (the client does not retry a
    /// write it may have sent, e.g. on a pooled connection the store closed as it went down)
    /// is tried again here, with backoff, for as long as the store's outage patience.
    fn put(&self, name: &str, bytes: &[u8], mode: PutMode) -> object_store::Result<Version> {
        let payload = PutPayload::from(bytes.to_vec());
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        let refused = loop {
            let store = self.store.clone();
            let key = self.key(name);
            let (payload, options) = (payload.clone(), PutOptions::from(mode.clone()));
            match self.block(async move { store.put_opts(&key, payload, options).await }) {
                Ok(done) => return Ok(Version(done.e_tag.unwrap_or_default())),
                Err(
                    e @ (object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }),
                ) => break e,
                Err(e) if transport_failed(&e) && started.elapsed() < OUTAGE_PATIENCE => {
                    tracing::info!(object = name, error = %e, "a write's connection failed; trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        };
        let store = self.store.clone();
        let key = self.key(name);
        let held = self.block(async move {
            let got = store.get(&key).await?;
            let version = Version(got.meta.e_tag.clone().unwrap_or_default());
            Ok((got.bytes().await?, version))
        });
        match held {
            Ok((held, version)) if held.as_ref() == bytes => {
                tracing::info!(object = name, "a retried write had already landed");
                Ok(version)
            }
            _ => Err(refused),
        }
    }

    /// Names relative to the store's prefix: the objects directly under `dir` (the store's
    /// prefix itself when `None`) and the "directories" beside them, one level deep, so a
    /// listing of the state never walks every record of every stream.
    fn level(&self, dir: Option<&str>) -> Result<(Vec<String>, Vec<String>)> {
        let store = self.store.clone();
        let at = match dir {
            Some(dir) => Some(self.key(dir)),
            None => (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str())),
        };
        let listed = self
            .block(async move { store.list_with_delimiter(at.as_ref()).await })
            .map_err(|e| self.err("list", dir.unwrap_or(""), e))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let relative = |path: Path| path.to_string().strip_prefix(&strip).map(str::to_string);
        let mut objects: Vec<String> = listed
            .objects
            .into_iter()
            .filter_map(|meta| relative(meta.location))
            .collect();
        let mut dirs: Vec<String> = listed
            .common_prefixes
            .into_iter()
            .filter_map(relative)
            .collect();
        objects.sort();
        dirs.sort();
        Ok((objects, dirs))
    }
}

impl Drop for ObjectState {
    fn drop(&mut self) {
        // A runtime may not be dropped where blocking is not allowed (the coordinator's own).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl StateStore for ObjectState {
    fn location(&self) -> &str {
        &self.shared.location
    }

    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, Version)>> {
        let store = self.shared.store.clone();
        let key = self.shared.key(name);
        let got = self.shared.block(async move {
            let got = store.get(&key).await?;
            let version = Version(got.meta.e_tag.clone().unwrap_or_default());
            Ok((got.bytes().await?.to_vec(), version))
        });
        match got {
            Ok(found) => Ok(Some(found)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.shared.err("read", name, e)),
        }
    }

    fn create(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        match self.shared.put(name, bytes, PutMode::Create) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.shared.err("create", name, e)),
        }
    }

    fn swap(
        &self,
        name: &str,
        bytes: &[u8],
        expected: Option<&Version>,
    ) -> Result<Option<Version>> {
        let mode = match expected {
            None => PutMode::Create,
            Some(version) => PutMode::Update(UpdateVersion {
                e_tag: Some(version.0.clone()),
                version: None,
            }),
        };
        match self.shared.put(name, bytes, mode) {
            Ok(version) => Ok(Some(version)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. },
            ) => Ok(None),
            Err(e) => Err(self.shared.err("swap", name, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        // Stream records live one level down (`NAME/SEQ`); they are not objects of their own.
        let (objects, _) = self.shared.level(None)?;
        Ok(objects
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        let store = self.shared.store.clone();
        let key = self.shared.key(name);
        // object_store sends S3 deletes as a bulk-delete POST, which it does not retry when the
        // request never got through; a delete is idempotent, so it is retried here, as every
        // other request is inside object_store.
        let deleted = self.shared.block(async move {
            let started = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(100);
            loop {
                match store.delete(&key).await {
                    Err(object_store::Error::Generic { .. })
                        if started.elapsed() < OUTAGE_PATIENCE =>
                    {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                    other => return other,
                }
            }
        });
        match deleted {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.shared.err("delete", name, e)),
        }
    }

    fn start_stream(&self, name: &str) -> Result<Box<dyn StreamWriter>> {
        self.delete_stream(name)?;
        Ok(Box::new(ObjectStream {
            shared: self.shared.clone(),
            name: name.to_string(),
            next: 0,
            broken: false,
        }))
    }

    fn read_stream(&self, name: &str) -> Result<Vec<Vec<u8>>> {
        // The records numbered 0, 1, 2... without a gap, fetched several at a time: a
        // coordinator taking a run over reads the round in flight's log before it serves.
        let keys: Vec<Path> = self
            .shared
            .level(Some(name))?
            .0
            .into_iter()
            .enumerate()
            .take_while(|(n, record)| *record == record_name(name, *n as u64))
            .map(|(_, record)| self.shared.key(&record))
            .collect();
        let store = self.shared.store.clone();
        let fetched = self.shared.block(async move {
            futures::stream::iter(keys)
                .map(|key| {
                    let store = store.clone();
                    async move {
                        match store.get(&key).await {
                            Ok(got) => Ok(Some(got.bytes().await?.to_vec())),
                            Err(object_store::Error::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffered(READ_AHEAD)
                .try_collect::<Vec<_>>()
                .await
        });
        let fetched = fetched.map_err(|e| self.shared.err("read", name, e))?;
        Ok(fetched.into_iter().map_while(|record| record).collect())
    }

    fn delete_stream(&self, name: &str) -> Result<()> {
        for record in self.shared.level(Some(name))?.0 {
            self.delete(&record)?;
        }
        Ok(())
    }

    fn list_streams(&self, prefix: &str) -> Result<Vec<String>> {
        let (_, streams) = self.shared.level(None)?;
        Ok(streams
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect())
    }
}

fn record_name(stream: &str, n: u64) -> String {
    format!("{stream}/{n:010}")
}

/// Appends records to a stream as numbered objects.
#[derive(Debug)]
struct ObjectStream {
    shared: Arc<Shared>,
    name: String,
    next: u64,
    broken: bool,
}

impl StreamWriter for ObjectStream {
    fn append(&mut self, record: &[u8]) -> Result<()> {
        let name = record_name(&self.name, self.next);
        if self.broken {
            return Err(CoordinatorError::Storage {
                path: format!("{}/{name}", self.shared.location).into(),
                source: std::io::Error::other("an earlier write to this log failed"),
            });
        }
        let done = self.shared.put(&name, record, PutMode::Create);
        self.broken = done.is_err();
        done.map_err(|e| self.shared.err("append", &name, e))?;
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::client::{HttpError, HttpErrorKind};

    #[test]
    fn only_a_failed_connection_is_tried_again() {
        let dropped = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                HttpErrorKind::Interrupted,
                std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            )),
        };
        assert!(transport_failed(&dropped));
        let answered = object_store::Error::Precondition {
            path: "manifest.json".into(),
            source: "412".into(),
        };
        assert!(!transport_failed(&answered));
        let other = object_store::Error::Generic {
            store: "S3",
            source: "400 bad request".into(),
        };
        assert!(!transport_failed(&other));
    }
}
