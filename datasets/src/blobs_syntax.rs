//! The text form of a [`BlobsConfig`] after `blobs:` in a dataset source string.
//!
//! Either a bare number of centres (`blobs:25`) or comma-separated `KEY=VALUE` pairs with
//! keys `samples`, `features`, `centers`, `std`, `box` and `seed`; omitted keys keep their
//! [`BlobsConfig::default`] values. Formatting picks the shortest form that parses back to an
//! equal config (Rust prints floats with the fewest digits that round-trip).

use crate::blobs::BlobsConfig;

/// Parses the text after `blobs:`; the error is a reason to embed in a syntax error.
pub(crate) fn parse_blobs(args: &str) -> Result<BlobsConfig, String> {
    let mut cfg = BlobsConfig::default();
    if let Ok(centers) = args.parse::<usize>() {
        cfg.centers = centers;
    } else {
        for pair in args.split(',') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is neither a number of centers nor KEY=VALUE"))?;
            let bad = || format!("bad value {value:?} for {key}");
            match key {
                "samples" => cfg.samples = value.parse().map_err(|_| bad())?,
                "features" => cfg.features = value.parse().map_err(|_| bad())?,
                "centers" => cfg.centers = value.parse().map_err(|_| bad())?,
                "std" => cfg.cluster_std = value.parse().map_err(|_| bad())?,
                "box" => cfg.center_box = value.parse().map_err(|_| bad())?,
                "seed" => cfg.seed = value.parse().map_err(|_| bad())?,
                _ => return Err(format!("unknown blobs key {key:?}")),
            }
        }
    }
    // Reject impossible settings now, at argument-parsing time, rather than at load time.
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Formats a config as a full `blobs...` source string.
pub(crate) fn format_blobs(cfg: &BlobsConfig) -> String {
    let default = BlobsConfig::default();
    if *cfg == default {
        "blobs".to_owned()
    } else if *cfg
        == (BlobsConfig {
            centers: cfg.centers,
            ..default
        })
    {
        format!("blobs:{}", cfg.centers)
    } else {
        format!(
            "blobs:samples={},features={},centers={},std={},box={},seed={}",
            cfg.samples, cfg.features, cfg.centers, cfg.cluster_std, cfg.center_box, cfg.seed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            parse_blobs("4").ok(),
            Some(BlobsConfig {
                centers: 4,
                ..Default::default()
            })
        );
        let full = parse_blobs("seed=3,std=0.25,features=8").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            full,
            BlobsConfig {
                seed: 3,
                cluster_std: 0.25,
                features: 8,
                ..Default::default()
            }
        );
    }

    #[test]
    fn rejects_junk() {
        for bad in [
            "",
            "x",
            "0",
            "-3",
            "seed",
            "seed=",
            "seed=-1",
            "colour=red",
            "std=nan",
            "samples=3",
        ] {
            assert!(parse_blobs(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn format_round_trips() {
        let configs = [
            BlobsConfig::default(),
            BlobsConfig {
                centers: 3,
                ..Default::default()
            },
            BlobsConfig {
                samples: 999,
                features: 3,
                centers: 4,
                cluster_std: 0.1,
                center_box: 7.5,
                seed: 11,
            },
        ];
        for cfg in configs {
            let text = format_blobs(&cfg);
            let args = text.strip_prefix("blobs:").unwrap_or("");
            let back = if text == "blobs" {
                Ok(BlobsConfig::default())
            } else {
                parse_blobs(args)
            };
            assert_eq!(back, Ok(cfg), "{text}");
        }
    }
}
