//! The autoscaling signal: QueueDepth, TaskDemand and DesiredWorkers.
//!
//! Inputs are recognised on the raw StatsD names (after the `--statsd-prefix`),
//! independently of the mapping rules and of the cardinality cap, so neither a
//! user's mapping file nor a flood of per-task series can corrupt the signal:
//!
//! * `pool.queued_slots.<pool>` (Airflow 2.x, and 3.x with legacy names on), or
//!   `pool.queued_slots` carrying a `pool_name` tag (3.x with tags): one reading
//!   per pool. A **tag-less** `pool.queued_slots` — which Airflow 3 sends once per
//!   pool, so a last-value gauge would hold whichever pool came last — tells the
//!   scheduler is alive but is not a reading.
//! * `executor.queued_tasks` / `executor.running_tasks`, plain or suffixed with the
//!   executor class (`.CeleryExecutor`). When suffixed readings are fresh they are
//!   summed and the plain one is ignored (it repeats one of them); otherwise the
//!   plain one is used. Adding both would double the demand.
//! * `scheduler_heartbeat`: only freshness.
//!
//! A reading counts while it is younger than the freshness window; when no input
//! has arrived for longer than that, the signal is **withheld** (not sent as zero),
//! so CloudWatch alarms see missing data rather than a false "no work".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::statsd::{Line, MetricType, Sample};

/// What a raw name contributes to the signal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// Queued slots of one pool.
    PoolQueued(Arc<str>),
    /// Tasks queued in the executor; `None` is the plain (unsuffixed) name.
    ExecutorQueued(Option<Arc<str>>),
    /// Tasks running in the executor; `None` is the plain name.
    ExecutorRunning(Option<Arc<str>>),
    /// Proof of life only.
    Heartbeat,
}

/// Recognises a signal input. `prefix` is Airflow's `statsd_prefix` (empty for none).
pub fn role_of(prefix: &str, line: &Line<'_>) -> Option<Role> {
    let name = if prefix.is_empty() {
        line.name
    } else {
        line.name.strip_prefix(prefix)?.strip_prefix('.')?
    };
    if name == "scheduler_heartbeat" {
        return Some(Role::Heartbeat);
    }
    if line.kind != MetricType::Gauge {
        return None;
    }
    if let Some(rest) = name.strip_prefix("pool.queued_slots") {
        if let Some(pool) = rest.strip_prefix('.') {
            return (!pool.is_empty()).then(|| Role::PoolQueued(pool.into()));
        }
        if rest.is_empty() {
            return Some(match line.tag("pool_name").or_else(|| line.tag("pool")) {
                Some(pool) if !pool.is_empty() => Role::PoolQueued(pool.into()),
                // Ambiguous: alive, but not attributable to a pool.
                _ => Role::Heartbeat,
            });
        }
        return None;
    }
    for (base, running) in [
        ("executor.queued_tasks", false),
        ("executor.running_tasks", true),
    ] {
        if let Some(rest) = name.strip_prefix(base) {
            let class: Option<Arc<str>> = if rest.is_empty() {
                line.tag("executor")
                    .or_else(|| line.tag("name"))
                    .map(Into::into)
            } else {
                Some(rest.strip_prefix('.').filter(|c| !c.is_empty())?.into())
            };
            return Some(if running {
                Role::ExecutorRunning(class)
            } else {
                Role::ExecutorQueued(class)
            });
        }
    }
    None
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    value: f64,
    at: Instant,
}

/// The limits of the signal computation.
#[derive(Debug, Clone, Copy)]
pub struct SignalSettings {
    /// How long after the last input the signal is still sent.
    pub freshness: Duration,
    /// Tasks one worker runs at once (Celery `worker_concurrency`).
    pub worker_concurrency: u32,
    /// Lower clamp of DesiredWorkers.
    pub min_workers: u32,
    /// Upper clamp of DesiredWorkers.
    pub max_workers: u32,
}

/// The computed signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signal {
    /// Sum over pools of queued slots.
    pub queue_depth: f64,
    /// Executor queued + running tasks.
    pub task_demand: f64,
    /// ceil(demand / concurrency), clamped.
    pub desired_workers: f64,
}

/// Readings keyed by role, at most [`SignalInputs::MAX_ROLES`] of them.
#[derive(Debug, Default)]
pub struct SignalInputs {
    readings: HashMap<Role, Reading, foldhash::fast::RandomState>,
    last_input: Option<Instant>,
    /// Inputs refused because the table was full (an attack or a misconfigured prefix).
    pub refused: u64,
}

impl SignalInputs {
    /// Upper bound of distinct readings kept (pools plus executors).
    pub const MAX_ROLES: usize = 4096;

    /// Applies one sample of a line whose role is `role`.
    pub fn observe(&mut self, role: &Role, sample: Option<Sample>, now: Instant) {
        self.last_input = Some(now);
        let Some(sample) = sample else { return };
        if *role == Role::Heartbeat {
            return;
        }
        let update = |r: &mut Reading| {
            match sample {
                Sample::Value(v) => r.value = v,
                Sample::Delta(d) => r.value += d,
            }
            r.at = now;
        };
        // One lookup for a known role (every line of a pool gauge comes here).
        if let Some(r) = self.readings.get_mut(role) {
            update(r);
            return;
        }
        if self.readings.len() >= Self::MAX_ROLES {
            self.refused += 1;
            return;
        }
        update(self.readings.entry(role.clone()).or_insert(Reading {
            value: 0.0,
            at: now,
        }));
    }

    /// How long since any input arrived; `None` before the first.
    pub fn source_age(&self, now: Instant) -> Option<Duration> {
        self.last_input.map(|t| now.saturating_duration_since(t))
    }

    /// Computes the signal, or `None` when the source is stale (withheld).
    pub fn compute(&mut self, settings: &SignalSettings, now: Instant) -> Option<Signal> {
        let fresh = |r: &Reading| now.saturating_duration_since(r.at) <= settings.freshness;
        // Forget readings long gone (deleted pools, replaced executors).
        let forget = settings.freshness * 10;
        self.readings
            .retain(|_, r| now.saturating_duration_since(r.at) <= forget);
        if self.source_age(now)? > settings.freshness {
            return None;
        }
        let mut queue_depth = 0.0;
        let (mut q_named, mut q_plain, mut q_any_named) = (0.0, 0.0, false);
        let (mut r_named, mut r_plain, mut r_any_named) = (0.0, 0.0, false);
        for (role, r) in &self.readings {
            if !fresh(r) {
                continue;
            }
            match role {
                Role::PoolQueued(_) => queue_depth += r.value,
                Role::ExecutorQueued(Some(_)) => {
                    q_named += r.value;
                    q_any_named = true;
                }
                Role::ExecutorQueued(None) => q_plain = r.value,
                Role::ExecutorRunning(Some(_)) => {
                    r_named += r.value;
                    r_any_named = true;
                }
                Role::ExecutorRunning(None) => r_plain = r.value,
                Role::Heartbeat => {}
            }
        }
        let queued = if q_any_named { q_named } else { q_plain };
        let running = if r_any_named { r_named } else { r_plain };
        let task_demand = (queued + running).max(0.0);
        let per_worker = f64::from(settings.worker_concurrency.max(1));
        let desired = (task_demand / per_worker).ceil().clamp(
            f64::from(settings.min_workers),
            f64::from(settings.max_workers.max(settings.min_workers)),
        );
        Some(Signal {
            queue_depth: queue_depth.max(0.0),
            task_demand,
            desired_workers: desired,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statsd::parse_line;

    fn settings() -> SignalSettings {
        SignalSettings {
            freshness: Duration::from_secs(30),
            worker_concurrency: 16,
            min_workers: 0,
            max_workers: 10,
        }
    }

    fn feed(inputs: &mut SignalInputs, text: &str, now: Instant) {
        let line = parse_line(text.as_bytes()).unwrap();
        if let Some(role) = role_of("airflow", &line) {
            inputs.observe(&role, line.samples().next(), now);
        }
    }

    #[test]
    fn roles_are_recognised() {
        let r = |t: &str| role_of("airflow", &parse_line(t.as_bytes()).unwrap());
        assert_eq!(
            r("airflow.pool.queued_slots.default_pool:3|g"),
            Some(Role::PoolQueued("default_pool".into()))
        );
        assert_eq!(
            r("airflow.pool.queued_slots:3|g|#pool_name:etl"),
            Some(Role::PoolQueued("etl".into()))
        );
        assert_eq!(r("airflow.pool.queued_slots:3|g"), Some(Role::Heartbeat));
        assert_eq!(
            r("airflow.executor.running_tasks.CeleryExecutor:3|g"),
            Some(Role::ExecutorRunning(Some("CeleryExecutor".into())))
        );
        assert_eq!(
            r("airflow.executor.queued_tasks:3|g"),
            Some(Role::ExecutorQueued(None))
        );
        assert_eq!(r("airflow.scheduler_heartbeat:1|c"), Some(Role::Heartbeat));
        assert_eq!(r("other.pool.queued_slots.x:3|g"), None);
        assert_eq!(r("airflow.pool.queued_slots.x:3|c"), None);
        assert_eq!(r("airflow.pool.queued_slotsx:3|g"), None);
    }

    #[test]
    fn the_airflow3_collision_does_not_corrupt_the_signal() {
        let mut s = SignalInputs::default();
        let now = Instant::now();
        // Legacy per-pool names, then the tag-less new name once per pool (last = 1).
        for line in [
            "airflow.pool.queued_slots.default_pool:30|g",
            "airflow.pool.queued_slots:30|g",
            "airflow.pool.queued_slots.etl:12|g",
            "airflow.pool.queued_slots:12|g",
            "airflow.pool.queued_slots.tiny:1|g",
            "airflow.pool.queued_slots:1|g",
            // Executor: plain and suffixed both sent for the single Celery executor.
            "airflow.executor.queued_tasks:20|g",
            "airflow.executor.queued_tasks.CeleryExecutor:20|g",
            "airflow.executor.running_tasks:50|g",
            "airflow.executor.running_tasks.CeleryExecutor:50|g",
        ] {
            feed(&mut s, line, now);
        }
        let sig = s.compute(&settings(), now).unwrap();
        assert_eq!(sig.queue_depth, 43.0);
        assert_eq!(sig.task_demand, 70.0);
        assert_eq!(sig.desired_workers, 5.0); // ceil(70 / 16)
    }

    #[test]
    fn plain_executor_names_alone_are_used() {
        let mut s = SignalInputs::default();
        let now = Instant::now();
        feed(&mut s, "airflow.executor.queued_tasks:3|g", now);
        feed(&mut s, "airflow.executor.running_tasks:1000|g", now);
        let sig = s.compute(&settings(), now).unwrap();
        assert_eq!(sig.task_demand, 1003.0);
        assert_eq!(sig.desired_workers, 10.0, "clamped to max");
        let mut lo = settings();
        lo.min_workers = 2;
        feed(&mut s, "airflow.executor.running_tasks:0|g", now);
        feed(&mut s, "airflow.executor.queued_tasks:0|g", now);
        assert_eq!(s.compute(&lo, now).unwrap().desired_workers, 2.0);
    }

    #[test]
    fn withheld_when_the_source_is_silent() {
        let mut s = SignalInputs::default();
        let t0 = Instant::now();
        assert_eq!(s.compute(&settings(), t0), None, "nothing seen yet");
        feed(&mut s, "airflow.pool.queued_slots.default_pool:5|g", t0);
        assert!(
            s.compute(&settings(), t0 + Duration::from_secs(29))
                .is_some()
        );
        assert_eq!(s.compute(&settings(), t0 + Duration::from_secs(31)), None);
        assert_eq!(
            s.source_age(t0 + Duration::from_secs(31)),
            Some(Duration::from_secs(31))
        );
        // A stale pool stops counting while a fresh heartbeat keeps the signal alive.
        feed(
            &mut s,
            "airflow.scheduler_heartbeat:1|c",
            t0 + Duration::from_secs(40),
        );
        let sig = s
            .compute(&settings(), t0 + Duration::from_secs(40))
            .unwrap();
        assert_eq!(sig.queue_depth, 0.0);
    }

    #[test]
    fn gauge_deltas_apply_to_readings() {
        let mut s = SignalInputs::default();
        let now = Instant::now();
        feed(&mut s, "airflow.pool.queued_slots.p:5|g", now);
        feed(&mut s, "airflow.pool.queued_slots.p:+3|g", now);
        feed(&mut s, "airflow.pool.queued_slots.p:-1|g", now);
        assert_eq!(s.compute(&settings(), now).unwrap().queue_depth, 7.0);
    }
}
