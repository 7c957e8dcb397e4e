#![no_main]
//! Fuzz target `csv`: `shoal_datasets::parse_csv` on arbitrary bytes.
//!
//! The bytes are parsed twice: from a plain slice, and through a reader that hands them out
//! a few bytes at a time (the first input byte picks 1 to 8), which moves every record across
//! the csv crate's buffer boundaries. Both parses must give the same dataset or the same
//! error, and an accepted dataset must be consistent: `labels * num_features` finite feature
//! values and every label below `num_classes <= MAX_LABEL + 1`.

use libfuzzer_sys::fuzz_target;
use shoal_datasets::{MAX_LABEL, parse_csv};
use std::io::Read;

/// A reader that returns at most `step` bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let step = data.first().map_or(1, |b| usize::from(b % 8) + 1);
    let whole = parse_csv(data);
    let trickled = parse_csv(Trickle { data, step });
    match (&whole, &trickled) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("slice and trickle parses disagree: {whole:?} vs {trickled:?}"),
    }
    if let Ok(set) = whole {
        assert!(set.num_features >= 1);
        assert!(!set.labels.is_empty());
        assert_eq!(set.features.len(), set.labels.len() * set.num_features);
        assert!(set.features.iter().all(|v| v.is_finite()));
        assert!(set.num_classes >= 1 && set.num_classes <= MAX_LABEL as usize + 1);
        assert!(set.labels.iter().all(|&l| (l as usize) < set.num_classes));
        assert_eq!(set.image_shape, None);
    }
});
