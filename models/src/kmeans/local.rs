//! The client step of k-FED: cluster the local data into a few centres and report them with
//! their sizes.

use shoal_datasets::Dataset;

use super::{kmeans_pp, lloyd};
use crate::error::{ModelError, Result};

/// Lloyd iterations after seeding in [`local_kmeans`].
pub const LOCAL_KMEANS_ITERS: usize = 50;

/// Clusters the examples of `data` into `local_k` groups with k-means++ seeding (seeded by
/// `seed`) and up to [`LOCAL_KMEANS_ITERS`] Lloyd iterations (stopping early at a fixed
/// point), and returns the non-empty centres (`m x num_features` row-major, `m <= local_k`)
/// with the number of points in each.
///
/// `local_k` is clamped to the number of examples, so a client with fewer points than
/// `local_k` returns at most one centre per point; an empty dataset returns no centres.
/// Errors when `local_k == 0` or on malformed data.
pub fn local_kmeans(data: &Dataset, local_k: usize, seed: u64) -> Result<(Vec<f32>, Vec<u64>)> {
    if local_k == 0 {
        return Err(ModelError::KMeans("local_k must be positive".into()));
    }
    let dim = data.num_features;
    let n = data.labels.len();
    if Some(data.features.len()) != n.checked_mul(dim) {
        return Err(ModelError::KMeans(
            "dataset features do not match its labels".into(),
        ));
    }
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let k = local_k.min(n);
    let weights = vec![1.0; n];
    let init = kmeans_pp(&data.features, &weights, dim, k, seed)?;
    let (centres, sizes, _) = lloyd(
        &data.features,
        &weights,
        dim,
        &init,
        LOCAL_KMEANS_ITERS,
        0.0,
    )?;
    let mut kept = Vec::with_capacity(centres.len());
    let mut counts = Vec::with_capacity(sizes.len());
    for (centre, &size) in centres.chunks_exact(dim).zip(&sizes) {
        if size > 0.0 {
            kept.extend_from_slice(centre);
            counts.push(size.round() as u64);
        }
    }
    Ok((kept, counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::{ari, lloyd_stats, nmi};
    use shoal_datasets::{BlobsConfig, blobs};

    fn separated_blobs() -> Dataset {
        blobs(&BlobsConfig {
            samples: 400,
            features: 3,
            centers: 4,
            cluster_std: 0.5,
            center_box: 20.0,
            seed: 5,
        })
        .unwrap()
    }

    #[test]
    fn local_kmeans_finds_well_separated_blobs() {
        let data = separated_blobs();
        let (centres, counts) = local_kmeans(&data, 4, 1).unwrap();
        assert_eq!(centres.len(), 4 * 3);
        assert_eq!(counts.iter().sum::<u64>(), 400);
        let stats = lloyd_stats(&centres, 4, &data).unwrap();
        assert_eq!(stats.counts, counts);
        let assigned: Vec<u32> = (0..data.len())
            .map(|i| crate::kmeans::nearest(data.row(i), &centres, 3).0 as u32)
            .collect();
        assert!((nmi(&assigned, &data.labels) - 1.0).abs() < 1e-12);
        assert!((ari(&assigned, &data.labels) - 1.0).abs() < 1e-12);
        let table_ari = crate::kmeans::ari_from_contingency(&stats.label_counts, 4, 4);
        assert!((table_ari - 1.0).abs() < 1e-12);
        assert_eq!(local_kmeans(&data, 4, 1).unwrap(), (centres, counts));
    }

    #[test]
    fn local_k_is_clamped_and_empty_centres_dropped() {
        let data = Dataset::new(
            vec![0.0, 0.0, 5.0, 5.0, 5.0, 5.0],
            vec![0, 1, 1],
            2,
            2,
            None,
        )
        .unwrap();
        let (centres, counts) = local_kmeans(&data, 10, 0).unwrap();
        assert_eq!(counts.iter().sum::<u64>(), 3);
        assert_eq!(centres.len(), counts.len() * 2);
        assert!(counts.len() <= 3 && counts.iter().all(|&c| c > 0));
        let empty = data.subset(&[]).unwrap();
        assert_eq!(local_kmeans(&empty, 3, 0).unwrap(), (vec![], vec![]));
        assert!(local_kmeans(&data, 0, 0).is_err());
    }
}
