//! A real S3-compatible server for tests: `s3s-fs` (crates.io), started on a loopback port
//! with its own root directory and credentials, stopped when dropped. `.ci/run` installs it; a
//! machine without it fails these tests, it does not skip them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ports;

/// Access key and secret the server is started with.
pub const ACCESS_KEY: &str = "shoal-test-key";
pub const SECRET_KEY: &str = "shoal-test-secret";
/// The bucket every server starts with.
pub const BUCKET: &str = "shoal";

/// A running s3s-fs.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The directory it stores objects in (one subdirectory per bucket).
    pub root: tempfile::TempDir,
}

/// The s3s-fs release the tests run.
const VERSION: &str = "0.14.1";

/// The s3s-fs binary: `$SHOAL_S3S_FS`, or `s3s-fs` on the PATH or in `~/.cargo/bin`, or else
/// one this function installs from crates.io into the build's temporary directory (once, under
/// a lock: a few minutes), so the test command needs no set-up of its own.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOAL_S3S_FS") {
        return PathBuf::from(path);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    if let Some(found) = dirs
        .into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
    {
        return found;
    }
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("s3s-fs");
    let installed = root.join("bin/s3s-fs");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join("install.lock")).unwrap();
    lock.lock().unwrap();
    if !installed.is_file() {
        eprintln!("installing s3s-fs {VERSION} for the object-store tests (once)");
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", "--locked", "s3s-fs", "--version", VERSION])
            .args(["--features", "binary", "--root"])
            .arg(&root)
            .status()
            .expect("run cargo install");
        assert!(
            status.success(),
            "cargo install s3s-fs {VERSION} failed: the object-store tests need a real S3 server"
        );
    }
    installed
}

impl S3Server {
    /// Starts a server with one empty bucket, [`BUCKET`], on a port below the ephemeral
    /// range so that [`S3Server::restart`] finds it free again.
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let mut why = String::new();
        for _ in 0..5 {
            let port = ports::stable_ports(1)[0];
            match Self::spawn(root.path(), port) {
                Ok((child, endpoint)) => {
                    return Self {
                        child,
                        endpoint,
                        root,
                    };
                }
                Err(e) => why = e,
            }
        }
        panic!("s3s-fs did not start five times: {why}")
    }

    /// Starts the server again after [`S3Server::stop`], on the same port and objects. The
    /// old socket may linger a moment, so a failed bind is tried again for up to 30 s.
    pub fn restart(&mut self) {
        let port = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let (child, endpoint) = loop {
            match Self::spawn(self.root.path(), port) {
                Ok(started) => break started,
                Err(why) if std::time::Instant::now() < deadline => {
                    eprintln!("s3s-fs did not restart ({why}); again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(why) => panic!("s3s-fs did not restart on port {port} within 30 s: {why}"),
            }
        };
        assert_eq!(endpoint, self.endpoint, "restarted on another address");
        self.child = child;
    }

    /// Starts s3s-fs on `port`; an error if it exits (a port it cannot bind) or does not
    /// say where it listens within 30 s.
    fn spawn(root: &std::path::Path, port: u16) -> Result<(Child, String), String> {
        let mut child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find("server is running at ") {
                    let url = line[at + "server is running at ".len()..]
                        .trim()
                        .to_string();
                    let _ = tx.send(url);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(endpoint) => Ok((child, endpoint)),
            Err(e) => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!("s3s-fs on port {port}: {e} ({status})"))
            }
        }
    }

    /// Settings that reach this server.
    pub fn settings(&self) -> shoal_coordinator::store::object::S3Settings {
        shoal_coordinator::store::object::S3Settings {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            allow_http: true,
        }
    }

    /// The environment a `shoal` process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Stops the server: the store is unreachable from now on.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
