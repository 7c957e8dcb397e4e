//! Reconnect pacing: exponential backoff with full jitter, capped, from a seeded RNG so a
//! simulated fleet replays the same way.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Exponential backoff state for one client.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    /// Starts at `base`, doubling per failure up to `cap`.
    pub fn new(base: Duration, cap: Duration, rng: ChaCha8Rng) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            rng,
        }
    }

    /// The next wait: uniform in [0, min(cap, base·2^attempt)].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(self.rng.random_range(0..=millis))
    }

    /// Forgets past failures after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_and_stays_under_the_cap() {
        let mut b = Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(100),
            ChaCha8Rng::seed_from_u64(1),
        );
        for i in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(10 << i.min(4)).min(Duration::from_millis(100)));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
