//! Training and evaluation throughput of every built-in model against the machine's GEMM peak.
//!
//! `cargo run --release -p shoal-benches --bin compute [-- --quick] [--only cnn|2nn|mlp]`
//!
//! The yardstick is the single-precision matrix product the models themselves run on (the
//! backend's `matmul` of two square matrices, all cores), the best of several sizes. Each
//! model is then timed through the public entry points a client uses, [`train_local`] and
//! [`evaluate`], on synthetic examples of the right shape: one client at a time (the backend
//! may spread a step over both cores) and two clients at once (as a fleet runs them). FLOP
//! counts are analytic: a forward pass is two FLOPs per multiply-add of its layers, a training
//! step three forward passes (forward, and the backward pass's two products).
//! `benches/pytorch_reference.py` times the same models in PyTorch on the same machine.

use shoal_benches::cpu::{CpuSample, print_since};
use shoal_benches::flags::Flags;
use shoal_datasets::Dataset;
use shoal_models::{
    CNN_IMAGE_SIDE, ModelKind, ModelSpec, TrainConfig, evaluate, gemm_gflops, init_params,
    train_local,
};
use std::time::Instant;

/// The allocator the `shoal` binary runs with, so training here allocates as it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Multiply-adds of one forward pass of one example.
fn forward_macs(spec: &ModelSpec) -> f64 {
    match &spec.kind {
        ModelKind::Cnn => {
            let side = CNN_IMAGE_SIDE as f64;
            let conv1 = side * side * 32.0 * 25.0;
            let conv2 = (side / 2.0) * (side / 2.0) * 64.0 * 32.0 * 25.0;
            let fc = (side / 4.0) * (side / 4.0) * 64.0 * 512.0 + 512.0 * spec.num_classes as f64;
            conv1 + conv2 + fc
        }
        ModelKind::Mlp { hidden } => {
            let mut widths = vec![spec.num_features];
            widths.extend(hidden);
            widths.push(spec.num_classes);
            widths.windows(2).map(|w| (w[0] * w[1]) as f64).sum()
        }
        _ => (spec.num_features * spec.num_classes) as f64,
    }
}

/// `n` examples of `spec`'s shape with values in [0, 1) and labels spread over the classes.
fn synthetic(spec: &ModelSpec, n: usize) -> Dataset {
    let f = spec.num_features;
    let features = (0..n * f)
        .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 1000.0)
        .collect();
    let labels = (0..n).map(|i| (i % spec.num_classes) as u32).collect();
    Dataset {
        features,
        labels,
        num_features: f,
        num_classes: spec.num_classes,
        image_shape: spec.image_shape,
    }
}

/// Examples per second of `jobs` concurrent calls of `work`, each over `examples` examples.
fn rate(jobs: usize, examples: usize, work: impl Fn() + Sync) -> f64 {
    work(); // warm-up: first allocations, thread pools
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(&work);
        }
    });
    (jobs * examples) as f64 / start.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::from_env();
    let quick = flags.has("quick");
    let cpu_start = CpuSample::now().ok();

    let peak = [512, 1024, 2048]
        .into_iter()
        .map(|n| gemm_gflops(n, if quick { 2 } else { 5 }))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .fold(0.0, f64::max);
    println!("single-precision GEMM peak (square matmul, all cores): {peak:.1} GFLOP/s");
    println!();
    println!(
        "{:<22} {:>5} {:>6} {:>12} {:>9} {:>7} {:>12} {:>9} {:>7}",
        "model",
        "batch",
        "task",
        "1 job ex/s",
        "GFLOP/s",
        "% peak",
        "2 jobs ex/s",
        "GFLOP/s",
        "% peak"
    );

    let models = [
        (
            "mlp 64-128-10",
            ModelKind::Mlp { hidden: vec![128] },
            64,
            None,
        ),
        (
            "2nn 784-200-200-10",
            ModelKind::Mlp {
                hidden: vec![200, 200],
            },
            784,
            Some((28, 28)),
        ),
        ("cnn (McMahan)", ModelKind::Cnn, 784, Some((28, 28))),
    ];
    let only: String = flags.get("only", String::new())?;
    for (name, kind, features, image_shape) in models {
        if !name.starts_with(only.as_str()) {
            continue;
        }
        let spec = ModelSpec {
            kind,
            num_features: features,
            num_classes: 10,
            image_shape,
        };
        let is_cnn = spec.kind == ModelKind::Cnn;
        let n = match (is_cnn, quick) {
            (true, true) => 200,
            (true, false) => 1000,
            (false, true) => 2000,
            (false, false) => 10_000,
        };
        let data = synthetic(&spec, n);
        let params = init_params(&spec, 1)?;
        let macs = forward_macs(&spec);
        let row = |batch: String, task: &str, flops_per_example: f64, one: f64, two: f64| {
            let g1 = one * flops_per_example / 1e9;
            let g2 = two * flops_per_example / 1e9;
            println!(
                "{name:<22} {batch:>5} {task:>6} {one:>12.0} {g1:>9.2} {:>6.1}% {two:>12.0} \
                 {g2:>9.2} {:>6.1}%",
                100.0 * g1 / peak,
                100.0 * g2 / peak
            );
        };
        for batch in [10, 32, 50] {
            let cfg = TrainConfig {
                epochs: 1,
                batch_size: batch,
                lr: 0.01,
                seed: 3,
                proximal_mu: 0.0,
                max_steps: 0,
            };
            let work = || {
                if let Err(e) = train_local(&spec, &params, &data, &cfg) {
                    eprintln!("training failed: {e}");
                    std::process::exit(1);
                }
            };
            let (one, two) = (rate(1, n, work), rate(2, n, work));
            row(batch.to_string(), "train", 6.0 * macs, one, two);
        }
        let eval_n = if quick { n } else { 10_000 };
        let eval_data = synthetic(&spec, eval_n);
        let work = || {
            if let Err(e) = evaluate(&spec, &params, &eval_data) {
                eprintln!("evaluation failed: {e}");
                std::process::exit(1);
            }
        };
        let one = rate(1, eval_n, work);
        row("all".into(), "eval", 2.0 * macs, one, rate(2, eval_n, work));
        if eval_n == 10_000 {
            println!(
                "{name}: evaluating 10,000 examples takes {:.2} s",
                1e4 / one
            );
        }
    }
    print_since(cpu_start);
    Ok(())
}
