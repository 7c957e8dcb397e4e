//! FedAvg aggregation throughput against this machine's memory bandwidth (criterion).
//!
//! `cargo bench -p shoal-benches --bench aggregation` (about 4 minutes)
//!
//! * `memory_bandwidth/{copy,triad}/{1,2}t`: STREAM copy and triad over 64 MiB arrays,
//!   STREAM-counted bytes (see `shoal_benches::bandwidth`).
//! * `fedavg_fold/<params>/<updates>`: `ExactSum::fold` of `updates` distinct updates into a
//!   warm accumulator of `params` values; throughput is update bytes folded in (4 B per value).
//!   The accumulator lives across iterations, so this is steady-state folding; the
//!   `aggregation_table` binary measures whole rounds with a fresh accumulator instead.
//!
//! Criterion takes at least 10 samples, so 10M × 1000 (about 45 s per iteration here) would
//! need over 7 minutes: it is measured once by `aggregation_table` and skipped here.

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use shoal_benches::bandwidth::{STREAM_LEN, StreamArrays};
use shoal_benches::updates::{POOL_BUDGET_BYTES, UpdatePool, update_bytes};
use shoal_coordinator::aggregate::ExactSum;
use std::hint::black_box;
use std::time::Duration;

const SIZES: [(usize, &str); 3] = [(10_000, "10k"), (1_000_000, "1M"), (10_000_000, "10M")];
const UPDATES: [usize; 3] = [10, 100, 1000];
/// Folded values (params × updates) above which a configuration is left to the table binary.
const CRITERION_CAP: usize = 1_000_000_000;
/// Folded values above which an iteration takes seconds: flat sampling, the fewest samples.
const LONG_ITERATION: usize = 50_000_000;

fn memory_bandwidth(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_bandwidth");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut arrays = StreamArrays::new(STREAM_LEN);
    for threads in [1, 2] {
        group.throughput(Throughput::BytesDecimal(arrays.copy_bytes()));
        group.bench_function(BenchmarkId::new("copy", format!("{threads}t")), |b| {
            b.iter(|| arrays.copy(black_box(threads)));
        });
        group.throughput(Throughput::BytesDecimal(arrays.triad_bytes()));
        group.bench_function(BenchmarkId::new("triad", format!("{threads}t")), |b| {
            b.iter(|| arrays.triad(black_box(threads)));
        });
    }
    black_box(arrays.checksum());
    group.finish();
}

fn fedavg_fold(c: &mut Criterion) {
    let mut group = c.benchmark_group("fedavg_fold");
    for (len, label) in SIZES {
        let pool = UpdatePool::new(len, UPDATES[UPDATES.len() - 1], POOL_BUDGET_BYTES);
        let mut sum = ExactSum::new(len);
        // Touch the accumulator once so page faults stay out of the measurement.
        if let Err(e) = pool.fold_into(&mut sum, 1) {
            panic!("fold refused: {e}");
        }
        for updates in UPDATES {
            let work = len * updates;
            if work > CRITERION_CAP {
                continue;
            }
            if work >= LONG_ITERATION {
                group
                    .sampling_mode(SamplingMode::Flat)
                    .sample_size(10)
                    .warm_up_time(Duration::from_millis(100))
                    .measurement_time(Duration::from_secs(1));
            } else {
                group
                    .sampling_mode(SamplingMode::Auto)
                    .sample_size(20)
                    .warm_up_time(Duration::from_secs(1))
                    .measurement_time(Duration::from_secs(3));
            }
            group.throughput(Throughput::BytesDecimal(update_bytes(len, updates)));
            group.bench_function(BenchmarkId::new(label, updates), |b| {
                b.iter(|| {
                    if let Err(e) = pool.fold_into(&mut sum, black_box(updates)) {
                        panic!("fold refused: {e}");
                    }
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, memory_bandwidth, fedavg_fold);
criterion_main!(benches);
