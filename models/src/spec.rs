//! What model to build: the architecture ([`ModelKind`]) and the sizes it is built for
//! ([`ModelSpec`]).
//!
//! Kinds have a short text form used on command lines and in configuration files:
//! `logreg`, `mlp` (one hidden layer of 128), `mlp:256,128` (hidden widths) and `cnn`
//! (the McMahan et al. 2017 MNIST CNN).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use shoal_datasets::Dataset;

use crate::error::{ModelError, Result};

/// Hidden width used by a bare `"mlp"`.
pub const DEFAULT_MLP_HIDDEN: usize = 128;

/// Largest number of parameters a spec may describe (guards against absurd sizes sent by peers).
pub const MAX_PARAMS: usize = 200_000_000;

/// Examples per forward pass during evaluation of dense models (logreg, MLP); the CNN uses
/// smaller chunks (see [`ModelSpec::max_chunk`]).
pub const EVAL_BATCH_SIZE: usize = 1024;

/// Bytes of one layer's activations a chunk of examples may take (see
/// [`ModelSpec::max_chunk`]): a chunk of the widest layer stays within the caches.
pub const CHUNK_ACTIVATION_BYTES: usize = 4 << 20;

/// Fewest examples in a chunk however wide the model, so the products stay matrix products.
const MIN_CHUNK: usize = 16;

/// Side length of the square single-channel image the CNN expects.
pub const CNN_IMAGE_SIDE: usize = 28;

/// The architecture of a classifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelKind {
    /// Multinomial logistic regression: one linear layer from features to class logits.
    LogReg,
    /// Multi-layer perceptron with ReLU between layers.
    Mlp {
        /// Widths of the hidden layers, input to output; never empty.
        hidden: Vec<usize>,
    },
    /// The "CNN" of McMahan et al. 2017 for 28x28 single-channel images: two 5x5 convolutions
    /// (32 and 64 channels, "same" padding) each followed by ReLU and 2x2 max-pooling, a
    /// 512-unit fully connected ReLU layer and a linear output layer.
    Cnn,
    /// A model whose code Shoal does not have: it runs only in the clients' own trainer, and
    /// the coordinator knows it by its layout (from an initial model file) alone.
    External,
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelKind::LogReg => f.write_str("logreg"),
            ModelKind::Cnn => f.write_str("cnn"),
            ModelKind::External => f.write_str("external"),
            ModelKind::Mlp { hidden } => {
                let widths: Vec<String> = hidden.iter().map(usize::to_string).collect();
                write!(f, "mlp:{}", widths.join(","))
            }
        }
    }
}

impl FromStr for ModelKind {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let refuse = |reason: &str| ModelError::InvalidKind {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let text = s.trim().to_ascii_lowercase();
        let (name, args) = match text.split_once(':') {
            Some((name, args)) => (name.trim(), Some(args.trim())),
            None => (text.as_str(), None),
        };
        match (name, args) {
            ("logreg", None) => Ok(ModelKind::LogReg),
            ("cnn", None) => Ok(ModelKind::Cnn),
            ("external", None) => Ok(ModelKind::External),
            ("mlp", None) => Ok(ModelKind::Mlp {
                hidden: vec![DEFAULT_MLP_HIDDEN],
            }),
            ("mlp", Some(args)) => {
                if args.is_empty() {
                    return Err(refuse(
                        "expected hidden widths after \"mlp:\", e.g. mlp:256,128",
                    ));
                }
                let hidden = args
                    .split(',')
                    .map(|w| match w.trim().parse::<usize>() {
                        Ok(0) => Err(refuse("hidden widths must be positive")),
                        Ok(width) => Ok(width),
                        Err(_) => Err(refuse(&format!("{:?} is not a layer width", w.trim()))),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(ModelKind::Mlp { hidden })
            }
            ("logreg" | "cnn" | "external", Some(_)) => {
                Err(refuse("this model kind takes no arguments"))
            }
            _ => Err(refuse(
                "expected one of logreg, mlp, mlp:<w1,w2,..>, cnn, external",
            )),
        }
    }
}

impl TryFrom<String> for ModelKind {
    type Error = ModelError;

    fn try_from(value: String) -> Result<Self> {
        value.parse()
    }
}

impl From<ModelKind> for String {
    fn from(kind: ModelKind) -> String {
        kind.to_string()
    }
}

/// Why Shoal cannot build, train or evaluate an external model itself.
pub(crate) const EXTERNAL: &str = "the external model runs only in the clients' own trainer (LocalTrainer); Shoal has no \
     code for it";

/// A model architecture together with the input and output sizes it is built for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The architecture.
    pub kind: ModelKind,
    /// Number of input features per example.
    pub num_features: usize,
    /// Number of classes (output logits).
    pub num_classes: usize,
    /// `(height, width)` when the features are a single-channel image, row-major.
    pub image_shape: Option<(usize, usize)>,
}

impl ModelSpec {
    /// A spec sized for `data`: its feature count, class count and image shape.
    pub fn for_dataset(kind: ModelKind, data: &Dataset) -> Self {
        ModelSpec {
            kind,
            num_features: data.num_features,
            num_classes: data.num_classes,
            image_shape: data.image_shape,
        }
    }

    /// Checks that the spec describes a model that can be built.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(ModelError::InvalidSpec(msg));
        if self.num_features == 0 {
            return invalid("num_features must be positive".into());
        }
        if self.num_classes < 2 {
            return invalid(format!("need at least 2 classes, got {}", self.num_classes));
        }
        if let Some((h, w)) = self.image_shape
            && h.checked_mul(w) != Some(self.num_features)
        {
            return invalid(format!(
                "image shape {h}x{w} does not match {} features",
                self.num_features
            ));
        }
        match &self.kind {
            // Its size is its layout's, which the coordinator reads from the model file.
            ModelKind::External => Ok(()),
            ModelKind::Mlp { hidden } if hidden.is_empty() || hidden.contains(&0) => {
                invalid("mlp hidden widths must be non-empty and positive".into())
            }
            ModelKind::Cnn
                if self.image_shape != Some((CNN_IMAGE_SIDE, CNN_IMAGE_SIDE))
                    || self.num_features != CNN_IMAGE_SIDE * CNN_IMAGE_SIDE =>
            {
                invalid(format!(
                    "cnn needs 28x28 single-channel images (784 features), got {} features \
                     with image shape {:?}",
                    self.num_features, self.image_shape
                ))
            }
            _ => {
                let total = self.analytic_param_count()?;
                if total > MAX_PARAMS {
                    return invalid(format!(
                        "{total} parameters exceed the limit of {MAX_PARAMS}"
                    ));
                }
                Ok(())
            }
        }
    }

    /// The most examples pushed through the model at once where the chunking does not change
    /// the result (evaluation, exact gradients): 64 for the CNN, whose activations and their
    /// gradients take about 0.3 MB per example; for dense models 1024, or fewer where a layer
    /// is so wide that a chunk's activations would pass [`CHUNK_ACTIVATION_BYTES`] (fresh tens
    /// of megabytes per layer cost more in page faults and copies than the products). Such
    /// wider models (a layer or an input over 1,024 wide) score as before but sum an exact
    /// gradient over other chunks, so its last bits differ from releases that used 1,024.
    pub fn max_chunk(&self) -> usize {
        match self.kind {
            ModelKind::Cnn => 64,
            _ => {
                let widest = self.dense_widths().into_iter().max().unwrap_or(1).max(1);
                (CHUNK_ACTIVATION_BYTES / (4 * widest)).clamp(MIN_CHUNK, EVAL_BATCH_SIZE)
            }
        }
    }

    /// Layer widths of the fully connected stack: features, hidden..., classes.
    pub(crate) fn dense_widths(&self) -> Vec<usize> {
        let mut widths = vec![self.num_features];
        if let ModelKind::Mlp { hidden } = &self.kind {
            widths.extend(hidden.iter().copied());
        }
        widths.push(self.num_classes);
        widths
    }

    /// Parameter count from the architecture alone, with overflow checks; used to refuse
    /// oversized specs before anything is allocated.
    pub(crate) fn analytic_param_count(&self) -> Result<usize> {
        let overflow = || ModelError::InvalidSpec("parameter count overflows".into());
        let dense = |widths: &[usize]| -> Result<usize> {
            widths.windows(2).try_fold(0usize, |acc, pair| {
                pair[0]
                    .checked_add(1)
                    .and_then(|fan_in| fan_in.checked_mul(pair[1]))
                    .and_then(|layer| acc.checked_add(layer))
                    .ok_or_else(overflow)
            })
        };
        match self.kind {
            ModelKind::External => Err(ModelError::InvalidSpec(EXTERNAL.into())),
            ModelKind::Cnn => {
                let convs = (25 + 1) * 32 + (32 * 25 + 1) * 64;
                let fc = dense(&[64 * 7 * 7, 512, self.num_classes])?;
                fc.checked_add(convs).ok_or_else(overflow)
            }
            _ => dense(&self.dense_widths()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_model_is_valid_but_never_built_here() {
        let spec = ModelSpec {
            kind: ModelKind::External,
            num_features: 64,
            num_classes: 10,
            image_shape: None,
        };
        assert!(spec.validate().is_ok());
        let err = spec.manifest().unwrap_err().to_string();
        assert!(err.contains("clients' own trainer"), "{err}");
        assert!(crate::init_params(&spec, 0).is_err());
    }

    #[test]
    fn kinds_parse_and_display_round_trip() {
        let cases = [
            ("logreg", ModelKind::LogReg),
            ("cnn", ModelKind::Cnn),
            ("external", ModelKind::External),
            ("mlp", ModelKind::Mlp { hidden: vec![128] }),
            (
                "mlp:256,128",
                ModelKind::Mlp {
                    hidden: vec![256, 128],
                },
            ),
            (
                " MLP: 32 , 16 ",
                ModelKind::Mlp {
                    hidden: vec![32, 16],
                },
            ),
        ];
        for (text, kind) in cases {
            let parsed: ModelKind = text.parse().unwrap();
            assert_eq!(parsed, kind, "{text}");
            assert_eq!(parsed.to_string().parse::<ModelKind>().unwrap(), kind);
        }
        assert_eq!(
            ModelKind::Mlp {
                hidden: vec![256, 128]
            }
            .to_string(),
            "mlp:256,128"
        );
    }

    #[test]
    fn bad_kinds_are_refused_with_a_reason() {
        for text in [
            "", "mlp:", "mlp:0", "mlp:12,x", "mlp:-3", "cnn:3", "logreg:1", "resnet",
        ] {
            let err = text.parse::<ModelKind>().unwrap_err();
            assert!(
                matches!(err, ModelError::InvalidKind { .. }),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn kinds_serialise_as_their_text_form() {
        let spec = ModelSpec {
            kind: ModelKind::Mlp {
                hidden: vec![64, 32],
            },
            num_features: 64,
            num_classes: 10,
            image_shape: None,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"mlp:64,32\""), "{json}");
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), spec);
        assert!(serde_json::from_str::<ModelKind>("\"mlp:0\"").is_err());
    }

    #[test]
    fn wide_layers_are_evaluated_in_smaller_chunks() {
        let spec = |kind: &str, features| ModelSpec {
            kind: kind.parse().unwrap(),
            num_features: features,
            num_classes: 10,
            image_shape: None,
        };
        // The shipped dense models keep the full chunk, so their results are unchanged.
        assert_eq!(spec("mlp", 64).max_chunk(), EVAL_BATCH_SIZE);
        assert_eq!(spec("mlp:200,200", 784).max_chunk(), EVAL_BATCH_SIZE);
        assert_eq!(spec("logreg", 784).max_chunk(), EVAL_BATCH_SIZE);
        // A 13,500-wide hidden layer: 77 examples make 4 MiB of activations.
        assert_eq!(spec("mlp:13500", 64).max_chunk(), 77);
        assert_eq!(spec("mlp:10000000", 64).max_chunk(), 16);
    }

    #[test]
    fn specs_are_validated() {
        let ok = ModelSpec {
            kind: ModelKind::LogReg,
            num_features: 64,
            num_classes: 10,
            image_shape: Some((8, 8)),
        };
        assert!(ok.validate().is_ok());
        let bad = [
            ModelSpec {
                num_features: 0,
                ..ok.clone()
            },
            ModelSpec {
                num_classes: 1,
                ..ok.clone()
            },
            ModelSpec {
                image_shape: Some((7, 8)),
                ..ok.clone()
            },
            ModelSpec {
                kind: ModelKind::Cnn,
                ..ok.clone()
            },
            ModelSpec {
                kind: ModelKind::Mlp { hidden: vec![] },
                ..ok.clone()
            },
            ModelSpec {
                kind: ModelKind::Mlp {
                    hidden: vec![1 << 40],
                },
                ..ok.clone()
            },
            ModelSpec {
                kind: ModelKind::Mlp {
                    hidden: vec![usize::MAX],
                },
                ..ok.clone()
            },
        ];
        for spec in bad {
            assert!(
                matches!(spec.validate(), Err(ModelError::InvalidSpec(_))),
                "{spec:?}"
            );
        }
        let cnn = ModelSpec {
            kind: ModelKind::Cnn,
            num_features: 784,
            num_classes: 10,
            image_shape: Some((28, 28)),
        };
        assert!(cnn.validate().is_ok());
        assert!(
            ModelSpec {
                image_shape: None,
                ..cnn
            }
            .validate()
            .is_err()
        );
    }
}
