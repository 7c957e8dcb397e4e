//! Prints FedAvg aggregation throughput beside this machine's memory bandwidth, and the
//! aggregator's resident memory as the number of updates grows.
//!
//! `cargo run --release -p shoal-benches --bin aggregation_table [-- --quick]`
//!
//! Each pass is one round's aggregation as the coordinator does it: a fresh
//! [`ExactSum`] (first-touch page faults included) and `updates` folds of distinct updates
//! read from memory. Throughput counts update bytes folded in (4 B per value per update).
//! `--quick` skips 10M × 1000, the one configuration that takes most of a minute.

use shoal_benches::bandwidth::{STREAM_LEN, StreamArrays};
use shoal_benches::cpu::{CpuSample, print_since};
use shoal_benches::flags::Flags;
use shoal_benches::memory::{self, mib};
use shoal_benches::stats::{Summary, gb_per_s};
use shoal_benches::updates::{FOLD_TRAFFIC_PER_PARAM, POOL_BUDGET_BYTES, UpdatePool, update_bytes};
use shoal_coordinator::aggregate::ExactSum;
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [10_000, 1_000_000, 10_000_000];
const UPDATES: [usize; 3] = [10, 100, 1000];
/// Measured time to aim for per configuration.
const TARGET: Duration = Duration::from_secs(1);
/// Most passes of one configuration.
const MAX_PASSES: usize = 200;

/// Median GB/s of a STREAM kernel over repeated runs.
fn stream_gbps(bytes: u64, mut kernel: impl FnMut()) -> f64 {
    kernel();
    let times: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            kernel();
            t.elapsed().as_secs_f64()
        })
        .collect();
    Summary::of(&times).map_or(0.0, |s| gb_per_s(bytes, s.median))
}

/// One configuration's measurements.
struct Row {
    seconds: f64,
    rss_kib: u64,
    peak_kib: u64,
    passes: usize,
}

/// Times passes of `updates` folds into a fresh, prefaulted accumulator; memory is measured relative to
/// the resident set just before the accumulator exists.
fn measure(pool: &UpdatePool, updates: usize) -> Row {
    let mut times = Vec::new();
    let (mut rss_kib, mut peak_kib) = (0, 0);
    let started = Instant::now();
    while times.len() < MAX_PASSES && (times.is_empty() || started.elapsed() < TARGET) {
        memory::reset_peak();
        let before = memory::status().ok();
        let mut sum = ExactSum::new(pool.len());
        // As the coordinator does when a round opens, while clients train.
        sum.prefault();
        let t = Instant::now();
        if let Err(e) = pool.fold_into(&mut sum, updates) {
            eprintln!("fold refused: {e}");
            std::process::exit(1);
        }
        times.push(t.elapsed().as_secs_f64());
        if let (Some(b), Ok(a)) = (before, memory::status()) {
            rss_kib = rss_kib.max(a.rss_kib.saturating_sub(b.rss_kib));
            peak_kib = peak_kib.max(a.hwm_kib.saturating_sub(b.rss_kib));
        }
        std::hint::black_box(sum.total_weight());
    }
    let seconds = Summary::of(&times).map_or(f64::NAN, |s| s.median);
    Row {
        seconds,
        rss_kib,
        peak_kib,
        passes: times.len(),
    }
}

fn main() {
    let quick = Flags::from_env().has("quick");
    let cpu_start = CpuSample::now().ok();
    println!(
        "memory bandwidth (STREAM-counted, {} MiB arrays, median of 15)",
        (STREAM_LEN * 8) >> 20
    );
    let mut arrays = StreamArrays::new(STREAM_LEN);
    let (copy_bytes, triad_bytes) = (arrays.copy_bytes(), arrays.triad_bytes());
    let mut best_copy = 0.0f64;
    let mut best_triad = 0.0f64;
    println!("{:>8} {:>12} {:>12}", "threads", "copy GB/s", "triad GB/s");
    for threads in [1, 2] {
        let copy = stream_gbps(copy_bytes, || arrays.copy(threads));
        let triad = stream_gbps(triad_bytes, || arrays.triad(threads));
        best_copy = best_copy.max(copy);
        best_triad = best_triad.max(triad);
        println!("{threads:>8} {copy:>12.2} {triad:>12.2}");
    }
    std::hint::black_box(arrays.checksum());
    drop(arrays);
    let peak_reset = memory::reset_peak();

    println!();
    println!(
        "FedAvg aggregation: ExactSum::fold, fresh accumulator per pass (prefaulted, as at round open), median of passes"
    );
    println!("  update GB/s = 4 B x params x updates / time; % copy = of the best copy above");
    println!(
        "  traffic GB/s = {FOLD_TRAFFIC_PER_PARAM} B x params x updates / time (update read + 16 B accumulator read and written)"
    );
    println!(
        "  RSS = VmRSS growth after the folds; peak = VmHWM growth{}; accumulator = 16 B x params",
        if peak_reset {
            ""
        } else {
            " (VmHWM could not be reset: cumulative)"
        }
    );
    println!(
        "{:>10} {:>7} {:>6} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "params",
        "updates",
        "passes",
        "ms/fold",
        "GB/s",
        "% copy",
        "traffic",
        "% triad",
        "RSS MiB",
        "peak MiB",
        "acc MiB"
    );
    for len in SIZES {
        let pool = UpdatePool::new(len, *UPDATES.iter().max().unwrap_or(&1), POOL_BUDGET_BYTES);
        for updates in UPDATES {
            if quick && len * updates > 1_000_000_000 {
                println!("{len:>10} {updates:>7}  skipped (--quick)");
                continue;
            }
            let row = measure(&pool, updates);
            let gbps = gb_per_s(update_bytes(len, updates), row.seconds);
            let traffic = gb_per_s(
                FOLD_TRAFFIC_PER_PARAM * len as u64 * updates as u64,
                row.seconds,
            );
            println!(
                "{len:>10} {updates:>7} {:>6} {:>9.3} {gbps:>8.2} {:>7.1}% {traffic:>9.2} {:>7.1}% {:>8.1} {:>8.1} {:>8.1}",
                row.passes,
                row.seconds * 1e3 / updates as f64,
                100.0 * gbps / best_copy,
                100.0 * traffic / best_triad,
                mib(row.rss_kib),
                mib(row.peak_kib),
                (len * 16) as f64 / f64::from(1 << 20),
            );
        }
    }
    print_since(cpu_start);
}
