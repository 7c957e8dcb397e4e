//! Naming a dataset on the command line or in a config file, and loading it as a train/test
//! split.
//!
//! | string                     | meaning                                               |
//! |----------------------------|-------------------------------------------------------|
//! | `digits`                   | the embedded 8x8 digits                               |
//! | `fashion-mnist`            | Fashion-MNIST in [`DEFAULT_FASHION_MNIST_DIR`]          |
//! | `fashion-mnist:DIR`        | Fashion-MNIST in `DIR`                                |
//! | `csv:PATH`                 | one CSV file, split with the test fraction            |
//! | `csv:TRAIN,TEST`           | separate training and test CSV files                  |
//! | `blobs`                    | Gaussian blobs with [`BlobsConfig::default`]          |
//! | `blobs:CENTERS`            | the default blobs with another number of centres      |
//! | `blobs:KEY=VALUE,...`      | keys `samples features centers std box seed`          |
//! | `shape:FEATURES,CLASSES`   | no examples, only their shape (a coordinator's)       |
//! | `shape:ROWSxCOLS,CLASSES`  | the same for single-channel images                    |
//!
//! The first `,` after `csv:` separates the two paths, so a training path cannot itself
//! contain a comma. [`Display`](std::fmt::Display) prints the shortest form that parses back
//! to the same value.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::blobs::{BlobsConfig, blobs};
use crate::blobs_syntax::{format_blobs, parse_blobs};
use crate::csv_file::read_csv;
use crate::dataset::{Dataset, Split};
use crate::digits::digits;
use crate::error::{DatasetError, Result};
use crate::fashion_mnist::{DEFAULT_FASHION_MNIST_DIR, fashion_mnist};
use crate::split::train_test_split;

/// The accepted forms, quoted in every parse error.
pub(crate) const SOURCE_FORMS: &str = "digits, fashion-mnist, fashion-mnist:DIR, csv:PATH, \
     csv:TRAIN,TEST, blobs, blobs:CENTERS, blobs:samples=N,features=N,centers=N,std=X,box=X,seed=N, \
     shape:FEATURES,CLASSES, shape:ROWSxCOLS,CLASSES";

/// Where a dataset comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DatasetSource {
    /// The embedded 8x8 digits (`digits`).
    Digits,
    /// Fashion-MNIST read from a directory (`fashion-mnist` or `fashion-mnist:DIR`).
    FashionMnist {
        /// Directory holding the four `*-ubyte.gz` files.
        dir: PathBuf,
    },
    /// CSV files (`csv:PATH` or `csv:TRAIN,TEST`).
    Csv {
        /// The training file, or the only file.
        train: PathBuf,
        /// A separate test file; without it the training file is split.
        test: Option<PathBuf>,
    },
    /// Synthetic Gaussian blobs (`blobs`, `blobs:CENTERS`, `blobs:KEY=VALUE,...`).
    Blobs(BlobsConfig),
    /// No examples at all, only the shape clients' examples have (`shape:FEATURES,CLASSES` or
    /// `shape:ROWSxCOLS,CLASSES`): what a coordinator that never sees data needs to announce
    /// the model its clients build.
    Shape {
        /// Values per example.
        features: usize,
        /// Number of classes.
        classes: usize,
        /// `(rows, cols)` when each example is an image.
        image: Option<(usize, usize)>,
    },
}

impl DatasetSource {
    /// Whether loading this source gives examples (every source but `shape:`).
    pub fn holds_examples(&self) -> bool {
        !matches!(self, DatasetSource::Shape { .. })
    }
}

impl FromStr for DatasetSource {
    type Err = DatasetError;

    fn from_str(input: &str) -> Result<Self> {
        let reject = |reason: &str| DatasetError::Syntax {
            kind: "dataset source",
            input: input.to_owned(),
            reason: reason.to_owned(),
            expected: SOURCE_FORMS,
        };
        let (kind, arg) = match input.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (input, None),
        };
        match (kind, arg) {
            ("digits", None) => Ok(DatasetSource::Digits),
            ("fashion-mnist", None) => Ok(DatasetSource::FashionMnist {
                dir: PathBuf::from(DEFAULT_FASHION_MNIST_DIR),
            }),
            ("fashion-mnist", Some(dir)) if !dir.is_empty() => Ok(DatasetSource::FashionMnist {
                dir: PathBuf::from(dir),
            }),
            ("csv", Some(paths)) => {
                let (train, test) = match paths.split_once(',') {
                    Some((train, test)) => (train, Some(test)),
                    None => (paths, None),
                };
                if train.is_empty() || test.is_some_and(str::is_empty) {
                    return Err(reject("empty path"));
                }
                Ok(DatasetSource::Csv {
                    train: PathBuf::from(train),
                    test: test.map(PathBuf::from),
                })
            }
            ("blobs", None) => Ok(DatasetSource::Blobs(BlobsConfig::default())),
            ("blobs", Some(args)) => parse_blobs(args)
                .map(DatasetSource::Blobs)
                .map_err(|reason| reject(&reason)),
            ("shape", Some(args)) => parse_shape(args).map_err(|reason| reject(&reason)),
            ("digits" | "fashion-mnist" | "csv" | "shape", _) => {
                Err(reject("missing or unexpected argument"))
            }
            _ => Err(reject("unknown dataset")),
        }
    }
}

impl fmt::Display for DatasetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSource::Digits => f.write_str("digits"),
            DatasetSource::FashionMnist { dir } if dir.as_os_str() == DEFAULT_FASHION_MNIST_DIR => {
                f.write_str("fashion-mnist")
            }
            DatasetSource::FashionMnist { dir } => write!(f, "fashion-mnist:{}", dir.display()),
            DatasetSource::Csv { train, test: None } => write!(f, "csv:{}", train.display()),
            DatasetSource::Csv {
                train,
                test: Some(test),
            } => write!(f, "csv:{},{}", train.display(), test.display()),
            DatasetSource::Blobs(cfg) => f.write_str(&format_blobs(cfg)),
            DatasetSource::Shape {
                image: Some((rows, cols)),
                classes,
                ..
            } => write!(f, "shape:{rows}x{cols},{classes}"),
            DatasetSource::Shape {
                features, classes, ..
            } => write!(f, "shape:{features},{classes}"),
        }
    }
}

impl TryFrom<String> for DatasetSource {
    type Error = DatasetError;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DatasetSource> for String {
    fn from(source: DatasetSource) -> String {
        source.to_string()
    }
}

/// Loads `source` as a train/test split.
///
/// Fashion-MNIST and `csv:TRAIN,TEST` have their own test sets and ignore `test_fraction`;
/// the other sources are split by [`train_test_split`] with `test_fraction` and `seed`.
pub fn load(source: &DatasetSource, test_fraction: f64, seed: u64) -> Result<Split> {
    let split = match source {
        DatasetSource::Digits => train_test_split(&digits()?, test_fraction, seed)?,
        DatasetSource::FashionMnist { dir } => fashion_mnist(dir)?,
        DatasetSource::Csv { train, test: None } => {
            train_test_split(&read_csv(train)?, test_fraction, seed)?
        }
        DatasetSource::Csv {
            train,
            test: Some(test),
        } => join_csv(read_csv(train)?, read_csv(test)?)?,
        DatasetSource::Blobs(cfg) => train_test_split(&blobs(cfg)?, test_fraction, seed)?,
        DatasetSource::Shape {
            features,
            classes,
            image,
        } => {
            let none = Dataset::new(Vec::new(), Vec::new(), *features, *classes, *image)?;
            Split {
                train: none.clone(),
                test: none,
            }
        }
    };
    tracing::debug!(
        %source,
        train = split.train.len(),
        test = split.test.len(),
        features = split.train.num_features,
        classes = split.train.num_classes,
        "loaded dataset"
    );
    Ok(split)
}

/// Parses the `FEATURES,CLASSES` or `ROWSxCOLS,CLASSES` of `shape:`.
fn parse_shape(args: &str) -> std::result::Result<DatasetSource, String> {
    let count = |text: &str, what: &str| match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{what} must be a positive whole number, got {text:?}"
        )),
    };
    let (size, classes) = args
        .split_once(',')
        .ok_or_else(|| "expected FEATURES,CLASSES or ROWSxCOLS,CLASSES".to_owned())?;
    let classes = count(classes, "the number of classes")?;
    let (features, image) = match size.split_once('x') {
        Some((rows, cols)) => {
            let (rows, cols) = (count(rows, "rows")?, count(cols, "columns")?);
            let features = rows
                .checked_mul(cols)
                .ok_or_else(|| format!("{rows}x{cols} features are too many"))?;
            (features, Some((rows, cols)))
        }
        None => (count(size, "the number of features")?, None),
    };
    Ok(DatasetSource::Shape {
        features,
        classes,
        image,
    })
}

/// Pairs separately read train and test CSVs, giving both the larger class count so a model
/// sized for one can score the other.
fn join_csv(mut train: Dataset, mut test: Dataset) -> Result<Split> {
    if train.num_features != test.num_features {
        return Err(DatasetError::Invalid(format!(
            "the training csv has {} features but the test csv has {}",
            train.num_features, test.num_features
        )));
    }
    if test.num_classes > train.num_classes {
        tracing::warn!(
            train_classes = train.num_classes,
            test_classes = test.num_classes,
            "test csv has labels never seen in training"
        );
    }
    let classes = train.num_classes.max(test.num_classes);
    train.num_classes = classes;
    test.num_classes = classes;
    Ok(Split { train, test })
}

#[cfg(test)]
mod tests;
