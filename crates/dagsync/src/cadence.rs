//! When the next cycle runs: `--interval ± --jitter`, slowing down while
//! nothing changes, but never so far that a change could take longer than
//! `--max-staleness` to arrive.
//!
//! A change made just after a listing is picked up by the next listing and
//! published at the end of that cycle, so its delay is at most one cycle, one
//! sleep and one more cycle. The sleep is therefore capped at
//! `max_staleness - 2 × last cycle duration`.

use std::time::Duration;

use airside_core::backoff::jittered;

/// No-op cycles before the interval starts to stretch.
pub const IDLE_AFTER: u32 = 5;

/// The polling cadence, validated at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    interval: Duration,
    jitter: Duration,
    max_staleness: Duration,
}

impl Cadence {
    /// Checks that the configuration can keep its staleness promise.
    pub fn new(
        interval: Duration,
        jitter: Duration,
        max_staleness: Duration,
    ) -> Result<Self, String> {
        if interval.is_zero() {
            return Err("--interval must be greater than zero".into());
        }
        if jitter > interval {
            return Err(format!(
                "--jitter {} must not exceed --interval {}",
                humanize(jitter),
                humanize(interval)
            ));
        }
        if interval + jitter > max_staleness {
            return Err(format!(
                "--interval {} + --jitter {} exceeds --max-staleness {}: a change could take longer than the bound to arrive; lower the interval or jitter, or raise --max-staleness",
                humanize(interval),
                humanize(jitter),
                humanize(max_staleness)
            ));
        }
        Ok(Self {
            interval,
            jitter,
            max_staleness,
        })
    }

    /// The sleep before the next cycle, after `idle_cycles` consecutive no-op cycles and a
    /// last cycle that took `last_cycle`.
    pub fn next_delay(&self, idle_cycles: u32, last_cycle: Duration) -> Duration {
        let budget = self.max_staleness.saturating_sub(last_cycle * 2);
        let stretched = if idle_cycles < IDLE_AFTER {
            self.interval
        } else {
            // ×1.5 per further idle cycle, bounded by the budget below.
            let steps = (idle_cycles - IDLE_AFTER + 1).min(16) as i32;
            self.interval.mul_f64(1.5f64.powi(steps))
        };
        let center = stretched.min(budget.saturating_sub(self.jitter));
        jittered(center, self.jitter).min(budget)
    }

    /// The configured staleness bound.
    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }
}

fn humanize(d: Duration) -> String {
    airside_core::config::format_duration(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_configurations_that_break_the_bound() {
        let s = Duration::from_secs;
        assert!(Cadence::new(s(30), s(10), s(60)).is_ok());
        assert!(Cadence::new(s(55), s(10), s(60)).is_err());
        assert!(Cadence::new(s(10), s(20), s(60)).is_err());
        assert!(Cadence::new(s(0), s(0), s(60)).is_err());
    }

    #[test]
    fn idle_cycles_stretch_the_interval() {
        let s = Duration::from_secs;
        let c = Cadence::new(s(10), s(0), s(120)).unwrap();
        assert_eq!(c.next_delay(0, Duration::ZERO), s(10));
        assert_eq!(c.next_delay(IDLE_AFTER, Duration::ZERO), s(15));
        assert_eq!(c.next_delay(100, Duration::ZERO), s(120));
        assert_eq!(c.next_delay(100, s(10)), s(100));
    }

    proptest! {
        /// However long things have been idle, sleep + two cycles never exceeds the bound
        /// (as long as one cycle fits in it at all).
        #[test]
        fn delay_keeps_the_staleness_bound(
            interval in 1u64..120, jitter_pct in 0u64..=100, extra in 0u64..300,
            idle in 0u32..1000, cycle_ms in 0u64..20_000,
        ) {
            let interval = Duration::from_secs(interval);
            let jitter = interval.mul_f64(jitter_pct as f64 / 100.0);
            let max = interval + jitter + Duration::from_secs(extra);
            let c = Cadence::new(interval, jitter, max).unwrap();
            let cycle = Duration::from_millis(cycle_ms);
            let d = c.next_delay(idle, cycle);
            prop_assert!(d + cycle * 2 <= max.max(cycle * 2));
            if idle < IDLE_AFTER && cycle * 2 + interval + jitter <= max {
                prop_assert!(d >= interval.saturating_sub(jitter));
            }
        }
    }
}
