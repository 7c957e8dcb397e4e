//! Running the real `shoal` binary from tests: every child has a deadline, its output is read
//! on background threads so a full pipe never stalls it, and it is killed if the test fails
//! before the child ends.

#![allow(dead_code)]

pub mod etcd;
pub mod packages;
#[path = "../../../coordinator/tests/common/ports.rs"]
pub mod ports;
pub mod prometheus;
pub mod runs;
#[path = "../../../coordinator/tests/common/s3.rs"]
pub mod s3;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any single `shoal` process in these tests may take. Runs here take well under a
/// second; the margin is for a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How often a deadline-bounded wait checks whether the child has exited.
const POLL: Duration = Duration::from_millis(10);

/// A `shoal` command with a clean environment: no `RUST_LOG` (it would override `--log`)
/// and no standard input.
pub fn shoal() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

/// A `shoal` command with `args`.
pub fn shoal_with(args: &[&str]) -> Command {
    let mut cmd = shoal();
    cmd.args(args);
    cmd
}

/// An http:// URL on loopback where nothing listens (a port just bound and let go).
pub fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a loopback port")
        .local_addr()
        .expect("its address")
        .port();
    format!("http://127.0.0.1:{port}")
}

/// A path as a `&str` for a command line (temp paths are always UTF-8 here).
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// How a finished process ended and what it printed.
#[derive(Debug)]
pub struct Finished {
    /// What was run, for messages.
    pub what: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

impl Finished {
    /// Panics with the child's output unless it exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "{} failed with {}:\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A running `shoal` process; killed when dropped, so a failing test leaves nothing behind.
pub struct Running {
    what: String,
    child: Child,
    stderr_lines: Receiver<String>,
    stderr_seen: Vec<String>,
    stdout: Option<JoinHandle<String>>,
}

impl Running {
    /// Starts `cmd` with stdout and stderr captured.
    pub fn spawn(cmd: &mut Command) -> Self {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut out = child.stdout.take().expect("stdout is piped");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = child.stderr.take().expect("stderr is piped");
        let (tx, stderr_lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            what,
            child,
            stderr_lines,
            stderr_seen: Vec::new(),
            stdout: Some(stdout),
        }
    }

    /// Reads stderr until a line contains `needle` and returns that line; panics with what was
    /// read if the process closes stderr first or `limit` passes.
    pub fn wait_for_stderr(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no stderr line with {needle:?} within {limit:?}; got:\n{}",
                        self.what,
                        self.stderr_seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    panic!(
                        "{} ended ({status}) without printing {needle:?}; stderr:\n{}",
                        self.what,
                        self.stderr_seen.join("\n")
                    )
                }
            }
        }
    }

    /// Waits for the process to exit, killing it (and failing the test) after `limit`.
    pub fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.drain_stderr();
                    panic!(
                        "{} still running after {limit:?}; killed it. stderr:\n{stderr}",
                        self.what
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        };
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self.drain_stderr();
        Finished {
            what: self.what.clone(),
            status,
            stdout,
            stderr,
        }
    }

    /// Reads the stderr lines printed so far, without waiting, and returns all read yet.
    pub fn pump(&mut self) -> &[String] {
        while let Ok(line) = self.stderr_lines.try_recv() {
            self.stderr_seen.push(line);
        }
        &self.stderr_seen
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The stderr lines read so far.
    pub fn seen_stderr(&self) -> &[String] {
        &self.stderr_seen
    }

    /// Sends the signal `name` (as `kill` spells it: INT, STOP, CONT...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {} failed", self.child.id());
    }

    /// Freezes the process (SIGSTOP) and waits until every one of its threads is stopped: a
    /// thread in the middle of a write finishes it first, and only then can nothing change.
    pub fn freeze(&self) {
        self.signal("STOP");
        let tasks = format!("/proc/{}/task", self.child.id());
        let stopped = || -> bool {
            let Ok(entries) = std::fs::read_dir(&tasks) else {
                return false;
            };
            entries.flatten().all(|task| {
                std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                    // The state follows the command name, which is in parentheses.
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
                })
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "process {} did not stop within 10 s",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGINT, as Ctrl-C in a terminal: the process shuts down its own way.
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    /// Reads stderr until `count` lines contain `needle` (counting those already read); panics
    /// with what was read if the process closes stderr first or `limit` passes.
    pub fn wait_for_stderr_count(&mut self, needle: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self
            .stderr_seen
            .iter()
            .filter(|l| l.contains(needle))
            .count()
            < count
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => self.stderr_seen.push(line),
                Err(_) => panic!(
                    "{}: fewer than {count} stderr lines with {needle:?} within {limit:?}; got:\n{}",
                    self.what,
                    self.stderr_seen.join("\n")
                ),
            }
        }
    }

    /// SIGKILL: the process gets no chance to clean up, as in a real crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything printed on stderr, waiting for the reader to reach the end of the stream
    /// (the process has exited, or is killed, when this is called).
    fn drain_stderr(&mut self) -> String {
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to the end within [`DEADLINE`].
pub fn finish(cmd: &mut Command) -> Finished {
    Running::spawn(cmd).finish(DEADLINE)
}
