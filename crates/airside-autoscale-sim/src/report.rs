//! What a run cost and how long tasks waited, against an oracle that has at every minute
//! exactly `ceil((running + queued) / concurrency)` workers (at most `max_capacity`),
//! with no lag.

use crate::policy::Params;
use crate::sim::Outcome;
use crate::trace::Task;

/// The summary of one trace under one policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Trace name.
    pub trace: String,
    /// Policy name.
    pub policy: String,
    /// Task instances in the trace.
    pub tasks: usize,
    /// Billed worker-minutes.
    pub worker_minutes: f64,
    /// The oracle's worker-minutes.
    pub oracle_worker_minutes: f64,
    /// `worker_minutes / oracle_worker_minutes`.
    pub cost_ratio: f64,
    /// Queue wait (start − queued) of started tasks: median, seconds.
    pub wait_p50_s: f64,
    /// 95th percentile.
    pub wait_p95_s: f64,
    /// Longest.
    pub wait_max_s: f64,
    /// Longest wait of the first task queued after idle (no worker existed when it was
    /// queued), over every such cold start.
    pub cold_start_max_s: Option<f64>,
    /// Task instances never started by the end of the run.
    pub never_started: usize,
    /// Task instances killed by scale-in.
    pub killed: u64,
    /// Scaling activities.
    pub scaling_actions: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The oracle's worker-minutes for `tasks`.
pub fn oracle_worker_minutes(tasks: &[Task], p: &Params, minutes: usize) -> f64 {
    let len = minutes * 60 + 1;
    let mut diff = vec![0i64; len + 1];
    for t in tasks {
        let from = (t.queued_at_s.ceil() as usize).min(len);
        let to = ((t.queued_at_s + t.duration_s.max(1.0)).ceil() as usize).min(len);
        diff[from] += 1;
        diff[to] -= 1;
    }
    let per = f64::from(p.worker_concurrency.max(1));
    let max = f64::from(p.module.max_capacity);
    let (mut level, mut total) = (0i64, 0.0);
    for (s, d) in diff.iter().enumerate().take(len) {
        level += d;
        if s.is_multiple_of(60) && s / 60 < minutes {
            total += (level as f64 / per).ceil().min(max);
        }
    }
    total
}

/// Summarises a run.
pub fn summarise(trace: &str, policy: &str, tasks: &[Task], p: &Params, out: &Outcome) -> Report {
    let mut waits: Vec<f64> = Vec::with_capacity(tasks.len());
    let mut cold: Option<f64> = None;
    let mut never = 0;
    // Tasks are in queued order: the first one queued in a minute without workers after
    // a minute with some (or at the start) begins a cold start.
    let mut cold_now = false;
    for (t, started) in tasks.iter().zip(&out.started_at) {
        let minute = (t.queued_at_s / 60.0) as usize;
        let idle = out.timeline.get(minute).is_some_and(|m| m.workers == 0);
        let first_after_idle = idle && !cold_now;
        cold_now = idle;
        let Some(s) = started else {
            never += 1;
            continue;
        };
        let wait = (s - t.queued_at_s).max(0.0);
        waits.push(wait);
        if first_after_idle {
            cold = Some(cold.map_or(wait, |c: f64| c.max(wait)));
        }
    }
    waits.sort_by(f64::total_cmp);
    let worker_minutes = out.worker_seconds / 60.0;
    let oracle = oracle_worker_minutes(tasks, p, out.timeline.len());
    Report {
        trace: trace.into(),
        policy: policy.into(),
        tasks: tasks.len(),
        worker_minutes: (worker_minutes * 10.0).round() / 10.0,
        oracle_worker_minutes: oracle,
        cost_ratio: if oracle > 0.0 {
            ((worker_minutes / oracle) * 1000.0).round() / 1000.0
        } else {
            0.0
        },
        wait_p50_s: percentile(&waits, 50.0),
        wait_p95_s: percentile(&waits, 95.0),
        wait_max_s: waits.last().copied().unwrap_or(0.0),
        cold_start_max_s: cold,
        never_started: never,
        killed: out.killed,
        scaling_actions: out.activities,
    }
}

/// The Markdown table of reports.
pub fn table(reports: &[Report]) -> String {
    let mut s = String::from(
        "| trace | policy | tasks | worker-min | oracle | × oracle | wait p50 / p95 / max (s) | cold start max (s) | never started | killed | actions |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} / {:.0} / {:.0} | {} | {} | {} | {} |\n",
            r.trace,
            r.policy,
            r.tasks,
            r.worker_minutes,
            r.oracle_worker_minutes,
            r.cost_ratio,
            r.wait_p50_s,
            r.wait_p95_s,
            r.wait_max_s,
            r.cold_start_max_s.map_or("–".into(), |c| format!("{c:.0}")),
            r.never_started,
            r.killed,
            r.scaling_actions,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(at: f64, d: f64) -> Task {
        Task {
            queued_at_s: at,
            duration_s: d,
            queue: "q".into(),
            pool: "p".into(),
        }
    }

    #[test]
    fn the_oracle_has_exactly_the_workers_demand_needs() {
        let mut p = Params {
            worker_concurrency: 2,
            ..Default::default()
        };
        // Three tasks over minutes 0..2 (two workers), one in minute 2 (one worker).
        let t = [
            task(0.0, 120.0),
            task(0.0, 120.0),
            task(0.0, 120.0),
            task(120.0, 60.0),
        ];
        assert_eq!(oracle_worker_minutes(&t, &p, 4), 2.0 + 2.0 + 1.0 + 0.0);
        p.module.max_capacity = 1;
        assert_eq!(oracle_worker_minutes(&t, &p, 4), 3.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
    }
}
