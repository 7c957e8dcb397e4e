//! `--name value` flags for the bench binaries: enough to change a size or a seed.

use std::str::FromStr;

/// A flag without its value, or with one that does not parse: a real error type, so a bench's
/// `main` passes it on with `?`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(String);

/// The command line's `--name value` pairs.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    args: Vec<String>,
}

impl Flags {
    /// The flags of this process.
    pub fn from_env() -> Self {
        Self::new(std::env::args().skip(1))
    }

    /// Flags from `args` (without the program name).
    pub fn new(args: impl IntoIterator<Item = String>) -> Self {
        Self {
            args: args.into_iter().collect(),
        }
    }

    /// True if `--name` appears, with or without a value.
    pub fn has(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == &format!("--{name}"))
    }

    /// The value after `--name`, or `default` if absent; an error names a bad value.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, FlagError> {
        let flag = format!("--{name}");
        match self.args.iter().position(|a| a == &flag) {
            None => Ok(default),
            Some(i) => {
                let raw = self
                    .args
                    .get(i + 1)
                    .ok_or_else(|| FlagError(format!("{flag} needs a value")))?;
                raw.parse()
                    .map_err(|_| FlagError(format!("{flag}: cannot parse {raw:?}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_and_defaults() {
        let f = Flags::new(["--rounds", "7", "--quick"].map(String::from));
        assert_eq!(f.get("rounds", 10u32), Ok(7));
        assert_eq!(f.get("seed", 3u64), Ok(3));
        assert!(f.has("quick"));
        assert!(f.get::<u32>("quick", 1).is_err());
    }
}
