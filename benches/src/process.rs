//! Child processes of the benches: the real `shoal` binary and the servers it needs, their
//! stderr lines as they are printed, and their peak memory.

use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// Peak resident memory (`VmHWM`) of process `pid` so far, in KiB, if it still runs.
pub fn peak_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resident memory (`VmRSS`) of process `pid` now, in KiB, if it still runs.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A child process whose stderr lines arrive, stamped, on a channel.
pub struct Proc {
    /// The process.
    pub child: Child,
    lines: Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl Proc {
    /// Starts `cmd` with its stderr read line by line.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Takes the lines printed so far.
    pub fn pump(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// When a line containing `needle` arrived after `after`, if one did.
    pub fn arrived(&mut self, needle: &str, after: Instant) -> Option<Instant> {
        self.pump();
        self.seen
            .iter()
            .find(|(at, l)| *at > after && l.contains(needle))
            .map(|(at, _)| *at)
    }

    /// Waits up to `limit` for a line containing `needle`; the line.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self
                .lines
                .recv_timeout(left)
                .map_err(|_| anyhow!("no line with {needle:?} within {limit:?}"))?;
            self.seen.push((at, line.clone()));
            if line.contains(needle) {
                return Ok(line);
            }
        }
    }

    /// Waits up to `limit` for a "listening on ADDR" line (a coordinator's or an
    /// aggregator's); the URL clients dial.
    pub fn wait_for_url(&mut self, limit: Duration) -> Result<String> {
        let line = self.wait_for("listening on ", limit)?;
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split([' ', ',']).next())
            .ok_or_else(|| anyhow!("no address in {line:?}"))?;
        Ok(format!("http://{addr}"))
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `limit` for the process to exit successfully (killed if it does not).
    pub fn wait(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("exited with {status}");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        bail!("still running after {limit:?}")
    }
}

impl Proc {
    /// Its peak resident memory so far, in KiB (0 once it has exited).
    pub fn peak_kib(&self) -> u64 {
        peak_kib(self.child.id()).unwrap_or(0)
    }

    /// Its resident memory now, in KiB (0 once it has exited).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id()).unwrap_or(0)
    }

    /// Every line printed so far.
    pub fn lines(&mut self) -> &[(Instant, String)] {
        self.pump();
        &self.seen
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
