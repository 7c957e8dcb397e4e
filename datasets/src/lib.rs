//! Datasets for Shoal: loading, generating, splitting and partitioning labelled data among
//! federated clients.
//!
//! * Sources ([`DatasetSource`], parsed from command-line strings and loaded by [`load`]):
//!   the embedded [`digits`], [`fashion_mnist`] from its IDX files, any CSV ([`read_csv`]),
//!   and synthetic Gaussian [`blobs`].
//! * [`train_test_split`] holds out a seeded test set when a source has none.
//! * [`partition`] divides a training set among clients, IID or with label skew
//!   ([`Partition`]).
//! * [`rng`] derives every random stream of a run from one seed; all Shoal crates use it.
//!
//! Everything here is deterministic given its seed, and every failure is a [`DatasetError`].

mod blobs;
mod blobs_syntax;
mod csv_file;
mod dataset;
mod digits;
mod error;
mod fashion_mnist;
mod idx;
mod partition;
pub mod rng;
mod source;
mod split;

pub use blobs::{BlobsConfig, MAX_BLOB_VALUES, MAX_CENTER_DRAWS, blobs};
pub use csv_file::{MAX_LABEL, parse_csv, read_csv};
pub use dataset::{Dataset, Split};
pub use digits::digits;
pub use error::{DatasetError, Result};
pub use fashion_mnist::{DEFAULT_FASHION_MNIST_DIR, fashion_mnist};
pub use idx::{read_idx_images, read_idx_labels};
pub use partition::{MAX_DIRICHLET_ATTEMPTS, Partition, partition};
pub use source::{DatasetSource, load};
pub use split::{DEFAULT_TEST_FRACTION, train_test_split};
