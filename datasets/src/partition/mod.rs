//! Dividing a training set among federated clients.
//!
//! Three schemes, the standard ones of the federated-learning literature, one per file:
//!
//! * [`Partition::Iid`] (`iid`): a seeded shuffle cut into near-equal parts; every client sees
//!   the global label distribution.
//! * [`Partition::Dirichlet`] (`dirichlet:ALPHA`): per class, client shares drawn from a
//!   symmetric Dirichlet(ALPHA) (Hsu, Qi & Brown, 2019); small ALPHA gives strong label skew,
//!   large ALPHA approaches IID.
//! * [`Partition::Shards`] (`shards:N`): sort by label, cut into equal shards, deal N shards
//!   to each client (McMahan et al., 2017); each client sees only a few labels.
//!
//! [`partition`] is a pure function of its arguments: the same labels, scheme and seed give
//! the same partition on every machine.

mod dirichlet;
mod iid;
mod shards;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::rng::{self, purpose};

pub use dirichlet::MAX_DIRICHLET_ATTEMPTS;

/// The accepted forms, quoted in every parse error.
const PARTITION_FORMS: &str =
    "iid, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.3), shards:N (N >= 1)";

/// How the training set is divided among clients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Partition {
    /// Uniformly at random (`iid`): a seeded shuffle cut into contiguous chunks whose sizes
    /// differ by at most one.
    Iid,
    /// Label skew (`dirichlet:ALPHA`): for each class, client shares are drawn from a
    /// symmetric Dirichlet(alpha) and the class's shuffled examples are cut in those
    /// proportions. A draw that leaves a client empty is redrawn, up to
    /// [`MAX_DIRICHLET_ATTEMPTS`] times.
    Dirichlet {
        /// Concentration; must be finite and positive. 0.1 is very skewed, 100 nearly IID.
        alpha: f64,
    },
    /// Label-sorted shards (`shards:N`): examples sorted by label (ties by index) are cut into
    /// `num_clients * per_client` near-equal shards, and each client is dealt `per_client`
    /// shards chosen by a seeded shuffle.
    Shards {
        /// Shards dealt to each client; must be at least 1.
        per_client: usize,
    },
}

impl Partition {
    /// Checks the scheme's parameter.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Partition::Dirichlet { alpha } if !(alpha > 0.0 && alpha.is_finite()) => Err(
                DatasetError::Invalid(format!("dirichlet alpha {alpha} must be finite and > 0")),
            ),
            Partition::Shards { per_client: 0 } => Err(DatasetError::Invalid(
                "shards per client must be at least 1".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl FromStr for Partition {
    type Err = DatasetError;

    fn from_str(input: &str) -> Result<Self> {
        let reject = |reason: String| DatasetError::Syntax {
            kind: "partition",
            input: input.to_owned(),
            reason,
            expected: PARTITION_FORMS,
        };
        let scheme = match input.split_once(':') {
            None if input == "iid" => Partition::Iid,
            Some(("dirichlet", alpha)) => Partition::Dirichlet {
                alpha: alpha
                    .parse()
                    .map_err(|_| reject(format!("{alpha:?} is not a number")))?,
            },
            Some(("shards", count)) => Partition::Shards {
                per_client: count
                    .parse()
                    .map_err(|_| reject(format!("{count:?} is not a whole number")))?,
            },
            _ => return Err(reject("unknown scheme".into())),
        };
        scheme.validate().map_err(|e| reject(e.to_string()))?;
        Ok(scheme)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Iid => f.write_str("iid"),
            // `{}` on f64 prints the shortest text that parses back to the same value.
            Partition::Dirichlet { alpha } => write!(f, "dirichlet:{alpha}"),
            Partition::Shards { per_client } => write!(f, "shards:{per_client}"),
        }
    }
}

impl TryFrom<String> for Partition {
    type Error = DatasetError;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Partition> for String {
    fn from(scheme: Partition) -> String {
        scheme.to_string()
    }
}

/// Divides examples (given by their labels) among `num_clients` clients.
///
/// Returns, for each client, the sorted indices of its examples; every index in
/// `0..labels.len()` appears exactly once overall and every client gets at least one.
///
/// Fails when `num_clients` is zero or exceeds the number of examples, when a label is not
/// below `num_classes`, or when the scheme's parameter is invalid; for
/// [`Partition::Shards`] when there are fewer examples than `num_clients * per_client`; and
/// for [`Partition::Dirichlet`] when [`MAX_DIRICHLET_ATTEMPTS`] successive draws each leave
/// some client empty, which means too many clients for the data at this alpha.
pub fn partition(
    labels: &[u32],
    num_classes: usize,
    num_clients: usize,
    scheme: &Partition,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    let fail = |m: String| Err(DatasetError::Partition(m));
    if num_clients == 0 {
        return fail("need at least one client".into());
    }
    if num_clients > labels.len() {
        return fail(format!(
            "{num_clients} clients but only {} examples; every client needs at least one",
            labels.len()
        ));
    }
    if let Some((i, label)) = labels
        .iter()
        .enumerate()
        .find(|(_, label)| **label as usize >= num_classes)
    {
        return fail(format!(
            "label {label} of example {i} is not below num_classes {num_classes}"
        ));
    }
    scheme.validate()?;

    let mut rng = rng::rng_for(seed, &[purpose::PARTITION]);
    let mut clients = match *scheme {
        Partition::Iid => iid::split(labels.len(), num_clients, &mut rng),
        Partition::Dirichlet { alpha } => {
            dirichlet::split(labels, num_classes, num_clients, alpha, &mut rng)?
        }
        Partition::Shards { per_client } => {
            shards::split(labels, num_clients, per_client, &mut rng)?
        }
    };
    for indices in &mut clients {
        indices.sort_unstable();
    }
    Ok(clients)
}
