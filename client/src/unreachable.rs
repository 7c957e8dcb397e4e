//! Saying, in one readable line, that the coordinator cannot be reached and what the client
//! will do about it. A fleet of thousands of clients losing the coordinator at once must not
//! print thousands of lines: one line per few seconds per process, counting the others.

use crate::error::ClientError;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::warn;

/// At most one line this often per process.
const EVERY: Duration = Duration::from_secs(5);

/// When the last line was written, and how many clients lost the coordinator since.
static LAST: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

/// How a client goes on after losing the coordinator, as the line tells it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retrying<'a> {
    /// The coordinator's address ("" when unknown).
    pub url: &'a str,
    /// First and longest pause between attempts.
    pub backoff: (Duration, Duration),
    /// When the client stops trying.
    pub give_up_after: Duration,
}

/// Reports that a client just lost the coordinator with `err`, unless a line was written
/// moments ago (then it is only counted, and named in the next line).
pub(crate) fn report(err: &ClientError, retrying: Retrying<'_>) {
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let others = match *last {
        Some((at, n)) if now.saturating_duration_since(at) < EVERY => {
            *last = Some((at, n + 1));
            return;
        }
        Some((_, n)) => n,
        None => 0,
    };
    *last = Some((now, 0));
    drop(last);
    let at = if retrying.url.is_empty() {
        String::new()
    } else {
        format!(" at {}", retrying.url)
    };
    warn!(
        "cannot reach the coordinator{at}: {err}; retrying with backoff ({} ms to {} s apart), \
         giving up after {} s{}",
        retrying.backoff.0.as_millis(),
        retrying.backoff.1.as_secs_f64(),
        retrying.give_up_after.as_secs(),
        if others > 0 {
            format!(" ({others} more clients in this process lost it since the last such line)")
        } else {
            String::new()
        }
    );
}
