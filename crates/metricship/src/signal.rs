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
//! A reading counts while it is younger than the freshness window. Each signal metric
//! is computed only from its own inputs and is **withheld** (not sent as zero) while
//! they are stale, so CloudWatch alarms see missing data rather than a false "no work":
//!
//! * QueueDepth (and `celery.queue_depth`) needs a fresh pool reading;
//! * TaskDemand and DesiredWorkers need fresh `executor.queued_tasks` **and**
//!   `executor.running_tasks` readings. A heartbeat or pool gauges that keep coming
//!   while the executor gauges stop (Airflow's `metrics_allow_list` without
//!   `executor.*`, or a scheduler that restarted and has not sent them yet) withhold
//!   them: reading the missing executor as 0 would scale the workers in under
//!   running tasks.

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

/// The longest pool name Airflow stores (`slot_pool.pool` is a `String(256)` column):
/// a longer one is not Airflow's, and keeping it would let a sender grow the readings
/// table by kilobytes per entry.
pub const MAX_POOL_NAME: usize = 256;

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
            return (!pool.is_empty() && pool.len() <= MAX_POOL_NAME)
                .then(|| Role::PoolQueued(pool.into()));
        }
        if rest.is_empty() {
            return Some(match line.tag("pool_name").or_else(|| line.tag("pool")) {
                Some(pool) if !pool.is_empty() && pool.len() <= MAX_POOL_NAME => {
                    Role::PoolQueued(pool.into())
                }
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

/// The computed signal: each metric is `None` (withheld) while its inputs are stale.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Signal {
    /// Sum over pools of queued slots.
    pub queue_depth: Option<f64>,
    /// Executor queued + running tasks.
    pub task_demand: Option<f64>,
    /// ceil(demand / concurrency), clamped.
    pub desired_workers: Option<f64>,
}

impl Signal {
    /// Whether every metric is withheld.
    pub fn is_empty(&self) -> bool {
        self.queue_depth.is_none() && self.task_demand.is_none()
    }
}

/// A group of signal inputs, for saying which one is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// `pool.queued_slots` per pool (QueueDepth).
    PoolQueuedSlots,
    /// `executor.queued_tasks` (TaskDemand, DesiredWorkers).
    ExecutorQueuedTasks,
    /// `executor.running_tasks` (TaskDemand, DesiredWorkers).
    ExecutorRunningTasks,
}

impl Input {
    /// Every input group.
    pub const ALL: [Input; 3] = [
        Input::PoolQueuedSlots,
        Input::ExecutorQueuedTasks,
        Input::ExecutorRunningTasks,
    ];

    /// The Airflow metric name (without the prefix), also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Input::PoolQueuedSlots => "pool.queued_slots",
            Input::ExecutorQueuedTasks => "executor.queued_tasks",
            Input::ExecutorRunningTasks => "executor.running_tasks",
        }
    }
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

    /// Computes the signal; each metric is withheld while its own inputs are stale.
    /// Also returns the inputs that are missing (stale or never seen).
    pub fn compute(&mut self, settings: &SignalSettings, now: Instant) -> (Signal, Vec<Input>) {
        let fresh = |r: &Reading| now.saturating_duration_since(r.at) <= settings.freshness;
        // Forget readings long gone (deleted pools, replaced executors).
        let forget = settings.freshness * 10;
        self.readings
            .retain(|_, r| now.saturating_duration_since(r.at) <= forget);
        let (mut pools_fresh, mut queued_fresh, mut running_fresh) = (false, false, false);
        let mut queue_depth = 0.0;
        let (mut q_named, mut q_plain, mut q_any_named) = (0.0, 0.0, false);
        let (mut r_named, mut r_plain, mut r_any_named) = (0.0, 0.0, false);
        for (role, r) in &self.readings {
            if !fresh(r) {
                continue;
            }
            match role {
                Role::PoolQueued(_) => {
                    queue_depth += r.value;
                    pools_fresh = true;
                }
                Role::ExecutorQueued(Some(_)) => {
                    q_named += r.value;
                    q_any_named = true;
                    queued_fresh = true;
                }
                Role::ExecutorQueued(None) => {
                    q_plain = r.value;
                    queued_fresh = true;
                }
                Role::ExecutorRunning(Some(_)) => {
                    r_named += r.value;
                    r_any_named = true;
                    running_fresh = true;
                }
                Role::ExecutorRunning(None) => {
                    r_plain = r.value;
                    running_fresh = true;
                }
                Role::Heartbeat => {}
            }
        }
        let mut missing = Vec::new();
        for (input, fresh) in [
            (Input::PoolQueuedSlots, pools_fresh),
            (Input::ExecutorQueuedTasks, queued_fresh),
            (Input::ExecutorRunningTasks, running_fresh),
        ] {
            if !fresh {
                missing.push(input);
            }
        }
        let queued = if q_any_named { q_named } else { q_plain };
        let running = if r_any_named { r_named } else { r_plain };
        let task_demand = (queued_fresh && running_fresh).then(|| (queued + running).max(0.0));
        let per_worker = f64::from(settings.worker_concurrency.max(1));
        let desired_workers = task_demand.map(|demand| {
            (demand / per_worker).ceil().clamp(
                f64::from(settings.min_workers),
                f64::from(settings.max_workers.max(settings.min_workers)),
            )
        });
        let signal = Signal {
            queue_depth: pools_fresh.then_some(queue_depth.max(0.0)),
            task_demand,
            desired_workers,
        };
        (signal, missing)
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
        let (sig, missing) = s.compute(&settings(), now);
        assert_eq!(sig.queue_depth, Some(43.0));
        assert_eq!(sig.task_demand, Some(70.0));
        assert_eq!(sig.desired_workers, Some(5.0)); // ceil(70 / 16)
        assert!(missing.is_empty());
    }

    #[test]
    fn plain_executor_names_alone_are_used() {
        let mut s = SignalInputs::default();
        let now = Instant::now();
        feed(&mut s, "airflow.executor.queued_tasks:3|g", now);
        feed(&mut s, "airflow.executor.running_tasks:1000|g", now);
        let (sig, missing) = s.compute(&settings(), now);
        assert_eq!(sig.task_demand, Some(1003.0));
        assert_eq!(sig.desired_workers, Some(10.0), "clamped to max");
        assert_eq!(sig.queue_depth, None, "no pool reading: withheld");
        assert_eq!(missing, vec![Input::PoolQueuedSlots]);
        let mut lo = settings();
        lo.min_workers = 2;
        feed(&mut s, "airflow.executor.running_tasks:0|g", now);
        feed(&mut s, "airflow.executor.queued_tasks:0|g", now);
        assert_eq!(s.compute(&lo, now).0.desired_workers, Some(2.0));
    }

    #[test]
    fn withheld_when_the_source_is_silent() {
        let mut s = SignalInputs::default();
        let t0 = Instant::now();
        assert!(s.compute(&settings(), t0).0.is_empty(), "nothing seen yet");
        feed(&mut s, "airflow.pool.queued_slots.default_pool:5|g", t0);
        assert_eq!(
            s.compute(&settings(), t0 + Duration::from_secs(29))
                .0
                .queue_depth,
            Some(5.0)
        );
        assert!(
            s.compute(&settings(), t0 + Duration::from_secs(31))
                .0
                .is_empty()
        );
        assert_eq!(
            s.source_age(t0 + Duration::from_secs(31)),
            Some(Duration::from_secs(31))
        );
        // A heartbeat alone computes nothing: a stale pool is not an empty queue.
        feed(
            &mut s,
            "airflow.scheduler_heartbeat:1|c",
            t0 + Duration::from_secs(40),
        );
        let (sig, missing) = s.compute(&settings(), t0 + Duration::from_secs(40));
        assert!(sig.is_empty());
        assert_eq!(missing, Input::ALL.to_vec());
    }

    #[test]
    fn silent_executor_gauges_withhold_demand_but_not_queue_depth() {
        let mut s = SignalInputs::default();
        let t0 = Instant::now();
        for line in [
            "airflow.pool.queued_slots.default_pool:7|g",
            "airflow.executor.queued_tasks:20|g",
            "airflow.executor.running_tasks:50|g",
        ] {
            feed(&mut s, line, t0);
        }
        assert_eq!(s.compute(&settings(), t0).0.desired_workers, Some(5.0));
        // 40 s later only the heartbeat and the pool gauges still come.
        let t1 = t0 + Duration::from_secs(40);
        feed(&mut s, "airflow.scheduler_heartbeat:1|c", t1);
        feed(&mut s, "airflow.pool.queued_slots.default_pool:9|g", t1);
        let (sig, missing) = s.compute(&settings(), t1);
        assert_eq!(sig.queue_depth, Some(9.0));
        assert_eq!((sig.task_demand, sig.desired_workers), (None, None));
        assert_eq!(
            missing,
            vec![Input::ExecutorQueuedTasks, Input::ExecutorRunningTasks]
        );
        // Half the executor's inputs is not enough either: the other half is not 0.
        feed(&mut s, "airflow.executor.queued_tasks:3|g", t1);
        let (sig, missing) = s.compute(&settings(), t1);
        assert_eq!(sig.desired_workers, None);
        assert_eq!(missing, vec![Input::ExecutorRunningTasks]);
    }

    #[test]
    fn pool_names_longer_than_airflow_allows_are_not_readings() {
        let long = "p".repeat(MAX_POOL_NAME + 1);
        let line = format!("airflow.pool.queued_slots.{long}:3|g");
        assert_eq!(
            role_of("airflow", &parse_line(line.as_bytes()).unwrap()),
            None
        );
        let tagged = format!("airflow.pool.queued_slots:3|g|#pool_name:{long}");
        assert_eq!(
            role_of("airflow", &parse_line(tagged.as_bytes()).unwrap()),
            Some(Role::Heartbeat)
        );
    }

    #[test]
    fn gauge_deltas_apply_to_readings() {
        let mut s = SignalInputs::default();
        let now = Instant::now();
        feed(&mut s, "airflow.pool.queued_slots.p:5|g", now);
        feed(&mut s, "airflow.pool.queued_slots.p:+3|g", now);
        feed(&mut s, "airflow.pool.queued_slots.p:-1|g", now);
        assert_eq!(s.compute(&settings(), now).0.queue_depth, Some(7.0));
    }
}
