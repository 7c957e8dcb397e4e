//! Resident and peak memory of this process, from `/proc/self/status` (Linux).
//!
//! `VmRSS` is what is resident now and `VmHWM` its high-water mark. Writing `5` to
//! `/proc/self/clear_refs` resets the mark, so one process can measure the peak of several
//! steps in turn.

use std::io;

/// Resident memory now and at its peak, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStatus {
    /// `VmRSS`: resident set now.
    pub rss_kib: u64,
    /// `VmHWM`: peak resident set since start or the last [`reset_peak`].
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of this process.
pub fn status() -> io::Result<MemoryStatus> {
    parse_status(&std::fs::read_to_string("/proc/self/status")?)
}

/// Resets `VmHWM` to the current resident set; false where the kernel refuses.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// KiB as MiB, for tables.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn parse_status(text: &str) -> io::Result<MemoryStatus> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| io::Error::other(format!("no {name} in /proc/self/status")))
    };
    Ok(MemoryStatus {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_fields() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        let s = parse_status(text).ok();
        assert_eq!(
            s,
            Some(MemoryStatus {
                rss_kib: 1024,
                hwm_kib: 2048
            })
        );
        assert!(parse_status("Name:\tx\n").is_err());
    }

    #[test]
    fn reads_this_process() {
        let s = status().ok();
        assert!(s.is_some_and(|s| s.rss_kib > 0 && s.hwm_kib >= s.rss_kib));
    }
}
