//! The one error type of this crate and its `Result` alias.
//!
//! Variants are grouped by what the caller can do about them: a missing or unreadable file
//! (fix the path or install the data), a malformed input (fix the file), a bad argument
//! (fix the call or the command line), or a partition that cannot be made with these numbers.

use std::path::PathBuf;

/// Everything that can go wrong while loading, generating, splitting or partitioning data.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file could not be opened or read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },

    /// A Fashion-MNIST file is absent, which almost always means the package is not installed.
    #[error(
        "fashion-mnist file {} not found: install it with `apt-get install dataset-fashion-mnist` \
         or point to a copy with fashion-mnist:DIR",
        path.display()
    )]
    FashionMnistMissing {
        /// The file that was looked for.
        path: PathBuf,
    },

    /// A text input (CSV) holds a value that cannot be used; `line` is 1-based.
    #[error("{origin}:{line}: {message}")]
    Parse {
        /// Where the text came from: a path, or a description such as "csv input".
        origin: String,
        /// The 1-based line of the offending record.
        line: u64,
        /// What is wrong with it.
        message: String,
    },

    /// A binary input (IDX or gzip) is malformed.
    #[error("malformed {what}: {message}")]
    Format {
        /// Which input: a path or a format name.
        what: String,
        /// What is wrong with it.
        message: String,
    },

    /// A command-line or config string does not name a valid dataset source or partition.
    #[error("invalid {kind} {input:?}: {reason}; valid forms: {expected}")]
    Syntax {
        /// What was being parsed ("dataset source", "partition").
        kind: &'static str,
        /// The string as given.
        input: String,
        /// Why it was rejected.
        reason: String,
        /// The accepted forms, so the message alone tells the user how to fix it.
        expected: &'static str,
    },

    /// Arguments or data break an invariant (lengths, label range, finite values, fractions).
    #[error("{0}")]
    Invalid(String),

    /// The examples cannot be divided among the clients as asked.
    #[error("cannot partition: {0}")]
    Partition(String),
}

/// Shorthand used by every fallible function in this crate.
pub type Result<T> = std::result::Result<T, DatasetError>;

impl DatasetError {
    /// Wraps an I/O error together with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DatasetError::Io {
            path: path.into(),
            source,
        }
    }
}
