//! The scaling policies compared, and the parameters of every stage, with the defaults
//! of what we ship: `infra/modules/worker-autoscaling/variables.tf` for the alarms and
//! step scaling (a test reads that file, so the two cannot drift), metricship's flags
//! for the signal.

use std::time::Duration;

/// Which policy scales the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// The shipped module: step scaling on metricship's worker deficit and surplus.
    Deficit,
    /// The reference platform's alarms on `celery.queue_depth`: one worker more above 20
    /// for 2 × 60 s, one fewer below 5 for 5 × 300 s.
    QueueDepth,
    /// Target tracking at 100 % on capacity reservation: `100 × TaskDemand /
    /// (worker_concurrency × DesiredTaskCount)`, 100 when both are 0 and 1000 with demand
    /// but no worker (CloudWatch metric math on metricship's TaskDemand and Container
    /// Insights' DesiredTaskCount; RunningTaskCount instead counts workers still starting
    /// as missing, reads 1000 % each minute until they run, and overshoots to the maximum).
    CapacityTarget,
}

impl PolicyKind {
    /// Every policy, in report order.
    pub const ALL: [PolicyKind; 3] = [
        PolicyKind::Deficit,
        PolicyKind::QueueDepth,
        PolicyKind::CapacityTarget,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Deficit => "deficit",
            PolicyKind::QueueDepth => "queue-depth",
            PolicyKind::CapacityTarget => "capacity-target",
        }
    }
}

/// The worker-autoscaling module's variables (names as in `variables.tf`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModuleVars {
    /// `min_capacity`.
    pub min_capacity: u32,
    /// `max_capacity`.
    pub max_capacity: u32,
    /// `scale_out_evaluation_periods` (of 60 s).
    pub scale_out_evaluation_periods: u32,
    /// `scale_in_evaluation_periods` (of `scale_in_period`).
    pub scale_in_evaluation_periods: u32,
    /// `scale_in_period`, seconds.
    pub scale_in_period: u32,
    /// `scale_out_cooldown`, seconds.
    pub scale_out_cooldown: u32,
    /// `scale_in_cooldown`, seconds.
    pub scale_in_cooldown: u32,
    /// `scale_in_max_step`: most workers one scale-in removes (the surplus, up to this).
    pub scale_in_max_step: u32,
}

impl Default for ModuleVars {
    /// The module's defaults.
    fn default() -> Self {
        Self {
            min_capacity: 0,
            max_capacity: 10,
            scale_out_evaluation_periods: 2,
            scale_in_evaluation_periods: 1,
            scale_in_period: 60,
            scale_out_cooldown: 120,
            scale_in_cooldown: 60,
            scale_in_max_step: 10,
        }
    }
}

/// Everything a run depends on besides the trace and the policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Params {
    /// The module's variables.
    pub module: ModuleVars,
    /// Celery `worker_concurrency` (also metricship's `--worker-concurrency`).
    pub worker_concurrency: u32,
    /// metricship's `--flush-interval`: how often DesiredWorkers is published.
    #[serde(with = "secs")]
    pub flush_interval: Duration,
    /// metricship's `--freshness-window`.
    #[serde(with = "secs")]
    pub freshness: Duration,
    /// How often the scheduler sends `executor.*` gauges (Airflow's heartbeat, 5 s).
    #[serde(with = "secs")]
    pub scheduler_metrics_every: Duration,
    /// ECS `stopTimeout`: the warm shutdown's limit before SIGKILL (default 30 s, at most
    /// 120 s on Fargate).
    #[serde(with = "secs")]
    pub stop_timeout: Duration,
    /// Shortest and longest time from a desired-count increase to a worker taking tasks
    /// (uniformly drawn; an assumption, see the README).
    #[serde(with = "secs_pair")]
    pub start_latency: (Duration, Duration),
    /// How long after its minute Container Insights' DesiredTaskCount can be read.
    #[serde(with = "secs")]
    pub insights_delay: Duration,
    /// Whether workers protect themselves from scale-in while tasks run (workerguard, in
    /// the shipped worker task definition).
    pub protection: bool,
    /// workerguard's `--idle-grace`: protection stays this long after the last task.
    #[serde(with = "secs")]
    pub idle_grace: Duration,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            module: ModuleVars::default(),
            worker_concurrency: 16,
            flush_interval: Duration::from_secs(60),
            freshness: Duration::from_secs(90),
            scheduler_metrics_every: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(30),
            start_latency: (Duration::from_secs(45), Duration::from_secs(90)),
            insights_delay: Duration::from_secs(60),
            protection: true,
            idle_grace: Duration::from_secs(120),
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod secs_pair {
    pub fn serialize<S: serde::Serializer>(
        d: &(std::time::Duration, std::time::Duration),
        s: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::Serialize;
        [d.0.as_secs_f64(), d.1.as_secs_f64()].serialize(s)
    }
}

/// Reads the defaults of the module's variables from `variables.tf` (each `variable
/// "NAME" { ... default = N ... }` block); `None` for a variable without a numeric default.
pub fn module_defaults(variables_tf: &str) -> std::collections::BTreeMap<String, Option<f64>> {
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in variables_tf.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("variable \"") {
            let name = rest.split('"').next().unwrap_or_default().to_string();
            out.insert(name.clone(), None);
            current = Some(name);
        } else if let (Some(name), Some(v)) = (&current, l.strip_prefix("default")) {
            let v = v.trim_start().trim_start_matches('=').trim();
            out.insert(name.clone(), v.parse::<f64>().ok());
        } else if line.starts_with('}') {
            current = None;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulator's defaults are the module's: change one without the other and this
    /// fails.
    #[test]
    fn defaults_match_the_terraform_module() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/modules/worker-autoscaling/variables.tf"
        );
        let tf = module_defaults(&std::fs::read_to_string(path).unwrap());
        let ours = serde_json::to_value(ModuleVars::default()).unwrap();
        let ours = ours.as_object().unwrap();
        for (name, value) in ours {
            assert_eq!(
                tf.get(name).copied().flatten(),
                value.as_f64(),
                "{name}: the simulator and variables.tf disagree"
            );
        }
        // Every numeric variable of the module is one the simulator models.
        for (name, value) in &tf {
            if value.is_some() {
                assert!(
                    ours.contains_key(name),
                    "variables.tf has {name}; the simulator does not"
                );
            }
        }
    }

    #[test]
    fn reads_variable_defaults() {
        let tf = "variable \"a\" {\n  type = number\n  default     = 3\n}\nvariable \"b\" {\n  default = \"x\"\n}\n";
        let d = module_defaults(tf);
        assert_eq!(d["a"], Some(3.0));
        assert_eq!(d["b"], None);
    }
}
