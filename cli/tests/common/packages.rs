//! Real servers from Debian packages (etcd, Prometheus): found on the machine, or installed
//! with apt the first time a test needs them, so the README's test command needs no set-up
//! of its own. A machine where neither works fails the test with what to install; it never
//! skips.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `binary`: the path in `$env_var`, else on the PATH, else in /usr/bin; if none, installs
/// Debian package `package` (as root, or through `sudo -n`), once, under a lock shared by
/// every test process of this build.
pub fn find_or_install(binary: &str, env_var: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    if let Some(found) = find(binary) {
        return found;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).expect("the build's temporary directory");
    let lock = std::fs::File::create(dir.join("apt-install.lock")).expect("a lock file");
    lock.lock().expect("the install lock");
    if let Some(found) = find(binary) {
        return found;
    }
    eprintln!("installing Debian's {package} for the tests that need a real {binary} (once)");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "-qq", package]) {
        let _ = apt(&["update", "-qq"]);
        let _ = apt(&["install", "-y", "-qq", package]);
    }
    find(binary).unwrap_or_else(|| {
        panic!(
            "no {binary} binary, and installing Debian's {package} failed: run \
             `apt-get install {package}` (as root), or set {env_var} to a {binary} binary; \
             these tests need a real {binary}"
        )
    })
}

/// `binary` on the PATH or in /usr/bin.
fn find(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}
