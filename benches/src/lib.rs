//! Benchmarks of Shoal: the measuring kit shared by the criterion bench and the bench binaries.
//!
//! * [`bandwidth`]: STREAM-style copy and triad kernels, the memory-bandwidth yardstick.
//! * [`cpu`]: how busy other processes kept the machine while a benchmark ran.
//! * [`updates`]: synthetic client updates and the fold loop that aggregation is timed on.
//! * [`memory`]: resident and peak memory from `/proc/self/status`.
//! * [`process`]: child processes (the real binary, servers), their log lines and peak memory.
//! * [`simulation`]: a coordinator and a fleet in one process, over real gRPC on loopback.
//! * [`stats`] and [`flags`]: small summaries and `--name value` flags for the binaries.
//!
//! `benches/README.md` lists every benchmark, its command and the numbers measured.

pub mod bandwidth;
pub mod cpu;
pub mod flags;
pub mod memory;
pub mod process;
pub mod simulation;
pub mod stats;
pub mod updates;
