//! Values a client carries from round to round (SCAFFOLD's control variate, top-k's left-out
//! residual), kept in memory or in a file that outlives the process.
//!
//! Two vectors are kept: what entered the newest round the client worked on, and what that
//! round left. A round asked again (a retried attempt, a coordinator that resumed the run, a
//! client restarted mid-round) starts from the first, so its update is the same bits as
//! before; a later round starts from the second. They belong to one client of one run:
//! another run, a file copied from another client, or a round older than the newest recorded
//! (the same run started again from scratch) carries nothing.

use crate::error::Result;
use crate::state_file;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// A kind of carried values: how its file is named and how it starts.
pub trait Kind {
    /// First bytes of its file, naming the kind.
    const MAGIC: &'static [u8; 8];
    /// Its file's extension, after the client's id.
    const EXTENSION: &'static str;
}

/// Round-to-round values of kind `K`, in memory or in a file.
#[derive(Debug)]
pub struct Carried<K> {
    /// Boxed: most clients of a fleet never carry anything, and each waits with this inline.
    newest: Option<Box<RoundPair>>,
    /// Where the values are kept between runs of the process, if anywhere.
    file: Option<PathBuf>,
    /// Whether `file` has been read (at the first use).
    loaded: bool,
    kind: PhantomData<K>,
}

impl<K> Default for Carried<K> {
    /// Values kept in memory only.
    fn default() -> Self {
        Self {
            newest: None,
            file: None,
            loaded: true,
            kind: PhantomData,
        }
    }
}

/// What entered one round and what it left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RoundPair {
    client_id: String,
    run_id: String,
    round: u32,
    entering: Vec<f32>,
    left: Vec<f32>,
}

/// Where a round's values stand: its client, run and round.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The client's id.
    pub client_id: &'a str,
    /// The run's id (from the task's fence).
    pub run_id: &'a str,
    /// The round.
    pub round: u32,
}

impl<K: Kind> Carried<K> {
    /// Values of client `client_id` kept in `dir` too (`ID.EXTENSION`): read at the first use,
    /// rewritten at every record.
    pub fn in_dir(dir: &Path, client_id: &str) -> Self {
        Self::in_file(state_file::state_file(dir, client_id, K::EXTENSION))
    }

    /// Values kept in `file` too.
    fn in_file(file: PathBuf) -> Self {
        Self {
            file: Some(file),
            loaded: false,
            ..Self::default()
        }
    }

    /// The same kind of values, in the same file, as after a restart: nothing in memory.
    pub fn fresh(&self) -> Self {
        match &self.file {
            Some(file) => Self::in_file(file.clone()),
            None => Self::default(),
        }
    }

    /// What `at` starts from, if this client carries `n` values into it: nothing for a round
    /// older than the newest recorded (a run started again under the same id begins afresh).
    pub fn entering(&mut self, at: At<'_>, n: usize) -> Option<&[f32]> {
        self.load();
        let pair = self.newest.as_ref()?;
        if pair.client_id != at.client_id || pair.run_id != at.run_id || pair.left.len() != n {
            return None;
        }
        match at.round.cmp(&pair.round) {
            std::cmp::Ordering::Greater => Some(&pair.left),
            std::cmp::Ordering::Equal => Some(&pair.entering),
            std::cmp::Ordering::Less => None,
        }
    }

    /// Records that `at` started from `entering` and left `left` (in the file too, if any).
    pub fn record(&mut self, at: At<'_>, entering: Vec<f32>, left: Vec<f32>) -> Result<()> {
        let pair = RoundPair {
            client_id: at.client_id.to_owned(),
            run_id: at.run_id.to_owned(),
            round: at.round,
            entering,
            left,
        };
        if let Some(path) = &self.file {
            state_file::save(path, K::MAGIC, &pair)?;
        }
        self.newest = Some(Box::new(pair));
        Ok(())
    }

    /// Reads the file once; a damaged one is set aside and nothing is carried.
    fn load(&mut self) {
        if std::mem::replace(&mut self.loaded, true) {
            return;
        }
        if let Some(path) = &self.file {
            self.newest = state_file::load::<RoundPair>(path, K::MAGIC)
                .filter(|p| {
                    p.entering.len() == p.left.len()
                        && p.left.iter().chain(&p.entering).all(|v| v.is_finite())
                })
                .map(Box::new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Test {}

    impl Kind for Test {
        const MAGIC: &'static [u8; 8] = b"SHOALT01";
        const EXTENSION: &'static str = "test";
    }

    fn at(client_id: &str, run_id: &str, round: u32) -> At<'static> {
        At {
            client_id: Box::leak(client_id.to_owned().into_boxed_str()),
            run_id: Box::leak(run_id.to_owned().into_boxed_str()),
            round,
        }
    }

    #[test]
    fn a_round_asked_again_starts_from_what_entered_it() {
        let mut c = Carried::<Test>::default();
        assert_eq!(c.entering(at("c1", "run", 3), 2), None);
        c.record(at("c1", "run", 3), vec![1.0, 2.0], vec![3.0, 4.0])
            .unwrap();
        assert_eq!(c.entering(at("c1", "run", 3), 2), Some(&[1.0, 2.0][..]));
        assert_eq!(c.entering(at("c1", "run", 4), 2), Some(&[3.0, 4.0][..]));
        // Another run, another client, another model or an earlier round carries nothing.
        assert_eq!(c.entering(at("c1", "run", 2), 2), None);
        assert_eq!(c.entering(at("c1", "other", 4), 2), None);
        assert_eq!(c.entering(at("c2", "run", 4), 2), None);
        assert_eq!(c.entering(at("c1", "run", 4), 3), None);
    }

    #[test]
    fn the_values_survive_a_restart_in_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_file::state_file(dir.path(), "c1", "test");
        let mut first = Carried::<Test>::in_dir(dir.path(), "c1");
        first
            .record(at("c1", "run", 3), vec![1.0, 2.0], vec![3.0, 4.0])
            .unwrap();
        let mut restarted = Carried::<Test>::in_dir(dir.path(), "c1");
        assert_eq!(
            restarted.entering(at("c1", "run", 4), 2),
            Some(&[3.0, 4.0][..])
        );
        std::fs::write(&path, b"SHOALT01 damaged").unwrap();
        let mut damaged = Carried::<Test>::in_dir(dir.path(), "c1");
        assert_eq!(damaged.entering(at("c1", "run", 4), 2), None);
    }
}
