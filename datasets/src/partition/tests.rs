//! Tests of the partition schemes and their string forms.

use super::*;
use crate::digits::digits;
use proptest::prelude::*;

fn run(
    labels: &[u32],
    classes: usize,
    clients: usize,
    scheme: Partition,
    seed: u64,
) -> Vec<Vec<usize>> {
    partition(labels, classes, clients, &scheme, seed).unwrap_or_else(|e| panic!("{scheme}: {e}"))
}

/// Asserts that the parts are sorted, non-empty, and together hold each of `0..n` once.
fn assert_exact_cover(parts: &[Vec<usize>], n: usize) -> std::result::Result<(), TestCaseError> {
    let mut seen = vec![0u32; n];
    for part in parts {
        prop_assert!(!part.is_empty(), "empty client");
        prop_assert!(part.windows(2).all(|w| w[0] < w[1]), "unsorted client");
        for &i in part {
            prop_assert!(i < n);
            seen[i] += 1;
        }
    }
    prop_assert!(
        seen.iter().all(|&c| c == 1),
        "an example is missing or repeated"
    );
    Ok(())
}

/// Mean over clients of the fraction of its examples in its most common class.
fn mean_majority_fraction(labels: &[u32], parts: &[Vec<usize>], classes: usize) -> f64 {
    let total: f64 = parts
        .iter()
        .map(|part| {
            let mut counts = vec![0usize; classes];
            part.iter().for_each(|&i| counts[labels[i] as usize] += 1);
            counts.iter().max().copied().unwrap_or(0) as f64 / part.len() as f64
        })
        .sum();
    total / parts.len() as f64
}

fn digit_labels() -> Vec<u32> {
    digits().unwrap_or_else(|e| panic!("{e}")).labels
}

proptest! {
    #[test]
    fn every_scheme_assigns_each_example_exactly_once(
        labels in prop::collection::vec(0u32..5, 40..400),
        clients in 1usize..8,
        seed in any::<u64>(),
        per_client in 1usize..4,
        alpha in prop::sample::select(vec![0.5, 1.0, 10.0, 1000.0]),
    ) {
        let n = labels.len();
        for scheme in [Partition::Iid, Partition::Shards { per_client }, Partition::Dirichlet { alpha }] {
            let parts = partition(&labels, 5, clients, &scheme, seed)
                .map_err(|e| TestCaseError::fail(format!("{scheme}: {e}")))?;
            prop_assert_eq!(parts.len(), clients);
            assert_exact_cover(&parts, n)?;
        }
        let iid = run(&labels, 5, clients, Partition::Iid, seed);
        let sizes: Vec<usize> = iid.iter().map(Vec::len).collect();
        prop_assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1);
    }

    #[test]
    fn display_round_trips(alpha in 1e-6f64..1e6, per_client in 1usize..1000, which in 0usize..3) {
        let scheme = [Partition::Iid, Partition::Dirichlet { alpha }, Partition::Shards { per_client }][which];
        prop_assert_eq!(scheme.to_string().parse::<Partition>().ok(), Some(scheme));
    }
}

#[test]
fn same_seed_same_partition_different_seed_different() {
    let labels = digit_labels();
    for scheme in [
        Partition::Iid,
        Partition::Dirichlet { alpha: 0.5 },
        Partition::Shards { per_client: 2 },
    ] {
        let a = run(&labels, 10, 10, scheme, 1);
        assert_eq!(a, run(&labels, 10, 10, scheme, 1), "{scheme}");
        assert_ne!(a, run(&labels, 10, 10, scheme, 2), "{scheme}");
    }
}

#[test]
fn dirichlet_alpha_controls_label_skew() {
    let labels = digit_labels();
    let average = |scheme: Partition| -> f64 {
        (0..5)
            .map(|seed| mean_majority_fraction(&labels, &run(&labels, 10, 10, scheme, seed), 10))
            .sum::<f64>()
            / 5.0
    };
    let iid = average(Partition::Iid);
    let skewed = average(Partition::Dirichlet { alpha: 0.1 });
    let smooth = average(Partition::Dirichlet { alpha: 100.0 });
    println!(
        "mean majority-class fraction: iid {iid:.3}, dir(0.1) {skewed:.3}, dir(100) {smooth:.3}"
    );
    // IID clients look like the whole set: about 1/10 of each class.
    assert!(iid < 0.16, "iid {iid}");
    assert!(skewed > 0.5, "dirichlet(0.1) {skewed}");
    assert!(
        smooth < 0.2 && (smooth - iid).abs() < 0.05,
        "dirichlet(100) {smooth} vs iid {iid}"
    );
}

#[test]
fn two_shards_give_few_labels_per_client() {
    let labels = digit_labels();
    let distinct = |part: &Vec<usize>| {
        let mut seen: Vec<u32> = part.iter().map(|&i| labels[i]).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    };
    for seed in 0..5 {
        let parts = run(&labels, 10, 10, Partition::Shards { per_client: 2 }, seed);
        // Each shard (about 90 examples) lies within one class of about 180, or straddles
        // one class boundary; so two shards span at most 4 labels.
        assert!(parts.iter().all(|p| distinct(p) <= 4));
        let mean = parts.iter().map(distinct).sum::<usize>() as f64 / parts.len() as f64;
        assert!(mean <= 3.0, "seed {seed}: mean {mean} labels per client");
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|&s| (178..=180).contains(&s)), "{sizes:?}");
    }
    let iid = run(&labels, 10, 10, Partition::Iid, 0);
    assert!(iid.iter().all(|p| distinct(p) == 10));
}

#[test]
fn impossible_requests_are_errors() {
    let labels = [0u32, 1, 0, 1, 2, 2];
    let cases = [
        (
            partition(&labels, 3, 0, &Partition::Iid, 0),
            "at least one client",
        ),
        (
            partition(&labels, 3, 7, &Partition::Iid, 0),
            "only 6 examples",
        ),
        (
            partition(&labels, 2, 2, &Partition::Iid, 0),
            "not below num_classes",
        ),
        (
            partition(&labels, 3, 2, &Partition::Shards { per_client: 4 }, 0),
            "cannot fill",
        ),
        (
            partition(
                &labels,
                3,
                2,
                &Partition::Shards {
                    per_client: usize::MAX,
                },
                0,
            ),
            "cannot fill",
        ),
        (
            partition(&labels, 3, 2, &Partition::Shards { per_client: 0 }, 0),
            "at least 1",
        ),
        (
            partition(&labels, 3, 2, &Partition::Dirichlet { alpha: -1.0 }, 0),
            "alpha",
        ),
    ];
    for (i, (result, needle)) in cases.into_iter().enumerate() {
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains(needle),
            "case {i}: {message:?} lacks {needle:?}"
        );
    }
    // One class and a tiny alpha concentrate everything on one client every time.
    let one_class = vec![0u32; 100];
    let message = partition(&one_class, 1, 50, &Partition::Dirichlet { alpha: 0.01 }, 0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains("too many clients"), "{message}");
}

#[test]
fn vanishing_alpha_still_partitions() {
    // Gammas underflow to zero here; the one-hot fallback must still cover every example.
    let labels: Vec<u32> = (0..200).map(|i| i % 20).collect();
    let parts = run(&labels, 20, 2, Partition::Dirichlet { alpha: 1e-300 }, 3);
    assert_exact_cover(&parts, 200).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn parse_accepts_the_documented_forms_and_rejects_junk() {
    assert_eq!("iid".parse::<Partition>().ok(), Some(Partition::Iid));
    assert_eq!(
        "dirichlet:0.3".parse::<Partition>().ok(),
        Some(Partition::Dirichlet { alpha: 0.3 })
    );
    assert_eq!(
        "shards:2".parse::<Partition>().ok(),
        Some(Partition::Shards { per_client: 2 })
    );
    assert_eq!(
        Partition::Dirichlet { alpha: 100.0 }.to_string(),
        "dirichlet:100"
    );
    for junk in [
        "",
        "IID",
        "iid:1",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:x",
        "shards",
        "shards:0",
        "shards:-2",
        "shards:1.5",
        "random",
    ] {
        let message = junk
            .parse::<Partition>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("valid forms: iid"),
            "{junk:?}: {message:?}"
        );
    }
    assert_eq!(
        String::from(Partition::Shards { per_client: 3 }),
        "shards:3"
    );
    assert!(Partition::try_from("shards:0".to_owned()).is_err());
}
