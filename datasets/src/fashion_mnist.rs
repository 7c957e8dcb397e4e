//! Loading Fashion-MNIST from its four gzipped IDX files.
//!
//! Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017; MIT licence) has 60,000 training and 10,000
//! test greyscale images of 28x28 pixels in 10 clothing classes. Debian and Ubuntu ship it as
//! the `dataset-fashion-mnist` package, which installs it in [`DEFAULT_FASHION_MNIST_DIR`].

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use crate::dataset::{Dataset, Split};
use crate::error::{DatasetError, Result};
use crate::idx::{read_idx_images, read_idx_labels};

/// Where `apt-get install dataset-fashion-mnist` puts the files.
pub const DEFAULT_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's class count (T-shirt/top, trouser, ..., ankle boot).
const NUM_CLASSES: usize = 10;

/// Ceiling on a decompressed file. The real training images are 47 MB; the cap stops a
/// corrupt or malicious archive from expanding until memory runs out.
const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Loads the training set (`train-*`) and the test set (`t10k-*`) from `dir`.
///
/// A missing file yields [`DatasetError::FashionMnistMissing`], whose message names the file
/// and the package to install.
pub fn fashion_mnist(dir: &Path) -> Result<Split> {
    let train = load_part(dir, "train")?;
    let test = load_part(dir, "t10k")?;
    if train.image_shape != test.image_shape {
        return Err(DatasetError::Invalid(format!(
            "fashion-mnist training images are {:?} but test images are {:?}",
            train.image_shape, test.image_shape
        )));
    }
    tracing::debug!(train = train.len(), test = test.len(), dir = %dir.display(), "loaded fashion-mnist");
    Ok(Split { train, test })
}

/// Loads one of the two halves, named by its file prefix.
fn load_part(dir: &Path, prefix: &str) -> Result<Dataset> {
    let images_path = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let labels_path = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let (count, rows, cols, pixels) =
        read_idx_images(&gunzip_file(&images_path)?).map_err(|e| with_path(e, &images_path))?;
    let labels =
        read_idx_labels(&gunzip_file(&labels_path)?).map_err(|e| with_path(e, &labels_path))?;
    if labels.len() != count {
        return Err(DatasetError::Invalid(format!(
            "{} holds {count} images but {} holds {} labels",
            images_path.display(),
            labels_path.display(),
            labels.len()
        )));
    }
    Dataset::new(pixels, labels, rows * cols, NUM_CLASSES, Some((rows, cols)))
}

/// Reads and decompresses a gzip file, bounded by [`MAX_DECOMPRESSED`].
fn gunzip_file(path: &Path) -> Result<Vec<u8>> {
    let compressed = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DatasetError::FashionMnistMissing {
            path: path.to_owned(),
        },
        _ => DatasetError::io(path, e),
    })?;
    let mut out = Vec::with_capacity(size_hint(&compressed));
    GzDecoder::new(compressed.as_slice())
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| DatasetError::Format {
            what: path.display().to_string(),
            message: format!("gzip: {e}"),
        })?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(DatasetError::Format {
            what: path.display().to_string(),
            message: format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
        });
    }
    Ok(out)
}

/// Capacity to reserve for the decompressed bytes, so the 47 MB training images decode
/// without repeated reallocation. The gzip trailer stores the size (mod 2^32); it is only
/// trusted up to what deflate could possibly produce (at most 1032:1) and the global cap.
fn size_hint(compressed: &[u8]) -> usize {
    let Some(trailer) = compressed
        .len()
        .checked_sub(4)
        .and_then(|at| compressed.get(at..))
    else {
        return 0;
    };
    let stated = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as u64;
    let possible = (compressed.len() as u64).saturating_mul(1032);
    stated.min(possible).min(MAX_DECOMPRESSED) as usize
}

/// Replaces the generic "idx image file" label of a format error with the file's path.
fn with_path(err: DatasetError, path: &Path) -> DatasetError {
    match err {
        DatasetError::Format { message, .. } => DatasetError::Format {
            what: path.display().to_string(),
            message,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn missing_files_name_the_file_and_the_package() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let message = fashion_mnist(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("train-images-idx3-ubyte.gz"), "{message}");
        assert!(
            message.contains("apt-get install dataset-fashion-mnist"),
            "{message}"
        );
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"] {
            std::fs::write(dir.path().join(name), b"\x1f\x8b\x08\x00garbage")
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let message = fashion_mnist(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("gzip"), "{message}");
    }

    #[test]
    fn loads_the_installed_dataset() {
        let dir = Path::new(DEFAULT_FASHION_MNIST_DIR);
        if !dir.exists() {
            println!(
                "skipping: {DEFAULT_FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)"
            );
            return;
        }
        let start = Instant::now();
        let split = fashion_mnist(dir).unwrap_or_else(|e| panic!("{e}"));
        println!("fashion-mnist loaded in {:?}", start.elapsed());
        assert_eq!((split.train.len(), split.test.len()), (60_000, 10_000));
        assert_eq!(split.train.num_features, 784);
        assert_eq!(split.train.image_shape, Some((28, 28)));
        assert_eq!(split.train.class_counts(), vec![6_000; 10]);
        assert_eq!(split.test.class_counts(), vec![1_000; 10]);
        let (min, max) = split
            .train
            .features
            .iter()
            .fold((1.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert_eq!((min, max), (0.0, 1.0));
    }
}
