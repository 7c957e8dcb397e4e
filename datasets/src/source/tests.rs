//! Tests of dataset source strings and of loading each kind of source.

use super::*;
use proptest::prelude::*;
use std::io::Write;

fn parsed(text: &str) -> DatasetSource {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn parses_every_documented_form() {
    assert_eq!(parsed("digits"), DatasetSource::Digits);
    assert_eq!(
        parsed("fashion-mnist"),
        DatasetSource::FashionMnist {
            dir: PathBuf::from(DEFAULT_FASHION_MNIST_DIR)
        }
    );
    assert_eq!(
        parsed("fashion-mnist:/data/fm"),
        DatasetSource::FashionMnist {
            dir: "/data/fm".into()
        }
    );
    assert_eq!(
        parsed("csv:a.csv"),
        DatasetSource::Csv {
            train: "a.csv".into(),
            test: None
        }
    );
    assert_eq!(
        parsed("csv:a.csv,b.csv"),
        DatasetSource::Csv {
            train: "a.csv".into(),
            test: Some("b.csv".into())
        }
    );
    assert_eq!(
        parsed("blobs"),
        DatasetSource::Blobs(BlobsConfig::default())
    );
    assert_eq!(
        parsed("blobs:3"),
        DatasetSource::Blobs(BlobsConfig {
            centers: 3,
            ..Default::default()
        })
    );
}

#[test]
fn rejects_junk_with_the_valid_forms() {
    for junk in [
        "",
        "mnist",
        "Digits",
        "digits:1",
        "csv",
        "csv:",
        "csv:a,",
        "csv:,b",
        "fashion-mnist:",
        "blobs:zero",
        "blobs:0",
        "shape",
        "shape:64",
        "shape:0,10",
        "shape:64,0",
        "shape:8x,10",
        "shape:x8,10",
        "shape:-1,2",
        ":",
    ] {
        let message = junk
            .parse::<DatasetSource>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("valid forms: digits"),
            "{junk:?}: {message:?}"
        );
    }
}

#[test]
fn string_conversions_used_by_serde_match_display_and_parse() {
    let source = parsed("csv:a,b");
    assert_eq!(String::from(source.clone()), "csv:a,b");
    assert_eq!(
        DatasetSource::try_from("csv:a,b".to_owned()).ok(),
        Some(source)
    );
    assert!(DatasetSource::try_from("nonsense".to_owned()).is_err());
}

proptest! {
    #[test]
    fn display_round_trips(
        kind in 0usize..8,
        path in "[a-zA-Z0-9_./-]{1,20}",
        other in "[a-zA-Z0-9_./-]{1,20}",
        centers in 1usize..50,
        seed in any::<u64>(),
        std in 0.01f32..2.0,
    ) {
        let source = match kind {
            0 => DatasetSource::Digits,
            1 => DatasetSource::FashionMnist { dir: path.into() },
            2 => DatasetSource::Csv { train: path.into(), test: None },
            3 => DatasetSource::Csv { train: path.into(), test: Some(other.into()) },
            4 => DatasetSource::Blobs(BlobsConfig { centers, ..Default::default() }),
            5 => DatasetSource::Shape { features: centers, classes: centers + 1, image: None },
            6 => DatasetSource::Shape { features: centers * 3, classes: 2, image: Some((centers, 3)) },
            _ => DatasetSource::Blobs(BlobsConfig { centers, seed, cluster_std: std, ..Default::default() }),
        };
        let text = source.to_string();
        prop_assert_eq!(text.parse::<DatasetSource>().ok(), Some(source), "{}", text);
    }
}

#[test]
fn a_shape_holds_no_examples_only_their_size() {
    assert_eq!(
        parsed("shape:28x28,10"),
        DatasetSource::Shape {
            features: 784,
            classes: 10,
            image: Some((28, 28))
        }
    );
    let source = parsed("shape:64,10");
    assert!(!source.holds_examples());
    assert!(DatasetSource::Digits.holds_examples());
    let split = load(&source, 0.2, 0).unwrap_or_else(|e| panic!("{e}"));
    assert!(split.train.is_empty() && split.test.is_empty());
    assert_eq!((split.train.num_features, split.test.num_classes), (64, 10));
}

#[test]
fn load_splits_digits_and_blobs_reproducibly() {
    let a = load(&DatasetSource::Digits, 0.2, 1).unwrap_or_else(|e| panic!("{e}"));
    let b = load(&DatasetSource::Digits, 0.2, 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b);
    assert_eq!((a.train.len(), a.test.len()), (1438, 359));
    assert_eq!(a.test.image_shape, Some((8, 8)));
    let blobs = load(&parsed("blobs:4"), 0.25, 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (blobs.train.len(), blobs.test.len(), blobs.train.num_classes),
        (1500, 500, 4)
    );
}

#[test]
fn load_csv_pairs_and_single_files() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        file.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        path
    };
    let train = write("train.csv", "x,y,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n");
    let test = write("test.csv", "1,1,2\n");
    let narrow = write("narrow.csv", "1,0\n");

    let pair = load(
        &DatasetSource::Csv {
            train: train.clone(),
            test: Some(test),
        },
        0.5,
        0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((pair.train.len(), pair.test.len()), (4, 1));
    assert_eq!((pair.train.num_classes, pair.test.num_classes), (3, 3));

    let single = load(
        &DatasetSource::Csv {
            train: train.clone(),
            test: None,
        },
        0.5,
        0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((single.train.len(), single.test.len()), (2, 2));

    let mismatch = load(
        &DatasetSource::Csv {
            train,
            test: Some(narrow),
        },
        0.5,
        0,
    );
    assert!(
        mismatch
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("features")
    );
}
