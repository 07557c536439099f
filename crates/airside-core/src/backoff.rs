//! Full-jitter exponential backoff as a validated type.
//!
//! "Exponential Backoff and Jitter" (AWS Architecture Blog, 2015) shows full
//! jitter — a uniform draw in `[0, min(cap, base * 2^attempt)]` — spreads
//! retries of many clients best; sidecars on dozens of tasks retrying S3 at the
//! same moment is exactly that case.

use std::time::Duration;

use rand::Rng;

/// Why a backoff could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackoffError {
    /// The base delay was zero.
    #[error("backoff base must be greater than zero")]
    ZeroBase,
    /// The cap was below the base.
    #[error("backoff maximum ({max:?}) must be at least the base ({base:?})")]
    MaxBelowBase {
        /// The base delay.
        base: Duration,
        /// The cap.
        max: Duration,
    },
}

/// Exponential backoff with full jitter; bounds are checked at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Builds a backoff whose delays start below `base` and never exceed `max`.
    pub fn new(base: Duration, max: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if max < base {
            return Err(BackoffError::MaxBelowBase { base, max });
        }
        Ok(Self { base, max })
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The upper bound of the delay for the given attempt (0-based): `min(max, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // Shift at most 31 places: beyond that every realistic base exceeds the cap anyway.
        let factor = 1u32 << attempt.min(31);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A full-jitter delay for the given attempt, drawn from `rng`.
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// A full-jitter delay for the given attempt, from the thread-local generator.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }
}

/// A uniform draw in `[center - spread, center + spread]`, floored at zero.
/// Used for polling cadences (`--interval 30s --jitter 10s`).
pub fn jittered(center: Duration, spread: Duration) -> Duration {
    if spread.is_zero() {
        return center;
    }
    let low = center.saturating_sub(spread);
    let high = center + spread;
    let nanos = rand::rng().random_range(low.as_nanos() as u64..=high.as_nanos() as u64);
    Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn rejects_bad_bounds() {
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::from_secs(1)),
            Err(BackoffError::ZeroBase)
        );
        assert!(matches!(
            Backoff::new(Duration::from_secs(2), Duration::from_secs(1)),
            Err(BackoffError::MaxBelowBase { .. })
        ));
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).unwrap();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_spread_not_constant() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let draws: Vec<_> = (0..50).map(|_| b.delay_with(5, &mut rng)).collect();
        let min = draws.iter().min().unwrap();
        let max = draws.iter().max().unwrap();
        assert!(*max - *min > Duration::from_millis(500), "{min:?}..{max:?}");
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_ceiling_or_cap(
            base_ms in 1u64..10_000,
            extra_ms in 0u64..600_000,
            attempt in 0u32..200,
            seed in any::<u64>(),
        ) {
            let base = Duration::from_millis(base_ms);
            let max = base + Duration::from_millis(extra_ms);
            let b = Backoff::new(base, max).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let d = b.delay_with(attempt, &mut rng);
            prop_assert!(d <= b.ceiling(attempt));
            prop_assert!(d <= max);
            prop_assert!(b.ceiling(attempt) >= base.min(max));
        }

        #[test]
        fn ceiling_is_monotonic(base_ms in 1u64..5_000, extra_ms in 0u64..100_000, attempt in 0u32..100) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(base_ms + extra_ms)).unwrap();
            prop_assert!(b.ceiling(attempt) <= b.ceiling(attempt + 1));
        }

        #[test]
        fn jitter_stays_in_window(center_ms in 0u64..100_000, spread_ms in 0u64..100_000) {
            let c = Duration::from_millis(center_ms);
            let s = Duration::from_millis(spread_ms);
            let d = jittered(c, s);
            prop_assert!(d >= c.saturating_sub(s));
            prop_assert!(d <= c + s);
        }
    }
}
