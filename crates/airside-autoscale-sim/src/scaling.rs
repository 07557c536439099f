//! Application Auto Scaling's step scaling: step adjustments, cooldowns, and the
//! scalable target's bounds.
//!
//! Cooldown rules, from the `StepScalingPolicyConfiguration` API reference (verbatim):
//! * scale-out: "While the cooldown period is in effect, capacity added by the initiating
//!   scale-out activity is calculated as part of the desired capacity for the next
//!   scale-out activity." (an alarm asking for +3 two minutes after a +2 adds one);
//! * scale-in: "scale-in activities are blocked until the cooldown period has expired.
//!   However, if another alarm triggers a scale-out activity during the cooldown period
//!   after a scale-in activity, Application Auto Scaling scales out the target
//!   immediately" (and that scale-in cooldown stops).

/// One step: applies when `lower <= breach < upper` (an open end is `None`), where the
/// breach is the metric's distance above (or below) the alarm threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Lower bound (inclusive).
    pub lower: Option<f64>,
    /// Upper bound (exclusive).
    pub upper: Option<f64>,
    /// ChangeInCapacity.
    pub adjustment: i32,
}

/// A step scaling policy.
#[derive(Debug, Clone)]
pub struct StepPolicy {
    /// Its steps.
    pub steps: Vec<Step>,
    /// Cooldown, seconds.
    pub cooldown: f64,
}

impl StepPolicy {
    /// The step for a breach of `delta`.
    pub fn adjustment(&self, delta: f64) -> Option<i32> {
        self.steps
            .iter()
            .find(|s| s.lower.is_none_or(|l| delta >= l) && s.upper.is_none_or(|u| delta < u))
            .map(|s| s.adjustment)
    }

    /// The shipped scale-out policy, step by step as the module writes it: deficit `d`
    /// adds `d` workers (step k covers `[k - 0.5, k + 0.5)`, the first from 0).
    pub fn deficit_scale_out(max_capacity: u32, cooldown: f64) -> Self {
        let max = max_capacity as i32;
        let steps = (1..=max)
            .map(|k| Step {
                lower: Some(if k == 1 { 0.0 } else { f64::from(k) - 0.5 }),
                upper: (k != max).then(|| f64::from(k) + 0.5),
                adjustment: k,
            })
            .collect();
        Self { steps, cooldown }
    }

    /// The shipped scale-in policy: surplus `s` removes `s` workers, at most `max_step`
    /// (step k covers `[k - 0.5, k + 0.5)`, the first from 0, the last open above).
    pub fn surplus_scale_in(max_step: u32, cooldown: f64) -> Self {
        let max = max_step.max(1) as i32;
        let steps = (1..=max)
            .map(|k| Step {
                lower: Some(if k == 1 { 0.0 } else { f64::from(k) - 0.5 }),
                upper: (k != max).then(|| f64::from(k) + 0.5),
                adjustment: -k,
            })
            .collect();
        Self { steps, cooldown }
    }

    /// One step of `adjustment` for any breach.
    pub fn single(adjustment: i32, cooldown: f64) -> Self {
        Self {
            steps: vec![Step {
                lower: None,
                upper: None,
                adjustment,
            }],
            cooldown,
        }
    }
}

/// The scalable target: its bounds and the cooldowns in effect.
#[derive(Debug, Clone)]
pub struct Target {
    /// min_capacity.
    pub min: u32,
    /// max_capacity.
    pub max: u32,
    /// Last scale-out: when, and the capacity it added.
    last_out: Option<(f64, i32)>,
    /// Last scale-in: when.
    last_in: Option<f64>,
    /// Scaling activities that changed the desired count.
    pub activities: u64,
}

impl Target {
    /// A target between `min` and `max`.
    pub fn new(min: u32, max: u32) -> Self {
        Self {
            min,
            max,
            last_out: None,
            last_in: None,
            activities: 0,
        }
    }

    /// The policy is invoked at `now` with a breach of `delta` while the service wants
    /// `current`: the new desired count, if it changes.
    pub fn invoke(
        &mut self,
        policy: &StepPolicy,
        delta: f64,
        now: f64,
        current: u32,
    ) -> Option<u32> {
        let adj = policy.adjustment(delta)?;
        let wanted = if adj > 0 {
            let already = match self.last_out {
                Some((at, added)) if now < at + policy.cooldown => added,
                _ => 0,
            };
            let more = adj - already;
            if more <= 0 {
                return None;
            }
            self.last_out = Some((now, adj));
            // A scale-out ends a scale-in cooldown.
            self.last_in = None;
            current as i64 + i64::from(more)
        } else if adj < 0 {
            if self.last_in.is_some_and(|at| now < at + policy.cooldown) {
                return None;
            }
            self.last_in = Some(now);
            current as i64 + i64::from(adj)
        } else {
            return None;
        };
        let new = wanted.clamp(i64::from(self.min), i64::from(self.max)) as u32;
        (new != current).then(|| {
            self.activities += 1;
            new
        })
    }
}

impl Target {
    /// Target tracking: the policy is invoked at `now` with the metric at `metric` for a
    /// target of `target`, while the service wants `current`. The new desired count is
    /// proportional, `ceil(current × metric / target)`, and at least one more than
    /// `current` when the metric is above the target (from zero, the proportional rule
    /// alone would never add anything). AWS documents neither the formula nor the case
    /// of zero capacity; this is the simulator's assumption, stated in its README.
    /// Cooldowns as for step scaling.
    pub fn track(
        &mut self,
        metric: f64,
        target: f64,
        cooldowns: (f64, f64),
        now: f64,
        current: u32,
    ) -> Option<u32> {
        let proportional = (f64::from(current) * metric / target).ceil();
        let wanted = if metric > target {
            proportional.max(f64::from(current) + 1.0)
        } else {
            proportional
        };
        let wanted = wanted.clamp(f64::from(self.min), f64::from(self.max)) as i64;
        let delta = (wanted - i64::from(current)) as i32;
        let policy = |cooldown| StepPolicy::single(delta, cooldown);
        match delta.cmp(&0) {
            std::cmp::Ordering::Greater => self.invoke(&policy(cooldowns.0), 1.0, now, current),
            std::cmp::Ordering::Less => self.invoke(&policy(cooldowns.1), 1.0, now, current),
            std::cmp::Ordering::Equal => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_tracking_is_proportional_and_starts_from_zero() {
        let mut t = Target::new(0, 10);
        // No workers, demand: the metric's fixed high value adds one.
        assert_eq!(t.track(1000.0, 100.0, (120.0, 300.0), 0.0, 0), Some(1));
        // 1 worker at 350 %: four.
        assert_eq!(t.track(350.0, 100.0, (120.0, 300.0), 200.0, 1), Some(4));
        // At 50 % with 4: two, and the scale-in cooldown holds the next one.
        assert_eq!(t.track(50.0, 100.0, (120.0, 300.0), 400.0, 4), Some(2));
        assert_eq!(t.track(0.0, 100.0, (120.0, 300.0), 500.0, 2), None);
        assert_eq!(t.track(0.0, 100.0, (120.0, 300.0), 700.0, 2), Some(0));
        assert_eq!(t.track(100.0, 100.0, (120.0, 300.0), 800.0, 3), None);
    }

    #[test]
    fn the_deficit_steps_add_the_deficit() {
        let p = StepPolicy::deficit_scale_out(10, 120.0);
        assert_eq!(p.adjustment(0.5), Some(1));
        assert_eq!(p.adjustment(1.0), Some(1));
        assert_eq!(p.adjustment(3.0), Some(3));
        assert_eq!(p.adjustment(42.0), Some(10));
        assert_eq!(p.adjustment(-1.0), None);
    }

    #[test]
    fn the_surplus_steps_remove_the_surplus_up_to_the_maximum_step() {
        let p = StepPolicy::surplus_scale_in(3, 60.0);
        assert_eq!(p.adjustment(0.2), Some(-1));
        assert_eq!(p.adjustment(1.0), Some(-1));
        assert_eq!(p.adjustment(2.0), Some(-2));
        assert_eq!(p.adjustment(2.6), Some(-3));
        assert_eq!(p.adjustment(30.0), Some(-3));
        let one = StepPolicy::surplus_scale_in(1, 60.0);
        assert_eq!(one.adjustment(7.0), Some(-1));
        let mut t = Target::new(0, 10);
        assert_eq!(t.invoke(&p, 2.0, 0.0, 5), Some(3));
        // The cooldown blocks the next one, not one after it.
        assert_eq!(t.invoke(&p, 2.0, 59.0, 3), None);
        assert_eq!(t.invoke(&p, 5.0, 60.0, 3), Some(0));
    }

    #[test]
    fn a_scale_out_cooldown_counts_what_was_added() {
        let p = StepPolicy::deficit_scale_out(10, 120.0);
        let mut t = Target::new(0, 10);
        assert_eq!(t.invoke(&p, 2.0, 0.0, 0), Some(2));
        // Within the cooldown: +3 asked, +2 already added, so one more.
        assert_eq!(t.invoke(&p, 3.0, 60.0, 2), Some(3));
        // The same ask again within the new cooldown: nothing.
        assert_eq!(t.invoke(&p, 3.0, 120.0, 3), None);
        // After it: the full step.
        assert_eq!(t.invoke(&p, 3.0, 181.0, 3), Some(6));
        assert_eq!(t.activities, 3);
    }

    #[test]
    fn a_scale_in_cooldown_blocks_the_next_scale_in_but_not_a_scale_out() {
        let inp = StepPolicy::single(-1, 300.0);
        let out = StepPolicy::deficit_scale_out(10, 120.0);
        let mut t = Target::new(0, 10);
        assert_eq!(t.invoke(&inp, 1.0, 0.0, 5), Some(4));
        assert_eq!(
            t.invoke(&inp, 1.0, 60.0, 4),
            None,
            "blocked by the cooldown"
        );
        assert_eq!(
            t.invoke(&out, 1.0, 120.0, 4),
            Some(5),
            "scale-out is not blocked"
        );
        assert_eq!(
            t.invoke(&inp, 1.0, 180.0, 5),
            Some(4),
            "and it ended the cooldown"
        );
        assert_eq!(t.invoke(&inp, 1.0, 240.0, 4), None);
        assert_eq!(t.invoke(&inp, 1.0, 480.0, 4), Some(3));
        // Bounds.
        let mut t = Target::new(0, 2);
        assert_eq!(t.invoke(&out, 5.0, 0.0, 0), Some(2));
        assert_eq!(t.invoke(&inp, 1.0, 0.0, 0), None);
    }
}
