//! Running tasks and the agent's answers in, the next protection call out: the decision,
//! with time passed in so that tests can step through hours in microseconds.
//!
//! - The worker is **busy** while at least one task runs, and for `idle_grace` after the
//!   first scan that saw none (a worker that just finished is not churned at once; counted
//!   from that scan, the grace never ends early, however late in a check a task ended).
//! - Busy and not known to be protected: protect. Busy and protected: renew halfway
//!   through the protection's lifetime, the shorter of what was asked for and what the
//!   agent reported (`ExpirationDate`), so a slow answer or a skewed clock still leaves
//!   half the lifetime as margin.
//! - Not busy and protected, or not known: unprotect. At start the state is read first
//!   (`GET`); if the agent says the task is protected (a workerguard restarted), the idle
//!   grace counts from that answer.
//! - After a failed call the next one waits for the retry delay the caller chose; the
//!   decision is made again then, from what runs then.

use std::time::{Duration, Instant};

use crate::agent::Protection;

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Read the state (`GET`).
    Read,
    /// Protect, or renew (`PUT` true).
    Protect,
    /// Clear protection (`PUT` false).
    Unprotect,
}

/// What the guard believes the agent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Not read yet, or the last call failed before an answer.
    Unknown,
    /// Not protected.
    Off,
    /// Protected; renew at `renew_at`.
    On {
        /// When to renew.
        renew_at: Instant,
    },
}

/// The decision state.
#[derive(Debug)]
pub struct Guard {
    idle_grace: Duration,
    lifetime: Duration,
    known: Known,
    read_once: bool,
    was_running: bool,
    idle_since: Option<Instant>,
    retry_at: Option<Instant>,
}

impl Guard {
    /// A guard that protects for `lifetime` per call and waits `idle_grace` after the last
    /// task before it unprotects.
    pub fn new(idle_grace: Duration, lifetime: Duration) -> Self {
        Self {
            idle_grace,
            lifetime,
            known: Known::Unknown,
            read_once: false,
            was_running: false,
            idle_since: None,
            retry_at: None,
        }
    }

    /// What the guard believes.
    pub fn known(&self) -> Known {
        self.known
    }

    /// Whether protection is wanted at `now`, when a scan saw `running` tasks (the first
    /// scan that sees none starts the idle grace).
    pub fn busy(&mut self, now: Instant, running: usize) -> bool {
        if running > 0 {
            self.was_running = true;
            self.idle_since = None;
            return true;
        }
        if self.was_running {
            self.was_running = false;
            self.idle_since = Some(now);
        }
        self.idle_since
            .is_some_and(|t| now.saturating_duration_since(t) < self.idle_grace)
    }

    /// The call to make at `now`, if any, given whether protection is wanted.
    pub fn next(&self, now: Instant, wanted: bool) -> Option<Call> {
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        match (self.known, wanted) {
            (Known::Unknown, true) | (Known::Off, true) => Some(Call::Protect),
            (Known::On { renew_at }, true) => (now >= renew_at).then_some(Call::Protect),
            (Known::Unknown, false) if !self.read_once => Some(Call::Read),
            (Known::Unknown, false) | (Known::On { .. }, false) => Some(Call::Unprotect),
            (Known::Off, false) => None,
        }
    }

    /// When the next call may be due without a change in running tasks: the renewal, the
    /// end of the idle grace, or the retry; `None` when only a change would make one.
    pub fn next_deadline(&self) -> Option<Instant> {
        let renew = match self.known {
            Known::On { renew_at } => Some(renew_at),
            _ => None,
        };
        let grace_end = self.idle_since.map(|t| t + self.idle_grace);
        [renew, grace_end, self.retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The agent answered `call`, sent at `sent`, with `answer`; `wall_now` is the wall
    /// clock when it arrived (for `ExpirationDate`).
    pub fn answered(
        &mut self,
        call: Call,
        sent: Instant,
        answer: Protection,
        wall_now: std::time::SystemTime,
    ) {
        self.retry_at = None;
        // Any answer is contact enough: an unknown state later is cleared, not read.
        self.read_once = true;
        self.known = if answer.enabled {
            let reported = answer
                .expires
                .map(|at| at.duration_since(wall_now).unwrap_or(Duration::ZERO));
            let lifetime = match (call, reported) {
                // What it was asked for, unless the agent says less remains.
                (Call::Protect, Some(r)) => self.lifetime.min(r),
                (Call::Protect, None) => self.lifetime,
                // Read at start: only the agent knows.
                (_, Some(r)) => r,
                (_, None) => Duration::ZERO,
            };
            if call == Call::Read && !self.was_running && self.idle_since.is_none() {
                // Protected by an earlier life of workerguard: the grace starts now.
                self.idle_since = Some(sent);
            }
            Known::On {
                renew_at: sent + lifetime / 2,
            }
        } else {
            Known::Off
        };
    }

    /// `call` failed; the next one waits until `now + delay`. What the agent holds is
    /// unknown after a failed change, except that a failed renewal leaves the protection
    /// in place until it expires (a renewal is retried all the same: its time is up).
    pub fn failed(&mut self, call: Call, now: Instant, delay: Duration) {
        self.retry_at = Some(now + delay);
        if call == Call::Read {
            self.read_once = true;
        }
        if call == Call::Unprotect {
            self.known = Known::Unknown;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    const GRACE: Duration = Duration::from_secs(120);
    const LIFE: Duration = Duration::from_secs(15 * 60);

    fn on() -> Protection {
        Protection {
            enabled: true,
            expires: None,
        }
    }
    fn off() -> Protection {
        Protection {
            enabled: false,
            expires: None,
        }
    }

    #[test]
    fn idle_at_start_reads_then_rests() {
        let t0 = Instant::now();
        let mut g = Guard::new(GRACE, LIFE);
        let wanted = g.busy(t0, 0);
        assert_eq!(g.next(t0, wanted), Some(Call::Read));
        g.answered(Call::Read, t0, off(), SystemTime::now());
        assert_eq!(g.next(t0, false), None);
        assert_eq!(g.next_deadline(), None);
    }

    #[test]
    fn a_task_protects_renews_halfway_and_unprotects_after_the_grace() {
        let t0 = Instant::now();
        let mut g = Guard::new(GRACE, LIFE);
        g.answered(Call::Read, t0, off(), SystemTime::now());
        let t1 = t0 + Duration::from_secs(5);
        assert!(g.busy(t1, 1));
        assert_eq!(g.next(t1, true), Some(Call::Protect));
        g.answered(Call::Protect, t1, on(), SystemTime::now());
        assert_eq!(g.next(t1 + LIFE / 2 - Duration::from_secs(1), true), None);
        assert_eq!(g.next_deadline(), Some(t1 + LIFE / 2));
        let t2 = t1 + LIFE / 2;
        assert!(g.busy(t2, 1));
        assert_eq!(g.next(t2, true), Some(Call::Protect));
        g.answered(Call::Protect, t2, on(), SystemTime::now());
        // The first scan without the task is at t3: still busy through the grace from
        // there, not after.
        let t3 = t2 + Duration::from_secs(60);
        assert!(g.busy(t3 - Duration::from_secs(1), 1));
        assert!(g.busy(t3, 0));
        assert_eq!(g.next_deadline(), Some(t3 + GRACE));
        let before = t3 + GRACE - Duration::from_millis(1);
        assert!(g.busy(before, 0));
        assert_eq!(g.next(before, true), None);
        let after = t3 + GRACE;
        let wanted = g.busy(after, 0);
        assert!(!wanted);
        assert_eq!(g.next(after, wanted), Some(Call::Unprotect));
        g.answered(Call::Unprotect, after, off(), SystemTime::now());
        assert_eq!(g.next(after, false), None);
    }

    #[test]
    fn the_agents_shorter_expiry_wins() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut g = Guard::new(GRACE, LIFE);
        let answer = Protection {
            enabled: true,
            expires: Some(wall + Duration::from_secs(60)),
        };
        g.answered(Call::Protect, t0, answer, wall);
        assert_eq!(
            g.known(),
            Known::On {
                renew_at: t0 + Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn protected_at_start_by_an_earlier_life_is_cleared_after_the_grace() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut g = Guard::new(GRACE, LIFE);
        let answer = Protection {
            enabled: true,
            expires: Some(wall + Duration::from_secs(600)),
        };
        g.answered(Call::Read, t0, answer, wall);
        assert!(g.busy(t0 + GRACE - Duration::from_secs(1), 0));
        let later = t0 + GRACE;
        let wanted = g.busy(later, 0);
        assert_eq!(g.next(later, wanted), Some(Call::Unprotect));
    }

    #[test]
    fn a_failure_waits_for_its_delay_and_a_failed_unprotect_is_retried() {
        let t0 = Instant::now();
        let mut g = Guard::new(GRACE, LIFE);
        g.answered(Call::Protect, t0, on(), SystemTime::now());
        let t1 = t0 + GRACE;
        g.failed(Call::Unprotect, t1, Duration::from_secs(2));
        assert_eq!(g.next(t1 + Duration::from_secs(1), false), None);
        assert_eq!(g.next_deadline(), Some(t1 + Duration::from_secs(2)));
        assert_eq!(
            g.next(t1 + Duration::from_secs(2), false),
            Some(Call::Unprotect)
        );
        // A task starting meanwhile turns the retry into a protect.
        assert_eq!(
            g.next(t1 + Duration::from_secs(2), true),
            Some(Call::Protect)
        );
    }

    #[test]
    fn a_failed_read_does_not_block_protection() {
        let t0 = Instant::now();
        let mut g = Guard::new(GRACE, LIFE);
        g.failed(Call::Read, t0, Duration::from_secs(1));
        assert_eq!(
            g.next(t0 + Duration::from_secs(1), true),
            Some(Call::Protect)
        );
        // Idle and unknown after a failed read: clear whatever an earlier life left.
        assert_eq!(
            g.next(t0 + Duration::from_secs(1), false),
            Some(Call::Unprotect)
        );
    }
}
