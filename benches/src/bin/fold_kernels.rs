//! `ExactSum::fold` (one update per pass over the accumulator) against `ExactSum::fold_block`
//! (several per pass; the same bits).
//!
//! `cargo run --release -p shoal-benches --bin fold_kernels`
//!
//! Steady state: one warm accumulator per kernel, median of passes of `updates` folds; update
//! GB/s counts 4 B per value per update, % copy is of the 2-thread STREAM copy measured here.

use shoal_benches::bandwidth::{STREAM_LEN, StreamArrays};
use shoal_benches::cpu::{CpuSample, print_since};
use shoal_benches::stats::{Summary, gb_per_s};
use shoal_benches::updates::update_bytes;
use shoal_coordinator::aggregate::{AggregateError, ExactSum};
use std::time::{Duration, Instant};

/// Median seconds of passes of `pass`, for about a second (at least three passes).
fn median_seconds(mut pass: impl FnMut() -> Result<(), AggregateError>) -> f64 {
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 3 || (started.elapsed() < Duration::from_secs(1) && times.len() < 100) {
        let t = Instant::now();
        if let Err(e) = pass() {
            eprintln!("fold refused: {e}");
            std::process::exit(1);
        }
        times.push(t.elapsed().as_secs_f64());
    }
    Summary::of(&times).map_or(f64::NAN, |s| s.median)
}

fn main() {
    let mut arrays = StreamArrays::new(STREAM_LEN);
    let cpu_start = CpuSample::now().ok();
    let copy = gb_per_s(
        arrays.copy_bytes(),
        median_seconds(|| {
            arrays.copy(2);
            Ok(())
        }),
    );
    drop(arrays);
    println!("2-thread STREAM copy: {copy:.2} GB/s");
    println!(
        "{:>10} {:>7} {:<24} {:>9} {:>8} {:>8}",
        "params", "updates", "kernel", "ms/fold", "GB/s", "% copy"
    );
    for (len, updates) in [(10_000, 1000), (1_000_000, 64), (10_000_000, 16)] {
        let block: Vec<(u64, Vec<f32>)> = (0..updates)
            .map(|i| {
                (
                    1 + (i as u64 * 37) % 1000,
                    (0..len).map(|j| ((i * len + j) as f32).sin()).collect(),
                )
            })
            .collect();
        let views: Vec<(u64, &[f32])> = block.iter().map(|(w, v)| (*w, v.as_slice())).collect();
        let mut exact = ExactSum::new(len);
        let mut blocked = ExactSum::new(len);
        let report = |name: &str, seconds: f64| {
            let gbps = gb_per_s(update_bytes(len, updates), seconds);
            println!(
                "{len:>10} {updates:>7} {name:<24} {:>9.3} {gbps:>8.2} {:>7.1}%",
                seconds * 1e3 / updates as f64,
                100.0 * gbps / copy
            );
        };
        report(
            "ExactSum::fold",
            median_seconds(|| views.iter().try_for_each(|(w, v)| exact.fold(*w, v))),
        );
        for k in [4, 8, 16] {
            report(
                &format!("ExactSum::fold_block({k})"),
                median_seconds(|| views.chunks(k).try_for_each(|b| blocked.fold_block(b))),
            );
        }
    }
    print_since(cpu_start);
}
