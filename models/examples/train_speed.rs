//! Ad-hoc throughput probe (temporary).
use shoal_models::*;
use std::time::Instant;
fn main() {
    let data = shoal_datasets::digits().unwrap();
    let spec = ModelSpec::for_dataset(ModelKind::Mlp { hidden: vec![128] }, &data);
    let params = init_params(&spec, 1).unwrap();
    let cfg = TrainConfig { epochs: 1, batch_size: 32, lr: 0.1, seed: 3 };
    let _ = train_local(&spec, &params, &data, &cfg).unwrap();
    let ep: usize = std::env::var("EP").ok().and_then(|s| s.parse().ok()).unwrap_or(10); let cfg = TrainConfig { epochs: ep, ..cfg };
    let t = Instant::now();
    let (p, r) = train_local(&spec, &params, &data, &cfg).unwrap();
    let dt = t.elapsed().as_secs_f64();
    println!("{:?} {:.0} samples/s", r, (ep * data.len()) as f64 / dt);
    let t = Instant::now();
    let e = evaluate(&spec, &p, &data).unwrap();
    println!("eval {:?} in {:?}", e, t.elapsed());
    let t = Instant::now();
    let g = gradient(&spec, &p, &data, 0, 256, 0).unwrap();
    println!("grad loss {} in {:?}", g.1.loss, t.elapsed());
}
