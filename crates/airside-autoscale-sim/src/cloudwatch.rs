//! CloudWatch as the policies use it: metric datapoints that become readable after a
//! delay, period statistics, and metric alarms.
//!
//! The alarm rules, as the CloudWatch User Guide states them (paraphrased from "Evaluating
//! an alarm" and "Configuring how CloudWatch alarms treat missing data"):
//! * Evaluation periods (N) are the most recent periods evaluated; datapoints to alarm
//!   (M) is how many of them must breach for ALARM → [`evaluate`] counts breaching points
//!   in the last N.
//! * `missing`: when every point in the evaluation range is missing, the alarm goes to
//!   INSUFFICIENT_DATA; otherwise the present points decide.
//! * `notBreaching`: missing points count as within the threshold; `breaching`: as
//!   breaching; `ignore`: the current state is kept (when nothing is present).
//! * Actions (User Guide, "Alarm actions", verbatim): "Except for Auto Scaling actions,
//!   the actions happen only on state transitions, and are not performed again if the
//!   condition persists for hours or days." So an alarm with a scaling action invokes it
//!   at every evaluation (each minute) while it is in ALARM ([`crate::sim`] does so).

/// How missing data points count (`treat_missing_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// `missing`.
    Missing,
    /// `notBreaching`.
    NotBreaching,
    /// `breaching`.
    Breaching,
    /// `ignore`.
    Ignore,
}

/// An alarm's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Within the threshold.
    Ok,
    /// Breaching.
    Alarm,
    /// Not enough data.
    InsufficientData,
}

/// Which side of the threshold breaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// `GreaterThanThreshold`.
    Greater,
    /// `LessThanThreshold`.
    Less,
}

/// An alarm's evaluation settings.
#[derive(Debug, Clone, Copy)]
pub struct AlarmSpec {
    /// Period, seconds.
    pub period: f64,
    /// Evaluation periods (N).
    pub evaluation_periods: u32,
    /// Datapoints to alarm (M).
    pub datapoints_to_alarm: u32,
    /// Threshold.
    pub threshold: f64,
    /// Comparison.
    pub compare: Compare,
    /// Missing-data treatment.
    pub missing: Missing,
}

impl AlarmSpec {
    fn breaches(&self, v: f64) -> bool {
        match self.compare {
            Compare::Greater => v > self.threshold,
            Compare::Less => v < self.threshold,
        }
    }
}

/// The new state from the last N period values (oldest first), and the value the
/// scaling policy aggregates (the largest breaching value), if any.
pub fn evaluate(spec: &AlarmSpec, values: &[Option<f64>], current: State) -> (State, Option<f64>) {
    let mut breaching = 0u32;
    let mut present = 0u32;
    let mut worst: Option<f64> = None;
    for v in values {
        let b = match (v, spec.missing) {
            (Some(x), _) => {
                present += 1;
                spec.breaches(*x)
            }
            (None, Missing::Breaching) => true,
            (None, _) => false,
        };
        if b {
            breaching += 1;
            if let Some(x) = v {
                worst = Some(worst.map_or(*x, |w: f64| match spec.compare {
                    Compare::Greater => w.max(*x),
                    Compare::Less => w.min(*x),
                }));
            }
        }
    }
    let state = if present == 0 && matches!(spec.missing, Missing::Missing) {
        State::InsufficientData
    } else if present == 0 && matches!(spec.missing, Missing::Ignore) {
        current
    } else if breaching >= spec.datapoints_to_alarm {
        State::Alarm
    } else {
        State::Ok
    };
    (state, worst)
}

/// Which statistic a period takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// `Maximum`.
    Maximum,
    /// `Minimum`.
    Minimum,
    /// `Average`.
    Average,
}

/// One metric's datapoints, in time order.
#[derive(Debug, Default, Clone)]
pub struct Series {
    /// (timestamp, value, when it can be read).
    points: Vec<(f64, f64, f64)>,
}

impl Series {
    /// Adds a datapoint stamped `at`, readable from `visible_at`.
    pub fn put(&mut self, at: f64, value: f64, visible_at: f64) {
        debug_assert!(self.points.last().is_none_or(|p| p.0 <= at));
        self.points.push((at, value, visible_at));
    }

    /// The statistic of the datapoints stamped in `[from, to)` that can be read at `now`.
    pub fn stat(&self, from: f64, to: f64, now: f64, stat: Stat) -> Option<f64> {
        let start = self.points.partition_point(|p| p.0 < from);
        let mut out: Option<f64> = None;
        let mut n = 0.0;
        for &(at, v, visible) in &self.points[start..] {
            if at >= to {
                break;
            }
            if visible > now {
                continue;
            }
            n += 1.0;
            out = Some(out.map_or(v, |o| match stat {
                Stat::Maximum => o.max(v),
                Stat::Minimum => o.min(v),
                Stat::Average => o + v,
            }));
        }
        match stat {
            Stat::Average => out.map(|sum| sum / n),
            _ => out,
        }
    }

    /// The statistic per period for the `n` periods of `period` seconds ending at `now`
    /// (oldest first).
    pub fn periods(&self, now: f64, period: f64, n: u32, stat: Stat) -> Vec<Option<f64>> {
        let end = (now / period).floor() * period;
        (0..n)
            .rev()
            .map(|k| {
                let to = end - f64::from(k) * period;
                self.stat(to - period, to, now, stat)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u32, m: u32, missing: Missing) -> AlarmSpec {
        AlarmSpec {
            period: 60.0,
            evaluation_periods: n,
            datapoints_to_alarm: m,
            threshold: 0.0,
            compare: Compare::Greater,
            missing,
        }
    }

    #[test]
    fn two_of_two_needs_both_periods_breaching() {
        let s = spec(2, 2, Missing::Missing);
        assert_eq!(
            evaluate(&s, &[Some(0.0), Some(3.0)], State::Ok),
            (State::Ok, Some(3.0))
        );
        assert_eq!(
            evaluate(&s, &[Some(1.0), Some(3.0)], State::Ok),
            (State::Alarm, Some(3.0))
        );
        assert_eq!(evaluate(&s, &[Some(2.0), None], State::Ok).0, State::Ok);
    }

    #[test]
    fn missing_data_is_treated_as_documented() {
        let none = [None, None];
        assert_eq!(
            evaluate(&spec(2, 2, Missing::Missing), &none, State::Alarm).0,
            State::InsufficientData
        );
        assert_eq!(
            evaluate(&spec(2, 2, Missing::NotBreaching), &none, State::Alarm).0,
            State::Ok
        );
        assert_eq!(
            evaluate(&spec(2, 2, Missing::Breaching), &none, State::Ok).0,
            State::Alarm
        );
        assert_eq!(
            evaluate(&spec(2, 2, Missing::Ignore), &none, State::Alarm).0,
            State::Alarm
        );
        // One present breaching point and one missing: 2 of 2 only if missing breaches.
        let half = [None, Some(1.0)];
        assert_eq!(
            evaluate(&spec(2, 2, Missing::NotBreaching), &half, State::Ok).0,
            State::Ok
        );
        assert_eq!(
            evaluate(&spec(2, 2, Missing::Breaching), &half, State::Ok).0,
            State::Alarm
        );
    }

    #[test]
    fn periods_see_only_what_has_arrived() {
        let mut s = Series::default();
        s.put(0.0, 1.0, 0.0);
        s.put(30.0, 5.0, 90.0); // readable a minute late
        s.put(60.0, 2.0, 60.0);
        assert_eq!(
            s.periods(120.0, 60.0, 2, Stat::Maximum),
            vec![Some(5.0), Some(2.0)]
        );
        assert_eq!(s.periods(60.0, 60.0, 1, Stat::Maximum), vec![Some(1.0)]);
        assert_eq!(
            s.periods(120.0, 60.0, 2, Stat::Minimum),
            vec![Some(1.0), Some(2.0)]
        );
        assert_eq!(s.periods(240.0, 60.0, 2, Stat::Maximum), vec![None, None]);
    }
}
