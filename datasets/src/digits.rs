//! The embedded handwritten-digits dataset: small enough to ship inside the binary, so every
//! test, example and quick experiment works offline with no download.
//!
//! Source: the UCI "Optical Recognition of Handwritten Digits" dataset (E. Alpaydin and
//! C. Kaynak, 1998; licensed CC BY 4.0), in the 8x8 form scikit-learn bundles as
//! `load_digits`: 1797 images of the digits 0-9, each an 8x8 grid of counts 0-16, stored here
//! divided by 16 so that features lie in `[0, 1]`. The CSV (header `f0..f63,label`) is kept
//! gzip-compressed in `data/digits.csv.gz` and decoded with the ordinary CSV parser.

use flate2::read::GzDecoder;

use crate::csv_file::parse_csv_named;
use crate::dataset::Dataset;
use crate::error::{DatasetError, Result};

/// The compressed CSV, compiled into the library.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Side of the square images.
const SIDE: usize = 8;

/// Ten digits, even if some subset of rows lacked the largest label.
const NUM_CLASSES: usize = 10;

/// Decodes the embedded digits dataset: 1797 examples, 64 features in `[0, 1]`, 10 classes,
/// image shape 8x8. Takes a few milliseconds.
pub fn digits() -> Result<Dataset> {
    let data = parse_csv_named(GzDecoder::new(DIGITS_CSV_GZ), "embedded digits.csv")?;
    if data.num_features != SIDE * SIDE || data.num_classes > NUM_CLASSES {
        // Only reachable if the embedded file is replaced by a wrong one.
        return Err(DatasetError::Invalid(format!(
            "embedded digits have {} features and {} classes, expected {} and {NUM_CLASSES}",
            data.num_features,
            data.num_classes,
            SIDE * SIDE
        )));
    }
    Dataset::new(
        data.features,
        data.labels,
        SIDE * SIDE,
        NUM_CLASSES,
        Some((SIDE, SIDE)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn digits_load_with_the_documented_shape() {
        let start = Instant::now();
        let data = digits().unwrap_or_else(|e| panic!("{e}"));
        println!("digits decoded in {:?}", start.elapsed());
        assert_eq!(data.len(), 1797);
        assert_eq!(data.num_features, 64);
        assert_eq!(data.num_classes, 10);
        assert_eq!(data.image_shape, Some((8, 8)));
        assert!(data.features.iter().all(|v| (0.0..=1.0).contains(v)));
        // Values are counts out of 16, and every class is present in roughly equal numbers.
        assert!(data.features.contains(&1.0));
        assert!(
            data.class_counts()
                .iter()
                .all(|&c| (170..=190).contains(&c))
        );
        // The first example of the scikit-learn copy is a zero.
        assert_eq!(data.labels[0], 0);
    }
}
