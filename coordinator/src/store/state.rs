//! The one storage interface a run's state goes through, with two homes: a local directory
//! ([`crate::store::local`]) and an S3-compatible object store ([`crate::store::object`]).
//!
//! State is a handful of named objects, each written whole and atomically, plus one
//! append-only record stream per coordinator incarnation (the round log). Two conditional
//! writes make a deposed coordinator harmless: *create* refuses to replace an existing object,
//! and *swap* replaces an object only if it is still the version the writer read. Every
//! coordinator that takes a run over swaps the run's manifest to its own epoch first
//! ([`crate::store::manifest`]), so the next swap of a coordinator it replaced fails, in the
//! store itself, before anything of its reaches a reader.
//!
//! The interface is synchronous: state is written between rounds and under the round's
//! accumulator lock, from blocking threads, and a write must have landed before a client hears
//! "accepted".

use crate::error::{CoordinatorError, Result};
use crate::store::object::{ObjectState, S3Settings};
use std::sync::Arc;

/// The version of an object as the store identifies it (an ETag, or a content digest for a
/// local file); opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub(crate) String);

/// A home for a run's state.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Where the state lives, for messages: a directory, or `s3://BUCKET/PREFIX`.
    fn location(&self) -> &str;

    /// The object `name` and its version, or `None` if there is none.
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, Version)>>;

    /// Writes `name` whole, only if no object has that name; `Ok(false)` if one has, unless
    /// it holds exactly `bytes` (the same write again: a client that retried a request whose
    /// answer was lost meets its own landed write).
    fn create(&self, name: &str, bytes: &[u8]) -> Result<bool>;

    /// Replaces `name` whole, only if its current version is `expected` (`None`: only if
    /// there is no such object). Returns the new version, or `None` if the precondition
    /// failed: someone else wrote it since. (In an object store a refused retry finding
    /// exactly `bytes` in place counts as done: see [`StateStore::create`].)
    fn swap(&self, name: &str, bytes: &[u8], expected: Option<&Version>)
    -> Result<Option<Version>>;

    /// Names of the objects whose name starts with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Deletes `name`; deleting what is not there is not an error.
    fn delete(&self, name: &str) -> Result<()>;

    /// Starts the record stream `name` afresh (dropping what it held) and returns a writer
    /// that appends to it; each append is durable when it returns.
    fn start_stream(&self, name: &str) -> Result<Box<dyn StreamWriter>>;

    /// Every intact record of stream `name` in order, stopping at the first torn or corrupt
    /// one (what a crash mid-append leaves); empty if there is no such stream.
    fn read_stream(&self, name: &str) -> Result<Vec<Vec<u8>>>;

    /// Deletes stream `name`.
    fn delete_stream(&self, name: &str) -> Result<()>;

    /// Names of the streams whose name starts with `prefix`, sorted.
    fn list_streams(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Appends records to one stream.
pub trait StreamWriter: Send + std::fmt::Debug {
    /// Appends `record`; durable when this returns. After a failed append the stream accepts
    /// nothing more (a torn record would hide what came after it).
    fn append(&mut self, record: &[u8]) -> Result<()>;
}

/// Opens the state store `location` names: `s3://BUCKET[/PREFIX]` for an S3-compatible object
/// store (reached as `s3` and the `AWS_*` environment variables say), anything else a local
/// directory (created if needed).
pub fn open(location: &str, s3: &S3Settings) -> Result<Arc<dyn StateStore>> {
    if let Some(rest) = location.strip_prefix("s3://") {
        return Ok(Arc::new(ObjectState::s3(rest, s3)?));
    }
    if location.contains("://") {
        return Err(CoordinatorError::Config(format!(
            "unsupported state location {location:?}: use a directory or s3://BUCKET/PREFIX"
        )));
    }
    Ok(Arc::new(crate::store::local::LocalDir::open(location)?))
}
