//! airside-autoscale-sim: replays Airflow demand, in simulated time, through models of
//! every stage that scales Celery workers on ECS, reusing the real code where it exists
//! (metricship's signal), and reports what each scaling policy costs in worker-minutes
//! and queue wait against an oracle.
//!
//! Layout, in the order data flows:
//! * [`trace`]: the demand (CSV in and out) and [`synth`]: bundled synthetic traces;
//! * [`cluster`]: the ECS worker service, Celery slots, warm shutdown;
//! * [`cloudwatch`]: datapoints, period statistics, alarms;
//! * [`scaling`]: step scaling and cooldowns; [`policy`]: the policies and parameters;
//! * [`sim`]: the replay loop; [`report`]: the summary against the oracle; [`chart`]:
//!   the run over time, as SVG.
#![forbid(unsafe_code)]

pub mod chart;
pub mod cloudwatch;
pub mod cluster;
pub mod policy;
pub mod report;
pub mod scaling;
pub mod sim;
pub mod synth;
pub mod trace;

use policy::{Params, PolicyKind};
use report::Report;
use trace::Task;

/// Replays `tasks` (named `trace`) under `policy` and summarises the run.
pub fn simulate(
    trace: &str,
    tasks: &[Task],
    policy: PolicyKind,
    params: &Params,
    seed: u64,
) -> Report {
    simulate_with_timeline(trace, tasks, policy, params, seed).0
}

/// [`simulate`], also returning the run minute by minute (for [`chart`]).
pub fn simulate_with_timeline(
    trace: &str,
    tasks: &[Task],
    policy: PolicyKind,
    params: &Params,
    seed: u64,
) -> (Report, Vec<sim::Minute>) {
    let out = sim::run(tasks, policy, params, seed);
    let report = report::summarise(trace, policy.name(), tasks, params, &out);
    (report, out.timeline)
}
