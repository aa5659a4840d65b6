//! Retry delays: exponential backoff with jitter.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Delays between connection attempts.
///
/// The first retry after a success goes out at once (a one-off break comes back without
/// waiting); then `min`, doubling up to `max`, each scaled by a random factor in
/// `[0.75, 1.25]` so that many clients cut off together do not come back in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    /// A backoff whose jitter comes from `seed` (tests pass a fixed one).
    pub(crate) fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The delay before the next attempt; counts one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_delay_within(self.max)
    }

    /// [`Self::next_delay`] with the largest delay lowered to `cap` for this attempt (the jitter
    /// still applies): a break just begun is retried often, so that its end is noticed soon.
    pub(crate) fn next_delay_within(&mut self, cap: Duration) -> Duration {
        let n = self.failures;
        self.failures = self.failures.saturating_add(1);
        if n == 0 {
            return Duration::ZERO;
        }
        let base = self
            .min
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(self.max)
            .min(cap);
        base.mul_f64(self.rng.gen_range(0.75..=1.25))
    }

    /// Back to the start, after a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let min = Duration::from_millis(250);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(min, max, 7);
        assert_eq!(b.next_delay(), Duration::ZERO);
        let mut base = min;
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= base.mul_f64(0.75) && d <= base.mul_f64(1.25),
                "{d:?} around {base:?}"
            );
            base = (base * 2).min(max);
        }
        b.reset();
        assert_eq!(b.next_delay(), Duration::ZERO);
        assert!(b.next_delay() <= min.mul_f64(1.25));
    }

    #[test]
    fn a_cap_bounds_the_delay_and_keeps_the_count() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(5), 3);
        assert_eq!(b.next_delay_within(Duration::from_millis(400)), Duration::ZERO);
        for _ in 0..10 {
            let d = b.next_delay_within(Duration::from_millis(400));
            assert!(d <= Duration::from_millis(500), "{d:?}");
        }
        // Without the cap the doubling goes on from where it was.
        assert!(b.next_delay() >= Duration::from_millis(3750));
    }

    #[test]
    fn jitter_varies() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 1);
        b.next_delay();
        let ds: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(ds.windows(2).any(|w| w[0] != w[1]), "{ds:?}");
    }
}
