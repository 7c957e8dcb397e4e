//! Run state in a local directory: the default home, and the one a single coordinator uses.
//!
//! Whole objects are written to a temporary file that is fsynced, then moved into place and
//! the directory fsynced, so a crash at any instant leaves the old object or the new one.
//! *Create* moves with a hard link, which fails if the name exists; *swap* holds an exclusive
//! lock on a lock file beside the object while it compares the current content's digest with
//! the expected version and replaces it. A stream is one file of records framed as a
//! little-endian u32 length, a CRC-32 of the payload and the payload, synced after each append.

use crate::error::{CoordinatorError, Result};
use crate::store::state::{StateStore, StreamWriter, Version};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory holding a run's state.
#[derive(Debug)]
pub struct LocalDir {
    dir: PathBuf,
    location: String,
}

/// Temporary files get distinct names even when two writers in one process write at once.
static TEMPORARY: AtomicU64 = AtomicU64::new(0);

impl LocalDir {
    /// Opens (creating if needed) the directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let location = dir.display().to_string();
        Ok(Self { dir, location })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        // Names are the store's own (checkpoints, manifest, logs), never a path from outside.
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(CoordinatorError::Internal("bad state object name"));
        }
        Ok(self.dir.join(name))
    }

    /// Writes `bytes` to a fresh temporary file in the directory, synced; returns its path.
    fn temporary(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let n = TEMPORARY.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{name}.{}-{n}.tmp", std::process::id()));
        let mut file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        file.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        Ok(tmp)
    }

    fn names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map_err(|e| io_err(&self.dir, e))?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with(prefix) && !name.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }
}

fn version_of(bytes: &[u8]) -> Version {
    Version(hex::encode(Sha256::digest(bytes)))
}

fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

impl StateStore for LocalDir {
    fn location(&self) -> &str {
        &self.location
    }

    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, Version)>> {
        Ok(read(&self.path(name)?)?.map(|bytes| {
            let version = version_of(&bytes);
            (bytes, version)
        }))
    }

    fn create(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        let path = self.path(name)?;
        let tmp = self.temporary(name, bytes)?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.dir)?;
                Ok(true)
            }
            // Exactly these bytes already: the same write again, as a retry would make it.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                Ok(fs::read(&path).is_ok_and(|held| held == bytes))
            }
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn swap(
        &self,
        name: &str,
        bytes: &[u8],
        expected: Option<&Version>,
    ) -> Result<Option<Version>> {
        let path = self.path(name)?;
        let lock_path = self.dir.join(format!(".{name}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        // Released when `lock` is dropped (also if this process dies).
        lock.lock().map_err(|e| io_err(&lock_path, e))?;
        let current = read(&path)?.map(|b| version_of(&b));
        if current.as_ref() != expected {
            return Ok(None);
        }
        let tmp = self.temporary(name, bytes)?;
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        sync_dir(&self.dir)?;
        Ok(Some(version_of(bytes)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.names(prefix)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn start_stream(&self, name: &str) -> Result<Box<dyn StreamWriter>> {
        let path = self.path(name)?;
        let file = File::create(&path).map_err(|e| io_err(&path, e))?;
        sync_dir(&self.dir)?;
        Ok(Box::new(LocalStream {
            file,
            path,
            broken: false,
        }))
    }

    fn read_stream(&self, name: &str) -> Result<Vec<Vec<u8>>> {
        Ok(read(&self.path(name)?)?
            .map(|bytes| unframe(&bytes))
            .unwrap_or_default())
    }

    fn delete_stream(&self, name: &str) -> Result<()> {
        self.delete(name)
    }

    fn list_streams(&self, prefix: &str) -> Result<Vec<String>> {
        self.names(prefix)
    }
}

/// A stream file being appended to.
#[derive(Debug)]
struct LocalStream {
    file: File,
    path: PathBuf,
    broken: bool,
}

impl StreamWriter for LocalStream {
    fn append(&mut self, record: &[u8]) -> Result<()> {
        if self.broken {
            return Err(io_err(
                &self.path,
                std::io::Error::other("an earlier write to this log failed"),
            ));
        }
        let frame = frame(record);
        let written = self
            .file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data());
        self.broken = written.is_err();
        written.map_err(|e| io_err(&self.path, e))
    }
}

/// One record as a stream file holds it: length, CRC-32, payload.
pub fn frame(record: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(record.len() + 8);
    frame.extend_from_slice(&(record.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
    frame.extend_from_slice(record);
    frame
}

/// Every intact record of a stream file, stopping at the first torn or corrupt one.
pub fn unframe(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 8 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let Some(payload) = bytes.get(8..8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        out.push(payload.to_vec());
        bytes = &bytes[8 + len..];
    }
    out
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> CoordinatorError {
    CoordinatorError::Storage {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Makes a rename or a new name durable: fsync the directory that holds it.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn create_refuses_an_existing_name() {
        let (_dir, store) = store();
        assert!(store.create("a", b"one").unwrap());
        assert!(!store.create("a", b"two").unwrap());
        assert!(store.create("a", b"one").unwrap(), "the same write again");
        assert_eq!(store.get("a").unwrap().unwrap().0, b"one");
        assert_eq!(store.list("").unwrap(), vec!["a".to_string()]);
    }

    #[test]
    fn swap_replaces_only_the_expected_version() {
        let (_dir, store) = store();
        let v1 = store.swap("m", b"one", None).unwrap().unwrap();
        assert_eq!(store.swap("m", b"x", None).unwrap(), None, "exists now");
        let v2 = store.swap("m", b"two", Some(&v1)).unwrap().unwrap();
        assert_eq!(store.swap("m", b"three", Some(&v1)).unwrap(), None, "stale");
        let (bytes, version) = store.get("m").unwrap().unwrap();
        assert_eq!((bytes.as_slice(), version), (&b"two"[..], v2));
    }

    #[test]
    fn a_stream_replays_to_its_first_torn_record() {
        let (dir, store) = store();
        let mut w = store.start_stream("log").unwrap();
        w.append(b"first").unwrap();
        w.append(b"second").unwrap();
        assert_eq!(
            store.read_stream("log").unwrap(),
            vec![b"first".to_vec(), b"second".to_vec()]
        );
        let path = dir.path().join("log");
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(store.read_stream("log").unwrap(), vec![b"first".to_vec()]);
        // Starting it again drops what it held.
        drop(store.start_stream("log").unwrap());
        assert!(store.read_stream("log").unwrap().is_empty());
        assert!(store.read_stream("missing").unwrap().is_empty());
    }

    #[test]
    fn names_from_outside_the_store_are_refused() {
        let (_dir, store) = store();
        for name in ["", "../x", "a/b", ".hidden"] {
            assert!(store.get(name).is_err(), "{name:?}");
        }
    }
}
