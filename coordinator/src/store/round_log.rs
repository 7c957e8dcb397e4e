//! The mid-round write-ahead log: every update the open round accepts is appended (and made
//! durable) before the client hears "accepted", so a coordinator killed mid-round keeps that
//! work, and the one that carries the run on asks only the clients that had not delivered.
//!
//! Each coordinator incarnation logs to its own stream, `round-EEEEEEEEEEEEEEEE.wal` (its epoch
//! in hex; see [`crate::store::state`] for how a stream is stored): records are serde + bincode
//! of [`LogRecord`], the first opening the round (round, attempt, selection), the rest updates.
//! A torn or corrupt tail — what a crash mid-append leaves — ends the log there. The
//! coordinator that takes over replays the newest log of an epoch up to its predecessor's, so a
//! deposed coordinator that logs on after the takeover is never read.

use crate::error::{CoordinatorError, Result};
use crate::store::checkpoint::CheckpointStore;
use crate::store::manifest;
use crate::store::state::StreamWriter;
use crate::strategy::results::{ClientUpdate, Delivery, PartialSum};
use serde::{Deserialize, Serialize};

/// Streams of round logs start with this.
const STREAM_PREFIX: &str = "round";
/// The one log of a directory written before logs were kept per epoch.
const LEGACY_STREAM: &str = "round.wal";

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    /// A round was opened.
    Open(RoundOpened),
    /// An update was accepted.
    Update(ClientUpdate),
    /// A sub-aggregator's partial sum was accepted.
    Partial(PartialSum),
}

/// A [`LogRecord`] by reference: the same variants in the same order, so it encodes to the
/// same bytes, and appending an accepted update or partial sum copies nothing.
#[derive(Serialize)]
enum RecordRef<'a> {
    Open(&'a RoundOpened),
    Update(&'a ClientUpdate),
    Partial(&'a PartialSum),
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
    /// Updates and partial sums accepted before the crash, in log order.
    pub updates: Vec<Delivery>,
}

/// An open log being appended to.
#[derive(Debug)]
pub struct RoundLog {
    writer: Box<dyn StreamWriter>,
}

/// The stream of the coordinator of `epoch`.
fn stream_name(epoch: u64) -> String {
    format!("{STREAM_PREFIX}-{epoch:016x}.wal")
}

/// The epoch a log stream belongs to (`Some(0)` for the legacy log), or `None` if the name is
/// not a log's.
fn epoch_of(name: &str) -> Option<u64> {
    if name == LEGACY_STREAM {
        return Some(0);
    }
    let hex = name.strip_prefix("round-")?.strip_suffix(".wal")?;
    u64::from_str_radix(hex, 16).ok()
}

impl RoundLog {
    /// Starts this coordinator's log afresh for a round (the coordinator of `opened.epoch`
    /// must own the state: see [`CheckpointStore::claim`]).
    pub fn create(store: &CheckpointStore, opened: RoundOpened) -> Result<Self> {
        store.claim(opened.epoch)?;
        let writer = store.state().start_stream(&stream_name(opened.epoch))?;
        let mut log = Self { writer };
        log.append_encoded(&RecordRef::Open(&opened))?;
        Ok(log)
    }

    /// Appends a record; durable when this returns. After a failed append the log accepts
    /// nothing more.
    pub fn append(&mut self, record: &LogRecord) -> Result<()> {
        self.append_encoded(record)
    }

    /// Appends an accepted delivery, as [`LogRecord::Update`] or [`LogRecord::Partial`].
    pub fn append_delivery(&mut self, delivery: &Delivery) -> Result<()> {
        match delivery {
            Delivery::Update(update) => self.append_encoded(&RecordRef::Update(update)),
            Delivery::Partial(partial) => self.append_encoded(&RecordRef::Partial(partial)),
        }
    }

    fn append_encoded(&mut self, record: &impl Serialize) -> Result<()> {
        let payload = bincode::serde::encode_to_vec(record, bincode::config::standard())
            .map_err(|e| CoordinatorError::codec("encode log record", e))?;
        self.writer.append(&payload)
    }

    /// The log to carry on from, if there is one with at least its opening record: the
    /// newest of an epoch up to the state's previous owner (the current owner, for a store
    /// nobody has claimed here).
    pub fn read(store: &CheckpointStore) -> Result<Option<LoggedRound>> {
        let owner = match store.claimed() {
            Some(claim) => claim.previous,
            None => manifest::read(store.state())?.map(|(m, _)| m.epoch),
        };
        let newest = store
            .state()
            .list_streams(STREAM_PREFIX)?
            .into_iter()
            .filter_map(|name| epoch_of(&name).map(|epoch| (epoch, name)))
            .filter(|(epoch, _)| owner.is_none_or(|owner| *epoch <= owner))
            .max();
        let Some((_, name)) = newest else {
            return Ok(None);
        };
        let mut records = store
            .state()
            .read_stream(&name)?
            .into_iter()
            .map_while(|bytes| match crate::bounded::decode_bounded(&bytes) {
                Ok((record, used)) if used == bytes.len() => Some(record),
                _ => None,
            });
        let Some(LogRecord::Open(opened)) = records.next() else {
            return Ok(None);
        };
        let updates = records
            .filter_map(|r| match r {
                LogRecord::Update(u) => Some(Delivery::Update(u)),
                LogRecord::Partial(p) => Some(Delivery::Partial(p)),
                LogRecord::Open(_) => None,
            })
            .collect();
        Ok(Some(LoggedRound { opened, updates }))
    }

    /// Deletes every round log (their round is in a checkpoint now).
    pub fn remove(store: &CheckpointStore) -> Result<()> {
        for name in store.state().list_streams(STREAM_PREFIX)? {
            if epoch_of(&name).is_some() {
                store.state().delete_stream(&name)?;
            }
        }
        Ok(())
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
            payload: vec![1.5, -2.0].into(),
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
    fn a_delivery_appended_by_reference_is_the_record_it_stands_for() {
        let config = bincode::config::standard();
        let update = update("a");
        let partial = PartialSum {
            totals: vec![1, -(1 << 100)],
            counts: vec![3],
            reports: BTreeMap::new(),
        };
        assert_eq!(
            bincode::serde::encode_to_vec(RecordRef::Update(&update), config).unwrap(),
            bincode::serde::encode_to_vec(LogRecord::Update(update.clone()), config).unwrap()
        );
        assert_eq!(
            bincode::serde::encode_to_vec(RecordRef::Partial(&partial), config).unwrap(),
            bincode::serde::encode_to_vec(LogRecord::Partial(partial.clone()), config).unwrap()
        );
    }

    #[test]
    fn replays_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        let mut log = RoundLog::create(&store, opened()).unwrap();
        log.append(&LogRecord::Update(update("a"))).unwrap();
        log.append(&LogRecord::Update(update("b"))).unwrap();
        // The coordinator that takes over reads it.
        let next = CheckpointStore::open(dir.path()).unwrap();
        next.claim(10).unwrap();
        let read = RoundLog::read(&next).unwrap().unwrap();
        assert_eq!(read.opened, opened());
        assert_eq!(
            read.updates,
            vec![Delivery::Update(update("a")), Delivery::Update(update("b"))]
        );
        RoundLog::remove(&next).unwrap();
        assert!(RoundLog::read(&next).unwrap().is_none());
    }

    #[test]
    fn a_log_written_after_a_takeover_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let old = CheckpointStore::open(dir.path()).unwrap();
        let mut old_log = RoundLog::create(&old, opened()).unwrap();
        old_log.append(&LogRecord::Update(update("a"))).unwrap();
        let new = CheckpointStore::open(dir.path()).unwrap();
        new.claim(10).unwrap();
        let taken_over = RoundLog::read(&new).unwrap().unwrap();
        let mut new_log = RoundLog::create(
            &new,
            RoundOpened {
                epoch: 10,
                ..opened()
            },
        )
        .unwrap();
        new_log.append(&LogRecord::Update(update("a"))).unwrap();
        // The deposed coordinator logs on; whoever takes over next reads the new owner's log.
        old_log.append(&LogRecord::Update(update("b"))).unwrap();
        let third = CheckpointStore::open(dir.path()).unwrap();
        third.claim(11).unwrap();
        let read = RoundLog::read(&third).unwrap().unwrap();
        assert_eq!(read.opened.epoch, 10);
        assert_eq!(read.updates, taken_over.updates);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        let mut log = RoundLog::create(&store, opened()).unwrap();
        log.append(&LogRecord::Update(update("a"))).unwrap();
        log.append(&LogRecord::Update(update("b"))).unwrap();
        let path = dir.path().join(stream_name(9));
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        assert_eq!(
            RoundLog::read(&store).unwrap().unwrap().updates,
            vec![Delivery::Update(update("a"))]
        );
        let mut flipped = full.clone();
        let at = full.len() - 5;
        flipped[at] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(RoundLog::read(&store).unwrap().unwrap().updates.len(), 1);
    }
}
