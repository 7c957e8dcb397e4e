#![no_main]
//! Fuzz target `config`: every parser of user-written configuration text.
//!
//! The first input byte picks a mode (taken modulo 5). The rest is split at its first `\n`
//! into a head, which must be UTF-8, and a tail of raw bytes used by modes 3 and 4:
//!
//! | mode | what is fuzzed |
//! |------|----------------|
//! | 0 | `toml::from_str::<RunConfig>` on the whole text |
//! | 1 | `serde_json::from_str::<RunConfig>` on the whole text |
//! | 2 | `DatasetSource::from_str` on the head |
//! | 3 | `Partition::from_str` on the head, then `partition()` of up to 64 labels from the tail among 1-8 clients |
//! | 4 | `ModelKind::from_str` on the head, then `ModelSpec::validate` with sizes from the tail; small valid specs are built and their parameter count checked |
//!
//! Properties besides "never panic": every accepted string prints (`Display`) to a string
//! that parses back to the same value; a config survives a JSON round trip whenever JSON can
//! hold it; a partition covers every example exactly once and leaves no client empty.

use libfuzzer_sys::fuzz_target;
use shoal_coordinator::RunConfig;
use shoal_datasets::{DatasetSource, Partition, partition};
use shoal_models::{MAX_PARAMS, ModelKind, ModelSpec};
use std::fmt::Debug;
use std::fmt::Display;
use std::str::FromStr;

/// `parse(text) == Ok(v)` implies `parse(v.to_string()) == Ok(v)`.
fn round_trips<T>(text: &str) -> Option<T>
where
    T: FromStr + Display + PartialEq + Debug,
    T::Err: Debug,
{
    let value: T = text.parse().ok()?;
    let printed = value.to_string();
    match printed.parse::<T>() {
        Ok(back) => assert_eq!(back, value, "{text:?} printed as {printed:?}"),
        Err(e) => panic!("{text:?} printed as {printed:?}, which does not parse: {e:?}"),
    }
    Some(value)
}

fn run_config(config: &RunConfig) {
    assert_eq!(config.run_id().len(), 16);
    let _ = config.round_timeout();
    // JSON cannot hold NaN or infinities (serde_json writes `null`), so only a config that
    // reads back is compared.
    let json = serde_json::to_string(config).expect("a RunConfig serialises to JSON");
    if let Ok(back) = serde_json::from_str::<RunConfig>(&json) {
        assert_eq!(&back, config, "JSON round trip changed the config: {json}");
    }
}

fn partition_from(head: &str, tail: &[u8]) {
    let Some(scheme) = round_trips::<Partition>(head) else {
        return;
    };
    let Some((&clients, labels)) = tail.split_first() else {
        return;
    };
    let num_clients = usize::from(clients % 8) + 1;
    let labels: Vec<u32> = labels.iter().take(64).map(|&b| u32::from(b % 10)).collect();
    let num_classes = labels.iter().max().map_or(1, |&m| m as usize + 1);
    if let Ok(parts) = partition(&labels, num_classes, num_clients, &scheme, 7) {
        assert_eq!(parts.len(), num_clients);
        assert!(
            parts.iter().all(|p| !p.is_empty()),
            "{scheme}: an empty client"
        );
        let mut seen: Vec<usize> = parts.into_iter().flatten().collect();
        seen.sort_unstable();
        assert!(
            seen.iter().copied().eq(0..labels.len()),
            "{scheme}: not a partition"
        );
    }
}

fn u32_at(tail: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    for (i, b) in tail.iter().skip(at).take(4).enumerate() {
        word[i] = *b;
    }
    u32::from_le_bytes(word)
}

fn model_from(head: &str, tail: &[u8]) {
    let Some(kind) = round_trips::<ModelKind>(head) else {
        return;
    };
    let num_features = u32_at(tail, 0) as usize;
    let num_classes = u32_at(tail, 4) as usize;
    let image_shape = tail
        .get(8)
        .filter(|&&b| b & 1 == 1)
        .map(|_| (u32_at(tail, 9) as usize, u32_at(tail, 13) as usize));
    let spec = ModelSpec {
        kind,
        num_features,
        num_classes,
        image_shape,
    };
    if spec.validate().is_err() {
        return;
    }
    // Build small dense models and check the analytic count the limits rely on.
    let hidden: &[usize] = match &spec.kind {
        ModelKind::LogReg => &[],
        ModelKind::Mlp { hidden } => hidden,
        ModelKind::Cnn => return,
        // Valid whatever its size, and never built here: asking for its layout must fail.
        ModelKind::External => {
            assert!(spec.num_params().is_err());
            return;
        }
    };
    let mut widths = vec![num_features];
    widths.extend_from_slice(hidden);
    widths.push(num_classes);
    let analytic: usize = widths.windows(2).map(|w| (w[0] + 1) * w[1]).sum();
    assert!(analytic <= MAX_PARAMS);
    if analytic <= 4096 && widths.len() <= 6 {
        assert_eq!(spec.num_params().expect("a valid spec builds"), analytic);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (head, tail) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    match mode % 5 {
        0 | 1 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let parsed = if mode % 5 == 0 {
                toml::from_str::<RunConfig>(text).ok()
            } else {
                serde_json::from_str::<RunConfig>(text).ok()
            };
            if let Some(config) = parsed {
                run_config(&config);
            }
        }
        2 => {
            if let Ok(head) = std::str::from_utf8(head) {
                round_trips::<DatasetSource>(head);
            }
        }
        3 => {
            if let Ok(head) = std::str::from_utf8(head) {
                partition_from(head, tail);
            }
        }
        _ => {
            if let Ok(head) = std::str::from_utf8(head) {
                model_from(head, tail);
            }
        }
    }
});
