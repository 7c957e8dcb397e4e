//! How busy the machine was besides this process while a benchmark ran, from `/proc/stat` and
//! `/proc/self/stat` (Linux). On a shared 2-core machine a concurrent build halves what a
//! benchmark sees, so every binary prints this beside its numbers.

use std::io;

/// Cumulative CPU time counters, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    busy: u64,
    steal: u64,
    total: u64,
    own: u64,
    cpus: u64,
}

/// CPU use between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    /// Cores kept busy by other processes, on average.
    pub others_cores: f64,
    /// Cores kept busy by this process, on average.
    pub own_cores: f64,
    /// Share of time the hypervisor gave the cores to someone else, in percent.
    pub steal_percent: f64,
}

impl CpuSample {
    /// The counters now.
    pub fn now() -> io::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let own = std::fs::read_to_string("/proc/self/stat")?;
        parse(&stat, &own).ok_or_else(|| io::Error::other("unexpected /proc/stat format"))
    }

    /// CPU use from `earlier` to this sample.
    pub fn since(&self, earlier: &CpuSample) -> CpuShare {
        let per_core =
            (self.total.saturating_sub(earlier.total) as f64 / self.cpus.max(1) as f64).max(1.0);
        let own = self.own.saturating_sub(earlier.own) as f64;
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        CpuShare {
            others_cores: ((busy - own) / per_core).max(0.0),
            own_cores: own / per_core,
            steal_percent: 100.0 * self.steal.saturating_sub(earlier.steal) as f64
                / self.total.saturating_sub(earlier.total).max(1) as f64,
        }
    }
}

impl std::fmt::Display for CpuShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this process {:.2} cores, other processes {:.2} cores, steal {:.1}%",
            self.own_cores, self.others_cores, self.steal_percent
        )
    }
}

/// Prints how busy the machine was since `start` (nothing if it could not be read).
pub fn print_since(start: Option<CpuSample>) {
    if let (Some(start), Ok(now)) = (start, CpuSample::now()) {
        println!("machine during the measurement: {}", now.since(&start));
    }
}

/// Reads the "cpu" line of `/proc/stat` and utime + stime of `/proc/self/stat`.
fn parse(stat: &str, own: &str) -> Option<CpuSample> {
    let fields: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    let total = busy + field(3) + field(4) + field(7);
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count() as u64;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let after_name = own.rsplit_once(')')?.1;
    let rest: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(CpuSample {
        busy,
        steal: field(7),
        total,
        own: utime + stime,
        cpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_between_two_samples() {
        let own = |t: u64| format!("42 (a b) R 1 1 1 0 -1 0 0 0 0 0 {t} 0 0 0");
        let a = parse("cpu  100 0 0 100 0 0 0 0\ncpu0 x\ncpu1 x\n", &own(10));
        let b = parse("cpu  250 0 0 140 0 0 0 10\ncpu0 x\ncpu1 x\n", &own(110));
        let share = a.zip(b).map(|(a, b)| b.since(&a));
        assert_eq!(
            share.map(|s| (s.own_cores, s.others_cores, s.steal_percent)),
            Some((1.0, 0.5, 5.0))
        );
        assert!(CpuSample::now().is_ok());
    }
}
