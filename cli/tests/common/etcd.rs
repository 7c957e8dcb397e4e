//! A real etcd cluster for the tests: Debian's `etcd` binary (package `etcd-server`, see
//! [`super::packages`]), members on loopback ports, each in its own data directory. A machine
//! without it fails the test; it never skips.

use super::ports;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// How long a member may take to join its cluster and serve.
const READY: Duration = Duration::from_secs(30);

/// A running etcd cluster; its members are killed when it is dropped.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    /// The last lines any member printed, for messages.
    last_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// The etcd binary: `SHOAL_ETCD`, else `etcd` on the PATH or in /usr/bin, else installed
/// from Debian's `etcd-server`.
fn binary() -> PathBuf {
    super::packages::find_or_install("etcd", "SHOAL_ETCD", "etcd-server")
}

impl EtcdCluster {
    /// Starts `size` members and waits until each serves clients. A port taken by another
    /// process between picking it and etcd binding it makes a member exit: the cluster is
    /// then started again on other ports (at most three times).
    pub fn start(size: usize) -> Self {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(size) {
                Ok(cluster) => return cluster,
                Err(why) if attempt < 3 => eprintln!("etcd cluster did not start ({why}); again"),
                Err(why) => panic!("etcd cluster did not start three times: {why}"),
            }
        }
    }

    fn try_start(size: usize) -> Result<Self, String> {
        let ports = ports::stable_ports(2 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir: tempfile::tempdir().expect("a temp dir"),
            members,
            initial_cluster,
            last_lines: Default::default(),
        };
        let ready: Vec<_> = (0..size).map(|i| cluster.spawn(i)).collect();
        for (i, ready) in ready.into_iter().enumerate() {
            ready.recv_timeout(READY).map_err(|_| {
                format!(
                    "member {} did not serve within {READY:?} (or exited); last lines:\n{}",
                    cluster.members[i].name,
                    cluster
                        .last_lines
                        .lock()
                        .map(|l| l.join("\n"))
                        .unwrap_or_default()
                )
            })?;
        }
        Ok(cluster)
    }

    /// The client URLs, comma-separated, as `--etcd` takes them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        let ready = self.spawn(i);
        wait_ready(&self.members[i].name, &ready);
    }

    /// Starts member `i`; the receiver gets a message once it serves clients.
    fn spawn(&mut self, i: usize) -> Receiver<()> {
        let member = &self.members[i];
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let mut child = Command::new(binary())
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&member.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "shoal-test"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start etcd");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = channel();
        let last = self.last_lines.clone();
        std::thread::spawn(move || {
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !told && line.contains("ready to serve client requests") {
                    told = true;
                    let _ = tx.send(());
                }
                if let Ok(mut last) = last.lock() {
                    if last.len() == 20 {
                        last.remove(0);
                    }
                    last.push(line);
                }
            }
        });
        self.members[i].child = Some(child);
        rx
    }
}

fn wait_ready(name: &str, ready: &Receiver<()>) {
    ready
        .recv_timeout(READY)
        .unwrap_or_else(|_| panic!("etcd member {name} did not serve within {READY:?}"));
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
