//! Centralised k-means++ Lloyd on a dataset's training split: the reference the federated
//! k-means numbers in the README are compared with.
//! `cargo run --release -p shoal-coordinator --example kmeans_central [-- DATASET K]`

use shoal_datasets::{DatasetSource, load};
use shoal_models::kmeans::{ari, kmeans_pp, lloyd, nmi};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let source: DatasetSource = args.get(1).map_or("digits", String::as_str).parse()?;
    let k: usize = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let train = load(&source, 0.2, 0)?.train;
    let dim = train.num_features;
    let weights = vec![1.0; train.len()];
    println!("seed  inertia      nmi    ari");
    for seed in 0..5 {
        let init = kmeans_pp(&train.features, &weights, dim, k, seed)?;
        let (centroids, _, inertia) = lloyd(&train.features, &weights, dim, &init, 300, 0.0)?;
        let assigned: Vec<u32> = (0..train.len())
            .map(|i| {
                let row = train.row(i);
                (0..k)
                    .min_by(|&a, &b| {
                        let d = |j: usize| -> f64 {
                            row.iter()
                                .zip(&centroids[j * dim..(j + 1) * dim])
                                .map(|(x, c)| f64::from(x - c).powi(2))
                                .sum()
                        };
                        d(a).total_cmp(&d(b))
                    })
                    .unwrap_or(0) as u32
            })
            .collect();
        println!(
            "{seed:>4}  {inertia:>9.2}  {:.3}  {:.3}",
            nmi(&assigned, &train.labels),
            ari(&assigned, &train.labels)
        );
    }
    Ok(())
}
