//! The replay: one-second steps of simulated time through every stage, in the order data
//! flows in production:
//!
//! trace → scheduler queues task instances → Celery workers run them ([`crate::cluster`])
//! → every heartbeat the scheduler sends `executor.*` and `pool.queued_slots` gauges →
//! metricship's own signal code ([`metricship::signal`]) publishes DesiredWorkers and
//! QueueDepth every flush interval → CloudWatch stores them, and Container Insights'
//! DesiredTaskCount a minute late ([`crate::cloudwatch`]) → the alarms evaluate every
//! minute → step scaling ([`crate::scaling`]) sets the service's desired count.

use std::time::{Duration, Instant};

use metricship::signal::{Role, SignalInputs, SignalSettings};
use metricship::statsd::Sample;

use crate::cloudwatch::{AlarmSpec, Compare, Missing, Series, Stat, State, evaluate};
use crate::cluster::{Cluster, ClusterSettings, Gauges};
use crate::policy::{Params, PolicyKind};
use crate::scaling::{StepPolicy, Target};
use crate::trace::Task;

/// One minute of the run, for the report and the chart.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Minute {
    /// Minute since the start.
    pub minute: u32,
    /// Tasks queued and running (the demand).
    pub demand: usize,
    /// Tasks waiting for a slot.
    pub queued: usize,
    /// The service's desired count.
    pub desired: u32,
    /// Worker tasks that exist (billed).
    pub workers: usize,
}

/// What a run produced, before it is summarised.
#[derive(Debug)]
pub struct Outcome {
    /// Per minute.
    pub timeline: Vec<Minute>,
    /// When each task instance started (`None`: never, by the end).
    pub started_at: Vec<Option<f64>>,
    /// Billed worker-seconds.
    pub worker_seconds: f64,
    /// Tasks killed by scale-in.
    pub killed: u64,
    /// Scaling activities.
    pub activities: u64,
}

/// One alarm and the policy it invokes.
struct Alarm {
    spec: AlarmSpec,
    state: State,
    policy: StepPolicy,
}

/// Replays `tasks` under `policy`. The run lasts until the last task could have ended
/// plus an hour (so scale-in is seen), in whole minutes.
pub fn run(tasks: &[Task], policy: PolicyKind, p: &Params, seed: u64) -> Outcome {
    let durations: Vec<f64> = tasks.iter().map(|t| t.duration_s.max(1.0)).collect();
    let last = tasks
        .iter()
        .map(|t| t.queued_at_s + t.duration_s)
        .fold(0.0, f64::max);
    let end = ((last + 3600.0) / 60.0).ceil() * 60.0;
    let mut cluster = Cluster::new(
        ClusterSettings {
            concurrency: p.worker_concurrency as usize,
            stop_timeout: p.stop_timeout.as_secs_f64(),
            start_latency: (
                p.start_latency.0.as_secs_f64(),
                p.start_latency.1.as_secs_f64(),
            ),
            protection: p.protection,
            idle_grace: p.idle_grace.as_secs_f64(),
        },
        tasks.len(),
        seed,
    );
    let m = &p.module;
    let mut target = Target::new(m.min_capacity, m.max_capacity);
    let (mut out_alarm, mut in_alarm) = alarms(policy, p);

    // metricship, on a clock of its own: simulated seconds after a fixed instant.
    let t0 = Instant::now();
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    let mut inputs = SignalInputs::default();
    let signal_settings = SignalSettings {
        freshness: p.freshness,
        worker_concurrency: p.worker_concurrency,
        min_workers: m.min_capacity,
        max_workers: m.max_capacity,
    };
    let (queued_role, running_role) = (Role::ExecutorQueued(None), Role::ExecutorRunning(None));
    let pool_role = Role::PoolQueued("default_pool".into());

    let mut desired_workers = Series::default();
    let mut queue_depth = Series::default();
    let mut task_demand = Series::default();
    let mut task_count = Series::default();

    let every = |s: u64, d: Duration| d.as_secs() > 0 && s.is_multiple_of(d.as_secs());
    let mut next_task = 0;
    let mut timeline = Vec::with_capacity((end / 60.0) as usize);
    let mut worker_seconds = 0.0;
    let mut g = Gauges::default();
    for s in 0..end as u64 {
        let now = s as f64;
        while next_task < tasks.len() && tasks[next_task].queued_at_s <= now {
            cluster.enqueue(next_task);
            next_task += 1;
        }
        g = cluster.step(now, &durations);
        worker_seconds += g.workers as f64;
        if every(s, p.scheduler_metrics_every) {
            let t = at(now);
            inputs.observe(&queued_role, Some(Sample::Value(g.queued as f64)), t);
            inputs.observe(&running_role, Some(Sample::Value(g.running as f64)), t);
            inputs.observe(&pool_role, Some(Sample::Value(g.queued as f64)), t);
        }
        if every(s, p.flush_interval) {
            let (signal, _) = inputs.compute(&signal_settings, at(now));
            if let Some(d) = signal.desired_workers {
                desired_workers.put(now, d, now);
            }
            if let Some(q) = signal.queue_depth {
                queue_depth.put(now, q, now);
            }
            if let Some(d) = signal.task_demand {
                task_demand.put(now, d, now);
            }
        }
        if s.is_multiple_of(60) {
            // Container Insights reports the service's desired count once a minute,
            // readable only after its delay.
            let desired = f64::from(cluster.desired());
            task_count.put(now, desired, now + p.insights_delay.as_secs_f64());
            timeline.push(Minute {
                minute: (s / 60) as u32,
                demand: g.queued + g.running,
                queued: g.queued,
                desired: cluster.desired(),
                workers: g.workers,
            });
            // The alarms evaluate every minute.
            for (alarm, is_out) in [(&mut out_alarm, true), (&mut in_alarm, false)] {
                let values = match policy {
                    PolicyKind::Deficit => {
                        let stat = if is_out { Stat::Maximum } else { Stat::Minimum };
                        let n = alarm.spec.evaluation_periods;
                        let want = desired_workers.periods(now, alarm.spec.period, n, stat);
                        let have = task_count.periods(now, alarm.spec.period, n, stat);
                        // deficit = desired - FILL(running, 0); surplus the other way.
                        want.iter()
                            .zip(&have)
                            .map(|(w, h)| {
                                w.map(|w| {
                                    let h = h.unwrap_or(0.0);
                                    if is_out { w - h } else { h - w }
                                })
                            })
                            .collect::<Vec<_>>()
                    }
                    PolicyKind::QueueDepth => queue_depth.periods(
                        now,
                        alarm.spec.period,
                        alarm.spec.evaluation_periods,
                        Stat::Maximum,
                    ),
                    PolicyKind::CapacityTarget => {
                        let n = alarm.spec.evaluation_periods;
                        let period = alarm.spec.period;
                        let demand = task_demand.periods(now, period, n, Stat::Average);
                        let running = task_count.periods(now, period, n, Stat::Average);
                        let slots = f64::from(p.worker_concurrency);
                        demand
                            .iter()
                            .zip(&running)
                            .map(|(d, r)| {
                                d.map(|d| match r.unwrap_or(0.0) {
                                    r if r > 0.0 => 100.0 * d / (slots * r),
                                    _ if d > 0.0 => 1000.0,
                                    _ => 100.0,
                                })
                            })
                            .collect()
                    }
                };
                let (state, worst) = evaluate(&alarm.spec, &values, alarm.state);
                alarm.state = state;
                if state == State::Alarm && policy == PolicyKind::CapacityTarget {
                    // Target tracking scales on the latest value, not on a step.
                    if let Some(Some(metric)) = values.last()
                        && let Some(n) = target.track(
                            *metric,
                            TRACKING_TARGET,
                            (
                                f64::from(m.scale_out_cooldown),
                                f64::from(m.scale_in_cooldown),
                            ),
                            now,
                            cluster.desired(),
                        )
                    {
                        cluster.set_desired(n, now);
                    }
                } else if state == State::Alarm {
                    // The module aggregates the scale-out breach with Maximum (add the
                    // largest deficit seen) and the scale-in breach with Minimum (remove
                    // only the surplus that lasted the whole window).
                    let delta = if is_out || policy != PolicyKind::Deficit {
                        worst.map_or(0.0, |w| (w - alarm.spec.threshold).abs())
                    } else {
                        values
                            .iter()
                            .flatten()
                            .copied()
                            .fold(f64::INFINITY, f64::min)
                    };
                    if let Some(n) = target.invoke(&alarm.policy, delta, now, cluster.desired()) {
                        cluster.set_desired(n, now);
                    }
                }
            }
        }
    }
    let _ = g;
    Outcome {
        timeline,
        started_at: cluster.started_at.clone(),
        worker_seconds,
        killed: cluster.killed,
        activities: target.activities,
    }
}

/// The capacity-reservation policy's target, percent.
const TRACKING_TARGET: f64 = 100.0;

/// The scale-out and scale-in alarms of a policy, with their policies.
fn alarms(policy: PolicyKind, p: &Params) -> (Alarm, Alarm) {
    let m = &p.module;
    match policy {
        PolicyKind::Deficit => (
            Alarm {
                spec: AlarmSpec {
                    period: 60.0,
                    evaluation_periods: m.scale_out_evaluation_periods,
                    datapoints_to_alarm: m.scale_out_evaluation_periods,
                    threshold: 0.0,
                    compare: Compare::Greater,
                    missing: Missing::Missing,
                },
                state: State::InsufficientData,
                policy: StepPolicy::deficit_scale_out(
                    m.max_capacity,
                    f64::from(m.scale_out_cooldown),
                ),
            },
            Alarm {
                spec: AlarmSpec {
                    period: f64::from(m.scale_in_period),
                    evaluation_periods: m.scale_in_evaluation_periods,
                    datapoints_to_alarm: m.scale_in_evaluation_periods,
                    threshold: 0.0,
                    compare: Compare::Greater,
                    missing: Missing::NotBreaching,
                },
                state: State::InsufficientData,
                policy: StepPolicy::surplus_scale_in(
                    m.scale_in_max_step,
                    f64::from(m.scale_in_cooldown),
                ),
            },
        ),
        // The alarms target tracking creates, as commonly observed (AWS documents neither):
        // above the target for 3 of 3 minutes, below 90 % of it for 15 of 15.
        PolicyKind::CapacityTarget => (
            Alarm {
                spec: AlarmSpec {
                    period: 60.0,
                    evaluation_periods: 3,
                    datapoints_to_alarm: 3,
                    threshold: TRACKING_TARGET,
                    compare: Compare::Greater,
                    missing: Missing::Missing,
                },
                state: State::InsufficientData,
                policy: StepPolicy::single(0, 0.0),
            },
            Alarm {
                spec: AlarmSpec {
                    period: 60.0,
                    evaluation_periods: 15,
                    datapoints_to_alarm: 15,
                    threshold: 0.9 * TRACKING_TARGET,
                    compare: Compare::Less,
                    missing: Missing::Missing,
                },
                state: State::InsufficientData,
                policy: StepPolicy::single(0, 0.0),
            },
        ),
        // The reference platform's: QueueDepth above 20 for 2 x 60 s adds a worker,
        // below 5 for 5 x 300 s removes one; the module's cooldowns.
        PolicyKind::QueueDepth => (
            Alarm {
                spec: AlarmSpec {
                    period: 60.0,
                    evaluation_periods: 2,
                    datapoints_to_alarm: 2,
                    threshold: 20.0,
                    compare: Compare::Greater,
                    missing: Missing::Missing,
                },
                state: State::InsufficientData,
                policy: StepPolicy::single(1, f64::from(m.scale_out_cooldown)),
            },
            Alarm {
                spec: AlarmSpec {
                    period: 300.0,
                    evaluation_periods: 5,
                    datapoints_to_alarm: 5,
                    threshold: 5.0,
                    compare: Compare::Less,
                    missing: Missing::NotBreaching,
                },
                state: State::InsufficientData,
                policy: StepPolicy::single(-1, f64::from(m.scale_in_cooldown)),
            },
        ),
    }
}
