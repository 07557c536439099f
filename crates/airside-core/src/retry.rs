//! "Retry, then give up" by error class: one policy for every daemon.
//!
//! | class | retried | gives up after | exit code |
//! |---|---|---|---|
//! | transient (5xx, timeout, reset) | yes, full-jitter backoff | never in a daemon; [`ONE_SHOT_TRANSIENT_ATTEMPTS`] in a one-shot mode | 1 |
//! | throttled | yes, full-jitter backoff | as transient | 1 |
//! | access denied | yes (IAM changes and rotated credentials take a moment to arrive) | [`ACCESS_DENIED_ATTEMPTS`] consecutive failures | 3 |
//! | not found | no: the bucket or stream is missing | the first failure | 2 |
//! | invalid | no: the same request fails the same way | the first failure | 2 |
//!
//! The counters are of consecutive failures: a success resets them. What "giving up"
//! means is the caller's: a daemon exits with [`ErrorClass::exit_code`]; metricship's
//! publisher narrows a rejected request down to the one bad datum instead.

use std::time::Duration;

use crate::aws::ErrorClass;
use crate::backoff::Backoff;

/// Consecutive access-denied failures before giving up, so that a passing credentials
/// hiccup (role propagation, credential rotation) does not kill the task.
pub const ACCESS_DENIED_ATTEMPTS: u32 = 5;

/// Consecutive transient or throttled failures a one-shot run (`dagsync --once`)
/// tolerates before giving up.
pub const ONE_SHOT_TRANSIENT_ATTEMPTS: u32 = 4;

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Stop retrying: the policy's limit for this class is reached.
    GiveUp,
}

/// The state of one retried operation under the shared policy.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    transient_limit: Option<u32>,
    transient: u32,
    denied: u32,
}

impl Retry {
    /// The policy for a long-running daemon: transient failures are retried forever.
    pub fn daemon(backoff: Backoff) -> Self {
        Self {
            backoff,
            transient_limit: None,
            transient: 0,
            denied: 0,
        }
    }

    /// The policy for a one-shot run: transient failures give up after
    /// [`ONE_SHOT_TRANSIENT_ATTEMPTS`].
    pub fn one_shot(backoff: Backoff) -> Self {
        Self {
            transient_limit: Some(ONE_SHOT_TRANSIENT_ATTEMPTS),
            ..Self::daemon(backoff)
        }
    }

    /// Records a success: the consecutive-failure counters start again.
    pub fn succeeded(&mut self) {
        self.transient = 0;
        self.denied = 0;
    }

    /// Consecutive failures so far (of any class).
    pub fn failures(&self) -> u32 {
        self.transient + self.denied
    }

    /// Records a failure of `class` and says whether to try again, and when.
    pub fn failed(&mut self, class: ErrorClass) -> Verdict {
        let attempts = match class {
            ErrorClass::NotFound | ErrorClass::Invalid => return Verdict::GiveUp,
            ErrorClass::AccessDenied => {
                self.denied = self.denied.saturating_add(1);
                if self.denied >= ACCESS_DENIED_ATTEMPTS {
                    return Verdict::GiveUp;
                }
                self.denied
            }
            ErrorClass::Transient | ErrorClass::Throttled => {
                self.transient = self.transient.saturating_add(1);
                if self.transient_limit.is_some_and(|n| self.transient >= n) {
                    return Verdict::GiveUp;
                }
                self.transient
            }
        };
        Verdict::RetryAfter(self.backoff.delay(attempts - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).unwrap()
    }

    fn attempts_until_give_up(mut retry: Retry, class: ErrorClass) -> Option<u32> {
        (1..=100).find(|_| retry.failed(class) == Verdict::GiveUp)
    }

    #[test]
    fn each_class_gives_up_as_the_readme_table_says() {
        use ErrorClass::*;
        let d = || Retry::daemon(backoff());
        assert_eq!(attempts_until_give_up(d(), NotFound), Some(1));
        assert_eq!(attempts_until_give_up(d(), Invalid), Some(1));
        assert_eq!(
            attempts_until_give_up(d(), AccessDenied),
            Some(ACCESS_DENIED_ATTEMPTS)
        );
        assert_eq!(attempts_until_give_up(d(), Transient), None);
        assert_eq!(attempts_until_give_up(d(), Throttled), None);
        let o = || Retry::one_shot(backoff());
        assert_eq!(
            attempts_until_give_up(o(), Transient),
            Some(ONE_SHOT_TRANSIENT_ATTEMPTS)
        );
        assert_eq!(
            attempts_until_give_up(o(), AccessDenied),
            Some(ACCESS_DENIED_ATTEMPTS)
        );
    }

    #[test]
    fn a_success_resets_the_count_and_delays_stay_within_the_backoff() {
        let mut r = Retry::daemon(backoff());
        for _ in 0..ACCESS_DENIED_ATTEMPTS - 1 {
            match r.failed(ErrorClass::AccessDenied) {
                Verdict::RetryAfter(d) => assert!(d <= Duration::from_secs(5)),
                Verdict::GiveUp => panic!("gave up early"),
            }
        }
        r.succeeded();
        assert_eq!(r.failures(), 0);
        assert!(matches!(
            r.failed(ErrorClass::AccessDenied),
            Verdict::RetryAfter(_)
        ));
    }
}
