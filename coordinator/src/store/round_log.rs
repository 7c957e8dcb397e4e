//! The mid-round write-ahead log: every update the open round accepts is appended (and synced)
//! before the client hears "accepted", so a coordinator killed mid-round keeps that work and
//! asks only the clients that had not delivered.
//!
//! File `round.wal` in the checkpoint directory: records framed as a little-endian u32 length,
//! a CRC-32 of the payload, and the payload (serde + bincode of [`LogRecord`]). The first record
//! opens the round (round, attempt, selection); the rest are updates. A torn or corrupt tail —
//! what a crash mid-append leaves — ends the log there.

use crate::error::{CoordinatorError, Result};
use crate::strategy::results::ClientUpdate;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "round.wal";

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    /// A round was opened.
    Open(RoundOpened),
    /// An update was accepted.
    Update(ClientUpdate),
}

/// The identity and selection of the round the log belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundOpened {
    /// Round number.
    pub round: u32,
    /// Attempt within the round (retries after a missed quorum).
    pub attempt: u32,
    /// Epoch of the coordinator that opened it.
    pub epoch: u64,
    /// Clients asked, sorted.
    pub selected: Vec<String>,
    /// Accepted updates after which the round closes early.
    pub wanted: usize,
}

/// What a log holds after a crash.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRound {
    /// The round.
    pub opened: RoundOpened,
    /// Updates accepted before the crash, in log order.
    pub updates: Vec<ClientUpdate>,
}

/// An open log being appended to.
#[derive(Debug)]
pub struct RoundLog {
    file: File,
    path: PathBuf,
    /// A write failed: see [`RoundLog::append`].
    broken: bool,
}

impl RoundLog {
    /// Starts a fresh log for a round in `dir`, replacing any previous one.
    pub fn create(dir: &Path, opened: RoundOpened) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let file = File::create(&path).map_err(|e| io_err(&path, e))?;
        crate::store::checkpoint::sync_dir(dir)?;
        let mut log = Self {
            file,
            path,
            broken: false,
        };
        log.append(&LogRecord::Open(opened))?;
        Ok(log)
    }

    /// Appends a record and syncs it to disk.
    pub fn append(&mut self, record: &LogRecord) -> Result<()> {
        let payload = bincode::serde::encode_to_vec(record, bincode::config::standard())
            .map_err(|e| CoordinatorError::codec("encode log record", e))?;
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        // After a failed write the file may end in a torn record, and anything appended behind
        // it would be lost on replay: once broken, the log accepts nothing more.
        if self.broken {
            return Err(io_err(
                &self.path,
                std::io::Error::other("an earlier write to the round log failed"),
            ));
        }
        let written = self
            .file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data());
        self.broken = written.is_err();
        written.map_err(|e| io_err(&self.path, e))
    }

    /// Reads the log in `dir`, if there is one with at least its opening record.
    pub fn read(dir: &Path) -> Result<Option<LoggedRound>> {
        let path = dir.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, e)),
        };
        let mut records = parse(&bytes).into_iter();
        let Some(LogRecord::Open(opened)) = records.next() else {
            return Ok(None);
        };
        let updates = records
            .filter_map(|r| match r {
                LogRecord::Update(u) => Some(u),
                LogRecord::Open(_) => None,
            })
            .collect();
        Ok(Some(LoggedRound { opened, updates }))
    }

    /// Deletes the log in `dir` (its round is in a checkpoint now).
    pub fn remove(dir: &Path) -> Result<()> {
        let path = dir.join(FILE_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }
}

/// Every intact record, stopping at the first torn or corrupt one.
fn parse(mut bytes: &[u8]) -> Vec<LogRecord> {
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
        match crate::bounded::decode_bounded(payload) {
            Ok((record, used)) if used == len => out.push(record),
            _ => break,
        }
        bytes = &bytes[8 + len..];
    }
    out
}

fn io_err(path: &Path, e: std::io::Error) -> CoordinatorError {
    CoordinatorError::Storage {
        path: path.to_path_buf(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn update(id: &str) -> ClientUpdate {
        ClientUpdate {
            client_id: id.into(),
            weight: 3,
            payload: vec![1.5, -2.0],
            counts: vec![1, 2],
            metrics: BTreeMap::from([("loss".to_string(), 0.5)]),
        }
    }

    fn opened() -> RoundOpened {
        RoundOpened {
            round: 4,
            attempt: 1,
            epoch: 9,
            selected: vec!["a".into(), "b".into()],
            wanted: 2,
        }
    }

    #[test]
    fn replays_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RoundLog::create(dir.path(), opened()).unwrap();
        log.append(&LogRecord::Update(update("a"))).unwrap();
        log.append(&LogRecord::Update(update("b"))).unwrap();
        let read = RoundLog::read(dir.path()).unwrap().unwrap();
        assert_eq!(read.opened, opened());
        assert_eq!(read.updates, vec![update("a"), update("b")]);
        RoundLog::remove(dir.path()).unwrap();
        assert!(RoundLog::read(dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RoundLog::create(dir.path(), opened()).unwrap();
        log.append(&LogRecord::Update(update("a"))).unwrap();
        log.append(&LogRecord::Update(update("b"))).unwrap();
        let path = dir.path().join(FILE_NAME);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        assert_eq!(
            RoundLog::read(dir.path()).unwrap().unwrap().updates,
            vec![update("a")]
        );
        let mut flipped = full.clone();
        let at = full.len() - 5;
        flipped[at] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(
            RoundLog::read(dir.path()).unwrap().unwrap().updates.len(),
            1
        );
    }
}
